//! SIP transport shell on tokio: a UDP socket and a TCP listener feeding raw messages
//! to the engine, with TCP framing by Content-Length (RFC 3261 §18.3) and a hard
//! 65,535-byte message limit. Sending never blocks the caller.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use crate::sip::transaction::Peer;
use crate::sip::Transport;

/// A message received from the network.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Raw bytes of one SIP message.
    pub data: Bytes,
    /// Where it came from.
    pub peer: Peer,
}

/// Why a TCP stream had to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The header section or the declared body exceeds the maximum message size.
    #[error("message exceeds the maximum size")]
    TooLarge,
    /// Content-Length is missing or not a number: the stream cannot be framed (§18.3).
    #[error("missing or invalid Content-Length on a stream transport")]
    BadContentLength,
}

/// Splits a TCP byte stream into SIP messages. Pure, so it is tested directly.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    max: usize,
}

impl StreamFramer {
    /// A framer accepting messages up to `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { buf: BytesMut::new(), max }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FramingError> {
        // RFC 5626 §3.5.1 keep-alives (CRLF) between messages are skipped.
        let skip = self.buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
        let _ = self.buf.split_to(skip);
        let Some(head_end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return if self.buf.len() > self.max { Err(FramingError::TooLarge) } else { Ok(None) };
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| FramingError::BadContentLength)?;
        let mut length = None;
        for line in head.split("\r\n").skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim();
                if name.eq_ignore_ascii_case("Content-Length") || name == "l" || name == "L" {
                    length = Some(value.trim().parse::<usize>().map_err(|_| FramingError::BadContentLength)?);
                }
            }
        }
        let length = length.ok_or(FramingError::BadContentLength)?;
        let total = head_end + 4 + length;
        if total > self.max {
            return Err(FramingError::TooLarge);
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(total).freeze()))
    }
}

type Connections = Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Bytes>>>>;

/// The bound sockets plus the TCP connection table.
#[derive(Debug, Clone)]
pub struct SipTransport {
    udp: Option<Arc<UdpSocket>>,
    udp_addr: Option<SocketAddr>,
    tcp_addr: Option<SocketAddr>,
    connections: Connections,
    inbound: mpsc::Sender<Inbound>,
    max_size: usize,
    shutdown: watch::Receiver<bool>,
}

impl SipTransport {
    /// Binds the configured listeners and starts their receive loops.
    pub async fn bind(
        udp: Option<SocketAddr>,
        tcp: Option<SocketAddr>,
        max_size: usize,
        inbound: mpsc::Sender<Inbound>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let udp_socket = match udp {
            Some(addr) => Some(Arc::new(UdpSocket::bind(addr).await?)),
            None => None,
        };
        let udp_addr = match &udp_socket {
            Some(s) => Some(s.local_addr()?),
            None => None,
        };
        let listener = match tcp {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let tcp_addr = match &listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let transport = Self { udp: udp_socket, udp_addr, tcp_addr, connections: Arc::default(), inbound, max_size, shutdown };
        if let Some(sock) = transport.udp.clone() {
            tokio::spawn(udp_loop(sock, transport.inbound.clone(), transport.shutdown.clone()));
        }
        if let Some(listener) = listener {
            tokio::spawn(tcp_accept_loop(listener, transport.clone()));
        }
        Ok(transport)
    }

    /// Bound UDP address.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    /// Bound TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Sends without waiting. UDP uses `try_send_to` (a full socket buffer drops the
    /// datagram; the transaction layer retransmits); TCP reuses the connection the
    /// peer opened, or opens one.
    pub fn send(&self, peer: Peer, bytes: Bytes) {
        crate::metrics::VoiceStats::inc(&crate::metrics::voice_stats().sip_out);
        match peer.transport {
            Transport::Udp => {
                if let Some(sock) = &self.udp {
                    if let Err(error) = sock.try_send_to(&bytes, peer.addr) {
                        tracing::debug!(peer = %peer.addr, %error, "UDP send failed.");
                    }
                }
            }
            Transport::Tcp => {
                let existing = self.connections.lock().ok().and_then(|c| c.get(&peer.addr).cloned());
                match existing {
                    Some(tx) if tx.send(bytes.clone()).is_ok() => {}
                    _ => {
                        let this = self.clone();
                        tokio::spawn(async move {
                            match TcpStream::connect(peer.addr).await {
                                Ok(stream) => {
                                    let tx = this.register_connection(stream, peer.addr);
                                    let _ = tx.send(bytes);
                                }
                                Err(error) => {
                                    tracing::debug!(peer = %peer.addr, %error, "TCP connect failed.")
                                }
                            }
                        });
                    }
                }
            }
        }
    }

    fn register_connection(&self, stream: TcpStream, addr: SocketAddr) -> mpsc::UnboundedSender<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut c) = self.connections.lock() {
            c.insert(addr, tx.clone());
        }
        let span = tracing::debug_span!("sip_tcp", peer = %addr);
        tokio::spawn(tracing::Instrument::instrument(tcp_connection(stream, addr, rx, self.clone()), span));
        tx
    }
}

async fn udp_loop(sock: Arc<UdpSocket>, inbound: mpsc::Sender<Inbound>, mut shutdown: watch::Receiver<bool>) {
    // One byte more than the largest message we accept, so oversize datagrams are seen
    // as such (and dropped by the parser) instead of being silently truncated.
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, addr)) => {
                    if n <= 4 && buf[..n].iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
                        continue; // keep-alive
                    }
                    let msg = Inbound {
                        data: Bytes::copy_from_slice(&buf[..n]),
                        peer: Peer { addr, transport: Transport::Udp },
                    };
                    if inbound.send(msg).await.is_err() {
                        return;
                    }
                }
                // ICMP port unreachable surfaces as an error on some platforms; keep going.
                Err(error) => tracing::debug!(%error, "UDP receive error."),
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn tcp_accept_loop(listener: TcpListener, transport: SipTransport) {
    let mut shutdown = transport.shutdown.clone();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    transport.register_connection(stream, addr);
                }
                Err(error) => tracing::warn!(%error, "TCP accept failed."),
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn tcp_connection(stream: TcpStream, addr: SocketAddr, mut outbound: mpsc::UnboundedReceiver<Bytes>, transport: SipTransport) {
    let (mut reader, mut writer) = stream.into_split();
    let mut framer = StreamFramer::new(transport.max_size);
    let mut buf = vec![0u8; 16 * 1024];
    let mut shutdown = transport.shutdown.clone();
    loop {
        tokio::select! {
            r = reader.read(&mut buf) => {
                let n = match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                framer.push(&buf[..n]);
                loop {
                    match framer.next_message() {
                        Ok(Some(data)) => {
                            let msg = Inbound { data, peer: Peer { addr, transport: Transport::Tcp } };
                            if transport.inbound.send(msg).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(error) => {
                            // §18.3: a stream that cannot be framed cannot be resynchronized.
                            tracing::debug!(%error, "Closing TCP connection.");
                            if let Ok(mut c) = transport.connections.lock() { c.remove(&addr); }
                            return;
                        }
                    }
                }
            }
            out = outbound.recv() => match out {
                Some(bytes) => if writer.write_all(&bytes).await.is_err() { break },
                None => break,
            },
            _ = shutdown.changed() => break,
        }
    }
    if let Ok(mut c) = transport.connections.lock() {
        c.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nl: 3\r\n\r\nabc";

    #[test]
    fn frames_split_and_pipelined_messages() {
        let mut f = StreamFramer::new(65_535);
        f.push(&MSG[..10]);
        assert_eq!(f.next_message(), Ok(None));
        f.push(&MSG[10..]);
        f.push(b"\r\n\r\n");
        f.push(MSG);
        assert_eq!(f.next_message().unwrap().as_deref(), Some(MSG));
        assert_eq!(f.next_message().unwrap().as_deref(), Some(MSG), "keep-alive CRLFs skipped");
        assert_eq!(f.next_message(), Ok(None));
    }

    #[test]
    fn rejects_unframeable_and_oversize() {
        let mut f = StreamFramer::new(65_535);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(f.next_message(), Err(FramingError::BadContentLength));
        let mut f = StreamFramer::new(65_535);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 70000\r\n\r\n");
        assert_eq!(f.next_message(), Err(FramingError::TooLarge));
        let mut f = StreamFramer::new(100);
        f.push(&[b'a'; 200]);
        assert_eq!(f.next_message(), Err(FramingError::TooLarge));
    }

    #[tokio::test]
    async fn udp_and_tcp_deliver_messages() {
        let (tx, mut rx) = mpsc::channel(8);
        let (_stop, shutdown) = watch::channel(false);
        let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let t = SipTransport::bind(Some(localhost), Some(localhost), 65_535, tx, shutdown).await.unwrap();
        let client = UdpSocket::bind(localhost).await.unwrap();
        client.send_to(MSG, t.udp_addr().unwrap()).await.unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!(&got.data[..], MSG);
        assert_eq!(got.peer.transport, Transport::Udp);
        let mut stream = TcpStream::connect(t.tcp_addr().unwrap()).await.unwrap();
        stream.write_all(&MSG[..7]).await.unwrap();
        stream.write_all(&MSG[7..]).await.unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!(got.peer.transport, Transport::Tcp);
        // Replies go back over the same connection.
        t.send(got.peer, Bytes::from_static(b"pong"));
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }
}
