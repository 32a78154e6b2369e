//! The `[crm]` configuration section: default phone region, import limits and the
//! per-deployment schema of custom customer attributes.

use crate::normalize::Region;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use switchboard_core::{CoreError, CoreResult};

/// `[crm]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CrmConfig {
    /// Region (ISO 3166-1 alpha-2) used to read phone numbers written in national format.
    #[serde(default = "default_region")]
    pub default_region: String,
    /// Largest CSV body accepted by `POST /api/v1/customers/import`, in bytes.
    #[serde(default = "default_import_max_bytes")]
    pub import_max_bytes: usize,
    /// Rows written per import batch (one transaction each).
    #[serde(default = "default_import_batch")]
    pub import_batch_rows: usize,
    /// Custom attributes: name → type, allowed values, required flag.
    #[serde(default)]
    pub attributes: BTreeMap<String, AttributeDef>,
    /// SMS campaigns (`[crm.campaigns]`).
    #[serde(default)]
    pub campaigns: crate::campaigns::CampaignConfig,
}

fn default_region() -> String {
    "US".into()
}
fn default_import_max_bytes() -> usize {
    256 * 1024 * 1024
}
fn default_import_batch() -> usize {
    2000
}

impl Default for CrmConfig {
    fn default() -> Self {
        CrmConfig {
            default_region: default_region(),
            import_max_bytes: default_import_max_bytes(),
            import_batch_rows: default_import_batch(),
            attributes: BTreeMap::new(),
            campaigns: Default::default(),
        }
    }
}

/// Type of a custom attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeType {
    /// Any JSON string.
    String,
    /// A JSON number.
    Number,
    /// true or false.
    Boolean,
    /// A `YYYY-MM-DD` string.
    Date,
    /// One of `values`.
    Enum,
}

/// One custom attribute.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeDef {
    /// Value type.
    #[serde(rename = "type")]
    pub kind: AttributeType,
    /// Allowed values (enum only).
    #[serde(default)]
    pub values: Vec<String>,
    /// Whether every customer created through the API or an import must have it.
    #[serde(default)]
    pub required: bool,
}

/// The parsed, checked configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// As configured.
    pub config: CrmConfig,
    /// The default phone region.
    pub region: Region,
}

impl Settings {
    /// Parses and checks the `[crm]` section (absent: defaults).
    pub fn from_toml(v: Option<toml::Value>) -> CoreResult<Settings> {
        let config: CrmConfig = match v {
            Some(v) => v.try_into().map_err(|e: toml::de::Error| CoreError::Internal(format!("config [crm]: {}", e.message())))?,
            None => CrmConfig::default(),
        };
        Settings::new(config)
    }

    /// Checks a configuration.
    pub fn new(config: CrmConfig) -> CoreResult<Settings> {
        let region = Region::parse(&config.default_region).map_err(|e| CoreError::Internal(format!("config crm.default_region: {e}")))?;
        for (name, def) in &config.attributes {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(CoreError::Internal(format!("config crm.attributes.{name}: names are letters, digits and _")));
            }
            if (def.kind == AttributeType::Enum) == def.values.is_empty() {
                return Err(CoreError::Internal(format!(
                    "config crm.attributes.{name}: `values` is required for enum attributes and only for them"
                )));
            }
        }
        config.campaigns.check().map_err(CoreError::Internal)?;
        if config.import_batch_rows == 0 || config.import_batch_rows > 20_000 {
            return Err(CoreError::Internal("config crm.import_batch_rows: must be 1..=20000".into()));
        }
        Ok(Settings { config, region })
    }

    /// Validates a whole attribute object. `complete`: required attributes must be present.
    pub fn check_attributes(&self, attrs: &serde_json::Map<String, Value>, complete: bool) -> CoreResult<()> {
        for (k, v) in attrs {
            let def = self.config.attributes.get(k).ok_or_else(|| CoreError::field(&format!("attributes.{k}"), "unknown attribute"))?;
            if v.is_null() {
                if def.required {
                    return Err(CoreError::field(&format!("attributes.{k}"), "required"));
                }
                continue;
            }
            check_value(def, v).map_err(|r| CoreError::field(&format!("attributes.{k}"), r))?;
        }
        if complete {
            for (k, def) in &self.config.attributes {
                if def.required && attrs.get(k).is_none_or(Value::is_null) {
                    return Err(CoreError::field(&format!("attributes.{k}"), "required"));
                }
            }
        }
        Ok(())
    }

    /// Parses a CSV cell into an attribute value (empty cell: None).
    pub fn parse_cell(&self, name: &str, cell: &str) -> Result<Option<Value>, String> {
        let def = self.config.attributes.get(name).ok_or("unknown attribute")?;
        let cell = cell.trim();
        if cell.is_empty() {
            return Ok(None);
        }
        let v = match def.kind {
            AttributeType::Number => {
                let n: f64 = cell.parse().map_err(|_| "must be a number".to_string())?;
                serde_json::Number::from_f64(n).map(Value::Number).ok_or("must be a finite number")?
            }
            AttributeType::Boolean => Value::Bool(parse_bool(cell).ok_or("must be true or false")?),
            _ => Value::String(cell.to_string()),
        };
        check_value(def, &v)?;
        Ok(Some(v))
    }
}

fn check_value(def: &AttributeDef, v: &Value) -> Result<(), String> {
    match (def.kind, v) {
        (AttributeType::String, Value::String(s)) if s.len() <= 2000 => Ok(()),
        (AttributeType::String, Value::String(_)) => Err("longer than 2000 bytes".into()),
        (AttributeType::Number, Value::Number(_)) => Ok(()),
        (AttributeType::Boolean, Value::Bool(_)) => Ok(()),
        (AttributeType::Date, Value::String(s)) => {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map(|_| ()).map_err(|_| "must be a date YYYY-MM-DD".into())
        }
        (AttributeType::Enum, Value::String(s)) if def.values.contains(s) => Ok(()),
        (AttributeType::Enum, _) => Err(format!("must be one of: {}", def.values.join(", "))),
        (t, _) => {
            Err(format!("must be a {}", serde_json::to_value(t).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()))
        }
    }
}

/// Reads a yes/no cell.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "1" | "t" => Some(true),
        "false" | "no" | "n" | "0" | "f" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> Settings {
        let v: toml::Value = toml::from_str(
            r#"
            default_region = "ES"
            [attributes.plan]
            type = "enum"
            values = ["free", "pro"]
            required = true
            [attributes.visits]
            type = "number"
            [attributes.vip]
            type = "boolean"
            [attributes.since]
            type = "date"
            "#,
        )
        .expect("toml");
        Settings::from_toml(Some(v)).expect("settings")
    }

    #[test]
    fn attribute_schema_is_enforced() {
        let s = settings();
        let ok = json!({"plan": "pro", "visits": 3, "vip": true, "since": "2024-02-29"});
        assert!(s.check_attributes(ok.as_object().expect("obj"), true).is_ok());
        let cases = [
            (json!({"plan": "gold"}), "attributes.plan"),
            (json!({"plan": "pro", "visits": "3"}), "attributes.visits"),
            (json!({"plan": "pro", "since": "2024-02-30"}), "attributes.since"),
            (json!({"plan": "pro", "color": "red"}), "attributes.color"),
            (json!({"visits": 1}), "attributes.plan"),
        ];
        for (v, field) in cases {
            match s.check_attributes(v.as_object().expect("obj"), true) {
                Err(CoreError::InvalidField { field: f, .. }) => assert_eq!(f, field, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
        // Partial updates need not carry required attributes.
        assert!(s.check_attributes(json!({"vip": false}).as_object().expect("obj"), false).is_ok());
    }

    #[test]
    fn csv_cells_parse_by_type() {
        let s = settings();
        assert_eq!(s.parse_cell("visits", "4.5"), Ok(Some(json!(4.5))));
        assert_eq!(s.parse_cell("vip", "yes"), Ok(Some(json!(true))));
        assert_eq!(s.parse_cell("vip", ""), Ok(None));
        assert!(s.parse_cell("plan", "gold").is_err());
        assert!(s.parse_cell("nope", "x").is_err());
    }

    #[test]
    fn bad_config_is_refused() {
        let v: toml::Value = toml::from_str("default_region = \"XX\"").expect("toml");
        assert!(Settings::from_toml(Some(v)).is_err());
        let v: toml::Value = toml::from_str("[attributes.a]\ntype = \"enum\"").expect("toml");
        assert!(Settings::from_toml(Some(v)).is_err());
        let v: toml::Value = toml::from_str("unknown = 1").expect("toml");
        assert!(Settings::from_toml(Some(v)).is_err());
    }
}
