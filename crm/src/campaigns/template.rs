//! Message templates (pure): `{first_name}`-style variables with inline fallbacks
//! (`{first_name|there}`) and per-template fallbacks, per-locale variants chosen by the
//! customer's language, appointment times formatted in the customer's locale and the
//! appointment's zone, and the preview counter (encoding, characters, parts).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use switchboard_core::sms_text::{self, Alphabet};

/// Variables a template may use (`attributes.<name>` besides these).
pub const VARIABLES: &[&str] = &[
    "first_name",
    "last_name",
    "name",
    "company",
    "phone",
    "appointment.time",
    "appointment.date",
    "appointment.location",
    "appointment.kind",
];

/// A campaign's message: the default text, variants by language, fallbacks by variable.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Text used when no variant matches the customer's language.
    pub default: String,
    /// Texts by language tag (`es`, `pt-BR`); `pt-BR` customers fall back to `pt`.
    #[serde(default)]
    pub variants: BTreeMap<String, String>,
    /// Text used for a variable that is empty for a customer (unless the placeholder has
    /// its own `{name|fallback}`).
    #[serde(default)]
    pub fallbacks: BTreeMap<String, String>,
}

/// The appointment a reminder or follow-up is about.
#[derive(Debug, Clone)]
pub struct AppointmentFacts {
    /// Start.
    pub starts_at: DateTime<Utc>,
    /// The appointment's zone.
    pub time_zone: Tz,
    /// Where.
    pub location: String,
    /// What kind.
    pub kind: String,
}

/// What a template is rendered with.
#[derive(Debug, Clone, Default)]
pub struct RenderContext {
    /// Full name.
    pub name: String,
    /// Preferred language (BCP 47), if known.
    pub language: Option<String>,
    /// Company.
    pub company: Option<String>,
    /// Phone number the message goes to.
    pub phone: Option<String>,
    /// Custom attributes.
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The appointment, for reminders and follow-ups.
    pub appointment: Option<AppointmentFacts>,
}

/// A template problem, for the editor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("{0}: a `{{` is not closed (write `{{{{` for a literal brace)")]
    Unclosed(String),
    /// An unknown variable.
    #[error("{0}: unknown variable `{1}`")]
    Unknown(String, String),
    /// The default text is empty.
    #[error("the default text is empty")]
    Empty,
}

enum Piece<'a> {
    Text(&'a str),
    Var { name: &'a str, fallback: Option<&'a str> },
}

fn parse(text: &str) -> Result<Vec<Piece<'_>>, usize> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(i) = rest.find(['{', '}']) {
        let c = rest.as_bytes()[i];
        if i > 0 {
            out.push(Piece::Text(&rest[..i]));
        }
        if rest[i + 1..].starts_with(c as char) {
            // `{{` and `}}` are literal braces.
            out.push(Piece::Text(&rest[i..i + 1]));
            rest = &rest[i + 2..];
            offset += i + 2;
            continue;
        }
        if c == b'}' {
            out.push(Piece::Text("}"));
            rest = &rest[i + 1..];
            offset += i + 1;
            continue;
        }
        let Some(end) = rest[i..].find('}') else { return Err(offset + i) };
        let inner = &rest[i + 1..i + end];
        let (name, fallback) = match inner.split_once('|') {
            Some((n, f)) => (n.trim(), Some(f)),
            None => (inner.trim(), None),
        };
        out.push(Piece::Var { name, fallback });
        rest = &rest[i + end + 1..];
        offset += i + end + 1;
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

fn known(name: &str) -> bool {
    VARIABLES.contains(&name)
        || name.strip_prefix("attributes.").is_some_and(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

impl Template {
    /// Checks every text for unclosed braces and unknown variables.
    pub fn check(&self) -> Result<(), TemplateError> {
        if self.default.trim().is_empty() {
            return Err(TemplateError::Empty);
        }
        let texts = std::iter::once(("default".to_string(), &self.default))
            .chain(self.variants.iter().map(|(k, v)| (format!("variants.{k}"), v)))
            .chain(self.fallbacks.iter().map(|(k, v)| (format!("fallbacks.{k}"), v)));
        for (label, text) in texts {
            for p in parse(text).map_err(|_| TemplateError::Unclosed(label.clone()))? {
                if let Piece::Var { name, .. } = p {
                    if !known(name) {
                        return Err(TemplateError::Unknown(label.clone(), name.to_string()));
                    }
                }
            }
        }
        Ok(())
    }

    /// The text for a language: exact tag, then its primary subtag, then the default.
    pub fn text_for(&self, language: Option<&str>) -> (&str, Option<&str>) {
        if let Some(lang) = language.map(|l| l.trim()).filter(|l| !l.is_empty()) {
            let lower = lang.to_ascii_lowercase();
            if let Some((k, v)) = self.variants.iter().find(|(k, _)| k.to_ascii_lowercase() == lower) {
                return (v, Some(k));
            }
            let primary = lower.split(['-', '_']).next().unwrap_or("");
            if let Some((k, v)) = self.variants.iter().find(|(k, _)| k.to_ascii_lowercase() == primary) {
                return (v, Some(k));
            }
        }
        (&self.default, None)
    }

    /// Renders the customer's variant. Returns the text and the variables that were empty
    /// with no fallback (rendered as nothing).
    pub fn render(&self, ctx: &RenderContext) -> (String, Vec<String>) {
        let (text, _) = self.text_for(ctx.language.as_deref());
        let mut missing = Vec::new();
        let mut out = String::with_capacity(text.len() + 32);
        let pieces = parse(text).unwrap_or_else(|_| vec![Piece::Text(text)]);
        for p in pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var { name, fallback } => {
                    let v = value(ctx, name).filter(|v| !v.trim().is_empty());
                    match (v, fallback, self.fallbacks.get(name)) {
                        (Some(v), _, _) => out.push_str(&v),
                        (None, Some(f), _) => out.push_str(f),
                        (None, None, Some(f)) => out.push_str(f),
                        (None, None, None) => missing.push(name.to_string()),
                    }
                }
            }
        }
        // An empty variable leaves no double space behind ("Hi  , ...").
        let mut tidy = String::with_capacity(out.len());
        for c in out.chars() {
            if c == ' ' && tidy.ends_with(' ') {
                continue;
            }
            tidy.push(c);
        }
        (tidy.trim().to_string(), missing)
    }
}

fn first_and_last(name: &str) -> (String, String) {
    let mut it = name.split_whitespace();
    let first = it.next().unwrap_or("").to_string();
    (first, it.collect::<Vec<_>>().join(" "))
}

fn value(ctx: &RenderContext, name: &str) -> Option<String> {
    let lang = ctx.language.as_deref().unwrap_or("en");
    match name {
        "first_name" => Some(first_and_last(&ctx.name).0),
        "last_name" => Some(first_and_last(&ctx.name).1),
        "name" => Some(ctx.name.clone()),
        "company" => ctx.company.clone(),
        "phone" => ctx.phone.clone(),
        "appointment.time" => ctx.appointment.as_ref().map(|a| format_time(lang, a.starts_at, a.time_zone)),
        "appointment.date" => ctx.appointment.as_ref().map(|a| format_date(lang, a.starts_at, a.time_zone)),
        "appointment.location" => ctx.appointment.as_ref().map(|a| a.location.clone()),
        "appointment.kind" => ctx.appointment.as_ref().map(|a| a.kind.clone()),
        other => {
            let attr = other.strip_prefix("attributes.")?;
            match ctx.attributes.get(attr)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                v => Some(v.to_string()),
            }
        }
    }
}

fn primary(lang: &str) -> String {
    lang.split(['-', '_']).next().unwrap_or("").to_ascii_lowercase()
}

/// A time of day as people of this language write it: 12-hour clock in English (US and
/// unspecified), 24-hour elsewhere.
pub fn format_time(lang: &str, at: DateTime<Utc>, tz: Tz) -> String {
    let local = at.with_timezone(&tz);
    match (primary(lang).as_str(), lang.to_ascii_lowercase().as_str()) {
        (_, "en-gb" | "en-ie" | "en-au" | "en-nz") => local.format("%H:%M").to_string(),
        ("en", _) => local.format("%-I:%M %p").to_string(),
        _ => local.format("%H:%M").to_string(),
    }
}

/// A date as people of this language write it.
pub fn format_date(lang: &str, at: DateTime<Utc>, tz: Tz) -> String {
    let local = at.with_timezone(&tz);
    let pattern = match (primary(lang).as_str(), lang.to_ascii_lowercase().as_str()) {
        (_, "en-gb" | "en-ie" | "en-au" | "en-nz") => "%d/%m/%Y",
        ("en", _) => "%m/%d/%Y",
        ("de" | "ru" | "pl" | "cs" | "fi" | "nb" | "da" | "tr", _) => "%d.%m.%Y",
        ("es" | "fr" | "it" | "pt" | "ca" | "el", _) => "%d/%m/%Y",
        ("nl", _) => "%d-%m-%Y",
        _ => "%Y-%m-%d",
    };
    local.format(pattern).to_string()
}

/// What the editor shows under the template: the text, its encoding and counts.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    /// The rendered text.
    pub text: String,
    /// Which variant was used (`null`: the default).
    pub variant: Option<String>,
    /// `gsm7` or `ucs2`.
    pub encoding: Alphabet,
    /// Characters as the user sees them.
    pub characters: usize,
    /// Units counted against the limit (GSM extension characters and astral characters
    /// count two).
    pub units: usize,
    /// SMS parts it takes.
    pub parts: usize,
    /// Units left before another part is needed.
    pub remaining: usize,
    /// Variables that were empty and had no fallback.
    pub missing: Vec<String>,
}

/// Renders and counts for one customer.
pub fn preview(t: &Template, ctx: &RenderContext) -> Preview {
    let (text, missing) = t.render(ctx);
    let variant = t.text_for(ctx.language.as_deref()).1.map(str::to_string);
    let s = sms_text::segments(&text);
    Preview {
        characters: text.chars().count(),
        text,
        variant,
        encoding: s.encoding,
        units: s.units,
        parts: s.parts,
        remaining: s.remaining,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn tpl() -> Template {
        Template {
            default: "Hi {first_name|there}, see you {appointment.date} at {appointment.time} ({attributes.plan})".into(),
            variants: BTreeMap::from([("es".into(), "Hola {first_name}, te esperamos a las {appointment.time}".into())]),
            fallbacks: BTreeMap::from([("attributes.plan".into(), "basic".into()), ("first_name".into(), "amigo".into())]),
        }
    }

    fn appt() -> Option<AppointmentFacts> {
        Some(AppointmentFacts {
            starts_at: Utc.with_ymd_and_hms(2026, 12, 7, 14, 30, 0).unwrap(),
            time_zone: chrono_tz::Europe::Madrid,
            location: "Main St".into(),
            kind: "visit".into(),
        })
    }

    #[test]
    fn variables_fallbacks_and_locale_variants() {
        let t = tpl();
        assert!(t.check().is_ok());
        let en = RenderContext { name: "Ada Lovelace".into(), language: Some("en-US".into()), appointment: appt(), ..Default::default() };
        assert_eq!(t.render(&en).0, "Hi Ada, see you 12/07/2026 at 3:30 PM (basic)");
        let es = RenderContext { name: "".into(), language: Some("es-MX".into()), appointment: appt(), ..Default::default() };
        let p = preview(&t, &es);
        assert_eq!(p.text, "Hola amigo, te esperamos a las 15:30");
        assert_eq!(p.variant.as_deref(), Some("es"));
        let de = RenderContext { name: "Jörg".into(), language: Some("de".into()), appointment: appt(), ..Default::default() };
        assert_eq!(t.render(&de).0, "Hi Jörg, see you 07.12.2026 at 15:30 (basic)");
    }

    #[test]
    fn bad_templates_are_reported() {
        let mut t = tpl();
        t.default = "Hi {first_name".into();
        assert!(matches!(t.check(), Err(TemplateError::Unclosed(_))));
        t.default = "Hi {nickname}".into();
        assert_eq!(t.check(), Err(TemplateError::Unknown("default".into(), "nickname".into())));
        t.default = "Braces {{literal}} ok {first_name}".into();
        assert!(t.check().is_ok());
        let ctx = RenderContext { name: "Bo".into(), ..Default::default() };
        assert_eq!(t.render(&ctx).0, "Braces {literal} ok Bo");
    }

    #[test]
    fn missing_values_without_fallback_are_listed() {
        let t = Template { default: "Hi {first_name} from {company}".into(), ..Default::default() };
        let (text, missing) = t.render(&RenderContext { name: "Al".into(), ..Default::default() });
        assert_eq!(text, "Hi Al from");
        assert_eq!(missing, vec!["company"]);
    }

    #[test]
    fn preview_counts_parts() {
        let t = Template { default: "€".repeat(81), ..Default::default() };
        let p = preview(&t, &RenderContext::default());
        assert_eq!((p.encoding, p.characters, p.units, p.parts), (Alphabet::Gsm7, 81, 162, 2));
    }
}
