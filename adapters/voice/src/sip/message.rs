//! SIP message parsing and building over `rsip`, with our own error type.
//!
//! `rsip` tokenizes strictly (no header folding, no compact names, no whitespace
//! before the colon), so [`parse`] first normalizes the header section the way
//! RFC 3261 §7.3.1 allows peers to write it, frames the body by Content-Length
//! (§18.3) and only then hands the bytes to `rsip`. It never panics on any input.

use std::fmt::Write as _;

use rsip::headers::{Header, UntypedHeader};
use rsip::message::HasHeaders;
use rsip::{Method, Request, Response, SipMessage, StatusCode};

/// Why a SIP message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    /// Larger than the configured maximum.
    #[error("message of {0} bytes exceeds the maximum size")]
    TooLarge(usize),
    /// No blank line ends the header section.
    #[error("incomplete message")]
    Incomplete,
    /// The start line or a header is malformed.
    #[error("malformed {0}")]
    Malformed(String),
    /// A mandatory header is missing or unusable.
    #[error("missing or invalid {0} header")]
    BadHeader(&'static str),
    /// Content-Length is not a number or exceeds the bytes received.
    #[error("invalid Content-Length")]
    BadContentLength,
    /// The CSeq method differs from the request method.
    #[error("CSeq method does not match the request method")]
    CSeqMismatch,
    /// The request method is not one we know (answered 501 / 405).
    #[error("unknown method {0}")]
    UnknownMethod(String),
    /// Not SIP/2.0.
    #[error("unsupported SIP version")]
    BadVersion,
}

/// Compact header forms (RFC 3261 §7.3.3 and §20) expanded to their long names.
fn expand_compact(name: &str) -> &str {
    match name {
        "v" | "V" => "Via",
        "f" | "F" => "From",
        "t" | "T" => "To",
        "i" | "I" => "Call-ID",
        "m" | "M" => "Contact",
        "l" | "L" => "Content-Length",
        "c" | "C" => "Content-Type",
        "k" | "K" => "Supported",
        "s" | "S" => "Subject",
        "e" | "E" => "Content-Encoding",
        "o" | "O" => "Event",
        "r" | "R" => "Refer-To",
        "u" | "U" => "Allow-Events",
        _ => name,
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// A header as written by the peer, after unfolding and compact-name expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// Header name in long form.
    pub name: String,
    /// Header value with surrounding whitespace trimmed.
    pub value: String,
}

/// A message split into start line, headers and body without interpreting them;
/// enough to build a 400 for a request that `rsip` refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The first line without CRLF.
    pub start_line: String,
    /// Headers in order.
    pub headers: Vec<RawHeader>,
    /// Body framed by Content-Length.
    pub body: Vec<u8>,
}

impl RawMessage {
    /// Values of every header called `name` (case-insensitive).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }

    /// First value of header `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }

    /// Whether the start line looks like a request (not `SIP/2.0 …`).
    pub fn is_request(&self) -> bool {
        !self.start_line.starts_with("SIP/")
    }

    /// Method token of a request line.
    pub fn method(&self) -> Option<&str> {
        self.start_line.split(' ').next().filter(|m| !m.is_empty())
    }
}

/// Splits `data` into header section and body; returns (header_end, body_start).
fn find_header_end(data: &[u8]) -> Option<(usize, usize)> {
    let crlf = data.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = data.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(c), Some(l)) if l + 1 < c => Some((l, l + 2)),
        (Some(c), _) => Some((c, c + 4)),
        (None, Some(l)) => Some((l, l + 2)),
        (None, None) => None,
    }
}

/// Splits a message without judging header values (RFC 3261 §7).
///
/// Leading CRLFs are skipped (§7.5 keep-alives); header lines starting with
/// whitespace continue the previous one (§7.3.1); the body is cut to Content-Length
/// and a body shorter than Content-Length is an error (§18.3).
pub fn split_raw(data: &[u8], max_size: usize) -> Result<RawMessage, SipError> {
    match split_parts(data, max_size)? {
        (raw, None) => Ok(raw),
        (_, Some(error)) => Err(error),
    }
}

/// Like [`split_raw`], but a framing error (bad Content-Length) comes back together
/// with the headers, so the request can still be answered 400.
fn split_parts(data: &[u8], max_size: usize) -> Result<(RawMessage, Option<SipError>), SipError> {
    if data.len() > max_size {
        return Err(SipError::TooLarge(data.len()));
    }
    let start = data.iter().position(|b| *b != b'\r' && *b != b'\n').ok_or(SipError::Incomplete)?;
    let data = &data[start..];
    let (head_end, body_start) = find_header_end(data).ok_or(SipError::Incomplete)?;
    let head = std::str::from_utf8(&data[..head_end]).map_err(|_| SipError::Malformed("non-UTF-8 header section".into()))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start_line = lines.next().unwrap_or_default().trim_end().to_string();
    if start_line.is_empty() {
        return Err(SipError::Malformed("start line".into()));
    }
    let mut headers: Vec<RawHeader> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            match headers.last_mut() {
                Some(last) => {
                    let more = line.trim();
                    if !more.is_empty() {
                        if !last.value.is_empty() {
                            last.value.push(' ');
                        }
                        last.value.push_str(more);
                    }
                }
                None => return Err(SipError::Malformed("continuation line".into())),
            }
            continue;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| SipError::Malformed("header line without colon".into()))?;
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(SipError::Malformed("header name".into()));
        }
        if value.bytes().any(|b| b == 0 || b == b'\r') {
            return Err(SipError::Malformed("control character in header".into()));
        }
        headers.push(RawHeader { name: expand_compact(name).to_string(), value: value.trim().to_string() });
    }
    let available = &data[body_start..];
    let mut lengths = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("Content-Length"));
    let mut error = None;
    let body = match lengths.next() {
        Some(h) => match h.value.parse::<usize>() {
            Ok(len) if len <= available.len() && lengths.all(|o| o.value == h.value) => {
                // RFC 3261 §18.3: octets beyond Content-Length are discarded.
                available[..len].to_vec()
            }
            _ => {
                error = Some(SipError::BadContentLength);
                Vec::new()
            }
        },
        None => available.to_vec(),
    };
    let raw = RawMessage { start_line, headers, body };
    Ok((raw, error))
}

/// Renders a raw message in the canonical form `rsip` tokenizes.
fn canonical_bytes(raw: &RawMessage) -> Vec<u8> {
    let mut out = String::with_capacity(256 + raw.headers.len() * 64);
    out.push_str(&raw.start_line);
    out.push_str("\r\n");
    for h in &raw.headers {
        if h.name.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        let _ = write!(out, "{}: {}\r\n", h.name, h.value);
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", raw.body.len());
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&raw.body);
    bytes
}

/// Parses one SIP message (a UDP datagram or a TCP frame).
///
/// Returns the typed `rsip` message and the raw split. A request `rsip` cannot type
/// (e.g. an unknown method) comes back as `Err` together with the raw split, so the
/// caller can still answer 400/501 (see [`crate::sip::validate`]).
pub fn parse(data: &[u8], max_size: usize) -> Result<(SipMessage, RawMessage), ParseFailure> {
    let (raw, framing) = split_parts(data, max_size).map_err(|error| ParseFailure { error, raw: None })?;
    let fail = |error: SipError, raw: RawMessage| ParseFailure { error, raw: Some(raw) };
    if let Some(error) = framing {
        return Err(fail(error, raw));
    }
    let mut parts = raw.start_line.splitn(3, ' ');
    let (a, b, c) = (parts.next(), parts.next(), parts.next());
    if raw.is_request() {
        let method = a.unwrap_or_default();
        if method.is_empty() || !method.bytes().all(is_token_char) || b.is_none() {
            return Err(fail(SipError::Malformed("request line".into()), raw));
        }
        // The Request-URI is a bare URI: no <>, no LWS (RFC 4475 §3.1.2.8-9).
        let uri_ok =
            b.is_some_and(|u| !u.is_empty() && u.contains(':') && !u.contains(['<', '>', '"']) && c.is_some_and(|c| !c.contains(' ')));
        if !uri_ok {
            return Err(fail(SipError::Malformed("Request-URI".into()), raw));
        }
        if c != Some("SIP/2.0") {
            return Err(fail(SipError::BadVersion, raw));
        }
        if method.parse::<Method>().is_err() {
            let m = method.to_string();
            return Err(fail(SipError::UnknownMethod(m), raw));
        }
    } else {
        let code_ok = b.and_then(|b| b.parse::<u16>().ok()).is_some_and(|c| (100..=699).contains(&c));
        if a != Some("SIP/2.0") || !code_ok {
            return Err(fail(SipError::Malformed("status line".into()), raw));
        }
    }
    let canonical = canonical_bytes(&raw);
    // rsip returns errors rather than panicking on the inputs we fuzzed (see
    // `fuzz_tests`), so no catch_unwind is needed here.
    match SipMessage::try_from(canonical.as_slice()) {
        Ok(mut msg) => {
            *msg.body_mut() = raw.body.clone();
            Ok((msg, raw))
        }
        Err(e) => Err(fail(SipError::Malformed(short(&e.to_string())), raw)),
    }
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Why [`parse`] failed, with the raw split when the framing was readable.
#[derive(Debug, Clone)]
pub struct ParseFailure {
    /// The problem.
    pub error: SipError,
    /// The raw message, when the header section could be split.
    pub raw: Option<RawMessage>,
}

/// Serializes a message; unlike `Display` this keeps a binary body intact.
pub fn to_bytes(msg: &SipMessage) -> bytes::Bytes {
    let mut out = String::with_capacity(512);
    match msg {
        SipMessage::Request(r) => {
            let _ = write!(out, "{} {} SIP/2.0\r\n", r.method, r.uri);
        }
        SipMessage::Response(r) => {
            let _ = write!(out, "SIP/2.0 {}\r\n", r.status_code);
        }
    }
    let body = msg.body();
    for h in msg.headers().iter() {
        if let Header::ContentLength(_) = h {
            continue;
        }
        let _ = write!(out, "{h}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes::Bytes::from(bytes)
}

/// Name and value of any `rsip` header.
pub fn name_value(h: &Header) -> (&str, &str) {
    macro_rules! nv {
        ($($v:ident => $n:literal),* $(,)?) => {
            match h {
                $(Header::$v(x) => ($n, x.value()),)*
                Header::Other(n, v) => (n.as_str(), v.as_str()),
            }
        };
    }
    nv!(
        Accept => "Accept", AcceptEncoding => "Accept-Encoding",
        AcceptLanguage => "Accept-Language", AlertInfo => "Alert-Info", Allow => "Allow",
        AuthenticationInfo => "Authentication-Info", Authorization => "Authorization",
        CSeq => "CSeq", CallId => "Call-ID", CallInfo => "Call-Info", Contact => "Contact",
        ContentDisposition => "Content-Disposition", ContentEncoding => "Content-Encoding",
        ContentLanguage => "Content-Language", ContentLength => "Content-Length",
        ContentType => "Content-Type", Date => "Date", ErrorInfo => "Error-Info",
        Event => "Event", Expires => "Expires", From => "From", InReplyTo => "In-Reply-To",
        MaxForwards => "Max-Forwards", MimeVersion => "MIME-Version",
        MinExpires => "Min-Expires", Organization => "Organization", Priority => "Priority",
        ProxyAuthenticate => "Proxy-Authenticate", ProxyAuthorization => "Proxy-Authorization",
        ProxyRequire => "Proxy-Require", RecordRoute => "Record-Route", ReplyTo => "Reply-To",
        Require => "Require", RetryAfter => "Retry-After", Route => "Route", Server => "Server",
        Subject => "Subject", SubscriptionState => "Subscription-State",
        Supported => "Supported", Timestamp => "Timestamp", To => "To",
        Unsupported => "Unsupported", UserAgent => "User-Agent", Via => "Via",
        Warning => "Warning", WwwAuthenticate => "WWW-Authenticate",
    )
}

/// Builds a typed `rsip` header from a name and value.
pub fn make_header(name: &str, value: impl Into<String>) -> Header {
    use rsip::headers as h;
    let v: String = value.into();
    match name.to_ascii_lowercase().as_str() {
        "via" => Header::Via(h::Via::new(v)),
        "from" => Header::From(h::From::new(v)),
        "to" => Header::To(h::To::new(v)),
        "call-id" => Header::CallId(h::CallId::new(v)),
        "cseq" => Header::CSeq(h::CSeq::new(v)),
        "max-forwards" => Header::MaxForwards(h::MaxForwards::new(v)),
        "contact" => Header::Contact(h::Contact::new(v)),
        "content-type" => Header::ContentType(h::ContentType::new(v)),
        "allow" => Header::Allow(h::Allow::new(v)),
        "supported" => Header::Supported(h::Supported::new(v)),
        "unsupported" => Header::Unsupported(h::Unsupported::new(v)),
        "require" => Header::Require(h::Require::new(v)),
        "www-authenticate" => Header::WwwAuthenticate(h::WwwAuthenticate::new(v)),
        "authorization" => Header::Authorization(h::Authorization::new(v)),
        "route" => Header::Route(h::Route::new(v)),
        "record-route" => Header::RecordRoute(h::RecordRoute::new(v)),
        "expires" => Header::Expires(h::Expires::new(v)),
        "min-expires" => Header::MinExpires(h::MinExpires::new(v)),
        "server" => Header::Server(h::Server::new(v)),
        "user-agent" => Header::UserAgent(h::UserAgent::new(v)),
        "warning" => Header::Warning(h::Warning::new(v)),
        _ => Header::Other(name.to_string(), v),
    }
}

/// Header accessors by name for any `rsip` message.
pub trait HeaderLookup {
    /// Values of every header called `name`, in order.
    fn values_of<'a>(&'a self, name: &str) -> Vec<&'a str>;
    /// First value of header `name`.
    fn value_of(&self, name: &str) -> Option<&str> {
        self.values_of(name).into_iter().next()
    }
    /// Comma-separated list values of every header `name` (e.g. Require, Allow).
    fn tokens_of(&self, name: &str) -> Vec<String> {
        self.values_of(name).iter().flat_map(|v| split_list(v)).map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()
    }
}

impl<T: HasHeaders> HeaderLookup for T {
    fn values_of<'a>(&'a self, name: &str) -> Vec<&'a str> {
        self.headers().iter().map(name_value).filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v).collect()
    }
}

/// Splits a header value at commas outside quotes and angle brackets (§7.3.1).
pub fn split_list(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut angle, mut escaped, mut start) = (false, false, false, 0);
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

/// A name-addr or addr-spec (From, To, Contact, Route): URI plus header parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name without quotes, if any.
    pub display: Option<String>,
    /// The URI text.
    pub uri: String,
    /// Header parameters after the URI (`tag`, `expires`, `q`, …).
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    /// Parses `"Bob" <sip:bob@host>;tag=x` or `sip:bob@host;tag=x` (§20.10).
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let (display, uri, rest) = if let Some(lt) = find_unquoted(value, '<') {
            let gt = value[lt..].find('>')? + lt;
            let display = value[..lt].trim().trim_matches('"').trim();
            let display = (!display.is_empty()).then(|| display.to_string());
            (display, value[lt + 1..gt].trim(), &value[gt + 1..])
        } else {
            // addr-spec: parameters after ';' belong to the header, not the URI.
            match value.find(';') {
                Some(i) => (None, value[..i].trim(), &value[i..]),
                None => (None, value, ""),
            }
        };
        if uri.is_empty() || !uri.contains(':') || uri.contains(char::is_whitespace) {
            return None;
        }
        Some(Self { display, uri: uri.to_string(), params: parse_params(rest) })
    }

    /// Value of parameter `name` (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        self.param("tag").filter(|t| !t.is_empty())
    }
}

fn find_unquoted(s: &str, needle: char) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == needle && !quoted {
            return Some(i);
        }
    }
    None
}

/// Parses `;a=b;c` into pairs.
pub fn parse_params(s: &str) -> Vec<(String, Option<String>)> {
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n.trim().to_string(), Some(v.trim().to_string())),
            None => (p.to_string(), None),
        })
        .collect()
}

/// A SIP URI split into its parts (RFC 3261 §19.1.1), leniently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// `sip` or `sips`.
    pub scheme: String,
    /// User part, if any.
    pub user: Option<String>,
    /// Host (IPv6 without brackets).
    pub host: String,
    /// Port, if given.
    pub port: Option<u16>,
    /// URI parameters.
    pub params: Vec<(String, Option<String>)>,
}

impl SipUri {
    /// Parses `sip:user@host:port;params?headers`.
    pub fn parse(uri: &str) -> Option<Self> {
        let (scheme, rest) = uri.trim().split_once(':')?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "sip" && scheme != "sips" {
            return None;
        }
        let rest = rest.split('?').next().unwrap_or_default();
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let user = userinfo.map(|u| u.split(':').next().unwrap_or_default().to_string()).filter(|u| !u.is_empty());
        let (hostport, params) = match hostpart.find(';') {
            Some(i) => (&hostpart[..i], parse_params(&hostpart[i..])),
            None => (hostpart, Vec::new()),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6.find(']')?;
            let port = v6[end + 1..].strip_prefix(':');
            (v6[..end].to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok()?),
            None => None,
        };
        if host.is_empty() {
            return None;
        }
        Some(Self { scheme, user, host, port, params })
    }

    /// Value of URI parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    /// Where a request to this URI goes when its host is an IP address (a host name is
    /// not resolved: None): its port or 5060, TCP for `;transport=tcp`, UDP for another
    /// transport, `default` when none is given.
    pub fn peer(&self, default: super::Transport) -> Option<super::transaction::Peer> {
        let ip = self.host.parse::<std::net::IpAddr>().ok()?;
        let transport = match self.param("transport") {
            Some(t) if t.eq_ignore_ascii_case("tcp") => super::Transport::Tcp,
            Some(_) => super::Transport::Udp,
            None => default,
        };
        Some(super::transaction::Peer { addr: std::net::SocketAddr::new(ip, self.port.unwrap_or(5060)), transport })
    }
}

/// Reason phrase for the status codes we send.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        603 => "Decline",
        _ => "Unknown",
    }
}

/// A status code with our reason phrase.
pub fn status(code: u16) -> StatusCode {
    StatusCode::Other(code, reason_phrase(code).to_string())
}

/// Builds a response to `req` (RFC 3261 §8.2.6): Via, From, Call-ID and CSeq copied,
/// To copied and given `to_tag` when it has none (never for 100 Trying, §8.2.6.2).
/// A 1xx (but 100) or 2xx to an INVITE may establish a dialog: its Record-Route values are
/// copied in order (§12.1.1), so the caller's route set runs through the same proxies.
pub fn response_from_raw(req: &RawMessage, code: u16, to_tag: Option<&str>, extra: Vec<Header>, body: Vec<u8>) -> Response {
    let mut headers = rsip::Headers::default();
    let invite = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("CSeq"))
        .and_then(|h| h.value.split_whitespace().nth(1))
        .is_some_and(|m| m.eq_ignore_ascii_case("INVITE"));
    let dialog_creating = invite && (101..300).contains(&code);
    for (name, value) in req.headers.iter().map(|h| (h.name.as_str(), &h.value)) {
        if ["Via", "From", "Call-ID", "CSeq"].iter().any(|n| n.eq_ignore_ascii_case(name))
            || (dialog_creating && name.eq_ignore_ascii_case("Record-Route"))
        {
            headers.push(make_header(name, value.clone()));
        } else if name.eq_ignore_ascii_case("To") {
            headers.push(make_header("To", with_to_tag(value, code, to_tag)));
        }
    }
    for h in extra {
        headers.push(h);
    }
    Response { status_code: status(code), version: rsip::Version::V2, headers, body }
}

/// Same as [`response_from_raw`] for a typed request.
pub fn response_to(req: &Request, code: u16, to_tag: Option<&str>, extra: Vec<Header>, body: Vec<u8>) -> Response {
    let raw = RawMessage {
        start_line: String::new(),
        headers: req.headers().iter().map(name_value).map(|(n, v)| RawHeader { name: n.to_string(), value: v.to_string() }).collect(),
        body: Vec::new(),
    };
    response_from_raw(&raw, code, to_tag, extra, body)
}

fn with_to_tag(to: &str, code: u16, tag: Option<&str>) -> String {
    match (tag, NameAddr::parse(to)) {
        (Some(tag), Some(addr)) if code != 100 && addr.tag().is_none() => {
            format!("{to};tag={tag}")
        }
        _ => to.to_string(),
    }
}

/// A new random tag or branch suffix (RFC 3261 §19.3: at least 32 bits of randomness).
pub fn random_token() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

/// A new RFC 3261 branch with the magic cookie.
pub fn new_branch() -> String {
    format!("z9hG4bK{}", random_token())
}

/// Sample messages shared by the SIP unit tests.
#[cfg(test)]
pub(crate) mod tests_support {
    /// A well-formed INVITE from a trunk with a tiny body.
    pub const INVITE: &str = "INVITE sip:+4930123@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:+4930123@127.0.0.1>\r\n\
From: \"Alice\" <sip:alice@10.0.0.1>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@10.0.0.1\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@10.0.0.1:5060>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";
}

#[cfg(test)]
mod tests {
    use super::tests_support::INVITE;
    use super::*;

    #[test]
    fn dialog_creating_responses_copy_record_route_in_order() {
        let text = INVITE.replace("Contact:", "Record-Route: <sip:edge1;lr>\r\nRecord-Route: <sip:edge2;lr>, <sip:edge3;lr>\r\nContact:");
        let (msg, raw) = parse(text.as_bytes(), 65_535).expect("parses");
        let rsip::SipMessage::Request(req) = msg else { panic!("a request") };
        for code in [180, 200] {
            let resp = response_to(&req, code, Some("t"), Vec::new(), Vec::new());
            assert_eq!(resp.values_of("Record-Route"), vec!["<sip:edge1;lr>", "<sip:edge2;lr>, <sip:edge3;lr>"], "{code}");
        }
        for code in [100, 486] {
            assert!(response_from_raw(&raw, code, Some("t"), Vec::new(), Vec::new()).values_of("Record-Route").is_empty(), "{code}");
        }
        let bye = text.replace("CSeq: 314159 INVITE", "CSeq: 314160 BYE");
        let (_, raw) = parse(bye.as_bytes(), 65_535).expect("parses");
        assert!(response_from_raw(&raw, 200, None, Vec::new(), Vec::new()).values_of("Record-Route").is_empty());
    }

    #[test]
    fn parses_a_plain_invite() {
        let (msg, raw) = parse(INVITE.as_bytes(), 65_535).expect("parses");
        assert!(msg.is_request());
        assert_eq!(msg.body(), b"v=0\n");
        assert_eq!(raw.value("call-id"), Some("a84b4c76e66710@10.0.0.1"));
        assert_eq!(msg.value_of("CSeq"), Some("314159 INVITE"));
    }

    #[test]
    fn compact_folded_and_spaced_headers_are_normalized() {
        let text = "OPTIONS sip:x@h SIP/2.0\r\nv : SIP/2.0/UDP h;branch=z9hG4bKa\r\n\
f: <sip:a@h>;tag=1\r\nt: <sip:x@h>\r\ni: abc\r\nCSeq: 1\r\n  OPTIONS\r\nMax-Forwards: 70\r\nl: 0\r\n\r\n";
        let (msg, _) = parse(text.as_bytes(), 65_535).expect("parses");
        assert_eq!(msg.value_of("Via"), Some("SIP/2.0/UDP h;branch=z9hG4bKa"));
        assert_eq!(msg.value_of("CSeq"), Some("1 OPTIONS"));
        assert_eq!(msg.value_of("Call-ID"), Some("abc"));
    }

    #[test]
    fn body_is_cut_to_content_length_and_short_body_rejected() {
        let long = INVITE.replace("Content-Length: 4", "Content-Length: 2");
        let (msg, _) = parse(long.as_bytes(), 65_535).unwrap();
        assert_eq!(msg.body(), b"v=");
        let short = INVITE.replace("Content-Length: 4", "Content-Length: 40");
        assert_eq!(parse(short.as_bytes(), 65_535).unwrap_err().error, SipError::BadContentLength);
    }

    #[test]
    fn size_limit_is_enforced_and_65535_accepted() {
        let mut big = INVITE.replace("Content-Length: 4\r\n\r\nv=0\n", "");
        let pad = 65_535 - big.len() - "Content-Length: 0\r\n\r\n".len() - "X-Pad: \r\n".len();
        big.push_str(&format!("X-Pad: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(pad)));
        assert_eq!(big.len(), 65_535);
        assert!(parse(big.as_bytes(), 65_535).is_ok());
        big.insert(0, '\n');
        big.push('x');
        assert!(matches!(parse(big.as_bytes(), 65_535).unwrap_err().error, SipError::TooLarge(_)));
    }

    #[test]
    fn unknown_method_keeps_raw_for_501() {
        let text = INVITE.replacen("INVITE sip", "FOO sip", 1);
        let err = parse(text.as_bytes(), 65_535).unwrap_err();
        assert!(matches!(err.error, SipError::UnknownMethod(ref m) if m == "FOO"));
        assert!(err.raw.is_some());
    }

    #[test]
    fn response_copies_headers_and_adds_tag() {
        let (msg, _) = parse(INVITE.as_bytes(), 65_535).unwrap();
        let SipMessage::Request(req) = msg else { panic!("request expected") };
        let resp = response_to(&req, 486, Some("xyz"), vec![], vec![]);
        let text = String::from_utf8(to_bytes(&resp.into()).to_vec()).unwrap();
        assert!(text.starts_with("SIP/2.0 486 Busy Here\r\n"), "{text}");
        assert!(text.contains("To: <sip:+4930123@127.0.0.1>;tag=xyz\r\n"));
        assert!(text.contains("CSeq: 314159 INVITE\r\n"));
        let (back, _) = parse(text.as_bytes(), 65_535).expect("our output parses");
        assert!(back.is_response());
    }

    #[test]
    fn name_addr_and_uri() {
        let a = NameAddr::parse("\"A, b\" <sip:alice@[::1]:5070;transport=tcp>;tag=9;q=0.5").unwrap();
        assert_eq!(a.display.as_deref(), Some("A, b"));
        assert_eq!(a.tag(), Some("9"));
        let u = SipUri::parse(&a.uri).unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", Some(5070)));
        assert_eq!(u.param("transport"), Some("tcp"));
        let b = NameAddr::parse("sip:bob@h;tag=7").unwrap();
        assert_eq!((b.uri.as_str(), b.tag()), ("sip:bob@h", Some("7")));
        assert_eq!(split_list("<sip:a@h;x=1,2>, \"x,y\" <sip:b@h>").len(), 2);
        assert!(SipUri::parse("sip:a@h:99999").is_none());
    }
}
