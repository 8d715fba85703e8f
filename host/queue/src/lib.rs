//! The nrvna workspace: a durable, directory-based job queue.
//!
//! A job is a directory and its location is its state
//! (`input/writing → input/ready → processing → output | failed`). This crate knows
//! nothing about inference: it stages, publishes, claims, completes and fails jobs,
//! guards the id grammar, owns the daemon lock, and waits for state changes.

/// A point where a test can stop the process (`fail::cfg`): compiled in only with the
/// `failpoints` feature, which no release build has.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}
pub(crate) use failpoint;

/// [`failpoint!`] for the crates above this one (the daemon, the HTTP server): compiled
/// to nothing without the `failpoints` feature, which no release build has.
#[inline]
pub fn failpoint_at(name: &str) {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

pub mod approval;
mod error;
pub mod files;
mod fsio;
pub mod id;
pub mod lifecycle;
pub mod messages;
pub mod meta;
pub mod nodes;
pub mod spec;
pub mod stream;
pub mod verify;
pub mod watch;
pub mod workspace;

pub use approval::{Actor, AuditRecord, DecideOutcome};
pub use error::{QueueError, Result, shown};
pub use files::*;
pub use fsio::fsync_enabled;
pub use id::JobId;
pub use meta::{AgentJob, Decision, JobStatus, Meta, Mode, OutputFormat, Sampling, Verdict};
pub use spec::Spec;
pub use verify::{Check, Verification};
pub use workspace::{
    Artifact, ArtifactKind, CancelOutcome, Claim, ClaimedJob, Counts, JobOutcome, Limits, Outcome,
    Recovery, State, Submission, Workspace,
};
