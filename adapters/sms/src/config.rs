//! `[[channels]] type = "smpp"`: one SMPP provider account (one bind), with a default for
//! every key but the SMSC's address and credentials. Documented with examples in
//! `config/examples/sms.toml`.

use crate::keywords::{self, KeywordSet};
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;

/// How long messages travel.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Concatenation {
    /// A user data header with an 8-bit reference in each part (esm_class UDHI).
    Udh,
    /// The `sar_msg_ref_num` / `sar_total_segments` / `sar_segment_seqnum` TLVs.
    Sar,
    /// One submit_sm with the whole text in `message_payload`; the SMSC splits it.
    Payload,
}

/// How the channel binds to the SMSC.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BindMode {
    /// One bind_transceiver connection sends and receives.
    #[default]
    Transceiver,
    /// Two connections (SMPP 3.4 §2.2): a bind_transmitter for submit_sm and a
    /// bind_receiver on which receipts and mobile-originated messages arrive, each with its
    /// own reconnect.
    TxRx,
}

/// Settings of one SMPP channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmppConfig {
    /// Adapter kind; always `smpp`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Instance name (logs, the bind lease, outbox routing). Defaults to `smpp-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// SMSC host name or address.
    pub host: String,
    /// SMSC port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// `system_id` of the account.
    pub system_id: String,
    /// Password of the account (at most 8 characters in SMPP 3.4).
    pub password: SecretString,
    /// `transceiver` (one connection) or `tx_rx` (a transmitter and a receiver bind, for
    /// SMSCs that offer no transceiver or deliver on a separate connection).
    #[serde(default)]
    pub bind: BindMode,
    /// `system_type` sent in the bind (often empty).
    #[serde(default)]
    pub system_type: String,
    /// Our number or sender id: the source address of every submit_sm.
    pub source_address: String,
    /// TON of the source address (1 international, 5 alphanumeric).
    #[serde(default = "default_one")]
    pub source_ton: u8,
    /// NPI of the source address (1 E.164, 0 unknown).
    #[serde(default = "default_one")]
    pub source_npi: u8,
    /// Requests sent and not yet answered, at most (the window, keyed by sequence_number).
    #[serde(default = "default_window")]
    pub window: u32,
    /// submit_sm per second, at most (the provider's contracted throughput).
    #[serde(default = "default_mps")]
    pub max_per_second: u32,
    /// Seconds between enquire_link requests on an idle bind.
    #[serde(default = "default_enquire")]
    pub enquire_link_secs: u64,
    /// Seconds to wait for a response before the request counts as unanswered. A submit_sm
    /// unanswered is marked `unknown` and never resent automatically.
    #[serde(default = "default_response_timeout")]
    pub response_timeout_secs: u64,
    /// Milliseconds of pause after ESME_RTHROTTLED or ESME_RMSGQFUL (doubling while they
    /// continue, up to 30 s).
    #[serde(default = "default_throttle_backoff")]
    pub throttle_backoff_ms: u64,
    /// First reconnect delay after a drop, in milliseconds (doubles up to `reconnect_max_ms`).
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay, in milliseconds.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// How long messages travel: `udh`, `sar` or `payload`.
    #[serde(default = "default_concatenation")]
    pub concatenation: Concatenation,
    /// Ask the SMSC for delivery receipts.
    #[serde(default = "default_true")]
    pub registered_delivery: bool,
    /// Queue every SMS enters (by name); none = the queue entry rules decide.
    #[serde(default)]
    pub queue: Option<String>,
    /// Seconds a node's lease on the bind lasts; renewed every third of it. Another node
    /// takes the bind over this long after the holder died.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Consent keywords and replies per language (defaults: `en` and `zh`).
    #[serde(default = "keywords::default_sets")]
    pub keywords: BTreeMap<String, KeywordSet>,
    /// Whether an opted-out number also gets no agent replies. By default replies in an
    /// open conversation are service messages and still go out.
    #[serde(default)]
    pub block_replies_after_stop: bool,
}

fn default_port() -> u16 {
    2775
}
fn default_one() -> u8 {
    1
}
fn default_window() -> u32 {
    10
}
fn default_mps() -> u32 {
    100
}
fn default_enquire() -> u64 {
    30
}
fn default_response_timeout() -> u64 {
    10
}
fn default_throttle_backoff() -> u64 {
    1000
}
fn default_reconnect_min() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    30_000
}
fn default_concatenation() -> Concatenation {
    Concatenation::Udh
}
fn default_true() -> bool {
    true
}
fn default_lease() -> u64 {
    15
}

impl SmppConfig {
    /// Parses and checks a `[[channels]]` table.
    pub fn from_toml(table: toml::Value) -> Result<SmppConfig, String> {
        let c: SmppConfig = table.try_into().map_err(|e: toml::de::Error| e.message().to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// Checks value ranges; every problem is reported together.
    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if self.kind != "smpp" {
            errs.push(format!("type must be `smpp`, not `{}`", self.kind));
        }
        if self.host.trim().is_empty() {
            errs.push("host must not be empty".into());
        }
        if self.system_id.is_empty() || self.system_id.len() > 15 {
            errs.push("system_id must be 1..=15 characters".into());
        }
        if secrecy::ExposeSecret::expose_secret(&self.password).len() > 8 {
            errs.push("password must be at most 8 characters (SMPP 3.4)".into());
        }
        if self.system_type.len() > 12 {
            errs.push("system_type must be at most 12 characters".into());
        }
        if self.source_address.is_empty() || self.source_address.len() > 20 {
            errs.push("source_address must be 1..=20 characters".into());
        }
        if !(1..=1000).contains(&self.window) {
            errs.push("window must be between 1 and 1000".into());
        }
        if !(1..=100_000).contains(&self.max_per_second) {
            errs.push("max_per_second must be between 1 and 100000".into());
        }
        if !(1..=3600).contains(&self.enquire_link_secs) {
            errs.push("enquire_link_secs must be between 1 and 3600".into());
        }
        if !(1..=50).contains(&self.response_timeout_secs) {
            errs.push("response_timeout_secs must be between 1 and 50 (the outbox gives a delivery 60 s)".into());
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            errs.push("reconnect_min_ms must be positive and at most reconnect_max_ms".into());
        }
        if !(3..=600).contains(&self.lease_secs) {
            errs.push("lease_secs must be between 3 and 600".into());
        }
        for (lang, set) in &self.keywords {
            if set.stop_reply.trim().is_empty() {
                errs.push(format!("keywords.{lang}.stop_reply must not be empty"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(extra: &str) -> toml::Value {
        toml::from_str(&format!(
            "type = \"smpp\"\nhost = \"127.0.0.1\"\nsystem_id = \"hub\"\npassword = \"pw\"\nsource_address = \"4930123\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let c = SmppConfig::from_toml(table("")).unwrap();
        assert_eq!((c.port, c.window, c.concatenation), (2775, 10, Concatenation::Udh));
        assert!(c.keywords.contains_key("zh"));
        let e = SmppConfig::from_toml(table("windw = 5")).unwrap_err();
        assert!(e.contains("windw"), "{e}");
        let e = SmppConfig::from_toml(table("window = 0\nlease_secs = 1")).unwrap_err();
        assert!(e.contains("window") && e.contains("lease_secs"), "{e}");
        // The password never shows in Debug output.
        assert!(!format!("{c:?}").contains("\"pw\""));
    }

    #[test]
    fn the_documented_example_parses() {
        let doc: toml::Value = toml::from_str(include_str!("../../../config/examples/sms.toml")).unwrap();
        let entry = doc["channels"][0].clone();
        crate::http::HttpConfig::from_toml(doc["channels"][1].clone()).unwrap();
        let c = SmppConfig::from_toml(entry).unwrap();
        assert_eq!(c.keywords["zh"].stop, vec!["退订", "TD", "T"]);
        assert_eq!(c.keywords, crate::keywords::default_sets(), "the example shows the defaults");
    }
}
