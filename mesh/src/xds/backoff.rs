//! Jittered exponential backoff between reconnection attempts.

use std::time::Duration;

/// Bounds of the reconnection backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Longest delay (before jitter); the delay doubles up to this.
    pub max: Duration,
}

impl Default for BackoffConfig {
    /// 100 ms doubling up to 15 s.
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
        }
    }
}

/// The delay sequence: each delay is the current base times a random factor in [0.5, 1.0),
/// and the base doubles up to the maximum. [`Backoff::reset`] starts over.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    base: Duration,
}

impl Backoff {
    /// A backoff at its initial delay; a zero `initial` is raised to 1 ms and a `max` below
    /// `initial` is raised to it.
    pub(crate) fn new(config: BackoffConfig) -> Self {
        let initial = config.initial.max(Duration::from_millis(1));
        let config = BackoffConfig {
            initial,
            max: config.max.max(initial),
        };
        Backoff {
            config,
            base: config.initial,
        }
    }

    /// The next delay to wait.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = base.saturating_mul(2).min(self.config.max);
        base.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }

    /// Starts over at the initial delay (after a connection that worked).
    pub(crate) fn reset(&mut self) {
        self.base = self.config.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        });
        let bases = [100, 200, 400, 800, 1000, 1000];
        for base in bases {
            let d = b.next_delay();
            let base = Duration::from_millis(base);
            assert!(
                d >= base / 2 && d < base,
                "{d:?} not in [{:?}, {base:?})",
                base / 2
            );
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(100));
    }

    #[test]
    fn nonsense_bounds_are_fixed_up() {
        let mut b = Backoff::new(BackoffConfig {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        });
        let d = b.next_delay();
        assert!(d > Duration::ZERO && d <= Duration::from_millis(1));
    }
}
