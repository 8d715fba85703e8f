//! The nrvna workspace: a durable, directory-based job queue.
//!
//! A job is a directory and its location is its state
//! (`input/writing → input/ready → processing → output | failed`). This crate knows
//! nothing about inference: it stages, publishes, claims, completes and fails jobs,
//! guards the id grammar, owns the daemon lock, and waits for state changes.

mod error;
pub mod files;
mod fsio;
pub mod id;
pub mod lifecycle;
pub mod messages;
pub mod meta;
pub mod stream;
pub mod watch;
pub mod workspace;

pub use error::{QueueError, Result, shown};
pub use files::*;
pub use fsio::fsync_enabled;
pub use id::JobId;
pub use meta::{AgentJob, JobStatus, Meta, Mode, OutputFormat, Sampling};
pub use workspace::{
    Artifact, ArtifactKind, CancelOutcome, Claim, ClaimedJob, Counts, JobOutcome, Limits, Outcome,
    State, Submission, Workspace,
};
