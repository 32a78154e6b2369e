//! SMS text arithmetic (pure), shared by the SMS channel (which sends the parts) and the
//! CRM's campaign editor (which shows the counter): GSM 03.38 7-bit with its extension
//! table (3GPP TS 23.038 §6.2.1; an extension character is ESC + code and so counts
//! double), UCS-2 for anything else; splitting into concatenated parts (153 septets or 67
//! UCS-2 units with an 8-bit reference UDH, 3GPP TS 23.040 §9.2.3.24.1) that never cut an
//! escape sequence or a surrogate pair.

/// The GSM 03.38 default alphabet, by code (0x1B is the escape to the extension table).
pub const GSM_BASIC: [char; 128] = [
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
pub const GSM_EXTENSION: [(u8, char); 10] = [
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

pub const ESC: u8 = 0x1B;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_gsm_extension_and_ucs2() {
        let s = segments("Hello {name}");
        assert_eq!((s.encoding, s.parts, s.units), (Alphabet::Gsm7, 1, 14));
        let long: String = "a".repeat(161);
        assert_eq!(segments(&long).parts, 2);
        let s = segments("Привет");
        assert_eq!((s.encoding, s.parts, s.units, s.remaining), (Alphabet::Ucs2, 1, 6, 64));
        assert_eq!(segments("😀").units, 2);
    }
}
