//! The exit codes of every nrvna program: one table, each meaning one code whichever
//! program says it. `--help` and docs/cli.md show this table.

use std::process::ExitCode;

use nrvna_queue::QueueError;
use nrvna_queue::lifecycle::DaemonStatus;

/// Done: the job is done, the job was submitted or cancelled, the daemon is ready.
pub const OK: u8 = 0;
/// The job or the component failed or was cancelled, or an error stopped the command.
pub const FAILED: u8 = 1;
/// The command line is wrong: an unknown flag, a missing or malformed argument.
pub const USAGE: u8 = 2;
/// Not yet: the job is still queued or running, or the daemon is still starting.
pub const NOT_READY: u8 = 3;
/// No such job, or the directory is not a workspace.
pub const NOT_FOUND: u8 = 4;
/// No daemon is running on the workspace.
pub const NO_DAEMON: u8 = 5;
/// The job had already ended (nothing left to cancel), or is no longer held (someone
/// else approved or denied it first).
pub const ALREADY_ENDED: u8 = 6;
/// A limit stopped the agent run.
pub const LIMIT: u8 = 7;
/// The agent component crashed.
pub const CRASH: u8 = 8;
/// SIGINT stopped the command (128 + 2, as a shell reports it).
pub const INTERRUPTED: u8 = 130;
/// SIGTERM stopped the command (128 + 15).
pub const TERMINATED: u8 = 143;

/// Every code, in the table's order.
pub const ALL: [u8; 11] = [
    OK,
    FAILED,
    USAGE,
    NOT_READY,
    NOT_FOUND,
    NO_DAEMON,
    ALREADY_ENDED,
    LIMIT,
    CRASH,
    INTERRUPTED,
    TERMINATED,
];

/// Every code with its meaning, in the words `--help` and docs/cli.md use.
const TABLE: [(u8, &str); 11] = [
    (OK, "ok: done, submitted, cancelled, or the daemon is ready"),
    (
        FAILED,
        "failed: the job or component failed or was cancelled, or an error (I/O, start-up)",
    ),
    (
        USAGE,
        "usage: an unknown flag, a missing argument, or a malformed one (id, tag, value)",
    ),
    (
        NOT_READY,
        "not ready: still queued or running (--no-wait, or --timeout passed), or starting",
    ),
    (
        NOT_FOUND,
        "not found: no such job (or no job in the set), or not a workspace",
    ),
    (NO_DAEMON, "no daemon is running on the workspace"),
    (
        ALREADY_ENDED,
        "already ended or decided: nothing left to cancel, approve or deny",
    ),
    (
        LIMIT,
        "a limit stopped the run; the message names it and its flag",
    ),
    (
        CRASH,
        "the component crashed (panic, unreachable, stack overflow, bad memory access)",
    ),
    (
        INTERRUPTED,
        "SIGINT (Ctrl-C) stopped it; a run's unfinished jobs are cancelled first",
    ),
    (TERMINATED, "SIGTERM stopped it, as SIGINT does"),
];

/// The `Exit codes` section of a program's `--help`: the rows of the codes it can return.
pub fn help(codes: &[u8]) -> String {
    let mut text = String::from("Exit codes (the same in every nrvna program):\n");
    for (code, meaning) in TABLE.iter().filter(|(code, _)| codes.contains(code)) {
        text.push_str(&format!("  {code:<4} {meaning}\n"));
    }
    text
}

/// A mistake in how the command was called, found after parsing (exits [`USAGE`]).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The code for an error: a malformed argument is a usage error, a missing job or
/// workspace is not found, anything else is a failure.
pub fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<UsageError>() {
            return USAGE;
        }
        match cause.downcast_ref::<QueueError>() {
            Some(
                QueueError::InvalidId(_)
                | QueueError::InvalidTag(_)
                | QueueError::TooManyTags { .. }
                | QueueError::InvalidOption { .. },
            ) => return USAGE,
            Some(QueueError::NotFound(_) | QueueError::NotAWorkspace(_)) => return NOT_FOUND,
            _ => {}
        }
    }
    FAILED
}

/// Prints `PROGRAM: error: ...` with its causes and returns the error's code.
pub fn report(program: &str, err: &anyhow::Error) -> ExitCode {
    eprintln!("{program}: error: {}", crate::cli::error_chain(err));
    ExitCode::from(code_of(err))
}

/// The code a status check returns for the daemon's state.
pub fn of_daemon(status: &DaemonStatus) -> u8 {
    match status {
        DaemonStatus::Ready { .. } => OK,
        DaemonStatus::Starting { .. } => NOT_READY,
        DaemonStatus::Shared { .. } if status.is_ready() => OK,
        DaemonStatus::Shared { .. } => NOT_READY,
        DaemonStatus::NotRunning => NO_DAEMON,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_has_one_meaning() {
        let mut codes: Vec<u8> = TABLE.iter().map(|(code, _)| *code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len());
        assert!(
            TABLE
                .iter()
                .zip(ALL)
                .all(|((code, _), listed)| *code == listed)
        );
    }

    #[test]
    fn errors_map_to_their_codes() {
        let bad_id = anyhow::Error::new(QueueError::InvalidId("x".into())).context("flw");
        assert_eq!(code_of(&bad_id), USAGE);
        let missing = anyhow::Error::new(QueueError::NotAWorkspace("/nope".into()));
        assert_eq!(code_of(&missing), NOT_FOUND);
        assert_eq!(code_of(&UsageError("give --ws".into()).into()), USAGE);
        assert_eq!(code_of(&anyhow::anyhow!("disk full")), FAILED);
    }
}
