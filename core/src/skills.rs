//! Skill sets and skill requirement expressions such as `language:es >= 3 and billing`.
//!
//! Grammar (case-insensitive keywords):
//! ```text
//! expr   := or
//! or     := and ("or" and)*
//! and    := unary ("and" unary)*
//! unary  := "not" unary | "(" expr ")" | term
//! term   := skill [op level]          op: >= > = == <= <
//! skill  := [a-z0-9_.:-]+            level: 0..=100
//! ```
//! A bare skill means "has the skill at any level ≥ 1".

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// An agent's skills: name → level (1..=100).
pub type SkillSet = BTreeMap<String, u8>;

/// Comparison in a skill term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Cmp {
    /// `>=`
    Ge,
    /// `>`
    Gt,
    /// `=`
    Eq,
    /// `<=`
    Le,
    /// `<`
    Lt,
}

/// A parsed requirement expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SkillExpr {
    /// Always satisfied (the empty requirement).
    Any,
    /// One skill compared to a level.
    Term { skill: String, cmp: Cmp, level: u8 },
    /// Both sides.
    And(Box<SkillExpr>, Box<SkillExpr>),
    /// Either side.
    Or(Box<SkillExpr>, Box<SkillExpr>),
    /// Negation.
    Not(Box<SkillExpr>),
}

/// Why a requirement expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid skill expression at position {pos}: {reason}")]
pub struct SkillParseError {
    /// Byte offset of the offending token.
    pub pos: usize,
    /// What was wrong.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Num(u32),
    Op(Cmp),
    LParen,
    RParen,
}

fn is_skill_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

fn lex(input: &str) -> Result<Vec<(usize, Tok)>, SkillParseError> {
    let mut out = Vec::new();
    let b: Vec<char> = input.chars().collect();
    let mut i = 0;
    let err = |pos, reason: &str| SkillParseError { pos, reason: reason.to_string() };
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            out.push((i, Tok::LParen));
            i += 1;
        } else if c == ')' {
            out.push((i, Tok::RParen));
            i += 1;
        } else if matches!(c, '>' | '<' | '=' | '!') {
            let two = b.get(i + 1) == Some(&'=');
            let op = match (c, two) {
                ('>', true) => Cmp::Ge,
                ('>', false) => Cmp::Gt,
                ('<', true) => Cmp::Le,
                ('<', false) => Cmp::Lt,
                ('=', _) => Cmp::Eq,
                _ => return Err(err(i, "unknown operator (use >=, >, =, <=, <)")),
            };
            out.push((i, Tok::Op(op)));
            i += if two { 2 } else { 1 };
        } else if c == '&' && b.get(i + 1) == Some(&'&') {
            out.push((i, Tok::Word("and".into())));
            i += 2;
        } else if c == '|' && b.get(i + 1) == Some(&'|') {
            out.push((i, Tok::Word("or".into())));
            i += 2;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let s: String = b[start..i].iter().collect();
            if i < b.len() && is_skill_char(b[i]) {
                // a skill name that starts with a digit
                while i < b.len() && is_skill_char(b[i]) {
                    i += 1;
                }
                out.push((start, Tok::Word(b[start..i].iter().collect::<String>().to_lowercase())));
            } else {
                let n = s.parse::<u32>().map_err(|_| err(start, "number too large"))?;
                out.push((start, Tok::Num(n)));
            }
        } else if is_skill_char(c) {
            let start = i;
            while i < b.len() && is_skill_char(b[i]) {
                i += 1;
            }
            if i - start > 64 {
                return Err(err(start, "skill name longer than 64 characters"));
            }
            out.push((start, Tok::Word(b[start..i].iter().collect::<String>().to_lowercase())));
        } else {
            return Err(err(i, &format!("unexpected character `{c}`")));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.1)
    }
    fn here(&self) -> usize {
        self.toks.get(self.pos).map(|t| t.0).unwrap_or(self.end)
    }
    fn err(&self, reason: impl Into<String>) -> SkillParseError {
        SkillParseError { pos: self.here(), reason: reason.into() }
    }
    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w == k)
    }
    fn or(&mut self) -> Result<SkillExpr, SkillParseError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.pos += 1;
            let right = self.and()?;
            left = SkillExpr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<SkillExpr, SkillParseError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.pos += 1;
            let right = self.unary()?;
            left = SkillExpr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }
    fn unary(&mut self) -> Result<SkillExpr, SkillParseError> {
        self.depth += 1;
        if self.depth > 32 {
            return Err(self.err("expression nested too deeply"));
        }
        let r = match self.peek().cloned() {
            Some(Tok::Word(w)) if w == "not" => {
                self.pos += 1;
                Ok(SkillExpr::Not(Box::new(self.unary()?)))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.or()?;
                if self.peek() != Some(&Tok::RParen) {
                    return Err(self.err("expected `)`"));
                }
                self.pos += 1;
                Ok(e)
            }
            Some(Tok::Word(w)) if w == "and" || w == "or" => Err(self.err(format!("expected a skill name, found `{w}`"))),
            Some(Tok::Word(skill)) => {
                self.pos += 1;
                if let Some(Tok::Op(cmp)) = self.peek().cloned() {
                    self.pos += 1;
                    match self.peek().cloned() {
                        Some(Tok::Num(n)) if n <= 100 => {
                            self.pos += 1;
                            Ok(SkillExpr::Term { skill, cmp, level: n as u8 })
                        }
                        Some(Tok::Num(_)) => Err(self.err("skill level must be between 0 and 100")),
                        _ => Err(self.err("expected a level number after the operator")),
                    }
                } else {
                    Ok(SkillExpr::Term { skill, cmp: Cmp::Ge, level: 1 })
                }
            }
            Some(Tok::Num(_)) => Err(self.err("expected a skill name, found a number")),
            Some(_) => Err(self.err("expected a skill name")),
            None => Err(self.err("unexpected end of expression")),
        };
        self.depth -= 1;
        r
    }
}

impl SkillExpr {
    /// Parses an expression; the empty string means [`SkillExpr::Any`].
    pub fn parse(input: &str) -> Result<SkillExpr, SkillParseError> {
        if input.len() > 1024 {
            return Err(SkillParseError { pos: 1024, reason: "expression longer than 1024 bytes".into() });
        }
        if input.trim().is_empty() {
            return Ok(SkillExpr::Any);
        }
        let toks = lex(input)?;
        let mut p = Parser { toks, pos: 0, end: input.len(), depth: 0 };
        let e = p.or()?;
        if p.pos != p.toks.len() {
            return Err(p.err("unexpected token (did you forget `and`/`or`?)"));
        }
        Ok(e)
    }

    /// Whether a skill set satisfies this requirement.
    pub fn matches(&self, skills: &SkillSet) -> bool {
        match self {
            SkillExpr::Any => true,
            SkillExpr::Term { skill, cmp, level } => {
                let have = skills.get(skill).copied().unwrap_or(0);
                match cmp {
                    Cmp::Ge => have >= *level,
                    Cmp::Gt => have > *level,
                    Cmp::Eq => have == *level,
                    Cmp::Le => have <= *level,
                    Cmp::Lt => have < *level,
                }
            }
            SkillExpr::And(a, b) => a.matches(skills) && b.matches(skills),
            SkillExpr::Or(a, b) => a.matches(skills) || b.matches(skills),
            SkillExpr::Not(a) => !a.matches(skills),
        }
    }

    /// Sum of the agent's levels for the skills this expression names: the
    /// "best skill" score.
    pub fn score(&self, skills: &SkillSet) -> u32 {
        match self {
            SkillExpr::Any => 0,
            SkillExpr::Term { skill, .. } => skills.get(skill).copied().unwrap_or(0) as u32,
            SkillExpr::And(a, b) => a.score(skills) + b.score(skills),
            SkillExpr::Or(a, b) => a.score(skills).max(b.score(skills)),
            SkillExpr::Not(_) => 0,
        }
    }

    /// Conjunction, simplifying `Any`.
    pub fn and(self, other: SkillExpr) -> SkillExpr {
        match (self, other) {
            (SkillExpr::Any, o) | (o, SkillExpr::Any) => o,
            (a, b) => SkillExpr::And(Box::new(a), Box::new(b)),
        }
    }

    /// Disjunction; `Any` absorbs.
    pub fn or(self, other: SkillExpr) -> SkillExpr {
        match (self, other) {
            (SkillExpr::Any, _) | (_, SkillExpr::Any) => SkillExpr::Any,
            (a, b) => SkillExpr::Or(Box::new(a), Box::new(b)),
        }
    }

    /// Removes every term naming `skill` (escalation "relax a skill").
    pub fn relax(self, skill: &str) -> SkillExpr {
        match self {
            SkillExpr::Term { skill: s, .. } if s == skill => SkillExpr::Any,
            SkillExpr::And(a, b) => a.relax(skill).and(b.relax(skill)),
            SkillExpr::Or(a, b) => {
                let (a, b) = (a.relax(skill), b.relax(skill));
                a.or(b)
            }
            SkillExpr::Not(a) => match a.relax(skill) {
                SkillExpr::Any => SkillExpr::Any,
                e => SkillExpr::Not(Box::new(e)),
            },
            e => e,
        }
    }
}

impl fmt::Display for SkillExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkillExpr::Any => Ok(()),
            SkillExpr::Term { skill, cmp, level } => {
                if *cmp == Cmp::Ge && *level == 1 {
                    write!(f, "{skill}")
                } else {
                    let op = match cmp {
                        Cmp::Ge => ">=",
                        Cmp::Gt => ">",
                        Cmp::Eq => "=",
                        Cmp::Le => "<=",
                        Cmp::Lt => "<",
                    };
                    write!(f, "{skill} {op} {level}")
                }
            }
            SkillExpr::And(a, b) => write!(f, "({a} and {b})"),
            SkillExpr::Or(a, b) => write!(f, "({a} or {b})"),
            SkillExpr::Not(a) => write!(f, "not {a}"),
        }
    }
}

/// Validates a skill set coming from a client: names like skill terms, levels 1..=100.
pub fn validate_skills(skills: &SkillSet) -> Result<(), String> {
    for (name, level) in skills {
        if name.is_empty() || name.len() > 64 || !name.chars().all(is_skill_char) {
            return Err(format!("invalid skill name `{name}` (letters, digits, _ . : - only)"));
        }
        if *level == 0 || *level > 100 {
            return Err(format!("skill `{name}` level {level} out of range 1..=100"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skills(list: &[(&str, u8)]) -> SkillSet {
        list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn parses_and_matches_issue_example() {
        let e = SkillExpr::parse("language:es >= 3 and billing").unwrap();
        assert!(e.matches(&skills(&[("language:es", 5), ("billing", 1)])));
        assert!(!e.matches(&skills(&[("language:es", 2), ("billing", 1)])));
        assert!(!e.matches(&skills(&[("language:es", 5)])));
    }

    #[test]
    fn precedence_and_parens() {
        let e = SkillExpr::parse("a or b and c").unwrap();
        assert!(e.matches(&skills(&[("a", 1)])));
        assert!(!e.matches(&skills(&[("b", 1)])));
        let e = SkillExpr::parse("(a or b) and not c < 2").unwrap();
        assert!(e.matches(&skills(&[("b", 1), ("c", 3)])));
        assert!(!e.matches(&skills(&[("b", 1)])));
    }

    #[test]
    fn rejects_bad_input_with_position() {
        for bad in ["and", "a >=", "a >= 101", "a b", "(a", "a $ b", "a >= x", "a ! 3", ")"] {
            let err = SkillExpr::parse(bad).unwrap_err();
            assert!(err.pos <= bad.len(), "{bad}: {err}");
        }
        let deep = "(".repeat(100) + "a" + &")".repeat(100);
        assert!(SkillExpr::parse(&deep).is_err());
    }

    #[test]
    fn relax_drops_skill() {
        let e = SkillExpr::parse("language:es >= 3 and billing").unwrap().relax("language:es");
        assert_eq!(e.to_string(), "billing");
        assert_eq!(SkillExpr::parse("").unwrap(), SkillExpr::Any);
    }

    #[test]
    fn display_round_trips() {
        for s in ["a", "a >= 3 and (b or not c = 2)", "x.y:z < 4 or q"] {
            let e = SkillExpr::parse(s).unwrap();
            assert_eq!(SkillExpr::parse(&e.to_string()).unwrap(), e);
        }
    }
}
