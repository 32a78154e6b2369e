//! Outgoing mail (pure): our Message-ID, `In-Reply-To` and `References` (RFC 5322
//! §3.6.4), the reply token in From and Reply-To, the subject tag, the mailbox's From name
//! and signature, text and HTML parts, attachments, and `Auto-Submitted` plus `X-Loop` on
//! automatic mail (RFC 3834 §5) so other responders leave it alone.

use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Body, Mailbox, MultiPart, SinglePart};
use lettre::Message;

/// A file to attach.
#[derive(Debug, Clone)]
pub struct OutgoingAttachment {
    /// File name.
    pub filename: String,
    /// `type/subtype`.
    pub content_type: String,
    /// Bytes.
    pub data: Vec<u8>,
}

/// Everything an outgoing mail is made of.
#[derive(Debug, Clone, Default)]
pub struct OutgoingMail {
    /// The mailbox address (`support@example.com`).
    pub mailbox_address: String,
    /// Display name of the From.
    pub display_name: Option<String>,
    /// Conversation token (goes into From/Reply-To and the subject tag).
    pub token: Option<String>,
    /// Recipients.
    pub to: Vec<String>,
    /// Copy recipients.
    pub cc: Vec<String>,
    /// Subject (the tag is added).
    pub subject: String,
    /// Text body.
    pub text: String,
    /// HTML body, if the agent wrote one.
    pub html: Option<String>,
    /// Signature appended after `-- `.
    pub signature: Option<String>,
    /// The Message-ID this answers (without brackets).
    pub in_reply_to: Option<String>,
    /// The thread's References (without brackets), oldest first.
    pub references: Vec<String>,
    /// Our Message-ID for it (without brackets).
    pub message_id: String,
    /// An automatic message (acknowledgement): `Auto-Submitted: auto-replied`.
    pub automatic: bool,
    /// Files.
    pub attachments: Vec<OutgoingAttachment>,
}

/// Why a mail could not be built (a permanent failure: retrying cannot help).
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// An address does not parse.
    #[error("invalid address `{0}`")]
    Address(String),
    /// No recipient.
    #[error("no recipient")]
    NoRecipient,
    /// lettre refused the message.
    #[error("cannot build the message: {0}")]
    Build(String),
}

/// A new Message-ID (without brackets) in the mailbox's domain.
pub fn new_message_id(mailbox_address: &str) -> String {
    let domain = mailbox_address.rsplit_once('@').map(|(_, d)| d).unwrap_or("switchboard.invalid");
    format!("{}.sb@{domain}", uuid::Uuid::new_v4().simple())
}

fn bracket(id: &str) -> String {
    format!("<{}>", id.trim().trim_start_matches('<').trim_end_matches('>'))
}

/// The From/Reply-To address: the token address when there is a conversation.
pub fn from_address(m: &OutgoingMail) -> String {
    match &m.token {
        Some(t) => crate::threading::token_address(&m.mailbox_address, t),
        None => m.mailbox_address.clone(),
    }
}

/// The text body with the signature.
pub fn text_with_signature(text: &str, signature: Option<&str>) -> String {
    match signature.map(str::trim).filter(|s| !s.is_empty()) {
        Some(sig) => format!("{}\n\n-- \n{sig}\n", text.trim_end()),
        None => text.to_string(),
    }
}

/// Builds the message.
pub fn build(m: &OutgoingMail) -> Result<Message, ComposeError> {
    let from_addr = from_address(m);
    let from = Mailbox::new(
        m.display_name.clone().filter(|n| !n.trim().is_empty()),
        from_addr.parse().map_err(|_| ComposeError::Address(from_addr.clone()))?,
    );
    let mut b = Message::builder().from(from.clone()).reply_to(from).message_id(Some(bracket(&m.message_id)));
    if m.to.is_empty() {
        return Err(ComposeError::NoRecipient);
    }
    for to in &m.to {
        b = b.to(to.parse().map_err(|_| ComposeError::Address(to.clone()))?);
    }
    for cc in &m.cc {
        b = b.cc(cc.parse().map_err(|_| ComposeError::Address(cc.clone()))?);
    }
    let subject = match &m.token {
        Some(t) => crate::threading::tagged_subject(&m.subject, t),
        None => m.subject.clone(),
    };
    b = b.subject(subject);
    if let Some(irt) = &m.in_reply_to {
        b = b.in_reply_to(bracket(irt));
    }
    if !m.references.is_empty() {
        // RFC 5322 §3.6.4: the parent's References followed by the parent's Message-ID.
        b = b.references(m.references.iter().map(|r| bracket(r)).collect::<Vec<_>>().join(" "));
    }
    if m.automatic {
        b = b
            .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("Auto-Submitted"), "auto-replied".into()))
            .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("X-Auto-Response-Suppress"), "All".into()))
            .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("Precedence"), "auto_reply".into()));
    }
    b = b.raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("X-Loop"), m.mailbox_address.clone()));

    let text = text_with_signature(&m.text, m.signature.as_deref());
    let body = match &m.html {
        Some(html) => {
            let html = match m.signature.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                Some(sig) => format!("{html}<br><br>-- <br>{}", escape_html(sig).replace('\n', "<br>")),
                None => html.clone(),
            };
            MultiPart::alternative_plain_html(text, html)
        }
        None => MultiPart::mixed().singlepart(SinglePart::plain(text)),
    };
    let msg = if m.attachments.is_empty() {
        match &m.html {
            Some(_) => b.multipart(body),
            None => b.singlepart(SinglePart::plain(text_with_signature(&m.text, m.signature.as_deref()))),
        }
    } else {
        let mut mixed = MultiPart::mixed().multipart(body);
        for a in &m.attachments {
            let ct = ContentType::parse(&a.content_type)
                .unwrap_or(ContentType::parse("application/octet-stream").map_err(|e| ComposeError::Build(e.to_string()))?);
            let part = if a.content_type.eq_ignore_ascii_case("message/rfc822") {
                // RFC 2046 §5.2.1: a message/rfc822 part is 7bit, 8bit or binary, never
                // base64; a forwarded original that cannot go as 8bit falls back anyway.
                match Body::new_with_encoding(a.data.clone(), ContentTransferEncoding::EightBit) {
                    Ok(body) => Attachment::new(a.filename.clone()).body(body, ct),
                    Err(data) => Attachment::new(a.filename.clone()).body(data, ct),
                }
            } else {
                Attachment::new(a.filename.clone()).body(a.data.clone(), ct)
            };
            mixed = mixed.singlepart(part);
        }
        b.multipart(mixed)
    };
    msg.map_err(|e| ComposeError::Build(e.to_string()))
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;

    fn reply() -> OutgoingMail {
        OutgoingMail {
            mailbox_address: "support@shop.test".into(),
            display_name: Some("Shop Support".into()),
            token: Some("abcdefghjk".into()),
            to: vec!["ana@x.test".into()],
            cc: vec!["bo@x.test".into()],
            subject: "Re: Order".into(),
            text: "Here you go.".into(),
            signature: Some("Shop Team".into()),
            in_reply_to: Some("c1@x.test".into()),
            references: vec!["c1@x.test".into()],
            message_id: new_message_id("support@shop.test"),
            ..Default::default()
        }
    }

    #[test]
    fn reply_has_threading_headers_and_token() {
        let m = reply();
        let raw = build(&m).unwrap().formatted();
        let p = parse(&raw, 1024).unwrap();
        assert_eq!(p.message_id.as_deref(), Some(m.message_id.as_str()));
        assert_eq!(p.in_reply_to, vec!["c1@x.test".to_string()]);
        assert_eq!(p.references, vec!["c1@x.test".to_string()]);
        assert_eq!(p.from.as_ref().unwrap().address, "support+abcdefghjk@shop.test");
        assert_eq!(p.subject, "Re: Order [#abcdefghjk]");
        assert_eq!(p.cc[0].address, "bo@x.test");
        assert!(p.text.contains("Here you go.") && p.text.contains("-- \nShop Team"), "{}", p.text);
        assert!(p.signals.auto_submitted.is_none());
        assert_eq!(crate::loops::classify(&p, "support@shop.test"), crate::loops::MailKind::Automatic("our-x-loop"));
    }

    #[test]
    fn automatic_html_and_attachments() {
        let mut m = reply();
        m.automatic = true;
        m.html = Some("<p>Here <b>you</b> go.</p>".into());
        m.attachments.push(OutgoingAttachment {
            filename: "a.pdf".into(),
            content_type: "application/pdf".into(),
            data: b"%PDF-1.4".to_vec(),
        });
        let raw = build(&m).unwrap().formatted();
        let p = parse(&raw, 1024).unwrap();
        assert_eq!(p.signals.auto_submitted.as_deref(), Some("auto-replied"));
        assert!(p.html.unwrap().contains("<b>you</b>"));
        assert_eq!(p.attachments.len(), 1);
        assert_eq!(p.attachments[0].filename, "a.pdf");
        assert_eq!(p.attachments[0].data.as_deref(), Some(&b"%PDF-1.4"[..]));
    }

    #[test]
    fn bad_addresses_are_permanent() {
        let mut m = reply();
        m.to = vec!["not an address".into()];
        assert!(matches!(build(&m), Err(ComposeError::Address(_))));
        m.to.clear();
        assert!(matches!(build(&m), Err(ComposeError::NoRecipient)));
    }
}
