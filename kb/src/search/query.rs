//! Query text → search clauses for the PostgreSQL backend, applying the `[kb.locales.*]`
//! vocabulary the way Meilisearch applies it to its index: configured stop words are
//! dropped and every wanted term is widened to its configured synonyms, in both
//! directions and including multi-word synonyms ("log in"); excluded terms stay literal. The syntax is the one
//! `websearch_to_tsquery` accepted before: `"quoted phrases"`, `-excluded` terms and `or`
//! between terms. Pure code; the backend turns the clauses into a `tsquery` per language.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// More clauses than this are ignored (a query is at most 500 characters anyway; this
/// bounds the size of the generated `tsquery`).
const MAX_CLAUSES: usize = 64;

/// Synonyms and stop words of one locale (or of every locale merged), ready to expand
/// queries.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    /// Normalized term (its words joined by one space) → every term it means, itself
    /// included.
    synonyms: HashMap<String, BTreeSet<String>>,
    /// Normalized stop words.
    stop_words: HashSet<String>,
    /// Most words in one synonym term.
    longest_term: usize,
}

impl Vocabulary {
    /// Builds the vocabulary: each `key = [values]` entry makes the key and its values one
    /// group of words that mean the same, searched for one another whichever is typed.
    pub fn new<'a>(synonyms: impl IntoIterator<Item = (&'a String, &'a Vec<String>)>, stop_words: &[String]) -> Vocabulary {
        let mut v =
            Vocabulary { stop_words: stop_words.iter().map(|w| normalize(w)).filter(|w| !w.is_empty()).collect(), ..Default::default() };
        for (key, values) in synonyms {
            let group: BTreeSet<String> = std::iter::once(key).chain(values).map(|t| normalize(t)).filter(|t| !t.is_empty()).collect();
            if group.len() < 2 {
                continue;
            }
            for term in &group {
                v.longest_term = v.longest_term.max(term.split(' ').count());
                v.synonyms.entry(term.clone()).or_default().extend(group.iter().cloned());
            }
        }
        v
    }

    /// Whether nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.synonyms.is_empty() && self.stop_words.is_empty()
    }

    /// The synonyms as a symmetric map, every term to the other terms it means (the form
    /// Meilisearch takes, where an entry only works from key to values).
    pub fn symmetric_synonyms(&self) -> BTreeMap<String, Vec<String>> {
        self.synonyms.iter().map(|(term, group)| (term.clone(), group.iter().filter(|t| *t != term).cloned().collect())).collect()
    }

    /// The stop words, sorted.
    pub fn stop_words(&self) -> Vec<String> {
        let mut out: Vec<String> = self.stop_words.iter().cloned().collect();
        out.sort();
        out
    }

    /// `term` followed by the terms it means.
    fn widen(&self, term: &str) -> Vec<String> {
        let mut out = vec![term.to_string()];
        if let Some(group) = self.synonyms.get(term) {
            out.extend(group.iter().filter(|t| *t != term).cloned());
        }
        out
    }
}

/// Lowercases and collapses whitespace; punctuation around each word is dropped
/// (`"Log-In!"` → `log-in`).
fn normalize(term: &str) -> String {
    term.split_whitespace().map(normalize_word).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

fn normalize_word(word: &str) -> String {
    word.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase()
}

/// One condition of a query: any of `alternatives` (words or phrases) must occur, or,
/// when `negated`, the one term given must not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clause {
    /// Excluded (`-term`).
    pub negated: bool,
    /// The term as typed (normalized) first, then its synonyms.
    pub alternatives: Vec<String>,
}

/// A parsed query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedQuery {
    /// Clauses, all required (or any, for agent assist).
    pub clauses: Vec<Clause>,
    /// The wanted terms as typed, stop words and exclusions removed (for the trigram
    /// title match of misspelled queries).
    pub plain: String,
}

#[derive(Debug, PartialEq)]
enum Token {
    Word { norm: String, negated: bool },
    Phrase { norm: String, negated: bool },
    Or,
}

fn lex(q: &str) -> Vec<Token> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let negated = chars[i] == '-' && chars.get(i + 1).is_some_and(|c| !c.is_whitespace());
        if negated {
            i += 1;
        }
        if chars[i] == '"' {
            let start = i + 1;
            let end = chars[start..].iter().position(|&c| c == '"').map(|p| start + p).unwrap_or(chars.len());
            let norm = normalize(&chars[start..end].iter().collect::<String>());
            if !norm.is_empty() {
                out.push(Token::Phrase { norm, negated });
            }
            i = end + 1;
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '"' {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if !negated && word.eq_ignore_ascii_case("or") {
                out.push(Token::Or);
                continue;
            }
            let norm = normalize_word(&word);
            if !norm.is_empty() {
                out.push(Token::Word { norm, negated });
            }
        }
    }
    out
}

/// Parses `q`: stop words dropped, synonyms widened (the longest configured multi-word
/// term wins: "log in" before "log"), `or` merges its neighbours into one clause.
pub fn parse(q: &str, vocabulary: &Vocabulary) -> ParsedQuery {
    let tokens = lex(q);
    let mut clauses: Vec<Clause> = Vec::new();
    let mut plain: Vec<String> = Vec::new();
    let mut or_pending = false;
    let mut i = 0;
    while i < tokens.len() && clauses.len() < MAX_CLAUSES {
        let (term, negated, phrase) = match &tokens[i] {
            Token::Or => {
                or_pending = !clauses.is_empty();
                i += 1;
                continue;
            }
            Token::Phrase { norm, negated } => {
                i += 1;
                (norm.clone(), *negated, true)
            }
            Token::Word { norm, negated: true } => {
                i += 1;
                (norm.clone(), true, false)
            }
            Token::Word { norm, negated: false } => {
                // The longest run of plain words that is a configured synonym term.
                let run: Vec<&str> = tokens[i..]
                    .iter()
                    .take(vocabulary.longest_term.max(1))
                    .map_while(|t| match t {
                        Token::Word { norm, negated: false } => Some(norm.as_str()),
                        _ => None,
                    })
                    .collect();
                let multi = (2..=run.len()).rev().map(|n| run[..n].join(" ")).find(|t| vocabulary.synonyms.contains_key(t));
                match multi {
                    Some(t) => {
                        i += t.split(' ').count();
                        (t, false, true)
                    }
                    None => {
                        i += 1;
                        (norm.clone(), false, false)
                    }
                }
            }
        };
        // A configured stop word alone carries no meaning; inside a quoted phrase it stays.
        if !phrase && vocabulary.stop_words.contains(&term) {
            or_pending = false;
            continue;
        }
        if !negated {
            plain.push(term.clone());
        }
        // An exclusion is literal: "parcel -shipment" means parcel articles that do not
        // say shipment, not nothing at all because the two are synonyms.
        let alternatives = if negated { vec![term] } else { vocabulary.widen(&term) };
        match clauses.last_mut() {
            Some(last) if or_pending && !negated && !last.negated => {
                for a in alternatives {
                    if !last.alternatives.contains(&a) {
                        last.alternatives.push(a);
                    }
                }
            }
            _ => clauses.push(Clause { negated, alternatives }),
        }
        or_pending = false;
    }
    ParsedQuery { clauses, plain: plain.join(" ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Vocabulary {
        let mut syn = BTreeMap::new();
        syn.insert("signin".to_string(), vec!["login".to_string(), "Log In".to_string()]);
        syn.insert("invoice".to_string(), vec!["bill".to_string()]);
        Vocabulary::new(&syn, &["the".to_string(), "a".to_string(), "my".to_string()])
    }

    fn alts(p: &ParsedQuery) -> Vec<Vec<&str>> {
        p.clauses.iter().map(|c| c.alternatives.iter().map(String::as_str).collect()).collect()
    }

    #[test]
    fn synonyms_widen_both_ways() {
        let v = vocab();
        assert_eq!(alts(&parse("signin", &v)), vec![vec!["signin", "log in", "login"]]);
        assert_eq!(alts(&parse("LOGIN", &v)), vec![vec!["login", "log in", "signin"]]);
        assert_eq!(alts(&parse("bill", &v)), vec![vec!["bill", "invoice"]]);
        let sym = v.symmetric_synonyms();
        assert_eq!(sym["bill"], vec!["invoice".to_string()]);
        assert_eq!(sym["log in"], vec!["login".to_string(), "signin".to_string()]);
    }

    #[test]
    fn multi_word_terms_and_stop_words() {
        let v = vocab();
        let p = parse("the log in page", &v);
        assert_eq!(alts(&p), vec![vec!["log in", "login", "signin"], vec!["page"]]);
        assert_eq!(p.plain, "log in page");
        // "log" alone is not a synonym term.
        assert_eq!(alts(&parse("log files", &v)), vec![vec!["log"], vec!["files"]]);
        // Only stop words: nothing to search for.
        assert_eq!(parse("the a my", &v), ParsedQuery::default());
        // Inside quotes a stop word stays part of the phrase.
        assert_eq!(alts(&parse("\"the bill\"", &v)), vec![vec!["the bill"]]);
    }

    #[test]
    fn websearch_syntax() {
        let v = vocab();
        let p = parse("invoice or refund -\"credit card\" -login", &v);
        assert_eq!(alts(&p), vec![vec!["invoice", "bill", "refund"], vec!["credit card"], vec!["login"]]);
        assert_eq!(p.clauses.iter().map(|c| c.negated).collect::<Vec<_>>(), vec![false, true, true]);
        assert_eq!(p.plain, "invoice refund");
        // Dangling operators, lone punctuation and unterminated quotes are harmless.
        assert_eq!(alts(&parse("or - && \"unterminated quote", &v)), vec![vec!["unterminated quote"]]);
        assert_eq!(alts(&parse("two-factor, e-mail!", &Vocabulary::default())), vec![vec!["two-factor"], vec!["e-mail"]]);
        assert!(parse("", &v).clauses.is_empty());
    }

    #[test]
    fn huge_queries_are_bounded() {
        let q = "word ".repeat(400);
        assert_eq!(parse(&q, &Vocabulary::default()).clauses.len(), MAX_CLAUSES);
    }
}
