//! Groups streamed text into frames, so a consumer gets at most one event per
//! stage per frame interval, never one per token. Sans-IO: the caller passes the time.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TokenBatcher {
    interval: Duration,
    pending: String,
    last_frame: Option<Instant>,
}

impl TokenBatcher {
    pub fn new(interval: Duration) -> Self {
        Self { interval, pending: String::new(), last_frame: None }
    }

    /// Adds text; returns a frame when the previous one is at least an interval
    /// old (so the very first text goes out at once).
    pub fn push(&mut self, text: &str, now: Instant) -> Option<String> {
        self.pending.push_str(text);
        self.flush_due(now)
    }

    /// A frame of what is pending, if an interval has passed since the last one.
    pub fn flush_due(&mut self, now: Instant) -> Option<String> {
        let due = self.last_frame.is_none_or(|last| now.duration_since(last) >= self.interval);
        if !due || self.pending.is_empty() {
            return None;
        }
        self.last_frame = Some(now);
        Some(std::mem::take(&mut self.pending))
    }

    /// Whatever is left, at the end of a stream.
    pub fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_text_at_once_then_one_frame_per_interval() {
        let start = Instant::now();
        let mut batcher = TokenBatcher::new(Duration::from_millis(16));
        assert_eq!(batcher.push("The", start).as_deref(), Some("The"));
        assert_eq!(batcher.push(" capital", start + Duration::from_millis(2)), None);
        assert_eq!(batcher.push(" of", start + Duration::from_millis(9)), None);
        assert_eq!(batcher.flush_due(start + Duration::from_millis(12)), None);
        assert_eq!(batcher.flush_due(start + Duration::from_millis(16)).as_deref(), Some(" capital of"));
        assert_eq!(batcher.flush_due(start + Duration::from_millis(40)), None, "nothing pending");
        assert_eq!(batcher.push(" France", start + Duration::from_millis(41)).as_deref(), Some(" France"));
        assert_eq!(batcher.push(".", start + Duration::from_millis(42)), None);
        assert_eq!(batcher.finish().as_deref(), Some("."));
        assert_eq!(batcher.finish(), None);
    }
}
