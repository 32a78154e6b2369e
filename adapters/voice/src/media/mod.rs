//! Media plane building blocks, all pure: RTP packets, G.711, RFC 4733 DTMF, WAV
//! files, prompt playback, tones, the media clock, RTP source checks and conference
//! mixing.

pub mod clock;
pub mod dtmf;
pub mod g711;
pub mod latch;
pub mod mix;
pub mod player;
pub mod rtp;
pub mod wav;

/// Samples per 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;

/// One 20 ms frame of linear PCM.
pub type Frame = [i16; FRAME_SAMPLES];

/// A silent frame.
pub const SILENCE: Frame = [0; FRAME_SAMPLES];
