//! Raw RFC 5322 / MIME bytes → a normalized [`ParsedMail`] (pure, no I/O): addresses,
//! subject, threading headers, the text to show (text/plain preferred, else the HTML made
//! text), the sanitized HTML, attachments and inline images, forwarded messages, the
//! quoted history and signature split off, the loop signals and a delivery status report.
//!
//! Decoding is `mail-parser`'s (every charset through `encoding_rs`, quoted-printable,
//! base64, RFC 2047 words); it never fails on bytes — the worst input yields an empty
//! message. [`parse`] returns `None` only when nothing at all could be read, and the
//! adapter then keeps the raw message and says so.

use mail_parser::{Address, HeaderValue, Message, MessageParser, MimeHeaders, PartType};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// One mailbox of an address header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mailbox {
    /// Display name, if any.
    pub name: Option<String>,
    /// `local@domain`, lowercased domain.
    pub address: String,
}

/// An attachment or inline part.
#[derive(Debug, Clone, Serialize)]
pub struct ParsedAttachment {
    /// File name (from Content-Disposition or Content-Type `name`), or a generated one.
    pub filename: String,
    /// `type/subtype`.
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: usize,
    /// SHA-256 of the decoded bytes (hex).
    pub sha256: String,
    /// `Content-ID` without angle brackets (inline images referenced as `cid:`).
    pub content_id: Option<String>,
    /// Shown inline rather than offered as a download.
    pub inline: bool,
    /// Decoded bytes; `None` when larger than the limit (listed, not kept).
    #[serde(skip)]
    pub data: Option<Vec<u8>>,
}

/// A delivery status notification (RFC 3464) about a message we sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    /// Message-ID of the original message, from the returned headers.
    pub original_message_id: Option<String>,
    /// `Action:` of the first recipient (`failed`, `delayed`, `delivered`, ...).
    pub action: Option<String>,
    /// `Status:` (`5.1.1`).
    pub status: Option<String>,
    /// `Final-Recipient:` addresses.
    pub recipients: Vec<String>,
    /// `Diagnostic-Code:`, if any.
    pub diagnostic: Option<String>,
}

impl DeliveryReport {
    /// Whether the report says delivery failed for good (`Action: failed` or a 5.x.x status).
    pub fn is_failure(&self) -> bool {
        self.action.as_deref().is_some_and(|a| a.eq_ignore_ascii_case("failed"))
            || self.status.as_deref().is_some_and(|s| s.starts_with('5'))
    }
}

/// Header values the loop rules look at (see [`crate::loops`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoopSignals {
    /// `Auto-Submitted` (RFC 3834).
    pub auto_submitted: Option<String>,
    /// `Precedence`.
    pub precedence: Option<String>,
    /// `X-Loop`.
    pub x_loop: Option<String>,
    /// `X-Autoreply` / `X-Autorespond` / `X-Auto-Response-Suppress` present.
    pub x_autoreply: bool,
    /// `List-Id` or `List-Unsubscribe` present.
    pub list: bool,
    /// `Return-Path: <>` (the null sender of notifications).
    pub null_return_path: bool,
}

/// A message made ready for the hub.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ParsedMail {
    /// Message-ID without angle brackets.
    pub message_id: Option<String>,
    /// From.
    pub from: Option<Mailbox>,
    /// Reply-To.
    pub reply_to: Vec<Mailbox>,
    /// To.
    pub to: Vec<Mailbox>,
    /// Cc.
    pub cc: Vec<Mailbox>,
    /// Delivered-To / X-Original-To (where the reply token survives a Bcc).
    pub delivered_to: Vec<String>,
    /// Subject (decoded), empty when absent.
    pub subject: String,
    /// `In-Reply-To` ids.
    pub in_reply_to: Vec<String>,
    /// `References` ids, oldest first.
    pub references: Vec<String>,
    /// Date header as RFC 3339, if parseable.
    pub date: Option<String>,
    /// The whole text (text/plain, or the HTML made text).
    pub text: String,
    /// The new part of the text: quoted history and signature removed.
    pub visible_text: String,
    /// Whether `visible_text` left something out.
    pub collapsed: bool,
    /// The HTML body, sanitized (no scripts, no event handlers, no forms).
    pub html: Option<String>,
    /// Attachments and inline parts.
    pub attachments: Vec<ParsedAttachment>,
    /// Forwarded messages (message/rfc822 parts): "From — Subject" each.
    pub forwarded: Vec<String>,
    /// Loop and bulk indicators.
    pub signals: LoopSignals,
    /// The delivery status report, when this is one.
    pub report: Option<DeliveryReport>,
    /// A calendar invitation (text/calendar part) is included.
    pub calendar: bool,
}

/// The channel's own id for a raw message: its Message-ID, or a hash of the bytes when it
/// has none (so the same bytes delivered twice are still one message).
pub fn dedupe_id(message_id: Option<&str>, raw: &[u8]) -> String {
    match message_id.map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => format!("mid:{}", m.trim_start_matches('<').trim_end_matches('>')),
        None => format!("sha256:{}", sha256_hex(raw)),
    }
}

/// SHA-256 of bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The Message-ID alone, found cheaply (for dedupe before a full parse).
pub fn quick_message_id(raw: &[u8]) -> Option<String> {
    let m = MessageParser::new().parse_headers(raw)?;
    m.message_id().map(str::to_string)
}

fn mailboxes(a: Option<&Address<'_>>) -> Vec<Mailbox> {
    let Some(a) = a else { return Vec::new() };
    a.iter()
        .filter_map(|m| {
            let addr = m.address.as_deref()?.trim();
            let (local, domain) = addr.rsplit_once('@')?;
            if local.is_empty() || domain.is_empty() {
                return None;
            }
            Some(Mailbox {
                name: m.name.as_deref().map(str::trim).filter(|n| !n.is_empty()).map(str::to_string),
                address: format!("{local}@{}", domain.to_ascii_lowercase()),
            })
        })
        .collect()
}

fn id_list(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
        _ => Vec::new(),
    }
}

fn header_text(m: &Message<'_>, name: &str) -> Option<String> {
    m.header_raw(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Parses raw bytes. `attachment_max` bounds the bytes kept per attachment.
pub fn parse(raw: &[u8], attachment_max: usize) -> Option<ParsedMail> {
    let m = MessageParser::default().parse(raw)?;
    let mut p = ParsedMail {
        message_id: m.message_id().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
        from: mailboxes(m.from()).into_iter().next(),
        reply_to: mailboxes(m.reply_to()),
        to: mailboxes(m.to()),
        cc: mailboxes(m.cc()),
        subject: m.subject().map(|s| s.trim().to_string()).unwrap_or_default(),
        in_reply_to: id_list(m.in_reply_to()),
        references: id_list(m.references()),
        date: m.date().map(|d| d.to_rfc3339()),
        ..Default::default()
    };
    for h in ["Delivered-To", "X-Original-To", "Envelope-To"] {
        for v in m.header_values(h) {
            if let Some(t) = v.as_text() {
                p.delivered_to.push(t.trim().trim_start_matches('<').trim_end_matches('>').to_string());
            }
        }
    }
    p.signals = LoopSignals {
        auto_submitted: header_text(&m, "Auto-Submitted"),
        precedence: header_text(&m, "Precedence"),
        x_loop: header_text(&m, "X-Loop"),
        x_autoreply: ["X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress"].iter().any(|h| m.header_raw(*h).is_some()),
        list: m.header_raw("List-Id").is_some() || m.header_raw("List-Unsubscribe").is_some(),
        null_return_path: m.header_raw("Return-Path").is_some_and(|v| v.trim() == "<>"),
    };

    // Bodies: text/plain preferred; HTML only when there is no text part.
    let text_parts: Vec<String> = (0..m.text_body_count()).filter_map(|i| m.body_text(i).map(|t| t.into_owned())).collect();
    let html =
        m.html_bodies().find(|part| matches!(part.body, PartType::Html(_))).and_then(|part| part.text_contents()).map(str::to_string);
    p.text = if !text_parts.is_empty() && m.text_bodies().any(|part| !matches!(part.body, PartType::Html(_))) {
        text_parts.join("\n\n")
    } else if let Some(h) = &html {
        html_to_text(h)
    } else {
        String::new()
    };
    if let Some(h) = html {
        p.html = Some(sanitize_html(&h));
    }

    // Attachments, inline images, forwarded messages, reports.
    for (i, part) in m.attachments().enumerate() {
        let ct = part
            .content_type()
            .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("octet-stream")).to_ascii_lowercase())
            .unwrap_or_else(|| "application/octet-stream".into());
        if ct == "message/delivery-status" || ct == "message/global-delivery-status" {
            p.report.get_or_insert_with(Default::default);
            read_delivery_status(part.contents(), p.report.as_mut());
            continue;
        }
        if ct == "text/calendar" {
            p.calendar = true;
        }
        if let Some(inner) = part.message() {
            let from = mailboxes(inner.from()).into_iter().next().map(|f| f.address).unwrap_or_default();
            let subject = inner.subject().unwrap_or("").to_string();
            p.forwarded.push(format!("{from} — {subject}"));
            if ct == "message/rfc822" || ct == "text/rfc822-headers" || ct.starts_with("message/") {
                if let Some(r) = p.report.as_mut() {
                    r.original_message_id = r.original_message_id.take().or_else(|| inner.message_id().map(str::to_string));
                }
            }
        } else if ct == "text/rfc822-headers" {
            if let Some(r) = p.report.as_mut() {
                if r.original_message_id.is_none() {
                    r.original_message_id =
                        MessageParser::new().parse_headers(part.contents()).and_then(|h| h.message_id().map(str::to_string));
                }
            }
        }
        let contents = part.contents();
        let filename = part
            .attachment_name()
            .map(|n| n.trim().replace(['/', '\\', '\0'], "_"))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("part-{}.{}", i + 1, extension(&ct)));
        p.attachments.push(ParsedAttachment {
            filename,
            content_type: ct,
            size: contents.len(),
            sha256: sha256_hex(contents),
            content_id: part.content_id().map(|c| c.trim().trim_start_matches('<').trim_end_matches('>').to_string()),
            inline: part.content_disposition().is_some_and(|d| d.is_inline()) || part.content_id().is_some(),
            data: (contents.len() <= attachment_max).then(|| contents.to_vec()),
        });
    }
    // A report whose status part was not split out as an attachment (some MTAs): the
    // root says multipart/report; report-type=delivery-status.
    let is_report = m.content_type().is_some_and(|c| {
        c.ctype().eq_ignore_ascii_case("multipart")
            && c.subtype().is_some_and(|s| s.eq_ignore_ascii_case("report"))
            && c.attribute("report-type").is_some_and(|t| t.eq_ignore_ascii_case("delivery-status"))
    });
    if is_report && p.report.is_none() {
        let mut r = DeliveryReport::default();
        read_delivery_status(raw, Some(&mut r));
        p.report = Some(r);
    }
    if let Some(r) = p.report.as_mut() {
        if r.original_message_id.is_none() {
            r.original_message_id = p.in_reply_to.first().cloned().or_else(|| find_original_message_id(raw));
        }
    }

    if p.text.contains('\r') {
        p.text = p.text.replace("\r\n", "\n");
    }
    let (visible, collapsed) = split_quoted(&p.text);
    p.visible_text = visible;
    p.collapsed = collapsed;
    Some(p)
}

fn extension(ct: &str) -> &'static str {
    match ct {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        "text/html" => "html",
        "text/calendar" => "ics",
        "message/rfc822" => "eml",
        _ => "bin",
    }
}

/// Reads the per-recipient fields of an RFC 3464 `message/delivery-status` body.
fn read_delivery_status(body: &[u8], report: Option<&mut DeliveryReport>) {
    let Some(r) = report else { return };
    let text = String::from_utf8_lossy(body);
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "action" if r.action.is_none() => r.action = Some(v.to_ascii_lowercase()),
            "status" if r.status.is_none() => r.status = Some(v.split_whitespace().next().unwrap_or("").to_string()),
            "final-recipient" => {
                let addr = v.split_once(';').map(|(_, a)| a).unwrap_or(v).trim();
                if !addr.is_empty() {
                    r.recipients.push(addr.to_string());
                }
            }
            "diagnostic-code" if r.diagnostic.is_none() => r.diagnostic = Some(v.chars().take(500).collect()),
            _ => {}
        }
    }
}

/// The last `Message-ID:` header inside the body (the returned original's), for reports
/// whose parts did not parse.
fn find_original_message_id(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let body_start = text.find("\r\n\r\n").or_else(|| text.find("\n\n"))?;
    text[body_start..]
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("message-id").then(|| v.trim().trim_start_matches('<').trim_end_matches('>').to_string())
        })
        .rfind(|v| !v.is_empty())
}

/// Sanitized HTML for display: ammonia's allow-list (no scripts, styles, event handlers,
/// forms or iframes), links get `rel="noopener noreferrer"`, and `cid:` image sources are
/// kept so inline images can be resolved.
pub fn sanitize_html(html: &str) -> String {
    let mut b = ammonia::Builder::default();
    b.add_url_schemes(["cid"]);
    b.clean(html).to_string()
}

/// HTML → readable text: block ends become line breaks, tags go, entities are decoded,
/// script and style contents are dropped.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let lower = html.to_ascii_lowercase();
    let bytes = html.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let end = match html[i..].find('>') {
                Some(e) => i + e + 1,
                None => break,
            };
            let tag = &lower[i + 1..end - 1];
            let name: String = tag.trim_start_matches('/').chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            if !tag.starts_with('/') && (name == "script" || name == "style" || name == "head" || name == "title") {
                let close = format!("</{name}");
                i = lower[end..].find(&close).map(|c| end + c).unwrap_or(bytes.len());
                continue;
            }
            match name.as_str() {
                "br" | "p" | "div" | "li" | "tr" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "blockquote" | "table" | "hr"
                    if !out.ends_with('\n') =>
                {
                    out.push('\n');
                }
                _ => {}
            }
            i = end;
        } else {
            let next = html[i..].find('<').map(|n| i + n).unwrap_or(bytes.len());
            out.push_str(&decode_entities(&html[i..next]));
            i = next;
        }
    }
    // Collapse runs of blank lines and trailing spaces.
    let mut text = String::with_capacity(out.len());
    let mut blank = 0;
    for line in out.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        text.push_str(&line);
        text.push('\n');
    }
    text.trim().to_string()
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let ent = &rest[1..semi];
        let c = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" | "#39" => Some('\''),
            "nbsp" => Some(' '),
            _ if ent.starts_with("#x") || ent.starts_with("#X") => u32::from_str_radix(&ent[2..], 16).ok().and_then(char::from_u32),
            _ if ent.starts_with('#') => ent[1..].parse::<u32>().ok().and_then(char::from_u32),
            _ => None,
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Splits the new text from quoted history and signature. Returns the visible part and
/// whether anything was hidden; the full text is always kept beside it.
pub fn split_quoted(text: &str) -> (String, bool) {
    let lines: Vec<&str> = text.lines().collect();
    let mut cut = lines.len();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_end();
        let tl = t.trim().to_lowercase();
        // RFC 3676 §4.3 signature separator; "--" alone is the common mangled form.
        let signature = t == "--";
        let attribution = (tl.starts_with("on ") && tl.ends_with("wrote:"))
            || (tl.starts_with("am ") && tl.ends_with("schrieb:"))
            || (tl.starts_with("le ") && tl.ends_with("a écrit :"))
            || (tl.starts_with("le ") && tl.ends_with("a écrit:"))
            || (tl.starts_with("el ") && tl.ends_with("escribió:"));
        let outlook = tl.starts_with("-----original message-----")
            || tl.starts_with("----- original message -----")
            || (tl.starts_with("________________________________")
                && lines.get(i + 1).is_some_and(|n| n.trim().to_lowercase().starts_with("from:")));
        let mobile = tl == "sent from my iphone" || tl == "sent from my android" || tl.starts_with("sent from outlook for");
        let quoted_tail = t.starts_with('>') && lines[i..].iter().all(|l| l.starts_with('>') || l.trim().is_empty());
        if signature || attribution || outlook || mobile || quoted_tail {
            cut = i;
            break;
        }
    }
    let visible = lines[..cut].join("\n").trim_end().to_string();
    if visible.trim().is_empty() {
        // Nothing new above the history (a pure forward, or top-quoting gone wrong): show it all.
        return (text.trim_end().to_string(), false);
    }
    let collapsed = lines[cut..].iter().any(|l| !l.trim().is_empty());
    (visible, collapsed)
}

/// Normalized subject for thread matching: reply/forward prefixes and tags removed,
/// whitespace collapsed, lowercase.
pub fn base_subject(subject: &str) -> String {
    let mut s = subject.trim();
    loop {
        let lower = s.to_lowercase();
        let mut stripped = false;
        for p in ["re:", "fw:", "fwd:", "aw:", "wg:", "sv:", "vs:", "antw:", "r:", "tr:"] {
            if lower.starts_with(p) {
                s = s[p.len()..].trim_start();
                stripped = true;
                break;
            }
        }
        if !stripped && s.starts_with('[') {
            if let Some(end) = s.find(']') {
                s = s[end + 1..].trim_start();
                stripped = true;
            }
        }
        if !stripped {
            break;
        }
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_mail_with_quote_and_signature() {
        let raw = b"From: \"Ana P\" <ana@Example.COM>\r\nTo: support@shop.test\r\nCc: Bo <bo@x.test>\r\nSubject: Re: [#ab12] Order\r\nMessage-ID: <m1@x.test>\r\nIn-Reply-To: <ours@shop.test>\r\nReferences: <first@x.test> <ours@shop.test>\r\n\r\nThanks, it works.\r\n\r\nOn Mon, 1 Dec 2026, Support wrote:\r\n> Try again\r\n> please\r\n";
        let p = parse(raw, 1024).unwrap();
        assert_eq!(p.from.as_ref().unwrap().address, "ana@example.com");
        assert_eq!(p.from.as_ref().unwrap().name.as_deref(), Some("Ana P"));
        assert_eq!(p.cc[0].address, "bo@x.test");
        assert_eq!(p.message_id.as_deref(), Some("m1@x.test"));
        assert_eq!(p.in_reply_to, vec!["ours@shop.test".to_string()]);
        assert_eq!(p.references, vec!["first@x.test".to_string(), "ours@shop.test".to_string()]);
        assert_eq!(p.visible_text, "Thanks, it works.");
        assert!(p.collapsed);
        assert!(p.text.contains("Try again"));
    }

    #[test]
    fn html_only_is_sanitized_and_made_text() {
        let raw = b"From: a@b.test\r\nSubject: hi\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><head><style>p{}</style><script>alert(1)</script></head><body><p onclick=\"x()\">Hello &amp; welcome</p><img src=\"cid:logo\"><a href=\"javascript:evil()\">x</a></body></html>";
        let p = parse(raw, 1024).unwrap();
        assert_eq!(p.text, "Hello & welcome\nx");
        let h = p.html.unwrap();
        assert!(!h.contains("script") && !h.contains("onclick") && !h.contains("javascript"), "{h}");
        assert!(h.contains("cid:logo"), "{h}");
    }

    #[test]
    fn legacy_charsets_decode() {
        let mut raw = b"From: a@b.test\r\nSubject: =?koi8-r?B?8NLJ18XU?=\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".to_vec();
        raw.extend_from_slice(b"Gr\xfc\xdfe");
        let p = parse(&raw, 1024).unwrap();
        assert_eq!(p.subject, "Привет");
        assert_eq!(p.text, "Grüße");
        let sjis = b"From: a@b.test\r\nContent-Type: text/plain; charset=Shift_JIS\r\n\r\n\x82\xb1\x82\xf1\x82\xc9\x82\xbf\x82\xcd";
        assert_eq!(parse(sjis, 10).unwrap().text, "こんにちは");
    }

    #[test]
    fn dedupe_id_uses_message_id_or_hash() {
        assert_eq!(dedupe_id(Some("<a@b>"), b"x"), "mid:a@b");
        assert!(dedupe_id(None, b"x").starts_with("sha256:"));
        assert_eq!(dedupe_id(Some("  "), b"x"), dedupe_id(None, b"x"));
    }

    #[test]
    fn base_subject_strips_prefixes_and_tags() {
        assert_eq!(base_subject("Re: FW: [#k3j9] Order  42"), "order 42");
        assert_eq!(base_subject("AW: Re:Hello"), "hello");
    }

    #[test]
    fn signature_and_outlook_history() {
        let (v, c) = split_quoted("Hi\nsee below\n-- \nAna\n+49 1");
        assert_eq!(v, "Hi\nsee below");
        assert!(c);
        let (v, _) = split_quoted("New text\n\n________________________________\nFrom: Support\nSent: Monday\n\nold");
        assert_eq!(v, "New text");
        let (v, c) = split_quoted("> only quoted\n> text");
        assert_eq!(v, "> only quoted\n> text");
        assert!(!c);
    }
}
