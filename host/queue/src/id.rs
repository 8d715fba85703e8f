//! Job ids: `<20-digit µs since epoch>_<pid>_<6-digit counter>_<8-digit random>`.
//!
//! Ids sort by submission time (the scanner relies on it), are unique across processes
//! (pid + counter) and across machines sharing a workspace (random suffix), and use only
//! digits and single underscores, so an id can never name anything outside a state
//! directory. The accepted grammar is the predecessor's, so its ids stay valid.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::QueueError;

/// Longest id accepted anywhere.
pub const MAX_ID_LEN: usize = 128;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A validated job id; constructing one is the only path check a caller needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(String);

impl JobId {
    /// A fresh id for a job submitted now.
    pub fn generate() -> JobId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed) % 1_000_000;
        JobId(format!(
            "{micros:020}_{}_{counter:06}_{:08}",
            std::process::id(),
            random_u32() % 100_000_000
        ))
    }

    /// Checks `s` against the id grammar: 1..=128 chars, digits and `_` only,
    /// no leading, trailing or doubled `_`.
    pub fn parse(s: &str) -> Result<JobId, QueueError> {
        if is_valid(s) {
            Ok(JobId(s.to_owned()))
        } else {
            Err(QueueError::InvalidId(crate::error::shown(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Submission time in microseconds since the epoch, from the id's first field.
    pub fn submitted_micros(&self) -> Option<u128> {
        self.0.split('_').next()?.parse().ok()
    }
}

fn is_valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'_')
        && !s.starts_with('_')
        && !s.ends_with('_')
        && !s.contains("__")
}

/// 32 random bits from the std hasher's per-process random keys mixed with the clock;
/// enough to keep two machines that pick the same µs and pid apart.
pub(crate) fn random_u32() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    (h.finish() >> 16) as u32
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for JobId {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobId::parse(s)
    }
}

impl AsRef<std::path::Path> for JobId {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_unique_and_sorted() {
        let ids: Vec<JobId> = (0..1000).map(|_| JobId::generate()).collect();
        for id in &ids {
            assert!(is_valid(id.as_str()), "{id}");
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert!(
            ids.windows(2)
                .all(|w| w[0].submitted_micros() <= w[1].submitted_micros())
        );
    }

    #[test]
    fn hostile_ids_are_rejected() {
        for bad in [
            "",
            "../etc",
            "/abs",
            "1/2",
            "1\0",
            "_1",
            "1_",
            "1__2",
            "abc",
            "1 2",
            ".",
            "..",
            &"1".repeat(129),
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(JobId::parse("00001776369563123456_48213_000000").is_ok());
        assert!(JobId::parse("1").is_ok());
    }
}
