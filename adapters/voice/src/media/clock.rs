//! The media clock of a leg: frame `n` is due at `start + n × 20 ms`, whatever the
//! load. A timer that fires late (a busy CPU) gets every frame due so far, so prompts
//! and music on hold keep real time instead of stretching: waking once per tick and
//! sending one frame (`sleep(20 ms)` per packet, or an interval that skips missed
//! ticks) plays a prompt slower than real time as soon as the runtime is late.

use std::time::{Duration, Instant};

/// One frame of 8 kHz audio.
pub const FRAME: Duration = Duration::from_millis(20);

/// Most frames produced in one burst after a stall (1 s); a longer stall is skipped
/// rather than sent as a flood the peer's jitter buffer would drop anyway.
pub const MAX_BURST: u64 = 50;

/// Frames to handle at one wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Frames to produce and send now, oldest first.
    pub send: u64,
    /// Frames older than [`MAX_BURST`] to advance past without sending.
    pub skip: u64,
}

/// Absolute 20 ms frame clock.
#[derive(Debug, Clone, Copy)]
pub struct MediaClock {
    start: Instant,
    /// Frames handled (sent or skipped) so far.
    frames: u64,
}

impl MediaClock {
    /// A clock whose first frame is due at `start`.
    pub fn new(start: Instant) -> Self {
        Self { start, frames: 0 }
    }

    /// When the next frame is due.
    pub fn next_due(&self) -> Instant {
        self.start + frame_offset(self.frames)
    }

    /// Every frame due at `now` and not handled yet; they count as handled.
    pub fn take_due(&mut self, now: Instant) -> Due {
        if now < self.next_due() {
            return Due { send: 0, skip: 0 };
        }
        let elapsed = now.duration_since(self.start);
        let due_total = u64::try_from(elapsed.as_nanos() / FRAME.as_nanos()).unwrap_or(u64::MAX).saturating_add(1);
        let due = due_total.saturating_sub(self.frames);
        self.frames = due_total;
        let skip = due.saturating_sub(MAX_BURST);
        Due { send: due - skip, skip }
    }
}

fn frame_offset(frames: u64) -> Duration {
    Duration::from_nanos(u64::try_from(FRAME.as_nanos()).unwrap_or(u64::MAX).saturating_mul(frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Late, irregular wake-ups (a busy CPU) still yield exactly one frame per 20 ms of
    /// wall clock: no drift.
    #[test]
    fn late_wakeups_catch_up_without_drift() {
        let t0 = Instant::now();
        let mut clock = MediaClock::new(t0);
        let mut sent = 0;
        let mut now = t0;
        for step in [0u64, 7, 45, 3, 61, 20, 20, 95, 1, 38] {
            now += Duration::from_millis(step);
            let due = clock.take_due(now);
            assert_eq!(due.skip, 0);
            sent += due.send;
            assert!(clock.next_due() > now, "everything due was handed out");
        }
        // 290 ms elapsed: frames at 0, 20, ..., 280 ms.
        assert_eq!(sent, 15);
        assert_eq!(clock.take_due(now), Due { send: 0, skip: 0 }, "nothing twice");
        // After 10 s of such wake-ups the count is still exact.
        while now < t0 + Duration::from_secs(10) {
            now += Duration::from_millis(33);
            sent += clock.take_due(now).send;
        }
        assert_eq!(sent, now.duration_since(t0).as_millis() as u64 / 20 + 1);
    }

    #[test]
    fn a_long_stall_is_skipped_not_flooded() {
        let t0 = Instant::now();
        let mut clock = MediaClock::new(t0);
        assert_eq!(clock.take_due(t0).send, 1);
        let due = clock.take_due(t0 + Duration::from_secs(3));
        assert_eq!(due, Due { send: MAX_BURST, skip: 150 - MAX_BURST });
        assert_eq!(clock.next_due(), t0 + Duration::from_millis(3020));
    }
}
