//! Message text encoding (pure): GSM 03.38 7-bit with its extension table (3GPP TS 23.038
//! §6.2.1; an extension character is ESC + code and so counts double), UCS-2 for anything
//! else; splitting into concatenated parts (153 septets or 67 UCS-2 units with an 8-bit
//! reference UDH, 3GPP TS 23.040 §9.2.3.24.1) that never cut an escape sequence or a
//! surrogate pair; decoding of inbound short messages by `data_coding` and their UDH.

/// The GSM 03.38 default alphabet, by code (0x1B is the escape to the extension table).
const GSM_BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1B}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table: (code after ESC, character).
const GSM_EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0C}'),
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

const ESC: u8 = 0x1B;

/// The septets of one character: one for the basic table, ESC + code for the extension.
pub fn gsm_septets(c: char) -> Option<&'static [u8]> {
    // Static slices for each code so callers can copy them without allocating.
    static BASIC: [u8; 128] = {
        let mut t = [0u8; 128];
        let mut i = 0;
        while i < 128 {
            t[i] = i as u8;
            i += 1;
        }
        t
    };
    static EXT: [[u8; 2]; 10] = {
        let mut t = [[0u8; 2]; 10];
        let mut i = 0;
        while i < 10 {
            t[i] = [ESC, GSM_EXTENSION[i].0];
            i += 1;
        }
        t
    };
    if c == '\u{1B}' {
        return None;
    }
    if let Some(i) = GSM_BASIC.iter().position(|&b| b == c) {
        return Some(std::slice::from_ref(&BASIC[i]));
    }
    GSM_EXTENSION.iter().position(|&(_, e)| e == c).map(|i| &EXT[i][..])
}

/// The text's septets when every character is in GSM 03.38, else `None`.
pub fn to_gsm(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        out.extend_from_slice(gsm_septets(c)?);
    }
    Some(out)
}

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

/// The alphabet a message goes out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Alphabet {
    /// GSM 03.38 7-bit (data_coding 0).
    Gsm7,
    /// UCS-2 big-endian (data_coding 8); astral characters travel as surrogate pairs.
    Ucs2,
}

impl Alphabet {
    /// The SMPP data_coding value.
    pub fn data_coding(self) -> u8 {
        match self {
            Alphabet::Gsm7 => 0,
            Alphabet::Ucs2 => 8,
        }
    }
    /// Units in a single-part message.
    pub fn single_limit(self) -> usize {
        match self {
            Alphabet::Gsm7 => 160,
            Alphabet::Ucs2 => 70,
        }
    }
    /// Units per part of a concatenated message (6 octets go to the UDH).
    pub fn part_limit(self) -> usize {
        match self {
            Alphabet::Gsm7 => 153,
            Alphabet::Ucs2 => 67,
        }
    }
}

/// A message split for sending: the alphabet and each part's payload (unpacked septets or
/// UCS-2 octets, without UDH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Alphabet used.
    pub alphabet: Alphabet,
    /// Part payloads in order (one for a short message).
    pub parts: Vec<Vec<u8>>,
    /// Units (septets or UTF-16 units) of the whole text.
    pub units: usize,
}

/// What the reply box shows while the agent types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Segments {
    /// Alphabet the text would go out in.
    pub encoding: Alphabet,
    /// Parts it would take.
    pub parts: usize,
    /// Units used (extension characters count two, astral characters two).
    pub units: usize,
    /// Units left before another part is needed.
    pub remaining: usize,
}

/// Splits a text into parts: GSM 7-bit when every character allows it, UCS-2 otherwise.
pub fn split(text: &str) -> Split {
    match to_gsm(text) {
        Some(septets) => {
            let units = septets.len();
            let parts = if units <= Alphabet::Gsm7.single_limit() {
                vec![septets]
            } else {
                let mut parts = Vec::new();
                let mut cur = Vec::with_capacity(153);
                let mut i = 0;
                while i < septets.len() {
                    let width = if septets[i] == ESC && i + 1 < septets.len() { 2 } else { 1 };
                    // An escape sequence never straddles two parts.
                    if cur.len() + width > Alphabet::Gsm7.part_limit() {
                        parts.push(std::mem::take(&mut cur));
                    }
                    cur.extend_from_slice(&septets[i..i + width]);
                    i += width;
                }
                if !cur.is_empty() {
                    parts.push(cur);
                }
                parts
            };
            Split { alphabet: Alphabet::Gsm7, parts, units }
        }
        None => {
            let utf16: Vec<u16> = text.encode_utf16().collect();
            let units = utf16.len();
            let to_bytes = |u: &[u16]| u.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
            let parts = if units <= Alphabet::Ucs2.single_limit() {
                vec![to_bytes(&utf16)]
            } else {
                let mut parts = Vec::new();
                let mut start = 0;
                while start < units {
                    let mut end = (start + Alphabet::Ucs2.part_limit()).min(units);
                    // A surrogate pair stays in one part.
                    if end < units && (0xD800..0xDC00).contains(&utf16[end - 1]) {
                        end -= 1;
                    }
                    parts.push(to_bytes(&utf16[start..end]));
                    start = end;
                }
                parts
            };
            Split { alphabet: Alphabet::Ucs2, parts, units }
        }
    }
}

/// Parts, encoding and units left for a text (the reply box's counter).
pub fn segments(text: &str) -> Segments {
    let s = split(text);
    let parts = s.parts.len().max(1);
    let capacity = if parts == 1 { s.alphabet.single_limit() } else { parts * s.alphabet.part_limit() };
    // For multi-part texts the last part's room; split points may leave a unit unused.
    let used_in_parts: usize = if parts == 1 {
        s.units
    } else {
        let per = s.alphabet.part_limit();
        (parts - 1) * per + s.parts.last().map(|p| if s.alphabet == Alphabet::Ucs2 { p.len() / 2 } else { p.len() }).unwrap_or(0)
    };
    Segments { encoding: s.alphabet, parts, units: s.units, remaining: capacity.saturating_sub(used_in_parts) }
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
