//! Consent keywords (pure): STOP / START / HELP words per language. A message is a keyword
//! only when it is nothing but the word (case, surrounding spaces and trailing punctuation
//! ignored), so "please stop calling me at work" still reaches an agent.

use serde::Deserialize;
use std::collections::BTreeMap;

/// What a keyword asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    /// Opt out of marketing.
    Stop,
    /// Opt back in.
    Start,
    /// Ask for help.
    Help,
}

impl Keyword {
    /// Name used in logs and consent sources.
    pub fn as_str(self) -> &'static str {
        match self {
            Keyword::Stop => "stop",
            Keyword::Start => "start",
            Keyword::Help => "help",
        }
    }
}

/// The keywords and replies of one language.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeywordSet {
    /// Words that opt the sender out.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Words that opt the sender back in.
    #[serde(default)]
    pub start: Vec<String>,
    /// Words that ask for help.
    #[serde(default)]
    pub help: Vec<String>,
    /// The one confirmation sent after an opt-out.
    pub stop_reply: String,
    /// The confirmation sent after an opt-in.
    pub start_reply: String,
    /// The answer to a help request.
    pub help_reply: String,
    /// Sender number prefixes (E.164, e.g. `+86`) this set applies to; empty = every number.
    #[serde(default)]
    pub prefixes: Vec<String>,
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// The default sets: English for every number, Chinese for Chinese numbers (`退订` / `TD`
/// are the opt-out words Chinese carriers require; a bare "T" from elsewhere is not one).
pub fn default_sets() -> BTreeMap<String, KeywordSet> {
    let mut m = BTreeMap::new();
    m.insert(
        "en".to_string(),
        KeywordSet {
            stop: words(&["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"]),
            start: words(&["START", "UNSTOP", "SUBSCRIBE"]),
            help: words(&["HELP", "INFO"]),
            stop_reply: "You have been unsubscribed and will receive no further marketing messages. Reply START to resubscribe.".into(),
            start_reply: "You have been resubscribed. Reply STOP to unsubscribe.".into(),
            help_reply: "Reply STOP to unsubscribe, START to resubscribe. Write to us any time to reach an agent.".into(),
            prefixes: vec![],
        },
    );
    m.insert(
        "zh".to_string(),
        KeywordSet {
            stop: words(&["退订", "TD", "T"]),
            start: words(&["订阅"]),
            help: words(&["帮助"]),
            stop_reply: "您已成功退订，将不再收到营销短信。".into(),
            start_reply: "您已重新订阅。回复TD退订。".into(),
            help_reply: "回复TD退订，回复订阅重新订阅。".into(),
            prefixes: vec!["+86".into()],
        },
    );
    m
}

/// The normalized form a message is compared in: trimmed, trailing punctuation dropped,
/// upper case.
fn normalize(text: &str) -> String {
    text.trim().trim_end_matches(|c: char| c.is_ascii_punctuation() || matches!(c, '。' | '！' | '，')).trim().to_uppercase()
}

/// The keyword a message from `sender` is, and the language whose set matched. Sets that
/// apply to the sender are tried in key order; `preferred` (the customer's language) first.
pub fn detect<'a>(sets: &'a BTreeMap<String, KeywordSet>, sender: &str, text: &str, preferred: Option<&str>) -> Option<(Keyword, &'a str)> {
    let t = normalize(text);
    if t.is_empty() || t.chars().count() > 20 {
        return None;
    }
    let ordered =
        preferred.and_then(|p| sets.get_key_value(p)).into_iter().chain(sets.iter().filter(|(k, _)| Some(k.as_str()) != preferred));
    for (lang, set) in ordered {
        if !set.prefixes.is_empty() && !set.prefixes.iter().any(|p| sender.starts_with(p.as_str())) {
            continue;
        }
        for (kw, list) in [(Keyword::Stop, &set.stop), (Keyword::Start, &set.start), (Keyword::Help, &set.help)] {
            if list.iter().any(|w| normalize(w) == t) {
                return Some((kw, lang.as_str()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_message_keywords_per_language() {
        let sets = default_sets();
        fn detect<'a>(s: &'a BTreeMap<String, KeywordSet>, t: &str, p: Option<&str>) -> Option<(Keyword, &'a str)> {
            super::detect(s, "+8613800138000", t, p)
        }
        assert_eq!(detect(&sets, " stop! ", None), Some((Keyword::Stop, "en")));
        assert_eq!(detect(&sets, "Unsubscribe", None), Some((Keyword::Stop, "en")));
        assert_eq!(detect(&sets, "quit.", None), Some((Keyword::Stop, "en")));
        assert_eq!(detect(&sets, "UNSTOP", None), Some((Keyword::Start, "en")));
        assert_eq!(detect(&sets, "help?", None), Some((Keyword::Help, "en")));
        assert_eq!(detect(&sets, "退订", None), Some((Keyword::Stop, "zh")));
        assert_eq!(detect(&sets, "td", None), Some((Keyword::Stop, "zh")));
        assert_eq!(detect(&sets, "please stop calling me", None), None);
        assert_eq!(detect(&sets, "", None), None);
        assert_eq!(detect(&sets, "stopp", None), None);
    }

    #[test]
    fn sets_with_prefixes_apply_to_those_numbers_only() {
        let sets = default_sets();
        assert_eq!(detect(&sets, "+8613800138000", "T", None), Some((Keyword::Stop, "zh")));
        assert_eq!(detect(&sets, "+4915112345678", "T", None), None);
        assert_eq!(detect(&sets, "+4915112345678", "TD", None), None);
        assert_eq!(detect(&sets, "+4915112345678", "STOP", None), Some((Keyword::Stop, "en")));
    }

    #[test]
    fn preferred_language_is_tried_first() {
        let mut sets = default_sets();
        sets.get_mut("zh").unwrap().help.push("HELP".into());
        assert_eq!(detect(&sets, "+8613800138000", "help", Some("zh")), Some((Keyword::Help, "zh")));
        assert_eq!(detect(&sets, "+8613800138000", "help", None), Some((Keyword::Help, "en")));
    }
}
