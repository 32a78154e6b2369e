//! RTP packets (RFC 3550 §5.1): parsing without panics and building.

/// A parsed RTP packet borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// Marker bit (start of a talkspurt / first packet of a DTMF event).
    pub marker: bool,
    /// Payload type.
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Timestamp (8 kHz units for G.711).
    pub timestamp: u32,
    /// Synchronization source.
    pub ssrc: u32,
    /// Payload after CSRCs, extension and without padding.
    pub payload: &'a [u8],
}

/// Why a datagram is not RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than its header says.
    #[error("truncated RTP packet")]
    Truncated,
    /// Version is not 2.
    #[error("not RTP version 2")]
    Version,
    /// Padding longer than the packet.
    #[error("invalid RTP padding")]
    Padding,
}

impl<'a> RtpPacket<'a> {
    /// Parses a datagram.
    pub fn parse(data: &'a [u8]) -> Result<Self, RtpError> {
        if data.len() < 12 {
            return Err(RtpError::Truncated);
        }
        if data[0] >> 6 != 2 {
            return Err(RtpError::Version);
        }
        let padding = data[0] & 0x20 != 0;
        let extension = data[0] & 0x10 != 0;
        let csrc_count = usize::from(data[0] & 0x0f);
        let mut offset = 12 + 4 * csrc_count;
        if extension {
            // RFC 3550 §5.3.1: 16-bit profile, 16-bit length in 32-bit words.
            let ext = data.get(offset..offset + 4).ok_or(RtpError::Truncated)?;
            offset += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        }
        let mut end = data.len();
        if padding {
            let pad = usize::from(*data.last().ok_or(RtpError::Truncated)?);
            if pad == 0 || pad > end.saturating_sub(offset) {
                return Err(RtpError::Padding);
            }
            end -= pad;
        }
        let payload = data.get(offset..end).ok_or(RtpError::Truncated)?;
        Ok(Self {
            marker: data[1] & 0x80 != 0,
            payload_type: data[1] & 0x7f,
            sequence: u16::from_be_bytes([data[2], data[3]]),
            timestamp: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
            payload,
        })
    }

    /// Serializes a packet with no CSRCs, extension or padding.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.payload.len());
        out.push(0x80);
        out.push(u8::from(self.marker) << 7 | (self.payload_type & 0x7f));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(self.payload);
        out
    }
}

/// Numbers our outgoing stream: sequence and timestamp advance per frame.
#[derive(Debug, Clone)]
pub struct RtpSender {
    /// Our SSRC.
    pub ssrc: u32,
    sequence: u16,
    timestamp: u32,
}

impl RtpSender {
    /// Random SSRC, sequence and timestamp start (RFC 3550 §5.1).
    pub fn new() -> Self {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        Self { ssrc: rng.gen(), sequence: rng.gen(), timestamp: rng.gen() }
    }

    /// Builds the next packet carrying `payload` spanning `samples` samples.
    pub fn next(&mut self, payload_type: u8, marker: bool, payload: &[u8], samples: u32) -> Vec<u8> {
        let pkt = RtpPacket { marker, payload_type, sequence: self.sequence, timestamp: self.timestamp, ssrc: self.ssrc, payload }.build();
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples);
        pkt
    }
}

impl Default for RtpSender {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_extras() {
        let pkt = RtpPacket { marker: true, payload_type: 8, sequence: 65535, timestamp: 160, ssrc: 0xdead_beef, payload: &[1, 2, 3] };
        let bytes = pkt.build();
        assert_eq!(RtpPacket::parse(&bytes).unwrap(), pkt);
        // One CSRC, an extension of one word and two bytes of padding.
        let mut ext = vec![0x80 | 0x20 | 0x10 | 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        ext.extend_from_slice(&[9, 9, 9, 9]); // CSRC
        ext.extend_from_slice(&[0xbe, 0xde, 0, 1, 7, 7, 7, 7]); // extension
        ext.extend_from_slice(&[42, 0, 2]); // payload + padding count 2
        assert_eq!(RtpPacket::parse(&ext).unwrap().payload, &[42]);
    }

    #[test]
    fn junk_is_rejected_without_panic() {
        assert_eq!(RtpPacket::parse(&[0x80; 5]), Err(RtpError::Truncated));
        assert_eq!(RtpPacket::parse(&[0x40; 12]), Err(RtpError::Version));
        let mut pad = vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200];
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::Padding));
        pad[0] = 0x9f; // 15 CSRCs, far too short
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::Truncated));
        for len in 0..64 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 0x80) as u8).collect();
            let _ = RtpPacket::parse(&data);
        }
    }

    #[test]
    fn sender_advances() {
        let mut s = RtpSender::new();
        let a = s.next(0, false, &[0; 160], 160);
        let b = s.next(0, false, &[0; 160], 160);
        let (a, b) = (RtpPacket::parse(&a).unwrap(), RtpPacket::parse(&b).unwrap());
        assert_eq!(b.sequence, a.sequence.wrapping_add(1));
        assert_eq!(b.timestamp, a.timestamp.wrapping_add(160));
    }
}
