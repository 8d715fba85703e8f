//! Typed errors: the WIT `job-error` plus the few failures the SDK itself reports.

use std::fmt;

use crate::bindings::nrvna::agent::types::JobError;

/// Why a host call (or an SDK helper) failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Bad input: malformed id, empty or oversize prompt, bad option.
    Invalid(String),
    /// Not granted: a route, a directory, an agent; or a job a person denied (under
    /// `--approve submits`).
    Denied(String),
    /// A limit of this run was reached (jobs, jobs in flight, call depth, storage).
    Quota(String),
    /// No such job, key or agent.
    NotFound(String),
    /// The job (or called agent) ran and failed; the text is its error.
    Failed(String),
    /// The job was cancelled.
    Cancelled,
    /// Only the wait timed out; the job may still finish.
    Timeout,
    /// The output was produced but a validator rejected it (see [`crate::Retry`]).
    Rejected(String),
    /// [`crate::Retry`] gave up; `last` is the final attempt's error.
    Exhausted { attempts: u32, last: Box<Error> },
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether trying again may help: a failed, cancelled, timed-out or rejected job.
    /// Bad input, missing grants, quotas and unknown ids fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Failed(_) | Error::Cancelled | Error::Timeout | Error::Rejected(_)
        )
    }

    /// The variant's name as the WIT spells it (`rejected`/`exhausted` are the SDK's).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::Denied(_) => "denied",
            Error::Quota(_) => "quota",
            Error::NotFound(_) => "not-found",
            Error::Failed(_) => "failed",
            Error::Cancelled => "cancelled",
            Error::Timeout => "timeout",
            Error::Rejected(_) => "rejected",
            Error::Exhausted { .. } => "exhausted",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(s) => write!(f, "invalid: {s}"),
            Error::Denied(s) => write!(f, "denied: {s}"),
            Error::Quota(s) => write!(f, "quota: {s}"),
            Error::NotFound(s) => write!(f, "not found: {s}"),
            Error::Failed(s) => write!(f, "failed: {s}"),
            Error::Cancelled => f.write_str("cancelled"),
            Error::Timeout => f.write_str("timed out waiting"),
            Error::Rejected(s) => write!(f, "rejected: {s}"),
            Error::Exhausted { attempts, last } => {
                write!(f, "gave up after {attempts} attempt(s); last error: {last}")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<JobError> for Error {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Invalid(s) => Error::Invalid(s),
            JobError::Denied(s) => Error::Denied(s),
            JobError::Quota(s) => Error::Quota(s),
            JobError::NotFound(s) => Error::NotFound(s),
            JobError::Failed(s) => Error::Failed(s),
            JobError::Cancelled => Error::Cancelled,
            JobError::Timeout => Error::Timeout,
        }
    }
}

/// So `?` works in `run`, whose error type is the WIT's `string`.
impl From<Error> for String {
    fn from(e: Error) -> Self {
        e.to_string()
    }
}

/// Adds what was being done to an error, turning it into the `String` that `run`
/// returns: `submit(p).context("draft")?` fails with `draft: quota: ...`.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> std::result::Result<T, String>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> std::result::Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_every_wit_variant_and_keeps_its_text() {
        let cases = [
            (JobError::Invalid("p".into()), Error::Invalid("p".into())),
            (JobError::Denied("r".into()), Error::Denied("r".into())),
            (JobError::Quota("q".into()), Error::Quota("q".into())),
            (JobError::NotFound("n".into()), Error::NotFound("n".into())),
            (JobError::Failed("f".into()), Error::Failed("f".into())),
            (JobError::Cancelled, Error::Cancelled),
            (JobError::Timeout, Error::Timeout),
        ];
        for (wit, ours) in cases {
            assert_eq!(Error::from(wit), ours);
        }
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(Error::Failed("x".into()).is_retryable());
        assert!(Error::Timeout.is_retryable());
        assert!(Error::Rejected("x".into()).is_retryable());
        assert!(!Error::Quota("x".into()).is_retryable());
        assert!(!Error::Denied("x".into()).is_retryable());
        assert!(!Error::Invalid("x".into()).is_retryable());
    }

    #[test]
    fn context_prefixes_the_error() {
        let r: Result<(), Error> = Err(Error::Quota("jobs 8".into()));
        assert_eq!(r.context("draft"), Err("draft: quota: jobs 8".to_owned()));
        let e = Error::Exhausted {
            attempts: 3,
            last: Box::new(Error::Timeout),
        };
        assert_eq!(
            e.to_string(),
            "gave up after 3 attempt(s); last error: timed out waiting"
        );
    }
}
