//! Which conversation a mail belongs to (pure): the candidates to look up, in the order
//! that decides — a reply token in a recipient address (`support+<token>@…`), then the
//! `In-Reply-To` and `References` ids (newest first) against the Message-IDs we sent or
//! received, then a subject tag (`[#<token>]`). Nothing found: a new conversation. The
//! adapter checks the candidates against the database in that order.

use crate::parse::ParsedMail;
use rand::Rng;

/// Length of a conversation token (lowercase letters and digits, no look-alikes).
pub const TOKEN_LEN: usize = 10;
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// A fresh conversation token.
pub fn new_token() -> String {
    let mut rng = rand::thread_rng();
    (0..TOKEN_LEN).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// A token derived from a seed (a new conversation's first message, an outbox row): the
/// same seed always gives the same token, so processing a message again after a crash
/// finds the conversation it opened the first time.
pub fn token_from_seed(seed: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(seed);
    h.iter().take(TOKEN_LEN).map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Whether a string has the shape of a token.
pub fn is_token(s: &str) -> bool {
    s.len() == TOKEN_LEN && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// The address replies to a conversation go to: `local+token@domain`.
pub fn token_address(mailbox_address: &str, token: &str) -> String {
    match mailbox_address.split_once('@') {
        Some((local, domain)) => format!("{local}+{token}@{domain}"),
        None => mailbox_address.to_string(),
    }
}

/// The token in `local+token@domain` when `local@domain` is our mailbox address.
pub fn token_in_address(address: &str, mailbox_address: &str) -> Option<String> {
    let (local, domain) = mailbox_address.split_once('@')?;
    let (a_local, a_domain) = address.trim().rsplit_once('@')?;
    if !a_domain.eq_ignore_ascii_case(domain) {
        return None;
    }
    let (base, tag) = a_local.split_once('+')?;
    let tag = tag.to_ascii_lowercase();
    (base.eq_ignore_ascii_case(local) && is_token(&tag)).then_some(tag)
}

/// The `[#token]` tag in a subject, if any.
pub fn subject_tag(subject: &str) -> Option<String> {
    let mut rest = subject;
    while let Some(i) = rest.find("[#") {
        let after = &rest[i + 2..];
        if let Some(end) = after.find(']') {
            let t = after[..end].trim().to_ascii_lowercase();
            if is_token(&t) {
                return Some(t);
            }
        }
        rest = after;
    }
    None
}

/// A subject carrying the conversation tag (added once).
pub fn tagged_subject(subject: &str, token: &str) -> String {
    if subject_tag(subject).as_deref() == Some(token) {
        subject.to_string()
    } else if subject.trim().is_empty() {
        format!("[#{token}]")
    } else {
        format!("{} [#{token}]", subject.trim())
    }
}

/// The lookups that may place a mail in a known conversation, strongest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadCandidates {
    /// Tokens found in To, Cc or Delivered-To addresses.
    pub tokens: Vec<String>,
    /// In-Reply-To ids, then References from newest to oldest.
    pub message_ids: Vec<String>,
    /// The subject's tag.
    pub subject_tag: Option<String>,
}

impl ThreadCandidates {
    /// Collects the candidates of a parsed mail sent to `mailbox_address`.
    pub fn of(p: &ParsedMail, mailbox_address: &str) -> ThreadCandidates {
        let mut tokens: Vec<String> = Vec::new();
        let addrs = p.to.iter().chain(&p.cc).map(|m| m.address.as_str()).chain(p.delivered_to.iter().map(String::as_str));
        for a in addrs {
            if let Some(t) = token_in_address(a, mailbox_address) {
                if !tokens.contains(&t) {
                    tokens.push(t);
                }
            }
        }
        let mut message_ids: Vec<String> = Vec::new();
        for id in p.in_reply_to.iter().chain(p.references.iter().rev()) {
            let id = id.trim().trim_start_matches('<').trim_end_matches('>').to_string();
            if !id.is_empty() && !message_ids.contains(&id) && message_ids.len() < 50 {
                message_ids.push(id);
            }
        }
        ThreadCandidates { tokens, message_ids, subject_tag: subject_tag(&p.subject) }
    }

    /// Whether nothing could place the mail.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.message_ids.is_empty() && self.subject_tag.is_none()
    }
}

/// How a conversation was found (kept on the raw message for diagnosis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadedBy {
    /// A reply token in a recipient address.
    Token,
    /// In-Reply-To or References.
    Reference,
    /// A subject tag.
    SubjectTag,
    /// The sender's open conversation with the same subject.
    SenderSubject,
    /// A new conversation.
    New,
}

impl ThreadedBy {
    /// Stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadedBy::Token => "token",
            ThreadedBy::Reference => "reference",
            ThreadedBy::SubjectTag => "subject_tag",
            ThreadedBy::SenderSubject => "sender_subject",
            ThreadedBy::New => "new",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Mailbox;

    #[test]
    fn tokens_round_trip() {
        let t = new_token();
        assert!(is_token(&t));
        assert_eq!(token_from_seed(b"a"), token_from_seed(b"a"));
        assert!(is_token(&token_from_seed(b"a")) && token_from_seed(b"a") != token_from_seed(b"b"));
        let a = token_address("support@shop.test", &t);
        assert_eq!(token_in_address(&a, "support@shop.test"), Some(t.clone()));
        assert_eq!(token_in_address(&a.to_uppercase(), "support@shop.test"), Some(t.clone()));
        assert_eq!(token_in_address(&a, "sales@shop.test"), None);
        assert_eq!(token_in_address("support+short@shop.test", "support@shop.test"), None);
        assert_eq!(subject_tag(&tagged_subject("Re: Order", &t)), Some(t.clone()));
        assert_eq!(tagged_subject(&tagged_subject("Order", &t), &t), format!("Order [#{t}]"));
        assert_eq!(subject_tag("[#nope] and [#abcdefghjk]"), Some("abcdefghjk".into()));
    }

    #[test]
    fn candidates_in_order() {
        let p = ParsedMail {
            to: vec![Mailbox { name: None, address: "support+abcdefghjk@shop.test".into() }],
            cc: vec![Mailbox { name: None, address: "other@x.test".into() }],
            in_reply_to: vec!["b@x".into()],
            references: vec!["a@x".into(), "<b@x>".into(), "c@x".into()],
            subject: "Re: hi [#mnpqrstuvw]".into(),
            ..Default::default()
        };
        let c = ThreadCandidates::of(&p, "support@shop.test");
        assert_eq!(c.tokens, vec!["abcdefghjk".to_string()]);
        assert_eq!(c.message_ids, vec!["b@x".to_string(), "c@x".to_string(), "a@x".to_string()]);
        assert_eq!(c.subject_tag.as_deref(), Some("mnpqrstuvw"));
        assert!(ThreadCandidates::of(&ParsedMail::default(), "support@shop.test").is_empty());
    }
}
