//! What an agent sends besides a plain reply (pure): the recipients of a reply-all, the
//! text of an inline forward, and the checks on files an agent attaches.

use crate::parse::{Mailbox, ParsedMail};
use crate::threading;

/// The recipients of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRecipients {
    /// The one the reply answers: the mail's Reply-To, else its From.
    pub to: String,
    /// Copies: for reply-all everyone else the mail was addressed to, and the customers
    /// kept on the conversation; never this mailbox (or its token addresses), never twice.
    pub cc: Vec<String>,
}

fn is_ours(address: &str, mailbox_address: &str) -> bool {
    address.eq_ignore_ascii_case(mailbox_address) || threading::token_in_address(address, mailbox_address).is_some()
}

/// The recipients of a reply to `mail`. `kept` are the conversation's Cc'd customers
/// (`email_threads.cc`); a plain reply (`all == false`) goes to the sender alone.
pub fn reply_recipients(mail: &ParsedMail, kept: &[String], mailbox_address: &str, all: bool) -> Option<ReplyRecipients> {
    // RFC 5322 §3.6.2: replies go to Reply-To when the author set one.
    let to = mail.reply_to.first().or(mail.from.as_ref()).map(|m| m.address.to_ascii_lowercase())?;
    let mut cc: Vec<String> = Vec::new();
    if all {
        let others =
            mail.to.iter().chain(&mail.cc).map(|m| m.address.to_ascii_lowercase()).chain(kept.iter().map(|k| k.to_ascii_lowercase()));
        for a in others {
            if a != to && !is_ours(&a, mailbox_address) && !cc.contains(&a) && a.contains('@') {
                cc.push(a);
            }
        }
    }
    Some(ReplyRecipients { to, cc })
}

fn show(m: &Mailbox) -> String {
    match &m.name {
        Some(n) if !n.trim().is_empty() => format!("{n} <{}>", m.address),
        _ => m.address.clone(),
    }
}

/// The text of an inline forward: the agent's note, then the original's headers and full
/// text under the usual separator.
pub fn forward_inline(note: &str, original: &ParsedMail) -> String {
    let list = |l: &[Mailbox]| l.iter().map(show).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    if !note.trim().is_empty() {
        out.push_str(note.trim_end());
        out.push_str("\n\n");
    }
    out.push_str("---------- Forwarded message ---------\n");
    if let Some(f) = &original.from {
        out.push_str(&format!("From: {}\n", show(f)));
    }
    if let Some(d) = &original.date {
        out.push_str(&format!("Date: {d}\n"));
    }
    out.push_str(&format!("Subject: {}\n", original.subject));
    if !original.to.is_empty() {
        out.push_str(&format!("To: {}\n", list(&original.to)));
    }
    if !original.cc.is_empty() {
        out.push_str(&format!("Cc: {}\n", list(&original.cc)));
    }
    out.push('\n');
    out.push_str(original.text.trim_end());
    out.push('\n');
    out
}

/// The subject of a forward: `Fwd: <subject>` (once).
pub fn forward_subject(subject: &str) -> String {
    let s = subject.trim();
    if s.to_ascii_lowercase().starts_with("fwd:") || s.to_ascii_lowercase().starts_with("fw:") {
        s.to_string()
    } else {
        format!("Fwd: {s}")
    }
}

/// A plausible single address (`local@domain`, no spaces or brackets), lowercased.
pub fn checked_address(a: &str) -> Option<String> {
    let a = a.trim();
    let (local, domain) = a.rsplit_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && a.len() <= 254
        && !a.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"' | '(' | ')'));
    ok.then(|| a.to_ascii_lowercase())
}

/// Whether `s` is a SHA-256 in lowercase hex (a stored file's name).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(raw: &str) -> ParsedMail {
        crate::parse::parse(raw.as_bytes(), 1024).unwrap()
    }

    #[test]
    fn reply_all_keeps_everyone_but_us_once() {
        let m = mail(
            "From: Ana <ana@x.test>\r\nTo: support@shop.test, Bo <bo@x.test>\r\nCc: support+abcdefghjk@shop.test, cy@x.test, BO@x.test\r\nSubject: hi\r\nMessage-ID: <1@x>\r\n\r\nhi\r\n",
        );
        let r = reply_recipients(&m, &["dee@x.test".into(), "cy@x.test".into()], "support@shop.test", true).unwrap();
        assert_eq!(r.to, "ana@x.test");
        assert_eq!(r.cc, vec!["bo@x.test", "cy@x.test", "dee@x.test"]);
        let plain = reply_recipients(&m, &["dee@x.test".into()], "support@shop.test", false).unwrap();
        assert_eq!((plain.to.as_str(), plain.cc.len()), ("ana@x.test", 0));
    }

    #[test]
    fn reply_goes_to_reply_to_and_never_copies_the_answered() {
        let m = mail("From: ana@x.test\r\nReply-To: team@x.test\r\nTo: support@shop.test\r\nCc: ana@x.test\r\nSubject: s\r\n\r\nb\r\n");
        let r = reply_recipients(&m, &[], "support@shop.test", true).unwrap();
        assert_eq!(r.to, "team@x.test");
        assert_eq!(r.cc, vec!["ana@x.test"]);
    }

    #[test]
    fn inline_forward_carries_the_original() {
        let m = mail("From: Ana <ana@x.test>\r\nTo: support@shop.test\r\nSubject: Broken lamp\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\nThe lamp is broken.\r\n");
        let t = forward_inline("Please look at this.", &m);
        assert!(t.starts_with("Please look at this.\n\n---------- Forwarded message ---------\nFrom: Ana <ana@x.test>\n"), "{t}");
        assert!(t.contains("Subject: Broken lamp\n") && t.ends_with("The lamp is broken.\n"), "{t}");
        assert_eq!(forward_subject("Broken lamp"), "Fwd: Broken lamp");
        assert_eq!(forward_subject("FW: x"), "FW: x");
    }

    #[test]
    fn addresses_and_hashes_are_checked() {
        assert_eq!(checked_address(" Ops@Partner.test ").as_deref(), Some("ops@partner.test"));
        for bad in ["", "no-at", "a@b", "a b@c.test", "<a@b.test>", "a@b.test, c@d.test"] {
            assert!(checked_address(bad).is_none(), "{bad}");
        }
        assert!(is_sha256(&"a".repeat(64)) && !is_sha256("../etc/passwd") && !is_sha256(&"A".repeat(64)));
    }
}
