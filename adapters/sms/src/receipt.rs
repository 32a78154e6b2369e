//! Delivery receipts (pure): the TLV form (`receipted_message_id` + `message_state`, SMPP
//! 3.4 §5.3.2.12/§5.3.2.35) and the text form of SMPP 3.4 Appendix B
//! (`id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…`); the forward-only
//! ordering of statuses; and the keys that match an SMSC's message id whether it writes it
//! in hex in one place and in decimal in the other.

use crate::pdu::{esm, tag, ShortMessage};

/// Where a sent message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmsStatus {
    /// Written to the socket, no submit_sm_resp yet.
    Submitting,
    /// The submit_sm_resp never came: the SMSC may or may not have it. Never resent.
    Unknown,
    /// The SMSC accepted it (submit_sm_resp ok).
    Submitted,
    /// In transit / accepted by the SMSC on the handset's behalf.
    Enroute,
    /// Accepted (ACCEPTD).
    Accepted,
    /// Final: on the handset.
    Delivered,
    /// Final: validity ran out.
    Expired,
    /// Final: deleted.
    Deleted,
    /// Final: could not be delivered.
    Undeliverable,
    /// Final: rejected.
    Rejected,
    /// Final: refused by the SMSC at submit time.
    Failed,
}

impl SmsStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SmsStatus::Submitting => "submitting",
            SmsStatus::Unknown => "unknown",
            SmsStatus::Submitted => "submitted",
            SmsStatus::Enroute => "enroute",
            SmsStatus::Accepted => "accepted",
            SmsStatus::Delivered => "delivered",
            SmsStatus::Expired => "expired",
            SmsStatus::Deleted => "deleted",
            SmsStatus::Undeliverable => "undeliverable",
            SmsStatus::Rejected => "rejected",
            SmsStatus::Failed => "failed",
        }
    }

    /// Order of progress: a status may only be replaced by one of a higher rank, so a late
    /// "enroute" never overwrites "delivered". `unknown` sits beside `submitting`: a
    /// receipt for the message still proves it arrived.
    pub fn rank(self) -> i16 {
        match self {
            SmsStatus::Submitting | SmsStatus::Unknown => 0,
            SmsStatus::Submitted => 1,
            SmsStatus::Enroute | SmsStatus::Accepted => 2,
            SmsStatus::Delivered
            | SmsStatus::Expired
            | SmsStatus::Deleted
            | SmsStatus::Undeliverable
            | SmsStatus::Rejected
            | SmsStatus::Failed => 3,
        }
    }

    /// The `stat:` word of a text receipt.
    pub fn from_stat(word: &str) -> Option<SmsStatus> {
        Some(match word.to_ascii_uppercase().as_str() {
            "DELIVRD" | "DELIVERED" => SmsStatus::Delivered,
            "EXPIRED" => SmsStatus::Expired,
            "DELETED" => SmsStatus::Deleted,
            "UNDELIV" | "UNDELIVERABLE" => SmsStatus::Undeliverable,
            "ACCEPTD" | "ACCEPTED" => SmsStatus::Accepted,
            "ENROUTE" => SmsStatus::Enroute,
            "REJECTD" | "REJECTED" => SmsStatus::Rejected,
            _ => return None,
        })
    }

    /// The `message_state` TLV value (§5.2.28).
    pub fn from_message_state(v: u32) -> Option<SmsStatus> {
        Some(match v {
            1 => SmsStatus::Enroute,
            2 => SmsStatus::Delivered,
            3 => SmsStatus::Expired,
            4 => SmsStatus::Deleted,
            5 => SmsStatus::Undeliverable,
            6 => SmsStatus::Accepted,
            8 => SmsStatus::Rejected,
            _ => return None,
        })
    }
}

/// A parsed delivery receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The SMSC message id it is about.
    pub message_id: String,
    /// The new status.
    pub status: SmsStatus,
    /// The error code, if the SMSC gave one.
    pub error: Option<String>,
}

/// Whether a deliver_sm is a receipt rather than a mobile-originated message.
pub fn is_receipt(sm: &ShortMessage) -> bool {
    let kind = sm.esm_class & esm::TYPE_MASK;
    kind == esm::DELIVERY_RECEIPT || kind == esm::INTERMEDIATE_NOTIFICATION || sm.tlv(tag::RECEIPTED_MESSAGE_ID).is_some()
}

/// Reads a receipt: the TLVs first, the text format for what they leave out.
pub fn parse(sm: &ShortMessage) -> Option<Receipt> {
    let text_bytes = if sm.short_message.is_empty() {
        sm.tlv(tag::MESSAGE_PAYLOAD).map(|t| t.value.as_slice()).unwrap_or(&[])
    } else {
        &sm.short_message
    };
    let text: String = text_bytes.iter().map(|&b| b as char).collect();
    let from_text = parse_text(&text);
    let tlv_id = sm.tlv(tag::RECEIPTED_MESSAGE_ID).map(|t| t.as_cstr()).filter(|s| !s.is_empty());
    let tlv_state = sm.tlv(tag::MESSAGE_STATE).and_then(|t| t.as_uint()).and_then(SmsStatus::from_message_state);
    let message_id = tlv_id.or_else(|| from_text.as_ref().map(|r| r.message_id.clone()))?;
    let status = tlv_state.or_else(|| from_text.as_ref().map(|r| r.status))?;
    let error = sm
        .tlv(tag::NETWORK_ERROR_CODE)
        .filter(|t| t.value.len() == 3)
        .map(|t| format!("{}:{}", t.value[0], u16::from_be_bytes([t.value[1], t.value[2]])))
        .or_else(|| from_text.and_then(|r| r.error));
    Some(Receipt { message_id, status, error })
}

/// Reads the Appendix B text format. Keys are matched case-insensitively; `submit date`
/// and `done date` contain a space, so the id and the stat are read by key, not by split.
pub fn parse_text(text: &str) -> Option<Receipt> {
    let lower = text.to_ascii_lowercase();
    let value_of = |key: &str| -> Option<String> {
        let mut from = 0;
        while let Some(p) = lower[from..].find(key) {
            let at = from + p;
            // The key must start the text or follow a space.
            if at == 0 || lower.as_bytes()[at - 1] == b' ' {
                let rest = &text[at + key.len()..];
                return Some(rest.split(' ').next().unwrap_or("").to_string());
            }
            from = at + key.len();
        }
        None
    };
    let id = value_of("id:").filter(|s| !s.is_empty())?;
    let status = SmsStatus::from_stat(&value_of("stat:")?)?;
    // `err:000` means no error.
    let error = value_of("err:").filter(|e| !e.trim_start_matches('0').is_empty());
    Some(Receipt { message_id: id, status, error })
}

/// Lookup keys of an id as the SMSC gave it in submit_sm_resp, with a preference (lower is
/// better): the id itself; its value read as hex (the SMSC may write the receipt in
/// decimal); its value read as decimal (…or the other way round).
pub fn sent_id_keys(id: &str) -> Vec<(String, i16)> {
    let id = id.trim();
    let mut keys = vec![(format!("s:{}", id.to_ascii_lowercase()), 0)];
    if let Some(v) = as_hex(id) {
        keys.push((format!("n:{v}"), 1));
    }
    if let Some(v) = as_dec(id) {
        keys.push((format!("n:{v}"), 2));
    }
    keys.dedup_by(|a, b| a.0 == b.0);
    keys
}

/// Keys to look a receipt's id up by (matched against [`sent_id_keys`]).
pub fn receipt_id_keys(id: &str) -> Vec<String> {
    let id = id.trim();
    let mut keys = vec![format!("s:{}", id.to_ascii_lowercase())];
    if let Some(v) = as_dec(id) {
        keys.push(format!("n:{v}"));
    }
    if let Some(v) = as_hex(id) {
        keys.push(format!("n:{v}"));
    }
    keys.dedup();
    keys
}

fn as_hex(s: &str) -> Option<u128> {
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

fn as_dec(s: &str) -> Option<u128> {
    if s.is_empty() || s.len() > 38 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::Tlv;

    #[test]
    fn text_receipt_is_read_by_key() {
        let t = "id:0123456789 sub:001 dlvrd:001 submit date:2612031200 done date:2612031201 stat:DELIVRD err:000 text:Hello world";
        let r = parse_text(t).unwrap();
        assert_eq!(r, Receipt { message_id: "0123456789".into(), status: SmsStatus::Delivered, error: None });
        let r = parse_text("id:ab12 sub:001 dlvrd:000 submit date:x done date:y stat:UNDELIV err:034 Text:").unwrap();
        assert_eq!(r.status, SmsStatus::Undeliverable);
        assert_eq!(r.error.as_deref(), Some("034"));
        assert!(parse_text("stat:DELIVRD").is_none());
        assert!(parse_text("id:1 stat:WHATEVER").is_none());
        assert!(parse_text("").is_none());
        // "id:" inside another word does not count.
        assert!(parse_text("paid:5 stat:DELIVRD").is_none());
    }

    #[test]
    fn tlv_receipt_wins_over_text() {
        let sm = ShortMessage {
            esm_class: esm::DELIVERY_RECEIPT,
            short_message: b"id:999 stat:ENROUTE".to_vec(),
            tlvs: vec![Tlv { tag: tag::RECEIPTED_MESSAGE_ID, value: b"3E7\0".to_vec() }, Tlv::u8(tag::MESSAGE_STATE, 2)],
            ..Default::default()
        };
        assert!(is_receipt(&sm));
        let r = parse(&sm).unwrap();
        assert_eq!((r.message_id.as_str(), r.status), ("3E7", SmsStatus::Delivered));
        let plain = ShortMessage { short_message: b"hello".to_vec(), ..Default::default() };
        assert!(!is_receipt(&plain));
        assert!(parse(&plain).is_none());
    }

    #[test]
    fn statuses_only_move_forward() {
        assert!(SmsStatus::Delivered.rank() > SmsStatus::Enroute.rank());
        assert!(SmsStatus::Enroute.rank() > SmsStatus::Submitted.rank());
        assert!(SmsStatus::Submitted.rank() > SmsStatus::Submitting.rank());
    }

    #[test]
    fn hex_and_decimal_ids_meet() {
        // The SMSC answered submit_sm with hex "3e7" and writes receipts in decimal "999".
        let sent = sent_id_keys("3E7");
        let hits: Vec<_> = receipt_id_keys("999").into_iter().filter(|k| sent.iter().any(|(s, _)| s == k)).collect();
        assert_eq!(hits, vec!["n:999".to_string()]);
        // …and the other way round.
        let sent = sent_id_keys("999");
        assert!(receipt_id_keys("3e7").iter().any(|k| sent.iter().any(|(s, _)| s == k)));
        // Leading zeros and case do not matter for numeric ids.
        let sent = sent_id_keys("00FF");
        assert!(receipt_id_keys("255").iter().any(|k| sent.iter().any(|(s, _)| s == k)));
        // A non-numeric id matches only itself.
        assert_eq!(sent_id_keys("msg-1"), vec![("s:msg-1".to_string(), 0)]);
    }
}
