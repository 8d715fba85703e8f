//! Typed errors: what the embedder sees when a component cannot be loaded or a run ends
//! abnormally. A component that returns `err` is not an error here (see
//! [`RunOutcome`](crate::RunOutcome)); these are the host's verdicts.

use std::fmt;
use std::path::PathBuf;

/// A limit that stops a run (as opposed to the recoverable `quota` errors a component
/// gets from a host call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Linear memory of the whole run, nested agents included (`--memory`).
    Memory,
    /// Time spent executing guest code (`--cpu`).
    Cpu,
    /// Wall-clock time of the whole run, waits included (`--timeout`).
    WallClock,
    /// Bytes a component may pass to one host call (`--max-hostcall-bytes`).
    HostcallBytes,
    /// Table elements, instances, tables or memories of one component.
    Resources,
}

impl LimitKind {
    /// The limit's name as the CLI and the docs spell it.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Memory => "memory",
            LimitKind::Cpu => "cpu time",
            LimitKind::WallClock => "wall-clock time",
            LimitKind::HostcallBytes => "host-call bytes",
            LimitKind::Resources => "component resources",
        }
    }

    /// The `nrvna exec` flag that raises it.
    pub fn flag(self) -> &'static str {
        match self {
            LimitKind::Memory => "--memory",
            LimitKind::Cpu => "--cpu",
            LimitKind::WallClock => "--timeout",
            LimitKind::HostcallBytes => "--max-hostcall-bytes",
            LimitKind::Resources => "(fixed)",
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
    #[error("{name}: not a usable nrvna:agent component: {message}")]
    InvalidComponent { name: String, message: String },
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
    /// access, or a host call it used wrongly.
    #[error("the component crashed: {0}")]
    Trap(String),
    /// The host itself failed (engine set-up, linking, a task that could not start).
    #[error("agent runtime: {0}")]
    Runtime(String),
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
