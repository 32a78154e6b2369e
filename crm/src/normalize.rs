//! Address normalization: phone numbers to E.164 (libphonenumber metadata through the
//! `phonenumber` crate, national formats read with the configured default region), email
//! addresses case-folded with the domain IDNA-normalized (UTS #46 through `idna`), chat
//! visitor ids trimmed. One normalized form per address is what makes identities unique.

use switchboard_core::Channel;

/// The kind of an identity: voice and SMS share phone numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    /// A phone number in E.164.
    Phone,
    /// An email address.
    Email,
    /// A web chat visitor id.
    Chat,
}

impl IdentityKind {
    /// Stable text form stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Phone => "phone",
            IdentityKind::Email => "email",
            IdentityKind::Chat => "chat",
        }
    }

    /// The identity kind of a channel's sender addresses.
    pub fn of_channel(c: Channel) -> IdentityKind {
        match c {
            Channel::Voice | Channel::Sms => IdentityKind::Phone,
            Channel::Email => IdentityKind::Email,
            Channel::Chat => IdentityKind::Chat,
        }
    }
}

impl std::str::FromStr for IdentityKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "phone" | "voice" | "sms" => Ok(IdentityKind::Phone),
            "email" => Ok(IdentityKind::Email),
            "chat" => Ok(IdentityKind::Chat),
            other => Err(format!("unknown identity kind `{other}` (expected phone, email or chat)")),
        }
    }
}

/// Why an address could not be normalized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// Not a phone number at all.
    #[error("`{0}` is not a phone number")]
    PhoneUnparsable(String),
    /// Parsed, but no such number exists in the numbering plan.
    #[error("`{0}` is not a valid phone number for its region")]
    PhoneInvalid(String),
    /// Not an email address.
    #[error("`{0}` is not a valid email address: {1}")]
    Email(String, &'static str),
    /// Bad chat visitor id.
    #[error("chat visitor id must be 1..=200 printable characters")]
    Chat,
    /// Unknown region code in configuration.
    #[error("unknown region `{0}` (expected an ISO 3166-1 alpha-2 code such as US or ES)")]
    Region(String),
}

/// A parsed default region.
#[derive(Debug, Clone, Copy)]
pub struct Region(phonenumber::country::Id);

impl Region {
    /// Parses an ISO 3166-1 alpha-2 code (case-insensitive).
    pub fn parse(code: &str) -> Result<Region, NormalizeError> {
        code.trim()
            .to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
            .map(Region)
            .map_err(|_| NormalizeError::Region(code.to_string()))
    }
}

/// Normalizes a phone number to E.164. Accepts `tel:`/`sip:` URIs (the user part),
/// international (`+…`, `00…` or the region's own international prefix such as `011`) and
/// national formats (read with `region`).
///
/// ITU-T E.164 §6: a number is a country calling code of 1–3 digits (prefix-free, so at
/// most one reading fits) followed by the national significant number (NSN). The national
/// trunk prefix (`0` in DE/CN/UK/FR/IN, `1` in the NANP) is dialled only inside a country
/// and is never part of the NSN, so it is stripped from national-format input only, read
/// with the default region's metadata; an international number's digits are kept as they
/// are (`+49 151…` keeps its `1`, `+86 138…` its `1`, `+39 06…` its `0`). The only
/// exception is the written convention `+49 (0)151…`, where the bracketed trunk prefix is
/// dropped. Validity is checked against libphonenumber's metadata (the `phonenumber`
/// crate's database: lengths and number patterns per region of the calling code).
pub fn phone(raw: &str, region: Region) -> Result<String, NormalizeError> {
    let unparsable = || NormalizeError::PhoneUnparsable(raw.to_string());
    let mut s = raw.trim();
    for prefix in ["tel:", "sip:", "sips:"] {
        if s.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix)) {
            s = &s[prefix.len()..];
        }
    }
    if let Some((user, _host)) = s.split_once('@') {
        s = user;
    }
    // Drop URI parameters (`;user=phone`).
    if let Some((user, _)) = s.split_once(';') {
        s = user;
    }
    let s = s.trim();
    if s.len() > 40 {
        return Err(unparsable());
    }
    let plus = s.starts_with('+') || s.starts_with('\u{FF0B}');
    let body = s.strip_prefix('+').or_else(|| s.strip_prefix('\u{FF0B}')).unwrap_or(s);
    // Only digits and the usual visual separators; letters (vanity numbers, "anonymous")
    // and a second `+` are not a phone number here.
    if body.chars().any(|c| !(c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')' | '/' | '\u{A0}'))) {
        return Err(unparsable());
    }
    let digits: String = body.chars().filter(char::is_ascii_digit).collect();
    if !(3..=17).contains(&digits.len()) {
        return Err(unparsable());
    }
    let meta = phonenumber::metadata::DATABASE.by_id(region.0.as_ref());
    if plus {
        return international(raw, body);
    }
    if let Some(rest) = body.trim_start().strip_prefix("00") {
        // The text, not just its digits: `0049 (0)151…` keeps its bracketed hint for
        // `international` to drop.
        return international(raw, rest);
    }
    // The region's own international prefix (011 in the NANP, 00 almost everywhere else).
    if let Some(m) = meta.and_then(|m| m.international_prefix()).and_then(|re| anchored_prefix(re.as_str()).find(&digits)) {
        if m.end() > 0 && m.end() < digits.len() {
            return international(raw, &digits[m.end()..]);
        }
    }
    let meta = meta.ok_or_else(unparsable)?;
    national(raw, &digits, meta)
}

/// Reads `body` (the part after `+` or the international prefix) as country calling code
/// plus NSN, without touching the NSN's digits.
fn international(raw: &str, body: &str) -> Result<String, NormalizeError> {
    // `+44 (0)20 …`: the bracketed trunk prefix is a national-dialling hint, not a digit of
    // the number. Only an explicit `(0)` is dropped.
    let cleaned = body.replacen("(0)", "", 1);
    let digits: String = cleaned.chars().filter(char::is_ascii_digit).collect();
    let (code, nsn) = split_calling_code(&digits).ok_or_else(|| NormalizeError::PhoneUnparsable(raw.to_string()))?;
    if !(2..=17).contains(&nsn.len()) {
        return Err(NormalizeError::PhoneUnparsable(raw.to_string()));
    }
    if !valid_nsn(code, nsn) {
        return Err(NormalizeError::PhoneInvalid(raw.to_string()));
    }
    Ok(format!("+{code}{nsn}"))
}

/// Splits international digits (no `+`) into the country calling code (1–3 digits, the
/// first prefix libphonenumber's metadata knows) and the national significant number.
fn split_calling_code(digits: &str) -> Option<(u16, &str)> {
    (1..=3).filter(|&n| n < digits.len()).find_map(|n| {
        let code: u16 = digits[..n].parse().ok()?;
        phonenumber::metadata::DATABASE.region(&code).map(|_| (code, &digits[n..]))
    })
}

/// Whether a normalized E.164 number (`+<digits>`, as [`phone`] returns it) is a mobile
/// number: its NSN is valid for a region of its calling code and matches that region's
/// mobile pattern (in the NANP, where fixed and mobile numbers share patterns, both count).
/// Read with the same calling-code split as [`phone`], so no trunk prefix is ever stripped.
pub fn is_mobile(e164: &str) -> bool {
    let Some(digits) = e164.strip_prefix('+') else {
        return false;
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Some((code, nsn)) = split_calling_code(digits) else {
        return false;
    };
    phonenumber::metadata::DATABASE.by_code(&code).is_some_and(|metas| {
        metas.into_iter().any(|m| {
            let d = m.descriptors();
            full_match(d.general(), nsn) && d.mobile().is_some_and(|t| full_match(t, nsn))
        })
    })
}

/// Reads national-format digits with the default region: the trunk prefix (and a carrier
/// selection code where the region has one) is stripped the way libphonenumber does it —
/// only when what remains is still a possible number of the region, or the digits were
/// not one as written. Digits without `+` or an international prefix are always national
/// (`4915…` in DE is a Leer fixed line, as libphonenumber reads it).
fn national(raw: &str, digits: &str, meta: &phonenumber::Metadata) -> Result<String, NormalizeError> {
    let code = meta.country_code();
    let general = meta.descriptors().general();
    let mut nsn = digits.to_string();
    // Without its own parsing pattern a region's trunk prefix is read as written
    // (libphonenumber: nationalPrefixForParsing defaults to nationalPrefix).
    let trunk = meta.national_prefix_for_parsing().map(|re| re.as_str().to_string()).or_else(|| meta.national_prefix().map(regex::escape));
    if let Some(re) = trunk {
        if let Some(caps) = anchored_prefix(&re).captures(digits) {
            let whole = caps.get(0).map(|m| m.end()).unwrap_or(0);
            let stripped = match meta.national_prefix_transform_rule() {
                // e.g. AR: `0?(?:(11|…)?15)?` rewritten by `9$1`: the rule builds the NSN's
                // head from the captured groups.
                Some(rule) if caps.len() > 1 && caps.iter().skip(1).any(|g| g.is_some()) => {
                    let mut head = String::new();
                    // Java's `$1` is `${1}` for the regex crate (`$1$2` would read `$1$2` as one name).
                    let rule = compiled("\\$(\\d)".to_string()).replace_all(rule, "$${$1}");
                    caps.expand(&rule, &mut head);
                    format!("{head}{}", &digits[whole..])
                }
                _ => digits[whole..].to_string(),
            };
            if whole > 0 && (full_match(general, &stripped) || !full_match(general, digits)) {
                nsn = stripped;
            }
        }
    }
    if !valid_nsn(code, &nsn) {
        if nsn.len() < 2 {
            return Err(NormalizeError::PhoneUnparsable(raw.to_string()));
        }
        return Err(NormalizeError::PhoneInvalid(raw.to_string()));
    }
    Ok(format!("+{code}{nsn}"))
}

/// Whether `nsn` is a valid national significant number for some region of the calling
/// code: the general pattern and one number type (fixed line, mobile, toll free, …) match
/// the whole NSN (libphonenumber's `isValidNumber`).
fn valid_nsn(code: u16, nsn: &str) -> bool {
    let Some(metas) = phonenumber::metadata::DATABASE.by_code(&code) else {
        return false;
    };
    metas.into_iter().any(|m| {
        let d = m.descriptors();
        full_match(d.general(), nsn)
            && [
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.premium_rate(),
                d.shared_cost(),
                d.personal_number(),
                d.voip(),
                d.pager(),
                d.uan(),
                d.voicemail(),
            ]
            .into_iter()
            .flatten()
            .any(|t| full_match(t, nsn))
    })
}

/// libphonenumber patterns must match the whole NSN (the crate's own `is_match` only
/// anchors the start), and only at one of the descriptor's possible lengths.
fn full_match(d: &phonenumber::metadata::Descriptor, nsn: &str) -> bool {
    let lengths = d.possible_length();
    if !lengths.is_empty() && !lengths.contains(&(nsn.len() as u16)) {
        return false;
    }
    anchored(d.national_number().as_str()).is_match(nsn)
}

/// `^(?:pattern)$`, compiled once per pattern. The metadata keeps its patterns as laid out
/// in libphonenumber's XML (indented over several lines), hence the `x` flag.
fn anchored(pattern: &str) -> regex::Regex {
    compiled(format!("^(?x:{pattern})$"))
}

/// `^(?:pattern)` (a prefix match, for trunk and international prefixes).
fn anchored_prefix(pattern: &str) -> regex::Regex {
    compiled(format!("^(?x:{pattern})"))
}

fn compiled(source: String) -> regex::Regex {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, regex::Regex>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(re) = cache.get(&source) {
        return re.clone();
    }
    // The metadata's patterns are valid regexes; one that is not matches nothing.
    let re = regex::Regex::new(&source).unwrap_or_else(|_| regex::Regex::new("[^\\s\\S]").expect("empty class"));
    cache.insert(source, re.clone());
    re
}

/// Normalizes an email address: `Name <addr>` forms unwrapped, case-folded, the domain
/// converted to its ASCII (punycode) form.
pub fn email(raw: &str) -> Result<String, NormalizeError> {
    let mut s = raw.trim();
    if let (Some(a), Some(b)) = (s.rfind('<'), s.rfind('>')) {
        if a < b {
            s = s[a + 1..b].trim();
        }
    }
    s = s.strip_prefix("mailto:").unwrap_or(s);
    let bad = |why| NormalizeError::Email(raw.to_string(), why);
    let (local, domain) = s.rsplit_once('@').ok_or_else(|| bad("no @"))?;
    if local.is_empty() || local.chars().count() > 64 {
        return Err(bad("local part must be 1..=64 characters"));
    }
    if local
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '(' | ')' | ',' | ';' | ':' | '\\' | '"' | '[' | ']' | '@'))
    {
        return Err(bad("local part has characters not allowed"));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(bad("local part has misplaced dots"));
    }
    let domain = domain.trim_end_matches('.');
    let ascii = idna::domain_to_ascii(domain).map_err(|_| bad("domain is not a valid (internationalized) domain name"))?;
    if ascii.is_empty() || !ascii.contains('.') || ascii.len() > 253 {
        return Err(bad("domain must be a fully qualified name"));
    }
    if ascii.split('.').any(|l| l.is_empty() || l.len() > 63 || l.starts_with('-') || l.ends_with('-')) {
        return Err(bad("domain has an invalid label"));
    }
    if !ascii.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
        return Err(bad("domain has characters not allowed"));
    }
    let out = format!("{}@{}", local.to_lowercase(), ascii);
    if out.len() > 254 {
        return Err(bad("longer than 254 bytes"));
    }
    Ok(out)
}

/// Normalizes a chat visitor id (kept case-sensitive: ids are opaque tokens).
pub fn chat(raw: &str) -> Result<String, NormalizeError> {
    let s = raw.trim();
    if s.is_empty() || s.chars().count() > 200 || s.chars().any(char::is_control) {
        return Err(NormalizeError::Chat);
    }
    Ok(s.to_string())
}

/// Normalizes an address of an identity kind.
pub fn address(kind: IdentityKind, raw: &str, region: Region) -> Result<String, NormalizeError> {
    match kind {
        IdentityKind::Phone => phone(raw, region),
        IdentityKind::Email => email(raw),
        IdentityKind::Chat => chat(raw),
    }
}

/// Whether a search fragment looks like part of a phone number (digits and separators).
pub fn phone_fragment(q: &str) -> Option<String> {
    let q = q.trim();
    if q.chars().all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.')) {
        let d: String = q.chars().filter(|c| c.is_ascii_digit()).collect();
        if d.len() >= 3 {
            return Some(d);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us() -> Region {
        Region::parse("us").expect("region")
    }

    #[test]
    fn national_formats_use_the_default_region() {
        assert_eq!(phone("(202) 555-0143", us()).as_deref(), Ok("+12025550143"));
        assert_eq!(phone("202.555.0143", us()).as_deref(), Ok("+12025550143"));
        assert_eq!(phone("1-202-555-0143", us()).as_deref(), Ok("+12025550143"));
        let es = Region::parse("ES").expect("region");
        assert_eq!(phone("612 34 56 78", es).as_deref(), Ok("+34612345678"));
        assert_eq!(phone("91 123 45 67", es).as_deref(), Ok("+34911234567"));
    }

    #[test]
    fn international_formats_ignore_the_region() {
        assert_eq!(phone("+34 612 345 678", us()).as_deref(), Ok("+34612345678"));
        assert_eq!(phone("0034612345678", us()).as_deref(), Ok("+34612345678"));
        assert_eq!(phone("+44 20 7946 0958", us()).as_deref(), Ok("+442079460958"));
        assert_eq!(phone("tel:+1-202-555-0143", us()).as_deref(), Ok("+12025550143"));
        assert_eq!(phone("sip:+12025550143@pbx.example.com;user=phone", us()).as_deref(), Ok("+12025550143"));
    }

    /// (input, default region, E.164): DE, CN, US, UK, FR and IN numbers written
    /// internationally (with any default region) and nationally (with their own).
    const CASES: &[(&str, &str, &str)] = &[
        // Germany: mobile 0151…, Berlin 030…
        ("+49 151 77777777", "US", "+4915177777777"),
        ("+4915177777777", "DE", "+4915177777777"),
        ("0049 151 77777777", "GB", "+4915177777777"),
        ("0151 77777777", "DE", "+4915177777777"),
        ("+49 (0)151 77777777", "US", "+4915177777777"),
        ("0049 (0)151-7777-7777", "DE", "+4915177777777"),
        ("030 1234567", "DE", "+49301234567"),
        ("+49 30 1234567", "CN", "+49301234567"),
        // China: mobile 138…, Beijing 010…
        ("+86 138 1234 5678", "US", "+8613812345678"),
        ("+8613812345678", "DE", "+8613812345678"),
        ("138 1234 5678", "CN", "+8613812345678"),
        ("010 6552 9988", "CN", "+861065529988"),
        ("+86 10 6552 9988", "FR", "+861065529988"),
        ("0086 10 6552 9988", "IN", "+861065529988"),
        // United States (trunk prefix 1, international prefix 011)
        ("+1 202-555-0143", "DE", "+12025550143"),
        ("(202) 555-0143", "US", "+12025550143"),
        ("1 (202) 555-0143", "US", "+12025550143"),
        ("011 49 151 77777777", "US", "+4915177777777"),
        // United Kingdom: mobile 07…, London 020…
        ("+44 7911 123456", "US", "+447911123456"),
        ("07911 123456", "GB", "+447911123456"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("+44 (0)20 7946 0958", "DE", "+442079460958"),
        // France: mobile 06…, Paris 01…
        ("+33 6 12 34 56 78", "US", "+33612345678"),
        ("06 12 34 56 78", "FR", "+33612345678"),
        ("01 42 68 53 00", "FR", "+33142685300"),
        // India: mobile 98…, Delhi 011…
        ("+91 98765 43210", "US", "+919876543210"),
        ("098765 43210", "IN", "+919876543210"),
        ("98765 43210", "IN", "+919876543210"),
        ("011 2345 6789", "IN", "+911123456789"),
        ("+91 11 2345 6789", "GB", "+911123456789"),
    ];

    #[test]
    fn de_cn_us_uk_fr_in_numbers_in_both_formats() {
        for &(raw, region, want) in CASES {
            let r = Region::parse(region).expect("region");
            assert_eq!(phone(raw, r).as_deref(), Ok(want), "{raw} read with {region}");
        }
    }

    /// The reported bug: with the default region US, `+4915177777777` lost the `1` after
    /// the country code (the NANP trunk prefix was stripped from a German number), and
    /// +86 mobile numbers (NSN starting with 1) were refused.
    #[test]
    fn an_international_number_keeps_its_digits_whatever_the_region() {
        for region in ["US", "CA", "DE", "CN", "GB", "FR", "IN", "RU", "ES"] {
            let r = Region::parse(region).expect("region");
            assert_eq!(phone("+4915177777777", r).as_deref(), Ok("+4915177777777"), "{region}");
            assert_eq!(phone("+8613812345678", r).as_deref(), Ok("+8613812345678"), "{region}");
            // A national number that begins with the trunk-prefix digit of its own country.
            assert_eq!(phone("+78005553535", r).as_deref(), Ok("+78005553535"), "{region}");
            assert_eq!(phone("+393912312312", r).as_deref(), Ok("+393912312312"), "{region}");
            // Italy keeps the leading 0 of its fixed lines.
            assert_eq!(phone("+39 06 6982 1234", r).as_deref(), Ok("+390669821234"), "{region}");
        }
    }

    /// Identities stored before the fix are E.164 already: normalizing them again gives the
    /// same text, so existing customers keep matching their numbers.
    #[test]
    fn stored_e164_identities_still_match() {
        let stored = [
            "+12025550143",
            "+34612345678",
            "+34911234567",
            "+442079460958",
            "+447911123456",
            "+33612345678",
            "+4915177777777",
            "+8613812345678",
        ];
        for region in ["US", "ES", "DE", "CN"] {
            let r = Region::parse(region).expect("region");
            for e in stored {
                assert_eq!(phone(e, r).as_deref(), Ok(e), "{e} with {region}");
            }
        }
        for &(_, _, want) in CASES {
            assert_eq!(phone(want, us()).as_deref(), Ok(want));
        }
    }

    #[test]
    fn garbage_numbers_are_rejected() {
        for g in [
            "",
            "abc",
            "12",
            "hello world 5",
            "+1 000",
            "anonymous",
            "+999 1234 5678",
            "555-01",
            "1234567890123456789012",
            "+49 0151 77777777",
            "++4915177777777",
            "+86 0 138 1234 5678",
        ] {
            assert!(phone(g, us()).is_err(), "{g} accepted: {:?}", phone(g, us()));
        }
        assert!(matches!(phone("+1 202 000 0000", us()), Err(NormalizeError::PhoneInvalid(_))));
    }

    #[test]
    fn emails_are_case_folded_and_idna_normalized() {
        assert_eq!(email("Alice.Smith@Example.COM").as_deref(), Ok("alice.smith@example.com"));
        assert_eq!(email("  Alice <ALICE@example.com> ").as_deref(), Ok("alice@example.com"));
        assert_eq!(email("josé@Bücher.example").as_deref(), Ok("josé@xn--bcher-kva.example"));
        assert_eq!(email("x@EXAMPLE.com.").as_deref(), Ok("x@example.com"));
        assert_eq!(email("mailto:bob@example.org").as_deref(), Ok("bob@example.org"));
    }

    #[test]
    fn bad_emails_are_rejected() {
        for g in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@example.com",
            "a..b@example.com",
            "a@-x.com",
            "a@exa mple.com",
            "a@@b.com",
        ] {
            assert!(email(g).is_err(), "{g} accepted");
        }
    }

    #[test]
    fn chat_ids_and_fragments() {
        assert_eq!(chat("  v-AbC123 ").as_deref(), Ok("v-AbC123"));
        assert!(chat("").is_err());
        assert!(chat("a\u{0}b").is_err());
        assert_eq!(phone_fragment("(202) 555"), Some("202555".into()));
        assert_eq!(phone_fragment("alice"), None);
        assert_eq!(phone_fragment("12"), None);
        assert_eq!(IdentityKind::of_channel(Channel::Sms), IdentityKind::Phone);
        assert_eq!("voice".parse::<IdentityKind>(), Ok(IdentityKind::Phone));
        assert!(Region::parse("XX").is_err());
    }
}
