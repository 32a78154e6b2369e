//! Prompt playback in 20 ms frames, prompt loading with generated fallbacks, tones
//! (music on hold, beep) and the stereo frame mixer used for call recording.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use super::{Frame, FRAME_SAMPLES, SILENCE};

/// Loaded prompts by name.
#[derive(Debug, Clone, Default)]
pub struct PromptStore {
    prompts: HashMap<String, Arc<[i16]>>,
}

impl PromptStore {
    /// Loads every `*.wav` in `dir`; unreadable files are logged and skipped.
    pub fn load(dir: &Path) -> Self {
        let mut prompts = HashMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "Prompt directory unreadable; using generated tones.");
                return Self::default();
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("wav") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            match super::wav::read_wav(&path) {
                Ok(samples) => {
                    prompts.insert(name.to_string(), Arc::from(samples));
                }
                Err(error) => tracing::warn!(%error, "Prompt skipped."),
            }
        }
        Self { prompts }
    }

    /// Adds or replaces a prompt.
    pub fn insert(&mut self, name: &str, samples: Vec<i16>) {
        self.prompts.insert(name.to_string(), Arc::from(samples));
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// Whether no prompt is loaded.
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// The prompt, or a short generated two-tone cue when the file is missing, so a
    /// flow with a missing prompt still behaves (and the gap is audible in testing).
    pub fn get(&self, name: &str) -> Arc<[i16]> {
        match self.prompts.get(name) {
            Some(p) => p.clone(),
            None => Arc::from(fallback_cue()),
        }
    }

    /// Whether the named prompt was loaded from disk.
    pub fn has(&self, name: &str) -> bool {
        self.prompts.contains_key(name)
    }
}

fn fallback_cue() -> Vec<i16> {
    let mut s = tone(660.0, 150, 6000);
    s.extend(std::iter::repeat_n(0, 400));
    s.extend(tone(880.0, 150, 6000));
    s.extend(std::iter::repeat_n(0, 1600));
    s
}

/// A sine tone of `ms` milliseconds at 8 kHz.
pub fn tone(freq: f32, ms: u32, amplitude: i16) -> Vec<i16> {
    let n = (ms * 8) as usize;
    (0..n)
        .map(|i| {
            let t = i as f32 / 8000.0;
            (f32::from(amplitude) * (2.0 * std::f32::consts::PI * freq * t).sin()) as i16
        })
        .collect()
}

/// Plays a queue of sample buffers as 20 ms frames.
#[derive(Debug, Default, Clone)]
pub struct PromptPlayer {
    queue: VecDeque<Arc<[i16]>>,
    pos: usize,
}

impl PromptPlayer {
    /// An idle player.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues samples after whatever is playing.
    pub fn enqueue(&mut self, samples: Arc<[i16]>) {
        self.queue.push_back(samples);
    }

    /// Stops playback.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.pos = 0;
    }

    /// Whether something is queued.
    pub fn is_playing(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The next frame, or `None` when everything has been played. A partial last
    /// frame is padded with silence; the next prompt starts on a frame boundary.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let mut frame = SILENCE;
        let current = self.queue.front()?.clone();
        let take = (current.len() - self.pos.min(current.len())).min(FRAME_SAMPLES);
        frame[..take].copy_from_slice(&current[self.pos..self.pos + take]);
        self.pos += take;
        if self.pos >= current.len() {
            self.queue.pop_front();
            self.pos = 0;
        }
        Some(frame)
    }
}

/// Endless music on hold: a looping prompt, or a soft generated chime pattern.
#[derive(Debug, Clone)]
pub struct MusicOnHold {
    samples: Arc<[i16]>,
    pos: usize,
}

impl MusicOnHold {
    /// Loops `samples`, or the generated pattern when `None` or empty.
    pub fn new(samples: Option<Arc<[i16]>>) -> Self {
        let samples = samples.filter(|s| !s.is_empty()).unwrap_or_else(|| {
            let mut pattern = Vec::new();
            for (f, ms) in [(523.25, 300), (659.25, 300), (783.99, 300), (659.25, 300)] {
                pattern.extend(tone(f, ms, 2500));
                pattern.extend(std::iter::repeat_n(0, 800));
            }
            pattern.extend(std::iter::repeat_n(0, 8000));
            Arc::from(pattern)
        });
        Self { samples, pos: 0 }
    }

    /// The looped samples.
    pub fn pattern(&self) -> Arc<[i16]> {
        self.samples.clone()
    }

    /// The next frame (never ends).
    pub fn next_frame(&mut self) -> Frame {
        let mut frame = SILENCE;
        for s in frame.iter_mut() {
            *s = self.samples[self.pos % self.samples.len()];
            self.pos = (self.pos + 1) % self.samples.len();
        }
        frame
    }
}

/// Aligns the two directions of a call for stereo recording: each side's audio is
/// buffered and one frame per side is taken every 20 ms, silence where a side had
/// nothing (a gap or a muted leg).
#[derive(Debug, Default)]
pub struct StereoMixer {
    left: VecDeque<i16>,
    right: VecDeque<i16>,
}

/// Maximum buffered samples per side (1 s); older audio is dropped if a side runs ahead.
const MIXER_LIMIT: usize = 8000;

impl StereoMixer {
    /// An empty mixer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Audio from the caller (left channel).
    pub fn push_left(&mut self, samples: &[i16]) {
        push_bounded(&mut self.left, samples);
    }

    /// Audio from the agent (right channel).
    pub fn push_right(&mut self, samples: &[i16]) {
        push_bounded(&mut self.right, samples);
    }

    /// Whether both sides are drained.
    pub fn is_empty(&self) -> bool {
        self.left.is_empty() && self.right.is_empty()
    }

    /// Takes one 20 ms frame per side.
    pub fn pop_frame(&mut self) -> (Frame, Frame) {
        (pop_frame(&mut self.left), pop_frame(&mut self.right))
    }
}

fn push_bounded(buf: &mut VecDeque<i16>, samples: &[i16]) {
    buf.extend(samples.iter().copied());
    while buf.len() > MIXER_LIMIT {
        buf.pop_front();
    }
}

fn pop_frame(buf: &mut VecDeque<i16>) -> Frame {
    let mut frame = SILENCE;
    for s in frame.iter_mut() {
        match buf.pop_front() {
            Some(v) => *s = v,
            None => break,
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn player_pads_and_chains_prompts() {
        let mut p = PromptPlayer::new();
        p.enqueue(Arc::from(vec![1i16; 200]));
        p.enqueue(Arc::from(vec![2i16; 10]));
        let a = p.next_frame().unwrap();
        let b = p.next_frame().unwrap();
        let c = p.next_frame().unwrap();
        assert!(p.next_frame().is_none());
        assert!(a.iter().all(|s| *s == 1));
        assert_eq!((b[39], b[40]), (1, 0));
        assert_eq!((c[9], c[10]), (2, 0));
        p.enqueue(Arc::from(Vec::<i16>::new()));
        assert!(p.next_frame().is_some());
        assert!(!p.is_playing(), "an empty prompt is skipped after one frame");
    }

    #[test]
    fn moh_loops_and_missing_prompts_fall_back() {
        let mut moh = MusicOnHold::new(None);
        let energy: i64 = (0..100).map(|_| moh.next_frame().iter().map(|s| i64::from(*s).abs()).sum::<i64>()).sum();
        assert!(energy > 0);
        let store = PromptStore::load(Path::new("/nonexistent"));
        assert!(!store.get("welcome").is_empty());
        assert!(!store.has("welcome"));
    }

    #[test]
    fn shipped_prompts_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/prompts");
        let store = PromptStore::load(&dir);
        for name in ["welcome", "menu", "music-on-hold", "position", "20", "goodbye"] {
            assert!(store.has(name), "{name} missing in {}", dir.display());
        }
        assert!(store.get("welcome").len() > 4000, "at least half a second");
    }

    #[test]
    fn mixer_pads_silent_side() {
        let mut m = StereoMixer::new();
        m.push_left(&[7; 200]);
        let (l, r) = m.pop_frame();
        assert!(l.iter().all(|s| *s == 7));
        assert!(r.iter().all(|s| *s == 0));
        let (l, _) = m.pop_frame();
        assert_eq!((l[39], l[40]), (7, 0));
    }
}
