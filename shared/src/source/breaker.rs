//! A circuit breaker for a store that is away: the state a loop keeps so that
//! it pauses with a growing pause while the store is unavailable, and logs one
//! line when the store goes away and one when it answers again, never one per
//! failed attempt. The half-open probe is simply the caller's next try.
//!
//! It decides nothing about errors: which ones are outages is
//! [`crate::error::Failure`]'s table.

use std::time::Duration;

// tokio's clock (the system's, unless a test pauses it).
use tokio::time::Instant;

/// Closed (the store answers) or open since some instant, with the next pause.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// When the store became unavailable; `None` while it answers.
    down_since: Option<Instant>,
    first_pause: Duration,
    longest_pause: Duration,
    /// The pause before the next probe while open.
    pause: Duration,
}

impl Breaker {
    /// Pauses start at `first_pause` and double up to `longest_pause`.
    pub(crate) fn new(first_pause: Duration, longest_pause: Duration) -> Self {
        let longest_pause = longest_pause.max(first_pause);
        Self {
            down_since: None,
            first_pause,
            longest_pause,
            pause: first_pause,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.down_since.is_some()
    }

    /// The store failed with an outage. True when this opens the breaker (the
    /// caller logs "store unavailable" then, and only then).
    pub(crate) fn trip(&mut self) -> bool {
        if self.down_since.is_some() {
            return false;
        }
        self.down_since = Some(Instant::now());
        self.pause = self.first_pause;
        true
    }

    /// The store answered. How long it was away, when this closes the breaker
    /// (the caller logs "store available again" then, and only then).
    pub(crate) fn close(&mut self) -> Option<Duration> {
        let since = self.down_since.take()?;
        self.pause = self.first_pause;
        Some(since.elapsed())
    }

    /// The pause before the next probe; each call doubles the next one, up to
    /// the longest.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let pause = self.pause;
        self.pause = (self.pause * 2).min(self.longest_pause);
        pause
    }
}

/// Milliseconds as log lines carry them.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_opens_once_pauses_longer_each_time_and_closes_once() {
        let mut b = Breaker::new(Duration::from_secs(1), Duration::from_secs(30));
        assert!(!b.is_open());
        assert_eq!(b.close(), None, "closing a closed breaker says nothing");
        assert!(b.trip(), "the first outage opens it");
        assert!(!b.trip(), "later outages find it open");
        let pauses: Vec<u64> = (0..7).map(|_| b.next_pause().as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30]);
        assert!(b.close().is_some(), "the first answer closes it");
        assert!(b.close().is_none());
        assert!(b.trip());
        assert_eq!(
            b.next_pause(),
            Duration::from_secs(1),
            "a new outage starts over"
        );
    }
}
