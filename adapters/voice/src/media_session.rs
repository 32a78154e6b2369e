//! One call leg's RTP endpoint on tokio: plays prompts and music on hold, detects
//! RFC 4733 digits, relays audio to the bridged leg and feeds recorders. A thin shell
//! over the pure pieces in [`crate::media`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::media::dtmf::DtmfReceiver;
use crate::media::g711;
use crate::media::latch::RtpLatch;
use crate::media::player::{MusicOnHold, PromptPlayer, StereoMixer};
use crate::media::rtp::{RtpPacket, RtpSender};
use crate::media::wav::WavWriter;
use crate::media::FRAME_SAMPLES;
use crate::sdp::Negotiated;

/// Process-wide media counters (load tests, diagnostics).
#[derive(Debug, Default)]
pub struct MediaStats {
    /// Audio RTP packets received from peers (after latching and codec checks).
    pub rtp_in: std::sync::atomic::AtomicU64,
    /// RTP packets sent to peers.
    pub rtp_out: std::sync::atomic::AtomicU64,
    /// RTP packets that could not be sent (socket buffer full, unreachable).
    pub rtp_send_errors: std::sync::atomic::AtomicU64,
    /// Decoded frames handed to the bridged leg.
    pub relayed: std::sync::atomic::AtomicU64,
}

/// The counters of this process.
pub fn media_stats() -> &'static MediaStats {
    static STATS: std::sync::OnceLock<MediaStats> = std::sync::OnceLock::new();
    STATS.get_or_init(MediaStats::default)
}

/// Identifies a leg in events.
pub type LegId = u64;

/// Commands to a media leg.
#[derive(Debug)]
pub enum MediaCommand {
    /// The peer's negotiated media (after offer/answer or a re-INVITE).
    SetRemote(Negotiated),
    /// Play these prompts after what is queued; `PromptFinished` when all are done.
    Play(Vec<Arc<[i16]>>),
    /// Stop prompts.
    StopPlayback,
    /// Music on hold on (replaces relayed audio) or off.
    Moh(bool),
    /// Send decoded inbound audio to this channel (the other leg's relay input).
    RelayTo(Option<mpsc::UnboundedSender<Vec<i16>>>),
    /// Record inbound audio into this mixer side (`true` = left/caller).
    Tap(Option<(Arc<Mutex<StereoMixer>>, bool)>),
    /// Record inbound audio to a mono WAV for at most this long (voicemail).
    RecordMono(PathBuf, Duration),
    /// End the leg.
    Stop,
}

/// Events from media legs to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// All queued prompts were played.
    PromptFinished(LegId),
    /// A digit arrived via RFC 4733.
    Digit(LegId, char),
    /// A mono recording ended (time limit reached).
    RecordingDone(LegId, PathBuf),
}

/// Handle to a running media leg.
#[derive(Debug, Clone)]
pub struct MediaHandle {
    /// Leg id.
    pub id: LegId,
    /// Local RTP address as advertised in SDP.
    pub local: SocketAddr,
    commands: mpsc::UnboundedSender<MediaCommand>,
    relay_input: mpsc::UnboundedSender<Vec<i16>>,
}

impl MediaHandle {
    /// Sends a command; a finished leg ignores it.
    pub fn command(&self, cmd: MediaCommand) {
        let _ = self.commands.send(cmd);
    }

    /// The channel another leg relays into.
    pub fn relay_input(&self) -> mpsc::UnboundedSender<Vec<i16>> {
        self.relay_input.clone()
    }
}

/// Binds an RTP socket in `[min, max]` (even ports, RFC 3550 §11) or an ephemeral one
/// when `min` is 0.
pub async fn bind_rtp(ip: IpAddr, min: u16, max: u16) -> std::io::Result<UdpSocket> {
    if min == 0 {
        return UdpSocket::bind(SocketAddr::new(ip, 0)).await;
    }
    use rand::Rng;
    let span = u32::from(max.saturating_sub(min)) / 2 + 1;
    let start = rand::thread_rng().gen_range(0..span);
    for i in 0..span {
        let port = u32::from(min & !1) + ((start + i) % span) * 2;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(ip, port)).await {
            return Ok(s);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "RTP port range exhausted"))
}

/// Starts a leg on `socket`; `advertised` is the address put into SDP.
pub fn spawn_leg(
    id: LegId,
    socket: UdpSocket,
    advertised: SocketAddr,
    moh: Arc<[i16]>,
    events: mpsc::UnboundedSender<MediaEvent>,
) -> MediaHandle {
    let (commands, rx) = mpsc::unbounded_channel();
    let (relay_input, relay_rx) = mpsc::unbounded_channel();
    let leg = Leg {
        id,
        socket,
        remote: None,
        latch: RtpLatch::new(None),
        sender: RtpSender::new(),
        player: PromptPlayer::new(),
        moh: MusicOnHold::new(Some(moh)),
        moh_on: false,
        dtmf: DtmfReceiver::new(),
        relay: None,
        tap: None,
        mono: None,
        events,
        first_frame: true,
    };
    tokio::spawn(leg.run(rx, relay_rx));
    MediaHandle { id, local: advertised, commands, relay_input }
}

struct Leg {
    id: LegId,
    socket: UdpSocket,
    remote: Option<Negotiated>,
    latch: RtpLatch,
    sender: RtpSender,
    player: PromptPlayer,
    moh: MusicOnHold,
    moh_on: bool,
    dtmf: DtmfReceiver,
    relay: Option<mpsc::UnboundedSender<Vec<i16>>>,
    tap: Option<(Arc<Mutex<StereoMixer>>, bool)>,
    mono: Option<(WavWriter, Instant)>,
    events: mpsc::UnboundedSender<MediaEvent>,
    first_frame: bool,
}

impl Leg {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<MediaCommand>, mut relay_rx: mpsc::UnboundedReceiver<Vec<i16>>) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut buf = vec![0u8; 2048];
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None | Some(MediaCommand::Stop) => break,
                    Some(cmd) => self.on_command(cmd),
                },
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, src)) = r {
                        self.on_packet(&buf[..n], src);
                    }
                }
                Some(samples) = relay_rx.recv() => {
                    if !self.moh_on && !self.player.is_playing() {
                        for chunk in samples.chunks(FRAME_SAMPLES) {
                            self.send_audio(chunk);
                        }
                    }
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
        // A voicemail cut short by a hangup is still a voicemail: close and report it.
        if let Some((mut w, _)) = self.mono.take() {
            let _ = w.finish();
            let _ = self.events.send(MediaEvent::RecordingDone(self.id, w.path().to_path_buf()));
        }
    }

    fn on_command(&mut self, cmd: MediaCommand) {
        match cmd {
            MediaCommand::SetRemote(n) => {
                self.latch.set_signalled(Some(n.remote));
                self.remote = Some(n);
            }
            MediaCommand::Play(prompts) => {
                for p in prompts {
                    self.player.enqueue(p);
                }
            }
            MediaCommand::StopPlayback => self.player.clear(),
            MediaCommand::Moh(on) => self.moh_on = on,
            MediaCommand::RelayTo(tx) => self.relay = tx,
            MediaCommand::Tap(tap) => self.tap = tap,
            MediaCommand::RecordMono(path, max) => match WavWriter::create(&path, 1) {
                Ok(w) => self.mono = Some((w, Instant::now() + max)),
                Err(error) => tracing::warn!(%error, "Voicemail recording failed to start."),
            },
            MediaCommand::Stop => {}
        }
    }

    fn on_packet(&mut self, data: &[u8], src: SocketAddr) {
        let Some(remote) = self.remote else { return };
        let Ok(pkt) = RtpPacket::parse(data) else {
            return;
        };
        // Symmetric RTP: latch on to where the media really comes from (NAT).
        if !self.latch.on_packet(src, Instant::now()) {
            return;
        }
        if Some(pkt.payload_type) == remote.telephone_event {
            if let Some(d) = self.dtmf.on_packet(pkt.timestamp, pkt.payload) {
                let _ = self.events.send(MediaEvent::Digit(self.id, d));
            }
            return;
        }
        if pkt.payload_type != remote.codec.payload_type() {
            return; // comfort noise or an unnegotiated payload
        }
        media_stats().rtp_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let samples = g711::decode(remote.codec, pkt.payload);
        if let Some((mixer, left)) = &self.tap {
            if let Ok(mut m) = mixer.lock() {
                if *left {
                    m.push_left(&samples);
                } else {
                    m.push_right(&samples);
                }
            }
        }
        if let Some((w, _)) = self.mono.as_mut() {
            let _ = w.write_samples(&samples);
        }
        if let Some(relay) = &self.relay {
            if relay.send(samples).is_ok() {
                media_stats().relayed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some((_, until)) = &self.mono {
            if Instant::now() >= *until {
                if let Some((mut w, _)) = self.mono.take() {
                    let _ = w.finish();
                    let _ = self.events.send(MediaEvent::RecordingDone(self.id, w.path().to_path_buf()));
                }
            }
        }
        if self.player.is_playing() {
            if let Some(frame) = self.player.next_frame() {
                self.send_audio(&frame);
            }
            if !self.player.is_playing() {
                let _ = self.events.send(MediaEvent::PromptFinished(self.id));
            }
        } else if self.moh_on {
            let frame = self.moh.next_frame();
            self.send_audio(&frame);
        }
    }

    fn send_audio(&mut self, samples: &[i16]) {
        let (Some(remote), Some(target)) = (self.remote, self.latch.target()) else {
            return;
        };
        if matches!(remote.direction, crate::sdp::Direction::RecvOnly | crate::sdp::Direction::SendRecv) {
            let payload = g711::encode(remote.codec, samples);
            let marker = std::mem::take(&mut self.first_frame);
            let pkt = self.sender.next(remote.codec.payload_type(), marker, &payload, samples.len() as u32);
            let counter = match self.socket.try_send_to(&pkt, target) {
                Ok(_) => &media_stats().rtp_out,
                Err(_) => &media_stats().rtp_send_errors,
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Writes a call's stereo recording every 20 ms until dropped.
pub fn spawn_recorder(path: PathBuf) -> Option<Recorder> {
    let mut writer = match WavWriter::create(&path, 2) {
        Ok(w) => w,
        Err(error) => {
            tracing::warn!(%error, "Call recording failed to start.");
            return None;
        }
    };
    let mixer = Arc::new(Mutex::new(StereoMixer::new()));
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let m = mixer.clone();
    let done = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let frame = m.lock().map(|mut m| m.pop_frame()).ok();

                    if let Some((l, r)) = frame {
                        if writer.write_stereo(&l, &r).is_err() {
                            break;
                        }
                    }
                }
                _ = &mut stopped => {
                    // Flush what the legs delivered since the last tick.
                    while let Some((l, r)) = m.lock().ok().and_then(|mut m| (!m.is_empty()).then(|| m.pop_frame())) {
                        if writer.write_stereo(&l, &r).is_err() {
                            break;
                        }
                    }
                    break;
                }
            }
        }
        if let Err(error) = writer.finish() {
            tracing::warn!(%error, "Call recording could not be finalized.");
        }
    });
    Some(Recorder { mixer, stop, done, path })
}

/// A running stereo recording.
#[derive(Debug)]
pub struct Recorder {
    /// Mixer the legs tap into.
    pub mixer: Arc<Mutex<StereoMixer>>,
    /// Stops the writer.
    pub stop: tokio::sync::oneshot::Sender<()>,
    /// Completes when the file is closed with its header patched.
    pub done: tokio::task::JoinHandle<()>,
    /// The file.
    pub path: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recorder_writes_frames_and_patches_header() {
        let path = std::env::temp_dir().join(format!("sbv-rec-{}.wav", uuid::Uuid::new_v4()));
        let rec = spawn_recorder(path.clone()).unwrap();
        rec.mixer.lock().unwrap().push_left(&[5; 400]);
        tokio::time::sleep(Duration::from_millis(70)).await;
        let _ = rec.stop.send(());
        rec.done.await.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 44 + 640);
    }
}
