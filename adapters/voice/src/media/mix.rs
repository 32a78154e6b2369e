//! Conference mixing for supervisor listen-in and barge: decoded G.711 audio from
//! several legs is buffered per source and summed one 20 ms frame at a time with
//! saturation, so a leg hears everyone routed to it as one stream. Also the
//! signal level used to end a voicemail on silence.

use std::collections::VecDeque;

use super::{Frame, FRAME_SAMPLES, SILENCE};

/// Most audio buffered per source (200 ms): a source running ahead of the 20 ms tick
/// (RTP bursts after a network stall) loses its oldest samples instead of adding delay.
pub const MIX_LIMIT: usize = FRAME_SAMPLES * 10;

/// Adds `add` to `acc` sample by sample, clipping at the i16 range instead of wrapping.
pub fn mix_saturating(acc: &mut [i16], add: &[i16]) {
    for (a, b) in acc.iter_mut().zip(add) {
        *a = a.saturating_add(*b);
    }
}

/// Root mean square of a block of samples (0 for an empty block).
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|s| f64::from(*s) * f64::from(*s)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// RMS below which a frame counts as silence (about -50 dBFS: line noise and comfort
/// noise stay under it, speech does not).
pub const SILENCE_RMS: f64 = 100.0;

/// Per-source buffers of one leg's conference input.
#[derive(Debug, Default)]
pub struct FrameMixer {
    sources: Vec<(u64, VecDeque<i16>)>,
}

impl FrameMixer {
    /// An empty mixer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Audio from `source` (a leg id).
    pub fn push(&mut self, source: u64, samples: &[i16]) {
        let idx = match self.sources.iter().position(|(s, _)| *s == source) {
            Some(i) => i,
            None => {
                self.sources.push((source, VecDeque::with_capacity(MIX_LIMIT)));
                self.sources.len() - 1
            }
        };
        let buf = &mut self.sources[idx].1;
        buf.extend(samples.iter().copied());
        let excess = buf.len().saturating_sub(MIX_LIMIT);
        buf.drain(..excess);
    }

    /// Forgets a source (its leg left the conference).
    pub fn remove(&mut self, source: u64) {
        self.sources.retain(|(s, _)| *s != source);
    }

    /// Drops everything buffered (music on hold or a prompt replaces the mix).
    pub fn clear(&mut self) {
        for (_, b) in &mut self.sources {
            b.clear();
        }
    }

    /// One frame: the saturating sum of up to one frame from each source, silence where
    /// a source ran short. `None` when no source had anything (send nothing, as a
    /// plain relay would).
    pub fn pop_frame(&mut self) -> Option<Frame> {
        let mut out = SILENCE;
        let mut any = false;
        for (_, buf) in &mut self.sources {
            if buf.is_empty() {
                continue;
            }
            any = true;
            let n = buf.len().min(FRAME_SAMPLES);
            let mut frame = SILENCE;
            for (dst, src) in frame.iter_mut().zip(buf.drain(..n)) {
                *dst = src;
            }
            mix_saturating(&mut out, &frame);
        }
        any.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_with_saturation() {
        let mut acc = [30_000i16, -30_000, 5];
        mix_saturating(&mut acc, &[10_000, -10_000, -7]);
        assert_eq!(acc, [i16::MAX, i16::MIN, -2]);
    }

    #[test]
    fn mixes_one_frame_per_source_and_pads_short_sources() {
        let mut m = FrameMixer::new();
        assert_eq!(m.pop_frame(), None);
        m.push(1, &[100; FRAME_SAMPLES * 2]);
        m.push(2, &[-30; 40]);
        let f = m.pop_frame().expect("frame");
        assert_eq!((f[0], f[39], f[40], f[159]), (70, 70, 100, 100));
        let f = m.pop_frame().expect("second frame of source 1");
        assert!(f.iter().all(|s| *s == 100));
        assert_eq!(m.pop_frame(), None);
    }

    #[test]
    fn bounds_each_source_and_forgets_removed_ones() {
        let mut m = FrameMixer::new();
        m.push(7, &[1; MIX_LIMIT * 3]);
        let mut frames = 0;
        while m.pop_frame().is_some() {
            frames += 1;
        }
        assert_eq!(frames, MIX_LIMIT / FRAME_SAMPLES);
        m.push(7, &[1; 10]);
        m.remove(7);
        assert_eq!(m.pop_frame(), None);
        m.push(8, &[1; 10]);
        m.clear();
        assert_eq!(m.pop_frame(), None);
    }

    #[test]
    fn rms_tells_speech_from_silence() {
        assert_eq!(rms(&[]), 0.0);
        assert!(rms(&[3, -4, 2, 0]) < SILENCE_RMS);
        assert!(rms(&[2000, -2000]) > SILENCE_RMS);
    }
}
