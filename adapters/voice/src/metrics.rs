//! The voice channel's Prometheus metrics: process-wide counters and gauges that every SIP
//! engine of the process adds to (like the RTP counters of
//! [`crate::media_session::media_stats`]), rendered on core's `/metrics` through
//! [`MetricsSource`]. Label values come from fixed sets only.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use switchboard_core::metrics::MetricsSource;

use crate::media_session::media_stats;

/// Call, registration and SIP message counters of this process.
#[derive(Debug)]
pub struct VoiceStats {
    /// Inbound trunk calls the hub answered (they enter the IVR).
    pub calls_offered: AtomicU64,
    /// Calls an agent's phone answered (bridged to the caller).
    pub calls_answered: AtomicU64,
    /// Calls the caller hung up before an agent answered (in the IVR or the queue).
    pub calls_abandoned: AtomicU64,
    /// Calls up now (caller leg answered, not yet ended).
    pub active_calls: AtomicI64,
    /// SIP users with a live registration in this process's registrars.
    pub registrations: AtomicI64,
    /// SIP users with a live binding at the registrations edge (`registrar.edge`): set, not
    /// added, by every channel that reads the edge's table (they all read the same one).
    pub edge_registrations: AtomicI64,
    /// SIP messages received (UDP datagrams and TCP messages).
    pub sip_in: AtomicU64,
    /// SIP messages sent.
    pub sip_out: AtomicU64,
    /// SIP messages that could not be parsed or were invalid (answered 4xx/5xx or dropped).
    pub sip_parse_errors: AtomicU64,
    /// RTP packets missing in the peers' sequence numbers.
    pub rtp_lost: AtomicU64,
}

static STATS: VoiceStats = VoiceStats {
    calls_offered: AtomicU64::new(0),
    calls_answered: AtomicU64::new(0),
    calls_abandoned: AtomicU64::new(0),
    active_calls: AtomicI64::new(0),
    registrations: AtomicI64::new(0),
    edge_registrations: AtomicI64::new(0),
    sip_in: AtomicU64::new(0),
    sip_out: AtomicU64::new(0),
    sip_parse_errors: AtomicU64::new(0),
    rtp_lost: AtomicU64::new(0),
};

/// The counters of this process.
pub fn voice_stats() -> &'static VoiceStats {
    &STATS
}

impl VoiceStats {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves a gauge by `delta`.
    pub fn add(gauge: &AtomicI64, delta: i64) {
        if delta != 0 {
            gauge.fetch_add(delta, Ordering::Relaxed);
        }
    }
}

/// Counts RTP packets lost from one peer's stream by its sequence numbers (RFC 3550
/// §6.4.1 / A.3, simplified): a jump forward counts the packets skipped; late, duplicate
/// and out-of-order packets, and a restart of the stream (a jump of more than
/// [`SequenceTracker::MAX_GAP`]), count nothing.
#[derive(Debug, Default, Clone)]
pub struct SequenceTracker {
    expected: Option<u16>,
}

impl SequenceTracker {
    /// Largest gap taken as loss rather than as a new stream (RFC 3550 A.1 MAX_DROPOUT).
    pub const MAX_GAP: u16 = 3000;

    /// Takes the sequence number of an accepted packet; returns how many packets went
    /// missing before it.
    pub fn on_packet(&mut self, seq: u16) -> u64 {
        let Some(expected) = self.expected else {
            self.expected = Some(seq.wrapping_add(1));
            return 0;
        };
        let gap = seq.wrapping_sub(expected);
        if gap == 0 {
            self.expected = Some(seq.wrapping_add(1));
            0
        } else if gap < Self::MAX_GAP {
            self.expected = Some(seq.wrapping_add(1));
            u64::from(gap)
        } else if gap > u16::MAX - Self::MAX_GAP {
            0 // late or duplicate
        } else {
            self.expected = Some(seq.wrapping_add(1));
            0 // the peer restarted its sequence
        }
    }

    /// Counts a packet into the process-wide loss counter.
    pub fn record(&mut self, seq: u16) {
        let lost = self.on_packet(seq);
        if lost > 0 {
            STATS.rtp_lost.fetch_add(lost, Ordering::Relaxed);
        }
    }
}

/// Renders [`voice_stats`] and the RTP counters of [`media_stats`].
#[derive(Debug, Clone, Copy, Default)]
pub struct VoiceMetrics;

fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, i128)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

impl MetricsSource for VoiceMetrics {
    fn render(&self, out: &mut String) {
        let s = voice_stats();
        let m = media_stats();
        let c = |a: &AtomicU64| i128::from(a.load(Ordering::Relaxed));
        let g = |a: &AtomicI64| i128::from(a.load(Ordering::Relaxed).max(0));
        family(
            out,
            "switchboard_voice_calls_total",
            "counter",
            "Voice calls by outcome: offered (answered by the hub from a trunk), answered (by an agent's phone), abandoned (caller hung up before an agent answered).",
            &[
                ("{outcome=\"offered\"}", c(&s.calls_offered)),
                ("{outcome=\"answered\"}", c(&s.calls_answered)),
                ("{outcome=\"abandoned\"}", c(&s.calls_abandoned)),
            ],
        );
        family(out, "switchboard_voice_active_calls", "gauge", "Voice calls up now.", &[("", g(&s.active_calls))]);
        family(
            out,
            "switchboard_voice_registrations",
            "gauge",
            "SIP users with a live registration (this node's registrar, or the edge's when registrar.edge is set).",
            &[("", g(&s.registrations) + g(&s.edge_registrations))],
        );
        family(
            out,
            "switchboard_voice_sip_messages_total",
            "counter",
            "SIP messages received and sent.",
            &[("{direction=\"in\"}", c(&s.sip_in)), ("{direction=\"out\"}", c(&s.sip_out))],
        );
        family(
            out,
            "switchboard_voice_sip_parse_errors_total",
            "counter",
            "SIP messages that could not be parsed or were invalid.",
            &[("", c(&s.sip_parse_errors))],
        );
        family(
            out,
            "switchboard_voice_rtp_packets_total",
            "counter",
            "RTP audio packets received from and sent to peers.",
            &[("{direction=\"in\"}", c(&m.rtp_in)), ("{direction=\"out\"}", c(&m.rtp_out))],
        );
        family(
            out,
            "switchboard_voice_rtp_lost_packets_total",
            "counter",
            "RTP packets missing from the peers' streams (sequence number gaps).",
            &[("", c(&s.rtp_lost))],
        );
        family(
            out,
            "switchboard_voice_rtp_send_errors_total",
            "counter",
            "RTP packets that could not be sent.",
            &[("", c(&m.rtp_send_errors))],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_gaps_count_as_loss_but_late_packets_and_restarts_do_not() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.on_packet(65_533), 0, "first packet");
        assert_eq!(t.on_packet(65_534), 0);
        assert_eq!(t.on_packet(1), 2, "65535 and 0 missing across the wrap");
        assert_eq!(t.on_packet(0), 0, "late packet");
        assert_eq!(t.on_packet(1), 0, "duplicate");
        assert_eq!(t.on_packet(2), 0);
        assert_eq!(t.on_packet(40_000), 0, "a jump this large is a new stream");
        assert_eq!(t.on_packet(40_004), 3);
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let mut out = String::new();
        VoiceMetrics.render(&mut out);
        for name in [
            "switchboard_voice_calls_total",
            "switchboard_voice_active_calls",
            "switchboard_voice_registrations",
            "switchboard_voice_sip_messages_total",
            "switchboard_voice_sip_parse_errors_total",
            "switchboard_voice_rtp_packets_total",
            "switchboard_voice_rtp_lost_packets_total",
        ] {
            assert!(out.contains(&format!("# TYPE {name} ")), "{name} missing:\n{out}");
        }
        assert!(out.contains("switchboard_voice_calls_total{outcome=\"abandoned\"} "));
    }
}
