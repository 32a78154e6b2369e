//! The bad-input corpus through the pure parser, and a bounded fuzz loop over it: random
//! byte mutations of the corpus files must never panic, and every message yields a
//! classification and a dedupe id (the import's first steps).

use std::path::PathBuf;
use switchboard_email::{loops, parse, threading};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "eml")).collect();
    files.sort();
    files.into_iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())).collect()
}

/// Everything the import derives from a message, exercised together.
fn pipeline(raw: &[u8]) {
    let mid = parse::quick_message_id(raw);
    let _ = parse::dedupe_id(mid.as_deref(), raw);
    if let Some(p) = parse::parse(raw, 1 << 20) {
        let _ = loops::classify(&p, "support@shop.test");
        let _ = threading::ThreadCandidates::of(&p, "support@shop.test");
        let _ = parse::base_subject(&p.subject);
        assert!(p.visible_text.len() <= p.text.len() + 1);
    }
}

#[test]
fn corpus_has_every_shape_and_parses() {
    let files = corpus();
    assert!(files.len() >= 50, "corpus has {} messages", files.len());
    let mut charsets = 0;
    for (name, raw) in &files {
        pipeline(raw);
        let p = parse::parse(raw, 1 << 20);
        if name.contains("charset-") && !name.contains("x-klingon") {
            let p = p.unwrap_or_else(|| panic!("{name} did not parse"));
            // Every legacy charset decodes to real text, not replacement characters.
            assert!(!p.text.trim().is_empty() && p.text.matches('\u{fffd}').count() <= 2, "{name}: {:?}", p.text);
            assert!(!p.subject.is_empty(), "{name}: no subject");
            charsets += 1;
        }
    }
    assert!(charsets >= 21 * 3);
    let get = |n: &str| parse::parse(&files.iter().find(|(f, _)| f.contains(n)).unwrap().1, 1 << 20).unwrap();
    assert_eq!(get("charset-koi8-r-base64").text.trim(), "Привет, где мой заказ?");
    assert_eq!(get("charset-big5-quoted").text.trim(), "您好，請問我的訂單在哪裡？");
    assert_eq!(get("charset-iso-2022-jp-8bit").text.trim(), "こんにちは、注文はどこですか？");
    assert_eq!(get("charset-gb2312-base64").text.trim(), "你好，我的订单在哪里？");
    assert_eq!(get("alternative").text.trim(), "Plain version");
    assert!(get("html-only").html.unwrap().contains("Hello"));
    let inline = get("inline-cid");
    assert_eq!(inline.attachments[0].content_id.as_deref(), Some("logo123"));
    assert!(inline.html.unwrap().contains("cid:logo123"));
    assert_eq!(get("attachment-pdf").attachments[0].filename, "invoice 42.pdf");
    assert_eq!(get("rfc2231").attachments[0].filename, "Rechnung März.txt");
    assert_eq!(get("forwarded").forwarded, vec!["other@x.example — Original problem".to_string()]);
    assert_eq!(loops::classify(&get("dsn-bounce"), "support@shop.test"), loops::MailKind::Bounce);
    assert!(!loops::classify(&get("auto-reply"), "support@shop.test").may_auto_reply());
    assert!(!loops::classify(&get("precedence-bulk"), "support@shop.test").may_auto_reply());
    assert!(get("calendar-invite").calendar);
    assert_eq!(get("reply-with-quote").visible_text, "Thanks!");
    assert_eq!(get("signature").visible_text, "Please call me.");
    assert!(get("8bit-headers").subject.contains("über"));
    assert_eq!(get("missing-message-id").message_id, None);
}

#[test]
fn huge_attachment_and_many_recipients() {
    // 20 MB attachment: listed with its checksum, not kept above the limit.
    let blob: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let mut raw = b"From: big@mail.example\r\nTo: support@shop.test\r\nSubject: big\r\nMessage-ID: <big@x>\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nbig file\r\n--b\r\nContent-Type: application/octet-stream; name=big.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    use base64::Engine;
    let enc = base64::engine::general_purpose::STANDARD.encode(&blob);
    for line in enc.as_bytes().chunks(76) {
        raw.extend_from_slice(line);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"--b--\r\n");
    let p = parse::parse(&raw, 1024 * 1024).unwrap();
    assert_eq!(p.attachments.len(), 1);
    assert_eq!(p.attachments[0].size, blob.len());
    assert_eq!(p.attachments[0].sha256, parse::sha256_hex(&blob));
    assert!(p.attachments[0].data.is_none());
    // 1,000 recipients.
    let to: Vec<String> = (0..1000).map(|i| format!("r{i}@mail.example")).collect();
    let raw = format!("From: a@mail.example\r\nTo: {}\r\nSubject: many\r\n\r\nhi\r\n", to.join(", "));
    let p = parse::parse(raw.as_bytes(), 1024).unwrap();
    assert_eq!(p.to.len(), 1000);
}

#[test]
fn bounded_fuzz_over_the_parser() {
    let files: Vec<Vec<u8>> = corpus().into_iter().map(|(_, r)| r).filter(|r| r.len() < 16 * 1024).collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let specials: &[&[u8]] = &[
        b"\r\n",
        b"--",
        b"=?",
        b"?=",
        b"boundary=",
        b"\r\n\r\n",
        b"Content-Type: multipart/mixed; boundary=x\r\n",
        b"=\r\n",
        b"\xff\xfe",
        b"<",
        b">",
        b"\"",
        b";",
        b"base64",
        b"message/rfc822",
    ];
    for _ in 0..20_000 {
        let mut m = files[(next() % files.len() as u64) as usize].clone();
        for _ in 0..(1 + next() % 8) {
            let len = m.len().max(1);
            let pos = (next() % len as u64) as usize;
            match next() % 5 {
                0 if !m.is_empty() => {
                    let at = pos.min(m.len() - 1);
                    m[at] = next() as u8;
                }
                1 => {
                    let at = pos.min(m.len());
                    m.insert(at, next() as u8);
                }
                2 if !m.is_empty() => {
                    let end = (pos + (next() % 64) as usize).min(m.len());
                    m.drain(pos.min(end)..end);
                }
                3 => {
                    let s = specials[(next() % specials.len() as u64) as usize];
                    let at = pos.min(m.len());
                    m.splice(at..at, s.iter().copied());
                }
                _ => m.truncate(pos),
            }
        }
        pipeline(&m);
    }
}
