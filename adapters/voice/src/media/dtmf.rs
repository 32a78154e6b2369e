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

/// Turns a stream of telephone-event packets into digits, one per event.
///
/// An event is identified by its RTP timestamp (§2.5.1.1: all packets of one event
/// share it). The digit is reported on the first end packet; if the end packets
/// were all lost, it is reported when the next event starts.
#[derive(Debug, Default, Clone)]
pub struct DtmfReceiver {
    current: Option<(u32, u8, bool)>,
}

impl DtmfReceiver {
    /// A receiver with no event seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one telephone-event payload with its RTP timestamp; returns a digit
    /// when an event completes.
    pub fn on_packet(&mut self, timestamp: u32, payload: &[u8]) -> Option<char> {
        let ev = TelephoneEvent::parse(payload)?;
        let mut out = None;
        match self.current {
            Some((ts, _, _)) if ts == timestamp => {}
            Some((_, prev, reported)) => {
                if !reported {
                    out = event_digit(prev);
                }
                self.current = Some((timestamp, ev.event, false));
            }
            None => self.current = Some((timestamp, ev.event, false)),
        }
        if ev.end {
            if let Some((ts, code, reported)) = self.current {
                if !reported {
                    self.current = Some((ts, code, true));
                    return out.or_else(|| event_digit(code));
                }
            }
        }
        out
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

    #[test]
    fn one_digit_per_event_despite_three_end_packets() {
        let mut rx = DtmfReceiver::new();
        let mut digits = Vec::new();
        for (ts, digit) in [(1000u32, '5'), (5000, '#')] {
            for ev in event_packets(digit, 4) {
                digits.extend(rx.on_packet(ts, &ev.build()));
            }
        }
        assert_eq!(digits, vec!['5', '#']);
    }

    #[test]
    fn lost_end_packets_report_on_next_event() {
        let mut rx = DtmfReceiver::new();
        let start = TelephoneEvent { event: 1, end: false, volume: 10, duration: 160 };
        assert_eq!(rx.on_packet(10, &start.build()), None);
        let next = TelephoneEvent { event: 2, end: true, volume: 10, duration: 800 };
        assert_eq!(rx.on_packet(20, &next.build()), Some('1'));
        assert_eq!(rx.on_packet(30, &next.build()), Some('2'));
        assert_eq!(rx.on_packet(40, &[1, 2]), None, "short payload ignored");
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
