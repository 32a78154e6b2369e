//! Voice channel configuration: listeners, registrar, trunks, IVR flows, timers.
//!
//! Every struct denies unknown keys so a typo in `config/*.toml` is an error, not a
//! silently ignored setting. [`VoiceConfig::validate`] checks cross references (DIDs →
//! flows, menu digits → nodes, time zones) and reports every problem at once.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::VoiceError;

/// Top-level configuration of the SIP voice adapter (`type = "sip"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceConfig {
    /// UDP listen address for SIP; port 0 picks a free port (tests). `None` disables UDP.
    #[serde(default = "default_udp_listen")]
    pub udp_listen: Option<SocketAddr>,
    /// TCP listen address for SIP; port 0 picks a free port. `None` disables TCP.
    #[serde(default = "default_tcp_listen")]
    pub tcp_listen: Option<SocketAddr>,
    /// Address advertised in Via, Contact and SDP `c=` lines (public IP behind NAT).
    /// Defaults to the IP the UDP listener is bound to (or 127.0.0.1 when bound to any).
    #[serde(default)]
    pub public_ip: Option<IpAddr>,
    /// Lowest RTP port to allocate (even ports are used for RTP). 0 lets the OS choose.
    #[serde(default = "default_rtp_port_min")]
    pub rtp_port_min: u16,
    /// Highest RTP port to allocate.
    #[serde(default = "default_rtp_port_max")]
    pub rtp_port_max: u16,
    /// Registrar for the agents' phones.
    #[serde(default)]
    pub registrar: RegistrarConfig,
    /// SIP trunks that may send calls in.
    #[serde(default)]
    pub trunks: Vec<TrunkConfig>,
    /// IVR flows by name; trunks map dialled numbers to these names.
    #[serde(default)]
    pub ivr_flows: BTreeMap<String, IvrFlowConfig>,
    /// Voice settings per queue, keyed by the queue name the IVR enqueues to
    /// (overflow to an external number).
    #[serde(default)]
    pub queues: BTreeMap<String, QueueVoiceConfig>,
    /// Directory holding prompt WAV files (8 kHz mono, PCM16 or G.711); `<name>.wav`.
    #[serde(default = "default_prompts_dir")]
    pub prompts_dir: PathBuf,
    /// Directory where stereo call recordings are written (caller left, agent right).
    #[serde(default = "default_recordings_dir")]
    pub recordings_dir: PathBuf,
    /// Directory where voicemail recordings are written.
    #[serde(default = "default_voicemail_dir")]
    pub voicemail_dir: PathBuf,
    /// Prompt played as music on hold and while queued; a generated tone pattern if absent.
    #[serde(default)]
    pub music_on_hold: Option<String>,
    /// How often a queued caller hears the position / estimated-wait announcement.
    #[serde(default = "default_announce_every_secs")]
    pub announce_every_secs: u64,
    /// SIP timer values (RFC 3261 §17 and Appendix A).
    #[serde(default)]
    pub timers: SipTimerConfig,
    /// Seconds an agent's phone may ring before the offer counts as ring-no-answer.
    #[serde(default = "default_ring_timeout_secs")]
    pub ring_timeout_secs: u64,
    /// Largest SIP message accepted on any transport, in bytes.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Value of the `User-Agent`/`Server` header we send.
    #[serde(default = "default_user_agent")]
    pub user_agent: String,
}

/// Registrar settings for agents' phones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrarConfig {
    /// Digest realm presented in challenges (RFC 2617 §3.2.1).
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Where agent SIP credentials come from.
    #[serde(default)]
    pub credentials: CredentialSource,
    /// Expiry granted when the phone asks for none (seconds).
    #[serde(default = "default_expires")]
    pub default_expires: u32,
    /// Shortest expiry accepted; shorter requests get 423 Interval Too Brief.
    #[serde(default = "default_min_expires")]
    pub min_expires: u32,
    /// Longest expiry granted; longer requests are shortened.
    #[serde(default = "default_max_expires")]
    pub max_expires: u32,
    /// Lifetime of a digest nonce in seconds; older nonces are answered `stale=true`.
    #[serde(default = "default_nonce_ttl_secs")]
    pub nonce_ttl_secs: u64,
    /// The SIP edge proxy that holds the phones' registrations (cluster), e.g.
    /// `sip:127.0.0.1:15060`: Kamailio authenticates REGISTERs itself and saves the bindings
    /// with `usrloc` in the hub's database (table `location`). When set, whether a phone
    /// can ring is read from that table (unexpired binding of the SIP user), and agents are
    /// rung with an INVITE to `sip:<user>@<edge>` sent to the edge, which looks the phone
    /// up and relays. Unset (the default): this node's own registrar holds them.
    #[serde(default)]
    pub edge: Option<String>,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            realm: default_realm(),
            credentials: CredentialSource::default(),
            default_expires: default_expires(),
            min_expires: default_min_expires(),
            max_expires: default_max_expires(),
            nonce_ttl_secs: default_nonce_ttl_secs(),
            edge: None,
        }
    }
}

/// The registrations edge proxy parsed from `registrar.edge`: where INVITEs to agents go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeProxy {
    /// The edge's SIP address (IP literal and port, 5060 when none is given).
    pub addr: SocketAddr,
    /// `;transport=tcp` in the URI selects TCP; UDP otherwise.
    pub tcp: bool,
}

impl EdgeProxy {
    /// Parses `sip:<ip>[:port][;transport=udp|tcp]` (an IPv6 literal in brackets).
    pub fn parse(uri: &str) -> Result<Self, String> {
        use crate::sip::message::SipUri;
        use crate::sip::Transport;
        let parsed =
            SipUri::parse(uri).filter(|u| u.scheme == "sip").ok_or_else(|| format!("registrar.edge {uri:?}: must be a sip: URI"))?;
        if parsed.user.is_some() || uri.contains('@') {
            return Err(format!("registrar.edge {uri:?}: give the proxy's address only, without a user"));
        }
        if parsed.param("transport").is_some_and(|t| !t.eq_ignore_ascii_case("udp") && !t.eq_ignore_ascii_case("tcp")) {
            return Err(format!("registrar.edge {uri:?}: transport must be udp or tcp"));
        }
        let peer = parsed
            .peer(Transport::Udp)
            .ok_or_else(|| format!("registrar.edge {uri:?}: the host must be an IP address, with an optional port"))?;
        Ok(Self { addr: peer.addr, tcp: peer.transport == Transport::Tcp })
    }
}

impl RegistrarConfig {
    /// The edge proxy holding the registrations, if configured (checked by `validate`).
    pub fn edge_proxy(&self) -> Option<EdgeProxy> {
        self.edge.as_deref().and_then(|e| EdgeProxy::parse(e).ok())
    }
}

/// Source of agents' SIP credentials.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialSource {
    /// Credentials listed in this file.
    Inline {
        /// The agents' SIP users and passwords.
        agents: Vec<AgentCredential>,
    },
    /// Credentials supplied at run time by the hub (core's agent table).
    #[default]
    External,
}

/// One agent phone's SIP credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentCredential {
    /// SIP user part (the AOR the phone registers, e.g. `alice`).
    pub user: String,
    /// Digest password.
    pub password: SecretString,
}

/// A SIP trunk (carrier or PBX) allowed to send calls in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    /// Name used in logs and call records.
    pub name: String,
    /// Source addresses allowed without authentication (`203.0.113.7` or `203.0.113.0/24`).
    #[serde(default)]
    pub allowed_sources: Vec<IpCidr>,
    /// Digest user the trunk authenticates as (when not allowed by address).
    #[serde(default)]
    pub digest_user: Option<String>,
    /// Digest password for `digest_user`.
    #[serde(default)]
    pub digest_password: Option<SecretString>,
    /// Dialled numbers (Request-URI/To user part) mapped to IVR flow names.
    #[serde(default)]
    pub dids: BTreeMap<String, String>,
    /// Flow for numbers not listed in `dids`; unlisted numbers get 404 when absent.
    #[serde(default)]
    pub default_flow: Option<String>,
    /// Where outbound calls through this trunk go (`ip:port`), e.g. a queue's overflow
    /// to an external number. No outbound calls when absent.
    #[serde(default)]
    pub outbound_address: Option<SocketAddr>,
    /// Transport of the outbound calls: `udp` (default) or `tcp` (needs `tcp_listen`).
    #[serde(default)]
    pub outbound_transport: OutboundTransport,
}

/// Transport of a trunk's outbound calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundTransport {
    /// SIP over UDP.
    #[default]
    Udp,
    /// SIP over a TCP connection the hub opens.
    Tcp,
}

/// Voice behaviour of one queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueVoiceConfig {
    /// Seconds a caller waits in the queue before the overflow number is called as
    /// well (agents offered meanwhile keep ringing; the first to answer is bridged).
    #[serde(default = "default_overflow_after_secs")]
    pub overflow_after_secs: u64,
    /// External number (E.164 or an extension of the far end) called on overflow;
    /// no overflow when absent.
    #[serde(default)]
    pub overflow_number: Option<String>,
    /// Trunk used for the overflow call; the first trunk with an `outbound_address`
    /// when absent.
    #[serde(default)]
    pub overflow_trunk: Option<String>,
    /// Seconds the external number may ring before the attempt is given up (the
    /// caller keeps waiting for an agent).
    #[serde(default = "default_overflow_ring_secs")]
    pub overflow_ring_secs: u64,
    /// Seconds after a failed overflow call (busy, no answer, unreachable) before the
    /// number is called again while the caller still waits; 0: no retry.
    #[serde(default = "default_overflow_retry_secs")]
    pub overflow_retry_secs: u64,
    /// Overflow calls per caller at most, the first one included.
    #[serde(default = "default_overflow_attempts")]
    pub overflow_attempts: u32,
}

/// An IVR flow: a start node and named nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IvrFlowConfig {
    /// Name of the first node.
    pub start: String,
    /// Queue used by `enqueue` nodes that name none.
    #[serde(default)]
    pub default_queue: Option<String>,
    /// The nodes by name.
    pub nodes: BTreeMap<String, IvrNode>,
}

/// One IVR node; chosen in TOML by `type = "…"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum IvrNode {
    /// Play a prompt, then go on.
    Play {
        /// Prompt name (file `<prompts_dir>/<prompt>.wav`).
        prompt: String,
        /// Next node.
        next: String,
    },
    /// Play a prompt and collect one digit.
    Menu {
        /// Prompt name.
        prompt: String,
        /// Digit (`0`-`9`, `*`, `#`) → node.
        choices: BTreeMap<String, String>,
        /// Milliseconds to wait for a digit after the prompt ends.
        #[serde(default = "default_menu_timeout_ms")]
        timeout_ms: u64,
        /// Attempts (timeouts plus invalid digits) before `on_failure`.
        #[serde(default = "default_menu_attempts")]
        max_attempts: u32,
        /// Prompt played after an invalid digit.
        #[serde(default)]
        invalid_prompt: Option<String>,
        /// Prompt played after a timeout.
        #[serde(default)]
        timeout_prompt: Option<String>,
        /// Node after too many failed attempts.
        on_failure: String,
    },
    /// Add a skill requirement such as `language:es >= 1`.
    SetRequirement {
        /// Requirement `skill >= level` (level 1 when omitted).
        requirement: SkillRequirement,
        /// Next node.
        next: String,
    },
    /// Choose the queue for a later `enqueue`.
    SetQueue {
        /// Queue name (as known by core).
        queue: String,
        /// Next node.
        next: String,
    },
    /// Branch on business hours.
    Hours {
        /// IANA time zone, e.g. `Europe/Berlin`.
        timezone: String,
        /// Weekly opening slots.
        schedule: Vec<WeeklySlot>,
        /// Closed dates (`YYYY-MM-DD`) in that time zone.
        #[serde(default)]
        holidays: Vec<chrono::NaiveDate>,
        /// Node when open.
        open: String,
        /// Node when closed or on a holiday.
        closed: String,
    },
    /// Record a voicemail, then hang up.
    Voicemail {
        /// Prompt played before the beep.
        #[serde(default)]
        prompt: Option<String>,
        /// Longest recording in seconds.
        #[serde(default = "default_voicemail_secs")]
        max_seconds: u64,
    },
    /// Hand the call to core's queue.
    Enqueue {
        /// Queue; the flow's current queue or `default_queue` when absent.
        #[serde(default)]
        queue: Option<String>,
    },
    /// Optionally play a prompt, then hang up.
    Hangup {
        /// Prompt played before hanging up.
        #[serde(default)]
        prompt: Option<String>,
    },
}

/// Opening hours on some weekdays.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeeklySlot {
    /// Weekdays (`mon`, `tue`, … or full names).
    pub days: Vec<WeekdayName>,
    /// Opening time `HH:MM` (inclusive).
    pub open: TimeOfDay,
    /// Closing time `HH:MM` (exclusive).
    pub close: TimeOfDay,
}

/// A weekday parsed from `mon`…`sun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct WeekdayName(pub chrono::Weekday);

impl TryFrom<String> for WeekdayName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        chrono::Weekday::from_str(s.trim()).map(WeekdayName).map_err(|_| format!("invalid weekday {s:?}"))
    }
}

/// A time of day `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TimeOfDay(pub chrono::NaiveTime);

impl TryFrom<String> for TimeOfDay {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        chrono::NaiveTime::parse_from_str(s.trim(), "%H:%M").map(TimeOfDay).map_err(|_| format!("invalid time {s:?}, expected HH:MM"))
    }
}

/// A skill requirement `skill >= level`, e.g. `language:es >= 1`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(try_from = "String")]
pub struct SkillRequirement {
    /// Skill name, e.g. `language:es`.
    pub skill: String,
    /// Minimum level.
    pub min_level: u8,
}

impl TryFrom<String> for SkillRequirement {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl FromStr for SkillRequirement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (skill, level) = match s.split_once(">=") {
            Some((skill, level)) => (skill.trim(), level.trim()),
            None => (s.trim(), "1"),
        };
        let valid = !skill.is_empty() && skill.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.'));
        if !valid {
            return Err(format!("invalid skill name in requirement {s:?}"));
        }
        let min_level = level.parse::<u8>().map_err(|_| format!("invalid level in requirement {s:?}"))?;
        Ok(Self { skill: skill.to_string(), min_level })
    }
}

/// An IP address or CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpCidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl IpCidr {
    /// Whether `ip` is inside this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer may show up as an IPv4-mapped IPv6 address on a dual-stack socket.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = 32u32.checked_sub(u32::from(self.prefix)).and_then(|shift| u32::MAX.checked_shl(shift)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = 128u32.checked_sub(u32::from(self.prefix)).and_then(|shift| u128::MAX.checked_shl(shift)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl TryFrom<String> for IpCidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.trim(), Some(p.trim())),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("invalid address {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("invalid prefix in {s:?}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

/// SIP timers (RFC 3261 Appendix A).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipTimerConfig {
    /// T1, RTT estimate, milliseconds.
    #[serde(default = "default_t1_ms")]
    pub t1_ms: u64,
    /// T2, maximum retransmit interval for non-INVITE requests and INVITE responses.
    #[serde(default = "default_t2_ms")]
    pub t2_ms: u64,
    /// T4, maximum duration a message remains in the network.
    #[serde(default = "default_t4_ms")]
    pub t4_ms: u64,
}

impl Default for SipTimerConfig {
    fn default() -> Self {
        Self { t1_ms: default_t1_ms(), t2_ms: default_t2_ms(), t4_ms: default_t4_ms() }
    }
}

impl SipTimerConfig {
    /// Timer values as durations.
    pub fn timers(&self) -> crate::sip::transaction::Timers {
        crate::sip::transaction::Timers {
            t1: Duration::from_millis(self.t1_ms.max(1)),
            t2: Duration::from_millis(self.t2_ms.max(1)),
            t4: Duration::from_millis(self.t4_ms.max(1)),
        }
    }
}

fn default_udp_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([0, 0, 0, 0], 5060)))
}
fn default_tcp_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([0, 0, 0, 0], 5060)))
}
fn default_rtp_port_min() -> u16 {
    10000
}
fn default_rtp_port_max() -> u16 {
    20000
}
fn default_prompts_dir() -> PathBuf {
    PathBuf::from("config/prompts")
}
fn default_recordings_dir() -> PathBuf {
    PathBuf::from("data/recordings")
}
fn default_voicemail_dir() -> PathBuf {
    PathBuf::from("data/voicemail")
}
fn default_announce_every_secs() -> u64 {
    30
}
fn default_overflow_after_secs() -> u64 {
    60
}
fn default_overflow_ring_secs() -> u64 {
    30
}
fn default_overflow_retry_secs() -> u64 {
    20
}
fn default_overflow_attempts() -> u32 {
    3
}
fn default_ring_timeout_secs() -> u64 {
    20
}
fn default_max_message_size() -> usize {
    65_535
}
fn default_user_agent() -> String {
    "Switchboard".to_string()
}
fn default_realm() -> String {
    "switchboard".to_string()
}
fn default_expires() -> u32 {
    3600
}
fn default_min_expires() -> u32 {
    60
}
fn default_max_expires() -> u32 {
    7200
}
fn default_nonce_ttl_secs() -> u64 {
    300
}
fn default_menu_timeout_ms() -> u64 {
    5000
}
fn default_menu_attempts() -> u32 {
    3
}
fn default_voicemail_secs() -> u64 {
    120
}
fn default_t1_ms() -> u64 {
    500
}
fn default_t2_ms() -> u64 {
    4000
}
fn default_t4_ms() -> u64 {
    5000
}

impl Default for VoiceConfig {
    fn default() -> Self {
        Self {
            udp_listen: default_udp_listen(),
            tcp_listen: default_tcp_listen(),
            public_ip: None,
            rtp_port_min: default_rtp_port_min(),
            rtp_port_max: default_rtp_port_max(),
            registrar: RegistrarConfig::default(),
            trunks: Vec::new(),
            ivr_flows: BTreeMap::new(),
            queues: BTreeMap::new(),
            prompts_dir: default_prompts_dir(),
            recordings_dir: default_recordings_dir(),
            voicemail_dir: default_voicemail_dir(),
            music_on_hold: None,
            announce_every_secs: default_announce_every_secs(),
            timers: SipTimerConfig::default(),
            ring_timeout_secs: default_ring_timeout_secs(),
            max_message_size: default_max_message_size(),
            user_agent: default_user_agent(),
        }
    }
}

impl VoiceConfig {
    /// Checks cross references and ranges; returns every problem found.
    pub fn validate(&self) -> Result<(), VoiceError> {
        let mut errors = Vec::new();
        if self.rtp_port_min != 0 && self.rtp_port_min > self.rtp_port_max {
            errors.push("rtp_port_min is above rtp_port_max".to_string());
        }
        if !(1500..=65_535).contains(&self.max_message_size) {
            errors.push("max_message_size must be between 1500 and 65535".to_string());
        }
        let r = &self.registrar;
        if r.min_expires > r.max_expires {
            errors.push("registrar.min_expires is above registrar.max_expires".to_string());
        }
        if let Some(edge) = r.edge.as_deref() {
            match EdgeProxy::parse(edge) {
                Ok(e) if e.tcp && self.tcp_listen.is_none() => errors.push("registrar.edge over TCP needs tcp_listen".to_string()),
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        for trunk in &self.trunks {
            if trunk.allowed_sources.is_empty() && trunk.digest_user.is_none() {
                errors.push(format!("trunk {}: needs allowed_sources or digest_user", trunk.name));
            }
            if trunk.digest_user.is_some() != trunk.digest_password.is_some() {
                errors.push(format!("trunk {}: digest_user and digest_password go together", trunk.name));
            }
            if trunk.outbound_transport == OutboundTransport::Tcp && self.tcp_listen.is_none() {
                errors.push(format!("trunk {}: outbound_transport = \"tcp\" needs tcp_listen", trunk.name));
            }
            for (did, flow) in trunk.dids.iter().map(|(d, f)| (d.as_str(), f)).chain(trunk.default_flow.iter().map(|f| ("default_flow", f)))
            {
                if !self.ivr_flows.contains_key(flow) {
                    errors.push(format!("trunk {}: {did} maps to unknown IVR flow {flow}", trunk.name));
                }
            }
        }
        for (name, flow) in &self.ivr_flows {
            flow.check(name, &mut errors);
        }
        for (name, q) in &self.queues {
            if q.overflow_number.as_deref().is_some_and(|n| n.trim().is_empty()) {
                errors.push(format!("queue {name}: overflow_number is empty"));
            }
            if q.overflow_number.is_some() {
                let counts = [
                    ("overflow_after_secs", q.overflow_after_secs),
                    ("overflow_ring_secs", q.overflow_ring_secs),
                    ("overflow_attempts", q.overflow_attempts.into()),
                ];
                for (key, _) in counts.iter().filter(|(_, v)| *v == 0) {
                    errors.push(format!("queue {name}: {key} must be at least 1"));
                }
            }
            match (&q.overflow_trunk, q.overflow_number.is_some()) {
                (Some(t), _) => match self.trunks.iter().find(|tr| &tr.name == t) {
                    None => errors.push(format!("queue {name}: overflow_trunk {t} is not a configured trunk")),
                    Some(tr) if tr.outbound_address.is_none() => {
                        errors.push(format!("queue {name}: overflow_trunk {t} has no outbound_address"))
                    }
                    Some(_) => {}
                },
                (None, true) if !self.trunks.iter().any(|t| t.outbound_address.is_some()) => {
                    errors.push(format!("queue {name}: overflow_number needs a trunk with an outbound_address"))
                }
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(VoiceError::Config(errors))
        }
    }

    /// The trunk a request from `source` (and optionally authenticated as
    /// `digest_user`) belongs to.
    pub fn trunk_for_source(&self, source: IpAddr) -> Option<&TrunkConfig> {
        self.trunks.iter().find(|t| t.allowed_sources.iter().any(|c| c.contains(source)))
    }
}

impl IvrFlowConfig {
    fn check(&self, flow: &str, errors: &mut Vec<String>) {
        let check_ref = |from: &str, to: &str, errors: &mut Vec<String>| {
            if !self.nodes.contains_key(to) {
                errors.push(format!("ivr flow {flow}: node {from} refers to unknown node {to}"));
            }
        };
        check_ref("start", &self.start, errors);
        for (name, node) in &self.nodes {
            match node {
                IvrNode::Play { next, .. } | IvrNode::SetRequirement { next, .. } | IvrNode::SetQueue { next, .. } => {
                    check_ref(name, next, errors)
                }
                IvrNode::Menu { choices, on_failure, .. } => {
                    check_ref(name, on_failure, errors);
                    for (digit, to) in choices {
                        let mut chars = digit.chars();
                        let valid = matches!(chars.next(), Some('0'..='9' | '*' | '#')) && chars.next().is_none();
                        if !valid {
                            errors.push(format!("ivr flow {flow}: node {name} has invalid choice {digit:?}"));
                        }
                        check_ref(name, to, errors);
                    }
                }
                IvrNode::Hours { timezone, open, closed, schedule, .. } => {
                    if timezone.parse::<chrono_tz::Tz>().is_err() {
                        errors.push(format!("ivr flow {flow}: node {name} has unknown timezone {timezone}"));
                    }
                    for slot in schedule {
                        if slot.open.0 >= slot.close.0 {
                            errors.push(format!("ivr flow {flow}: node {name} has a slot closing before it opens"));
                        }
                    }
                    check_ref(name, open, errors);
                    check_ref(name, closed, errors);
                }
                IvrNode::Enqueue { queue } => {
                    if queue.is_none() && self.default_queue.is_none() {
                        // Allowed only if a set_queue node precedes it; checked at run time.
                    }
                }
                IvrNode::Voicemail { .. } | IvrNode::Hangup { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
udp_listen = "127.0.0.1:0"
tcp_listen = "127.0.0.1:0"
public_ip = "127.0.0.1"
rtp_port_min = 0
ring_timeout_secs = 15

[registrar]
realm = "example.org"
credentials = { type = "inline", agents = [ { user = "alice", password = "secret" } ] }

[[trunks]]
name = "carrier"
allowed_sources = ["127.0.0.1", "10.0.0.0/8"]
dids = { "+4930123" = "main" }

[ivr_flows.main]
start = "hours"
default_queue = "support"

[ivr_flows.main.nodes.hours]
type = "hours"
timezone = "Europe/Berlin"
schedule = [ { days = ["mon", "tue", "wed", "thu", "fri"], open = "08:00", close = "18:00" } ]
holidays = ["2026-12-25"]
open = "menu"
closed = "vm"

[ivr_flows.main.nodes.menu]
type = "menu"
prompt = "welcome"
choices = { "1" = "english", "2" = "spanish" }
on_failure = "english"

[ivr_flows.main.nodes.english]
type = "enqueue"

[ivr_flows.main.nodes.spanish]
type = "set_requirement"
requirement = "language:es >= 1"
next = "english"

[ivr_flows.main.nodes.vm]
type = "voicemail"
"#;

    #[test]
    fn sample_parses_and_validates() {
        let cfg: VoiceConfig = toml::from_str(SAMPLE).expect("sample config parses");
        cfg.validate().expect("sample config is valid");
        assert_eq!(cfg.timers.t1_ms, 500);
        assert_eq!(cfg.max_message_size, 65_535);
        assert!(cfg.trunk_for_source("10.1.2.3".parse().unwrap()).is_some());
        assert!(cfg.trunk_for_source("11.1.2.3".parse().unwrap()).is_none());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<VoiceConfig>("udp_listn = \"127.0.0.1:0\"");
        assert!(err.is_err());
    }

    #[test]
    fn queue_overflow_needs_a_trunk_with_an_outbound_address() {
        let mut cfg: VoiceConfig = toml::from_str(SAMPLE).unwrap();
        let rule: QueueVoiceConfig = toml::from_str("overflow_after_secs = 30\noverflow_number = \"+4930555\"").unwrap();
        assert_eq!(rule.overflow_ring_secs, 30);
        assert_eq!((rule.overflow_retry_secs, rule.overflow_attempts), (20, 3), "failed overflow calls are retried by default");
        cfg.queues.insert("support".into(), rule.clone());
        let errors = |cfg: &VoiceConfig| match cfg.validate() {
            Err(VoiceError::Config(e)) => e,
            Ok(()) => Vec::new(),
            Err(other) => panic!("{other:?}"),
        };
        assert_eq!(errors(&cfg).len(), 1, "no trunk can call out: {:?}", errors(&cfg));
        cfg.trunks[0].outbound_address = Some("192.0.2.7:5060".parse().unwrap());
        assert!(errors(&cfg).is_empty(), "{:?}", errors(&cfg));
        cfg.queues.insert("sales".into(), QueueVoiceConfig { overflow_trunk: Some("nope".into()), overflow_after_secs: 0, ..rule.clone() });
        assert_eq!(errors(&cfg).len(), 2, "{:?}", errors(&cfg));
        cfg.queues.insert("sales".into(), QueueVoiceConfig { overflow_attempts: 0, ..rule });
        assert_eq!(errors(&cfg), ["queue sales: overflow_attempts must be at least 1"]);
        cfg.queues.remove("sales");
        cfg.trunks[0].outbound_transport = OutboundTransport::Tcp;
        assert!(errors(&cfg).is_empty(), "{:?}", errors(&cfg));
        cfg.tcp_listen = None;
        assert_eq!(errors(&cfg), [format!("trunk {}: outbound_transport = \"tcp\" needs tcp_listen", cfg.trunks[0].name)]);
        assert!(toml::from_str::<QueueVoiceConfig>("overflow_numbr = \"1\"").is_err(), "unknown keys are rejected");
    }

    #[test]
    fn all_errors_are_reported_together() {
        let mut cfg: VoiceConfig = toml::from_str(SAMPLE).unwrap();
        cfg.trunks[0].dids.insert("1".into(), "nope".into());
        if let Some(flow) = cfg.ivr_flows.get_mut("main") {
            flow.start = "missing".into();
        }
        match cfg.validate() {
            Err(VoiceError::Config(errors)) => assert_eq!(errors.len(), 2, "{errors:?}"),
            other => panic!("expected config errors, got {other:?}"),
        }
    }

    #[test]
    fn requirement_and_cidr_parse() {
        let r: SkillRequirement = "language:es >= 3".parse().unwrap();
        assert_eq!((r.skill.as_str(), r.min_level), ("language:es", 3));
        let r: SkillRequirement = "billing".parse().unwrap();
        assert_eq!(r.min_level, 1);
        assert!("bad skill >= x".parse::<SkillRequirement>().is_err());
        let c = IpCidr::try_from("192.168.0.0/16".to_string()).unwrap();
        assert!(c.contains("192.168.4.5".parse().unwrap()));
        assert!(!c.contains("192.169.4.5".parse().unwrap()));
        assert!(IpCidr::try_from("1.2.3.4/33".to_string()).is_err());
        let all = IpCidr::try_from("0.0.0.0/0".to_string()).unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn edge_proxy_uris_parse_or_say_why_not() {
        let e = EdgeProxy::parse("sip:127.0.0.1:15060").unwrap();
        assert_eq!((e.addr, e.tcp), ("127.0.0.1:15060".parse().unwrap(), false));
        assert_eq!(EdgeProxy::parse("sip:10.0.0.5").unwrap().addr, "10.0.0.5:5060".parse().unwrap());
        assert!(EdgeProxy::parse("sip:[::1]:5070;transport=TCP").unwrap().tcp);
        for bad in ["127.0.0.1:5060", "sip:edge.example.org", "sip:alice@127.0.0.1", "sip:127.0.0.1;transport=sctp", "sip:"] {
            assert!(EdgeProxy::parse(bad).is_err(), "{bad}");
        }
        let mut cfg: VoiceConfig = toml::from_str(SAMPLE).unwrap();
        cfg.registrar.edge = Some("sip:kamailio".into());
        match cfg.validate() {
            Err(VoiceError::Config(errors)) => assert!(errors.iter().any(|e| e.contains("registrar.edge")), "{errors:?}"),
            other => panic!("expected a config error, got {other:?}"),
        }
        cfg.registrar.edge = Some("sip:127.0.0.1:15060".into());
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.registrar.edge_proxy().map(|e| e.addr.port()), Some(15060));
    }
}
