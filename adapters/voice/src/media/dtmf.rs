//! RFC 4733 telephone-event payloads: parsing, digit reporting once per event
//! (end packets are sent three times, §2.5.1.4), and building events to send.

/// One telephone-event payload (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code (0-9, 10 `*`, 11 `#`, 12-15 `A`-`D`).
    pub event: u8,
    /// End bit.
    pub end: bool,
    /// Volume in -dBm0.
    pub volume: u8,
    /// Duration in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses the 4-byte payload.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let p = payload.get(..4)?;
        Some(Self { event: p[0], end: p[1] & 0x80 != 0, volume: p[1] & 0x3f, duration: u16::from_be_bytes([p[2], p[3]]) })
    }

    /// Serializes the payload.
    pub fn build(&self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [self.event, u8::from(self.end) << 7 | (self.volume & 0x3f), d[0], d[1]]
    }
}

/// The DTMF character for an event code.
pub fn event_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// The event code for a DTMF character.
pub fn digit_event(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        _ => None,
    }
}

/// What a telephone-event packet (or the lack of one) told the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfEvent {
    /// A new key went down (the first packet of an event): the caller is pressing a
    /// key, the digit follows. A digit timer must not expire in between.
    KeyDown,
    /// A key press completed: report the digit (exactly once per event).
    Digit(char),
}

/// How long an event may go without packets before it counts as completed though no
/// end packet arrived (updates come every 50 ms at most, RFC 4733 §2.5.1.2).
pub const LOST_END_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// Silence after an ended event before a packet reusing its timestamp counts as a new
/// press rather than a late (reordered) update of the old one.
const REPLAY_GAP: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
struct Current {
    timestamp: u32,
    code: u8,
    duration: u16,
    reported: bool,
    last_packet: std::time::Instant,
}

/// Turns a stream of telephone-event packets into digits, one per event.
///
/// An event is identified by its RTP timestamp (§2.5.1.1: all packets of one event
/// share it). The digit is reported on the first end packet; if the end packets were
/// all lost, it is reported when the next event starts or, at the latest,
/// [`LOST_END_AFTER`] after the event's last packet ([`Self::on_idle`]). A packet with
/// the timestamp of an event already ended, but a shorter duration and no end bit, is
/// a new press (a replayed capture reuses timestamps).
#[derive(Debug, Default, Clone)]
pub struct DtmfReceiver {
    current: Option<Current>,
}

impl DtmfReceiver {
    /// A receiver with no event seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one telephone-event payload with its RTP timestamp, received at `now`;
    /// returns what happened (at most a completed earlier digit, a key-down and this
    /// event's digit, in that order).
    pub fn on_packet(&mut self, timestamp: u32, payload: &[u8], now: std::time::Instant) -> Vec<DtmfEvent> {
        let Some(ev) = TelephoneEvent::parse(payload) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let replayed = |c: &Current| c.reported && !ev.end && ev.duration < c.duration && now.duration_since(c.last_packet) >= REPLAY_GAP;
        let same_event = self.current.is_some_and(|c| c.timestamp == timestamp && !replayed(&c));
        if !same_event {
            // A new event: the previous one, if its end packets were all lost, completes now.
            out.extend(self.flush());
            self.current = Some(Current { timestamp, code: ev.event, duration: 0, reported: false, last_packet: now });
            out.push(DtmfEvent::KeyDown);
        }
        if let Some(c) = self.current.as_mut() {
            c.last_packet = now;
            c.duration = c.duration.max(ev.duration);
            if ev.end && !c.reported {
                c.reported = true;
                out.extend(event_digit(c.code).map(DtmfEvent::Digit));
            }
        }
        out
    }

    /// The digit of an event whose end packets never came, once it has been silent
    /// for [`LOST_END_AFTER`].
    pub fn on_idle(&mut self, now: std::time::Instant) -> Option<char> {
        match self.current {
            Some(c) if !c.reported && now.duration_since(c.last_packet) >= LOST_END_AFTER => self.flush().and_then(|e| match e {
                DtmfEvent::Digit(d) => Some(d),
                DtmfEvent::KeyDown => None,
            }),
            _ => None,
        }
    }

    /// Completes the current event if its digit was not reported yet.
    fn flush(&mut self) -> Option<DtmfEvent> {
        let c = self.current.as_mut().filter(|c| !c.reported)?;
        c.reported = true;
        event_digit(c.code).map(DtmfEvent::Digit)
    }
}

/// Parses a SIP INFO body carrying DTMF (`application/dtmf-relay`: `Signal=5`, or
/// `application/dtmf`: `5`), the fallback for phones without RFC 4733.
pub fn parse_info_body(content_type: &str, body: &[u8]) -> Option<char> {
    let text = std::str::from_utf8(body).ok()?;
    let ct = content_type.to_ascii_lowercase();
    let value = if ct.starts_with("application/dtmf-relay") {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
        })?
    } else if ct.starts_with("application/dtmf") {
        text.trim()
    } else {
        return None;
    };
    let mut chars = value.chars();
    let c = chars.next()?.to_ascii_uppercase();
    if chars.next().is_some() {
        // Some phones send the event number ("10" for '*').
        return value.parse::<u8>().ok().and_then(event_digit);
    }
    digit_event(c).and(Some(c))
}

/// Payloads for sending `digit` as RFC 4733 events: `n` updates then three end packets.
pub fn event_packets(digit: char, updates: u16) -> Vec<TelephoneEvent> {
    let Some(event) = digit_event(digit) else {
        return Vec::new();
    };
    let mut out: Vec<TelephoneEvent> =
        (1..=updates).map(|i| TelephoneEvent { event, end: false, volume: 10, duration: i.saturating_mul(160) }).collect();
    for _ in 0..3 {
        out.push(TelephoneEvent { event, end: true, volume: 10, duration: updates.saturating_add(1).saturating_mul(160) });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn digits(events: Vec<DtmfEvent>) -> Vec<char> {
        events.into_iter().filter_map(|e| if let DtmfEvent::Digit(d) = e { Some(d) } else { None }).collect()
    }

    #[test]
    fn one_digit_per_event_despite_three_end_packets() {
        let mut rx = DtmfReceiver::new();
        let now = Instant::now();
        let mut events = Vec::new();
        for (ts, digit) in [(1000u32, '5'), (5000, '#')] {
            for ev in event_packets(digit, 4) {
                events.extend(rx.on_packet(ts, &ev.build(), now));
            }
        }
        let key_downs = events.iter().filter(|e| **e == DtmfEvent::KeyDown).count();
        assert_eq!((key_downs, digits(events)), (2, vec!['5', '#']));
    }

    #[test]
    fn lost_end_packets_report_on_next_event_or_after_silence() {
        let mut rx = DtmfReceiver::new();
        let t = Instant::now();
        let start = TelephoneEvent { event: 1, end: false, volume: 10, duration: 160 };
        assert_eq!(rx.on_packet(10, &start.build(), t), vec![DtmfEvent::KeyDown]);
        // The next event's first packet is already an end packet: both digits come out.
        let next = TelephoneEvent { event: 2, end: true, volume: 10, duration: 800 };
        assert_eq!(digits(rx.on_packet(20, &next.build(), t)), vec!['1', '2']);
        assert!(digits(rx.on_packet(20, &next.build(), t)).is_empty(), "end retransmission");
        assert!(rx.on_packet(40, &[1, 2], t).is_empty(), "short payload ignored");
        // An event whose end packets are all lost completes after LOST_END_AFTER.
        let three = TelephoneEvent { event: 3, end: false, volume: 10, duration: 160 };
        rx.on_packet(60, &three.build(), t);
        assert_eq!(rx.on_idle(t + Duration::from_millis(100)), None, "still pressed");
        assert_eq!(rx.on_idle(t + LOST_END_AFTER), Some('3'));
        assert_eq!(rx.on_idle(t + LOST_END_AFTER * 2), None, "once");
    }

    #[test]
    fn a_replayed_event_with_the_same_timestamp_is_a_new_press() {
        let mut rx = DtmfReceiver::new();
        let now = Instant::now();
        let mut got = Vec::new();
        for at in [now, now + Duration::from_secs(1)] {
            for ev in event_packets('1', 4) {
                got.extend(digits(rx.on_packet(777, &ev.build(), at)));
            }
        }
        // A late update of the first press, reordered behind its end packets, is not one.
        let late = TelephoneEvent { event: 1, end: false, volume: 10, duration: 320 };
        got.extend(digits(rx.on_packet(777, &late.build(), now + Duration::from_millis(1010))));
        assert_eq!(got, vec!['1', '1']);
    }

    #[test]
    fn info_bodies() {
        assert_eq!(parse_info_body("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n"), Some('5'));
        assert_eq!(parse_info_body("application/dtmf-relay", b"Signal= *\r\n"), Some('*'));
        assert_eq!(parse_info_body("application/dtmf", b"11"), Some('#'));
        assert_eq!(parse_info_body("text/plain", b"5"), None);
        assert_eq!(parse_info_body("application/dtmf", b"x"), None);
    }
}
