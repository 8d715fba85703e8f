//! Typed errors: what the embedder sees when a component cannot be loaded or a run ends
//! abnormally. A component that returns `err` is not an error here (see
//! [`RunOutcome`](crate::RunOutcome)); these are the host's verdicts.

use std::fmt;
use std::path::PathBuf;

use crate::text::cut;

/// A limit that stops a run (as opposed to the recoverable `quota` errors a component
/// gets from a host call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Linear memory of the whole run, nested agents included (`--memory`).
    Memory,
    /// Time spent executing guest code (`--cpu`).
    Cpu,
    /// Wall-clock time of the whole run, waits included (`--timeout`), except waits for
    /// approval.
    WallClock,
    /// Time the run waited for its held jobs to be approved (`--approval-timeout`).
    ApprovalWait,
    /// Bytes a component may pass to one host call (`--max-hostcall-bytes`).
    HostcallBytes,
    /// Table elements, instances, tables or memories of one component.
    Resources,
    /// Handles (open files, directories, streams) of the whole run (`--max-handles`).
    Handles,
    /// Time compiling one component (`--max-compile-time`).
    CompileTime,
    /// Bytes of the run's journal, or of one entry (`--max-journal-bytes`).
    JournalBytes,
}

impl LimitKind {
    /// The limit's name as the CLI and the docs spell it.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Memory => "memory",
            LimitKind::Cpu => "cpu time",
            LimitKind::WallClock => "wall-clock time",
            LimitKind::ApprovalWait => "approval wait",
            LimitKind::HostcallBytes => "host-call bytes",
            LimitKind::Resources => "component resources",
            LimitKind::Handles => "open handles",
            LimitKind::CompileTime => "compile time",
            LimitKind::JournalBytes => "journal bytes",
        }
    }

    /// The `nrvna exec` flag that raises it (`fixed` if none does).
    pub fn flag(self) -> &'static str {
        match self {
            LimitKind::Memory => "--memory",
            LimitKind::Cpu => "--cpu",
            LimitKind::WallClock => "--timeout",
            LimitKind::ApprovalWait => "--approval-timeout",
            LimitKind::HostcallBytes => "--max-hostcall-bytes",
            LimitKind::Resources => "fixed",
            LimitKind::Handles => "--max-handles",
            LimitKind::CompileTime => "--max-compile-time",
            LimitKind::JournalBytes => "--max-journal-bytes",
        }
    }
}

/// A limit was hit and the run was stopped. The message names the limit, the value
/// reached and the flag that raises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitHit {
    pub kind: LimitKind,
    pub message: String,
}

impl LimitHit {
    pub(crate) fn new(kind: LimitKind, detail: impl fmt::Display) -> LimitHit {
        LimitHit {
            kind,
            message: format!("{} limit reached: {detail} ({})", kind.name(), kind.flag()),
        }
    }
}

impl fmt::Display for LimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LimitHit {}

/// A `--dir`, `--env`, `--route` or `--agent` value that cannot be granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("--dir {spec:?}: {reason}")]
    Dir { spec: String, reason: String },
    #[error("--env {spec:?}: expected K=V with a non-empty K without `=` or NUL")]
    Env { spec: String },
    #[error("--route {spec:?}: {reason}")]
    Route { spec: String, reason: String },
    #[error("--agent {spec:?}: {reason}")]
    Agent { spec: String, reason: String },
    #[error("{what} {value:?}: {reason}")]
    Value {
        what: &'static str,
        value: String,
        reason: String,
    },
}

/// Everything that can stop a component from running or finishing.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot read component {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not a component this host can run (or its name is unusable); `source` says why.
    #[error("{name}: not a usable nrvna:agent component: {}", chain(.source))]
    InvalidComponent {
        name: String,
        #[source]
        source: wasmtime::Error,
    },
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error("workspace {path}: {source}")]
    Workspace {
        path: PathBuf,
        #[source]
        source: nrvna_queue::QueueError,
    },
    /// The run was stopped by a limit.
    #[error("stopped: {0}")]
    Limit(LimitHit),
    /// The component crashed: a panic, `unreachable`, a stack overflow, a bad memory
    /// access, or a host call it used wrongly. The message shows wasmtime's trap first,
    /// then the wasm backtrace.
    #[error("the component crashed: {}", crash_report(.0))]
    Trap(#[source] wasmtime::Error),
    /// The run's journal could not be used, or its replay diverged.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The host itself failed (engine set-up, linking, a thread that could not start).
    #[error("agent runtime: {what}: {source}")]
    Runtime {
        /// The step that failed.
        what: &'static str,
        #[source]
        source: wasmtime::Error,
    },
}

impl SandboxError {
    /// The limit that stopped the run, if that is what happened.
    pub fn limit(&self) -> Option<&LimitHit> {
        match self {
            SandboxError::Limit(hit) => Some(hit),
            _ => None,
        }
    }
}

/// Longest error text shown (a wasm backtrace can be long).
const MAX_ERROR_TEXT: usize = 4000;

/// An error with its causes, cut to a readable length.
fn chain(e: &wasmtime::Error) -> String {
    let mut text = String::new();
    for (i, cause) in e.chain().enumerate() {
        if i > 0 {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string());
    }
    cut(text, MAX_ERROR_TEXT, " [...]")
}

/// A crash: the root cause ("wasm trap: ...") first, the wasm backtrace after it.
fn crash_report(e: &wasmtime::Error) -> String {
    let root = e.root_cause().to_string();
    let rest: Vec<String> = e
        .chain()
        .map(|c| c.to_string())
        .filter(|c| *c != root)
        .collect();
    let mut message = root;
    for part in rest {
        message.push('\n');
        message.push_str(&part);
    }
    cut(message, MAX_ERROR_TEXT, " [...]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_message_names_its_flag_once() {
        let hit = LimitHit::new(LimitKind::Resources, "a table would grow");
        assert_eq!(
            hit.message,
            "component resources limit reached: a table would grow (fixed)"
        );
        let hit = LimitHit::new(LimitKind::Handles, "x");
        assert!(hit.message.ends_with("x (--max-handles)"), "{hit}");
    }
}
