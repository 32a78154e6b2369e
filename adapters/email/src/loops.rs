//! Mail that must never be answered automatically, and bounces (pure). RFC 3834 asks
//! responders not to answer `Auto-Submitted` mail other than `no`; `Precedence:
//! bulk/list/junk`, `X-Loop`, `X-Autoreply` and mail from `mailer-daemon` or `postmaster`
//! are treated the same way. RFC 3464 delivery status reports are bounces: they mark our
//! outbound message failed instead of opening a conversation.

use crate::parse::ParsedMail;

/// What kind of mail arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailKind {
    /// Written by a person.
    Personal,
    /// Sent by a program (auto-reply, out-of-office, notification): routed, never answered
    /// automatically.
    Automatic(&'static str),
    /// Bulk or list mail: routed, never answered automatically.
    Bulk(&'static str),
    /// A delivery status report about a message we sent.
    Bounce,
}

impl MailKind {
    /// Whether an automatic answer (acknowledgement) may be sent.
    pub fn may_auto_reply(&self) -> bool {
        matches!(self, MailKind::Personal)
    }

    /// Stable text form.
    pub fn as_str(&self) -> &'static str {
        match self {
            MailKind::Personal => "personal",
            MailKind::Automatic(_) => "automatic",
            MailKind::Bulk(_) => "bulk",
            MailKind::Bounce => "bounce",
        }
    }
}

/// The value we put in `X-Loop` on our own mail (the mailbox address).
pub fn is_our_loop_marker(x_loop: &str, mailbox_address: &str) -> bool {
    x_loop.split(',').any(|v| v.trim().eq_ignore_ascii_case(mailbox_address))
}

/// Classifies a parsed mail received by `mailbox_address`.
pub fn classify(p: &ParsedMail, mailbox_address: &str) -> MailKind {
    let from_local = p.from.as_ref().and_then(|f| f.address.split('@').next()).unwrap_or("").to_ascii_lowercase();
    if p.report.is_some() {
        return MailKind::Bounce;
    }
    if from_local == "mailer-daemon" || from_local == "postmaster" {
        // A notification from a mail system without a parseable report: never answered.
        return MailKind::Automatic("mailer-daemon");
    }
    let s = &p.signals;
    if let Some(a) = s.auto_submitted.as_deref() {
        // RFC 3834 §5: `no` is the only value that means a person sent it.
        let v = a.split(';').next().unwrap_or("").trim();
        if !v.eq_ignore_ascii_case("no") {
            return MailKind::Automatic("auto-submitted");
        }
    }
    if s.x_autoreply {
        return MailKind::Automatic("x-autoreply");
    }
    if let Some(x) = s.x_loop.as_deref() {
        return if is_our_loop_marker(x, mailbox_address) { MailKind::Automatic("our-x-loop") } else { MailKind::Automatic("x-loop") };
    }
    if s.null_return_path {
        return MailKind::Automatic("null-return-path");
    }
    if let Some(pr) = s.precedence.as_deref() {
        let pr = pr.trim().to_ascii_lowercase();
        if pr == "bulk" || pr == "list" || pr == "junk" {
            return MailKind::Bulk("precedence");
        }
    }
    if s.list {
        return MailKind::Bulk("list-id");
    }
    MailKind::Personal
}

/// Whether one more mail from a sender who sent `recent` in the window stays within
/// `limit` (the stop for a loop nobody labelled).
pub fn within_rate(recent: i64, limit: u32) -> bool {
    recent < limit as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse, Mailbox};

    fn with(headers: &str) -> ParsedMail {
        let raw = format!("From: ana@x.test\r\nTo: support@shop.test\r\nSubject: s\r\n{headers}\r\nbody\r\n");
        parse(raw.as_bytes(), 1024).unwrap()
    }

    #[test]
    fn classification() {
        assert_eq!(classify(&with(""), "support@shop.test"), MailKind::Personal);
        assert_eq!(classify(&with("Auto-Submitted: no\r\n"), "support@shop.test"), MailKind::Personal);
        assert!(matches!(classify(&with("Auto-Submitted: auto-replied\r\n"), "s@x"), MailKind::Automatic(_)));
        assert!(matches!(classify(&with("Precedence: bulk\r\n"), "s@x"), MailKind::Bulk(_)));
        assert!(matches!(classify(&with("Precedence: junk\r\n"), "s@x"), MailKind::Bulk(_)));
        assert!(matches!(classify(&with("X-Autoreply: yes\r\n"), "s@x"), MailKind::Automatic("x-autoreply")));
        assert_eq!(classify(&with("X-Loop: support@shop.test\r\n"), "support@shop.test"), MailKind::Automatic("our-x-loop"));
        assert!(matches!(classify(&with("List-Id: <news.x.test>\r\n"), "s@x"), MailKind::Bulk(_)));
        let mut p = with("");
        p.from = Some(Mailbox { name: None, address: "MAILER-DAEMON@mx.test".into() });
        assert!(!classify(&p, "s@x").may_auto_reply());
        assert!(within_rate(19, 20) && !within_rate(20, 20));
    }

    #[test]
    fn dsn_is_a_bounce() {
        let raw = b"From: Mail Delivery System <MAILER-DAEMON@mx.test>\r\nTo: support@shop.test\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry.\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.test\r\n\r\nFinal-Recipient: rfc822; nobody@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: support@shop.test\r\nMessage-ID: <orig.1@shop.test>\r\nSubject: Re: hi\r\n\r\n--B--\r\n";
        let p = parse(raw, 1024).unwrap();
        assert_eq!(classify(&p, "support@shop.test"), MailKind::Bounce);
        let r = p.report.unwrap();
        assert!(r.is_failure());
        assert_eq!(r.original_message_id.as_deref(), Some("orig.1@shop.test"));
        assert_eq!(r.recipients, vec!["nobody@x.test".to_string()]);
        assert_eq!(r.status.as_deref(), Some("5.1.1"));
    }
}
