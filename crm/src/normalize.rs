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
/// international (`+…`, `00…`) and national formats (read with `region`).
pub fn phone(raw: &str, region: Region) -> Result<String, NormalizeError> {
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
    let digits = s.chars().filter(|c| c.is_ascii_digit()).count();
    // libphonenumber accepts letters (vanity numbers); an address that is mostly letters is
    // garbage here, not a vanity number.
    let letters = s.chars().filter(|c| c.is_alphabetic()).count();
    if !(3..=17).contains(&digits) || letters > 3 || s.len() > 40 {
        return Err(NormalizeError::PhoneUnparsable(raw.to_string()));
    }
    let owned;
    if let Some(rest) = s.strip_prefix("00") {
        owned = format!("+{rest}");
        s = &owned;
    }
    let n = phonenumber::parse(Some(region.0), s).map_err(|_| NormalizeError::PhoneUnparsable(raw.to_string()))?;
    if !phonenumber::is_valid(&n) {
        return Err(NormalizeError::PhoneInvalid(raw.to_string()));
    }
    Ok(n.format().mode(phonenumber::Mode::E164).to_string())
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

    #[test]
    fn garbage_numbers_are_rejected() {
        for g in ["", "abc", "12", "hello world 5", "+1 000", "anonymous", "+999 1234 5678", "555-01", "1234567890123456789012"] {
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
