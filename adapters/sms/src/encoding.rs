//! Message text encoding (pure): GSM 03.38 7-bit with its extension table (3GPP TS 23.038
//! §6.2.1; an extension character is ESC + code and so counts double), UCS-2 for anything
//! else; splitting into concatenated parts (153 septets or 67 UCS-2 units with an 8-bit
//! reference UDH, 3GPP TS 23.040 §9.2.3.24.1) that never cut an escape sequence or a
//! surrogate pair; decoding of inbound short messages by `data_coding` and their UDH.

// The alphabet tables and the split/count arithmetic are shared with the CRM's campaign
// editor, so they live in core (one copy of the counting rules).
pub use switchboard_core::sms_text::{gsm_septets, segments, split, to_gsm, Alphabet, Segments, Split};
use switchboard_core::sms_text::{ESC, GSM_BASIC, GSM_EXTENSION};

/// Unpacked septets back to text; an unknown code reads as `?`, a trailing ESC as a space
/// (23.038: a receiver shows the basic character when the extension code is unknown).
pub fn from_gsm(septets: &[u8]) -> String {
    let mut out = String::with_capacity(septets.len());
    let mut i = 0;
    while i < septets.len() {
        let s = septets[i];
        if s == ESC {
            match septets.get(i + 1) {
                Some(&code) => {
                    let c = GSM_EXTENSION.iter().find(|&&(k, _)| k == code).map(|&(_, c)| c);
                    out.push(c.unwrap_or_else(|| GSM_BASIC.get(code as usize).copied().unwrap_or('?')));
                    i += 2;
                }
                None => {
                    out.push(' ');
                    i += 1;
                }
            }
            continue;
        }
        out.push(GSM_BASIC.get(s as usize).copied().unwrap_or('?'));
        i += 1;
    }
    out
}

/// The 8-bit-reference concatenation UDH (IEI 0x00): UDHL, IEI, IEDL, ref, total, seq.
pub fn concat_udh(reference: u8, total: u8, seq: u8) -> [u8; 6] {
    [5, 0x00, 3, reference, total, seq]
}

/// Concatenation info of one inbound part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concat {
    /// Reference shared by the parts of one message.
    pub reference: u16,
    /// Number of parts.
    pub total: u8,
    /// This part's number, from 1.
    pub seq: u8,
}

/// Splits a short message with UDHI set into its concatenation info (if any) and payload.
/// `None` when the UDH is malformed (UDHL beyond the message).
pub fn parse_udh(sm: &[u8]) -> Option<(Option<Concat>, &[u8])> {
    let udhl = *sm.first()? as usize;
    if sm.len() < 1 + udhl {
        return None;
    }
    let (udh, payload) = (&sm[1..1 + udhl], &sm[1 + udhl..]);
    let mut concat = None;
    let mut i = 0;
    while i + 2 <= udh.len() {
        let (iei, len) = (udh[i], udh[i + 1] as usize);
        let data = udh.get(i + 2..i + 2 + len)?;
        match (iei, len) {
            (0x00, 3) => concat = Some(Concat { reference: data[0] as u16, total: data[1], seq: data[2] }),
            (0x08, 4) => concat = Some(Concat { reference: u16::from_be_bytes([data[0], data[1]]), total: data[2], seq: data[3] }),
            _ => {}
        }
        i += 2 + len;
    }
    let concat = concat.filter(|c| c.total >= 1 && c.seq >= 1 && c.seq <= c.total);
    Some((concat, payload))
}

/// Text of a short message payload by its data_coding (SMPP 3.4 §5.2.19): 0 the GSM
/// default alphabet (unpacked), 1 IA5/ASCII, 3 Latin-1, 8 UCS-2 (read as UTF-16, so
/// surrogate pairs from phones survive); anything else is shown as Latin-1.
pub fn decode_text(data_coding: u8, payload: &[u8]) -> String {
    match data_coding {
        0 => from_gsm(payload),
        8 => {
            let units: Vec<u16> = payload.chunks(2).map(|c| if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { 0xFFFD }).collect();
            String::from_utf16_lossy(&units)
        }
        _ => payload.iter().map(|&b| b as char).collect(),
    }
}

/// UTF-16 code units of a UCS-2 part (for checks).
pub fn ucs2_units(part: &[u8]) -> Vec<u16> {
    part.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm_round_trip_and_extension_counts_double() {
        let text = "Hello @ £5 {x} [y] ~ | \\ ^ € Ünïcode? no: ï is not GSM";
        assert!(to_gsm(text).is_none());
        let text = "Hello @ £5 {x} [y] ~ | \\ ^ € ÄÖÑÜ§¿äöñüà";
        let s = to_gsm(text).unwrap();
        assert_eq!(from_gsm(&s), text);
        assert_eq!(segments("€").units, 2);
        assert_eq!(segments("a").units, 1);
        assert_eq!(segments(&"a".repeat(160)).parts, 1);
        assert_eq!(segments(&"a".repeat(161)).parts, 2);
        // 80 euro signs are 160 septets: one part; 81 need two.
        assert_eq!(segments(&"€".repeat(80)).parts, 1);
        assert_eq!(segments(&"€".repeat(81)).parts, 2);
        assert_eq!(segments("hi").remaining, 158);
        assert_eq!(segments("hi").encoding, Alphabet::Gsm7);
        assert_eq!(segments("привет").encoding, Alphabet::Ucs2);
        assert_eq!(segments("привет").remaining, 64);
    }

    #[test]
    fn escape_sequences_never_straddle_parts() {
        // 152 plain septets then a euro: the ESC would be septet 153 and its code 154.
        let text = format!("{}€{}", "a".repeat(152), "b".repeat(20));
        let s = split(&text);
        assert_eq!(s.alphabet, Alphabet::Gsm7);
        assert_eq!(s.parts[0].len(), 152);
        assert_eq!(&s.parts[1][..2], &[ESC, 0x65]);
        for p in &s.parts {
            assert!(p.len() <= 153);
            assert_ne!(p.last(), Some(&ESC));
        }
        let joined: String = s.parts.iter().map(|p| from_gsm(p)).collect();
        assert_eq!(joined, text);
    }

    #[test]
    fn ucs2_parts_keep_surrogate_pairs() {
        // 66 BMP characters then an emoji: the pair would straddle units 67/68.
        let text = format!("{}😀{}", "ж".repeat(66), "ж".repeat(10));
        let s = split(&text);
        assert_eq!(s.alphabet, Alphabet::Ucs2);
        assert_eq!(ucs2_units(&s.parts[0]).len(), 66);
        let mut all = Vec::new();
        for p in &s.parts {
            let u = ucs2_units(p);
            assert!(u.len() <= 67);
            assert!(!(0xD800..0xDC00).contains(u.last().unwrap()), "part ends in a high surrogate");
            all.extend(u);
        }
        assert_eq!(String::from_utf16(&all).unwrap(), text);
        // A 300-character Unicode text takes 5 parts of at most 67 units.
        let long: String = "Привет, мир! ".chars().cycle().take(300).collect();
        let s = split(&long);
        assert_eq!(s.parts.len(), 5);
        assert_eq!(decode_text(8, &s.parts.concat()), long);
    }

    #[test]
    fn udh_parsing_is_bounded() {
        let mut sm = concat_udh(7, 3, 2).to_vec();
        sm.extend_from_slice(b"abc");
        assert_eq!(parse_udh(&sm), Some((Some(Concat { reference: 7, total: 3, seq: 2 }), &b"abc"[..])));
        let sixteen = [6, 0x08, 4, 1, 2, 3, 1, b'x'];
        assert_eq!(parse_udh(&sixteen).unwrap().0, Some(Concat { reference: 258, total: 3, seq: 1 }));
        assert_eq!(parse_udh(&[9, 0, 3]), None);
        assert_eq!(parse_udh(&[]), None);
        assert_eq!(parse_udh(&[3, 0, 9, 1]), None);
        // seq 0 or beyond total is not concatenation.
        assert_eq!(parse_udh(&[5, 0, 3, 1, 2, 3]).unwrap().0, None);
        let mut rng = crate::pdu::XorShift(77);
        for _ in 0..100_000 {
            let n = rng.below(12);
            let b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            let _ = parse_udh(&b);
            let _ = decode_text(rng.below(10) as u8, &b);
        }
    }
}
