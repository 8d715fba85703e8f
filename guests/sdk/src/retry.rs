//! Retrying with exponential backoff and jitter.
//!
//! ```ignore
//! let text = Retry::new(3).run(|attempt| {
//!     let out = Job::new(prompt).seed(attempt).run()?;
//!     if out.text.trim().is_empty() {
//!         return Err(Error::Rejected("empty answer".into()));
//!     }
//!     Ok(out.text)
//! })?;
//! ```

use std::hash::BuildHasher;
use std::time::Duration;

use crate::error::{Error, Result};

/// How often and how patiently to try. Waits `base * 2^(n-1)` (capped at `max`) after
/// the n-th failure; with jitter (the default) a random amount between half of that and
/// all of it, so parallel retries do not all hit the daemon at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    attempts: u32,
    base: Duration,
    max: Duration,
    jitter: bool,
}

impl Retry {
    /// `attempts` tries in all (at least 1), backoff 500 ms doubling up to 8 s, jitter on.
    pub fn new(attempts: u32) -> Retry {
        Retry {
            attempts: attempts.max(1),
            base: Duration::from_millis(500),
            max: Duration::from_secs(8),
            jitter: true,
        }
    }

    pub fn backoff(mut self, base: Duration, max: Duration) -> Retry {
        self.base = base;
        self.max = max.max(base);
        self
    }

    pub fn jitter(mut self, on: bool) -> Retry {
        self.jitter = on;
        self
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait after failed attempt `n` (1-based), given `unit` in [0, 1) as the random
    /// draw for the jitter.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        let full = self.base.saturating_mul(factor).min(self.max);
        if !self.jitter {
            return full;
        }
        full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// Calls `f(attempt)` (1-based) until it succeeds, fails with an error that retrying
    /// cannot fix ([`Error::is_retryable`]), or the attempts run out
    /// ([`Error::Exhausted`] with the last error). Each failure is logged as a warning.
    pub fn run<T>(&self, mut f: impl FnMut(u32) -> Result<T>) -> Result<T> {
        let mut n = 1;
        loop {
            match f(n) {
                Ok(v) => return Ok(v),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) if n >= self.attempts => {
                    return Err(Error::Exhausted {
                        attempts: n,
                        last: Box::new(e),
                    });
                }
                Err(e) => {
                    let wait = self.delay(n, random_unit());
                    crate::log::warn(format!(
                        "attempt {n}/{} failed ({e}); retrying in {} ms",
                        self.attempts,
                        wait.as_millis()
                    ));
                    std::thread::sleep(wait);
                    n += 1;
                }
            }
        }
    }
}

/// A random number in [0, 1). std seeds `RandomState` from the host's random source
/// (wasi:random) and gives every instance fresh keys, which is all jitter needs.
pub fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(0u8);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_and_caps() {
        let r = Retry::new(5)
            .backoff(Duration::from_millis(100), Duration::from_millis(350))
            .jitter(false);
        let d: Vec<u128> = (1..=4).map(|n| r.delay(n, 0.0).as_millis()).collect();
        assert_eq!(d, [100, 200, 350, 350]);
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let r = Retry::new(3).backoff(Duration::from_millis(1000), Duration::from_secs(10));
        assert_eq!(r.delay(2, 0.0), Duration::from_millis(1000));
        assert_eq!(r.delay(2, 1.0), Duration::from_millis(2000));
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn retries_only_what_can_change() {
        let r = Retry::new(3).backoff(Duration::ZERO, Duration::ZERO);
        let mut calls = 0;
        let out: Result<()> = r.run(|_| {
            calls += 1;
            Err(Error::Quota("jobs".into()))
        });
        assert_eq!((calls, out), (1, Err(Error::Quota("jobs".into()))));
        let mut calls = 0;
        let out = r.run(|n| {
            calls += 1;
            if n < 3 { Err(Error::Timeout) } else { Ok(n) }
        });
        assert_eq!((calls, out), (3, Ok(3)));
    }
}
