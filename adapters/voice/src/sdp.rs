//! SDP offer/answer (RFC 4566, RFC 3264) for G.711 audio with RFC 4733 telephone-events,
//! including hold detection (`a=sendonly`/`a=inactive`, or the RFC 2543 `c=0.0.0.0`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// SDP problems; an INVITE with an unusable offer is answered 488.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Not SDP or missing mandatory lines.
    #[error("malformed SDP: {0}")]
    Malformed(&'static str),
    /// No audio stream with PCMU or PCMA.
    #[error("no acceptable audio codec")]
    NoCommonCodec,
}

/// Media direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Both ways (default).
    SendRecv,
    /// The offerer only sends: it puts us on hold.
    SendOnly,
    /// The offerer only receives.
    RecvOnly,
    /// No media either way.
    Inactive,
}

impl Direction {
    fn attr(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answer takes for this offered direction (RFC 3264 §6.1).
    pub fn answer(self) -> Self {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }
}

/// G.711 variants we speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// µ-law, static payload type 0.
    Pcmu,
    /// A-law, static payload type 8.
    Pcma,
}

impl Codec {
    /// Static RTP payload type (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// Encoding name in `a=rtpmap`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }
}

/// The audio part of a parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioMedia {
    /// Connection address (media-level `c=` over session-level).
    pub address: IpAddr,
    /// RTP port (0 = stream rejected).
    pub port: u16,
    /// Offered payload types in preference order.
    pub formats: Vec<u8>,
    /// `a=rtpmap` entries: payload type → (encoding, clock rate).
    pub rtpmap: Vec<(u8, String, u32)>,
    /// Direction (media-level over session-level).
    pub direction: Direction,
}

/// A parsed SDP body (only what G.711 telephony needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// The first `m=audio` stream, if any.
    pub audio: Option<AudioMedia>,
}

impl SessionDescription {
    /// Parses an SDP body.
    pub fn parse(body: &[u8]) -> Result<Self, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::Malformed("not UTF-8"))?;
        let mut session_addr: Option<IpAddr> = None;
        let mut session_dir = Direction::SendRecv;
        let mut audio: Option<AudioMedia> = None;
        let mut in_audio = false;
        let mut seen_audio = false;
        let mut saw_version = false;
        for line in text.lines().map(str::trim_end) {
            let Some((kind, value)) = line.split_once('=') else {
                continue;
            };
            match kind {
                "v" => saw_version = value.trim() == "0",
                "c" => {
                    // c=IN IP4 192.0.2.1
                    let addr = value.split_whitespace().nth(2).and_then(|a| a.split('/').next()).and_then(|a| a.parse::<IpAddr>().ok());
                    match (in_audio, audio.as_mut()) {
                        (true, Some(a)) => {
                            if let Some(addr) = addr {
                                a.address = addr;
                            }
                        }
                        _ if !seen_audio => session_addr = addr.or(session_addr),
                        _ => {}
                    }
                }
                "m" => {
                    let mut parts = value.split_whitespace();
                    let media = parts.next().unwrap_or_default();
                    let port = parts.next().and_then(|p| p.split('/').next()?.parse::<u16>().ok());
                    let proto = parts.next().unwrap_or_default();
                    in_audio = media == "audio" && !seen_audio && proto.starts_with("RTP/AVP");
                    if in_audio {
                        seen_audio = true;
                        let port = port.ok_or(SdpError::Malformed("m= port"))?;
                        audio = Some(AudioMedia {
                            address: session_addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                            port,
                            formats: parts.filter_map(|f| f.parse().ok()).collect(),
                            rtpmap: Vec::new(),
                            direction: session_dir,
                        });
                    }
                }
                "a" => {
                    let dir = match value {
                        "sendrecv" => Some(Direction::SendRecv),
                        "sendonly" => Some(Direction::SendOnly),
                        "recvonly" => Some(Direction::RecvOnly),
                        "inactive" => Some(Direction::Inactive),
                        _ => None,
                    };
                    match (in_audio, audio.as_mut()) {
                        (true, Some(a)) => {
                            if let Some(d) = dir {
                                a.direction = d;
                            } else if let Some(map) = value.strip_prefix("rtpmap:") {
                                if let Some(entry) = parse_rtpmap(map) {
                                    a.rtpmap.push(entry);
                                }
                            }
                        }
                        (false, _) if !seen_audio => {
                            if let Some(d) = dir {
                                session_dir = d;
                            }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        if !saw_version {
            return Err(SdpError::Malformed("v=0 missing"));
        }
        Ok(Self { audio })
    }
}

fn parse_rtpmap(map: &str) -> Option<(u8, String, u32)> {
    let (pt, rest) = map.split_once(char::is_whitespace)?;
    let mut enc = rest.trim().split('/');
    let name = enc.next()?.to_ascii_uppercase();
    let rate = enc.next()?.parse().ok()?;
    Some((pt.parse().ok()?, name, rate))
}

/// The outcome of negotiating one side's SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Codec used both ways.
    pub codec: Codec,
    /// Payload type of telephone-event, if both sides have it.
    pub telephone_event: Option<u8>,
    /// Where the peer wants RTP (may be 0.0.0.0 when on hold; latching corrects NAT).
    pub remote: SocketAddr,
    /// The peer's direction.
    pub direction: Direction,
}

impl Negotiated {
    /// Whether the peer put the stream on hold (RFC 3264 §8.4; `c=0.0.0.0` is the
    /// RFC 2543 way still sent by old phones).
    pub fn is_hold(&self) -> bool {
        matches!(self.direction, Direction::SendOnly | Direction::Inactive) || self.remote.ip().is_unspecified()
    }
}

fn encoding_of(audio: &AudioMedia, pt: u8) -> Option<(String, u32)> {
    audio.rtpmap.iter().find(|(p, _, _)| *p == pt).map(|(_, n, r)| (n.clone(), *r)).or(match pt {
        0 => Some(("PCMU".into(), 8000)),
        8 => Some(("PCMA".into(), 8000)),
        _ => None,
    })
}

/// Picks the first offered G.711 codec and telephone-event/8000 (RFC 3264 §6.1).
pub fn negotiate(sdp: &SessionDescription) -> Result<Negotiated, SdpError> {
    let audio = sdp.audio.as_ref().ok_or(SdpError::NoCommonCodec)?;
    if audio.port == 0 {
        return Err(SdpError::NoCommonCodec);
    }
    let codec = audio
        .formats
        .iter()
        .find_map(|pt| match encoding_of(audio, *pt) {
            Some((n, 8000)) if n == "PCMU" => Some(Codec::Pcmu),
            Some((n, 8000)) if n == "PCMA" => Some(Codec::Pcma),
            _ => None,
        })
        .ok_or(SdpError::NoCommonCodec)?;
    let telephone_event =
        audio.formats.iter().copied().find(|pt| encoding_of(audio, *pt).is_some_and(|(n, r)| n == "TELEPHONE-EVENT" && r == 8000));
    Ok(Negotiated { codec, telephone_event, remote: SocketAddr::new(audio.address, audio.port), direction: audio.direction })
}

/// Renders our SDP (offer or answer) for one audio stream.
pub fn render(
    local: SocketAddr,
    session_id: u64,
    version: u64,
    codecs: &[Codec],
    telephone_event: Option<u8>,
    direction: Direction,
) -> String {
    let family = if local.is_ipv4() { "IP4" } else { "IP6" };
    let ip = local.ip();
    let mut pts: Vec<String> = codecs.iter().map(|c| c.payload_type().to_string()).collect();
    if let Some(te) = telephone_event {
        pts.push(te.to_string());
    }
    let mut s = format!(
        "v=0\r\no=switchboard {session_id} {version} IN {family} {ip}\r\ns=switchboard\r\n\
c=IN {family} {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP {}\r\n",
        local.port(),
        pts.join(" ")
    );
    for c in codecs {
        s.push_str(&format!("a=rtpmap:{} {}/8000\r\n", c.payload_type(), c.name()));
    }
    if let Some(te) = telephone_event {
        s.push_str(&format!("a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"));
    }
    s.push_str(&format!("a=ptime:20\r\na={}\r\n", direction.attr()));
    s
}

/// Answers an offer: the negotiated result plus our SDP answer body.
pub fn answer_offer(offer: &[u8], local: SocketAddr, session_id: u64, version: u64) -> Result<(Negotiated, String), SdpError> {
    let neg = negotiate(&SessionDescription::parse(offer)?)?;
    let body = render(local, session_id, version, &[neg.codec], neg.telephone_event, neg.direction.answer());
    Ok((neg, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 9 8 0 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n";

    #[test]
    fn picks_first_g711_and_telephone_event() {
        let local: SocketAddr = "203.0.113.1:10000".parse().unwrap();
        let (neg, body) = answer_offer(OFFER.as_bytes(), local, 7, 1).unwrap();
        assert_eq!(neg.codec, Codec::Pcma);
        assert_eq!(neg.telephone_event, Some(101));
        assert_eq!(neg.remote, "192.0.2.5:40000".parse().unwrap());
        assert!(!neg.is_hold());
        assert!(body.contains("m=audio 10000 RTP/AVP 8 101\r\n"), "{body}");
        assert!(body.contains("c=IN IP4 203.0.113.1"));
        assert!(body.contains("a=sendrecv"));
        let back = negotiate(&SessionDescription::parse(body.as_bytes()).unwrap()).unwrap();
        assert_eq!(back.codec, Codec::Pcma);
    }

    #[test]
    fn detects_hold_variants() {
        let sendonly = format!("{OFFER}a=sendonly\r\n");
        let (neg, body) = answer_offer(sendonly.as_bytes(), "127.0.0.1:1".parse().unwrap(), 1, 2).unwrap();
        assert!(neg.is_hold());
        assert!(body.contains("a=recvonly"));
        let zero = OFFER.replace("c=IN IP4 192.0.2.5", "c=IN IP4 0.0.0.0");
        assert!(negotiate(&SessionDescription::parse(zero.as_bytes()).unwrap()).unwrap().is_hold());
        let session_level = OFFER.replace("t=0 0\r\n", "t=0 0\r\na=inactive\r\n");
        assert!(negotiate(&SessionDescription::parse(session_level.as_bytes()).unwrap()).unwrap().is_hold());
    }

    #[test]
    fn rejects_unusable_offers() {
        let g729 = OFFER.replace("9 8 0 101", "18").replace("a=rtpmap:9 G722/8000\r\n", "");
        assert_eq!(negotiate(&SessionDescription::parse(g729.as_bytes()).unwrap()), Err(SdpError::NoCommonCodec));
        assert!(SessionDescription::parse(b"garbage").is_err());
        assert!(SessionDescription::parse(&[0xff, 0xfe]).is_err());
        let video_only = "v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 5 RTP/AVP 31\r\n";
        assert!(negotiate(&SessionDescription::parse(video_only.as_bytes()).unwrap()).is_err());
    }
}
