//! Extractors that turn every malformed request into a problem+json 4xx.
//!
//! Besides syntax and types, they refuse — once, for every endpoint — values PostgreSQL
//! cannot store, naming the field: a NUL character anywhere in a string (text columns
//! and jsonb reject U+0000) and dates outside PostgreSQL's range (4713 BC to 294276 AD).

use crate::error::CoreError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// JSON body; unknown fields, wrong types, syntax errors, wrong content type and oversized
/// bodies each get their own clear 4xx. A type error or an unstorable value is a 422
/// naming the field by its JSON path (`username`, `items[2].text`).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = CoreError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Parse to a tree first: the storability check sees every string, including those
        // inside free-form JSON fields, before any typed field exists.
        let value = match axum::Json::<Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => v,
            Err(JsonRejection::JsonDataError(e)) => {
                return Err(CoreError::InvalidField {
                    field: "body".into(),
                    reason: e.body_text().replace("Failed to deserialize the JSON body into the target type: ", ""),
                })
            }
            Err(JsonRejection::JsonSyntaxError(e)) => {
                return Err(CoreError::Invalid(format!(
                    "malformed JSON: {}",
                    e.body_text().replace("Failed to parse the request body as JSON: ", "")
                )))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => return Err(CoreError::UnsupportedMediaType),
            Err(JsonRejection::BytesRejection(e)) => {
                return if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    Err(CoreError::PayloadTooLarge(0))
                } else {
                    Err(CoreError::Invalid(format!("could not read the body: {}", e.body_text())))
                }
            }
            Err(e) => return Err(CoreError::Invalid(e.body_text())),
        };
        check_json(&value, &mut String::new())?;
        serde_path_to_error::deserialize::<_, T>(value).map(ApiJson).map_err(|e| {
            let path = e.path().to_string();
            let field = if path.is_empty() || path == "." { "body".to_string() } else { path };
            CoreError::InvalidField { field, reason: e.into_inner().to_string() }
        })
    }
}

/// Path parameters; a malformed id is a 400 naming the parameter, an unstorable value a
/// 422 naming it.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = CoreError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Ok(raw) = RawPathParams::from_request_parts(parts, state).await {
            for (name, value) in raw.iter() {
                check_text(name, value)?;
            }
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| CoreError::Invalid(format!("bad path parameter: {}", e.body_text())))
    }
}

/// Query parameters; unknown or malformed ones are a 400, unstorable values a 422 naming
/// the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = CoreError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Ok(axum::extract::Query(pairs)) = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri) {
            for (name, value) in &pairs {
                check_text(name, name)?;
                check_text(name, value)?;
            }
        }
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| CoreError::Invalid(format!("bad query: {}", e.body_text())))
    }
}

/// Refuses a string PostgreSQL cannot store as the value of `field`.
pub fn check_text(field: &str, s: &str) -> Result<(), CoreError> {
    if s.contains('\0') {
        return Err(CoreError::field(&printable(field), "must not contain a NUL character (\\0)"));
    }
    if date_out_of_range(s) {
        return Err(CoreError::field(&printable(field), "date outside the supported range (4713 BC to 294276 AD)"));
    }
    Ok(())
}

/// Walks a JSON tree; `path` is the JSON path of `v` (`items[2].text`).
fn check_json(v: &Value, path: &mut String) -> Result<(), CoreError> {
    match v {
        Value::String(s) => check_text(if path.is_empty() { "body" } else { path }, s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check_json(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, item) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                if k.contains('\0') {
                    return Err(CoreError::field(&printable(path), "field names must not contain a NUL character (\\0)"));
                }
                check_json(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// A field name fit for an error message.
fn printable(field: &str) -> String {
    field.replace('\0', "\\0")
}

/// PostgreSQL's earliest instant is 4714-11-24 BC 00:00 UTC (astronomical year -4713),
/// its latest 294276-12-31 AD. chrono reaches further back (year -262143), so such values
/// pass typed parsing and fail only in the database.
const PG_MIN_YEAR: i64 = -4713;
const PG_MAX_YEAR: i64 = 294_276;

/// Whether `s` is an ISO 8601 date or date-time whose year PostgreSQL cannot store. Only
/// whole values count: a date-time (`YYYY-MM-DDTHH:MM…`, any number of year digits with a
/// sign), or a date with a negative year. A bare positive date is left alone (it could be
/// a phone number like `+7495123-10-20`; typed date fields reject huge years themselves).
fn date_out_of_range(s: &str) -> bool {
    let b = s.as_bytes();
    let (negative, mut i) = match b.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        Some(c) if c.is_ascii_digit() => (false, 0),
        _ => return false,
    };
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i - start < 4 {
        return false;
    }
    let two = |at: usize| -> Option<u32> {
        match b.get(at..at + 2) {
            Some([x, y]) if x.is_ascii_digit() && y.is_ascii_digit() => Some(u32::from(x - b'0') * 10 + u32::from(y - b'0')),
            _ => None,
        }
    };
    if b.get(i) != Some(&b'-') || b.get(i + 3) != Some(&b'-') {
        return false;
    }
    let (Some(month), Some(day)) = (two(i + 1), two(i + 4)) else { return false };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return false;
    }
    let rest = &b[i + 6..];
    let date_time = matches!(rest.first(), Some(b'T' | b't' | b' ')) && two(i + 7).is_some() && rest.get(3) == Some(&b':');
    if !(date_time || (rest.is_empty() && negative)) {
        return false;
    }
    // More than 12 digits is out of range whatever they say.
    let year: i64 = s[start..i].parse().unwrap_or(i64::MAX / 2);
    let year = if negative { -year } else { year };
    // The first day is out too: an offset east of UTC moves it before the limit.
    year < PG_MIN_YEAR || (year == PG_MIN_YEAR && (month, day) <= (11, 24)) || year > PG_MAX_YEAR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_postgres_cannot_store() {
        for bad in [
            "-5000-01-01",
            "-5000-01-01T00:00:00Z",
            "+300000-01-01T00:00:00Z",
            "300000-01-01T00:00:00Z",
            "-4713-01-01T00:00:00Z",
            "99999999999999999999-01-01T00:00:00Z",
        ] {
            assert!(date_out_of_range(bad), "{bad}");
        }
        for ok in [
            "2026-12-02T10:00:00Z",
            "2026-12-02",
            "0001-01-01T00:00:00Z",
            "-4713-12-01T00:00:00Z",
            "294276-01-01T00:00:00Z",
            "+7495123-10-20",
            "+7495123-45-67",
            "hello",
            "-5000",
            "12345",
        ] {
            assert!(!date_out_of_range(ok), "{ok}");
        }
    }

    #[test]
    fn json_paths_name_the_field() {
        let v = serde_json::json!({ "items": [{ "text": "ok" }, { "text": "ok" }, { "text": "a\u{0}b" }] });
        let e = check_json(&v, &mut String::new()).unwrap_err();
        assert!(matches!(e, CoreError::InvalidField { ref field, .. } if field == "items[2].text"), "{e}");
        let v = serde_json::json!({ "when": { "since": "-5000-01-01T00:00:00Z" } });
        let e = check_json(&v, &mut String::new()).unwrap_err();
        assert!(matches!(e, CoreError::InvalidField { ref field, .. } if field == "when.since"), "{e}");
        assert!(check_json(&serde_json::json!({ "a": ["x", 1, null, { "b": "2026-01-01" }] }), &mut String::new()).is_ok());
    }
}
