//! What a workspace's status is, in the one shape that `flw WS --json` and `nrvna status
//! WS --json` both print (docs/cli.md, "Status JSON").

use anyhow::Result;
use nrvna_queue::lifecycle::{DaemonStatus, probe};
use nrvna_queue::{Counts, Workspace};
use serde::Serialize;

/// A workspace's daemon and job counts. Serialized flat: the daemon's fields, then the
/// counts per state.
#[derive(Debug, Clone, Serialize)]
pub struct WorkspaceStatus {
    pub workspace: String,
    /// `ready`, `starting` (model loading) or `not running`.
    pub daemon: &'static str,
    /// The daemon's pid, when one holds the workspace.
    pub pid: Option<u32>,
    /// What a ready daemon says in `.nrvnad.info`; null otherwise.
    pub model: Option<String>,
    pub workers: Option<usize>,
    pub started_at: Option<String>,
    pub version: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
    /// The probe this was read from, for the exit code.
    #[serde(skip)]
    pub probed: DaemonStatus,
}

impl WorkspaceStatus {
    pub fn read(ws: &Workspace) -> Result<WorkspaceStatus> {
        let counts = ws.counts()?;
        let probed = probe(ws.root())?;
        let (daemon, pid, info) = match probed.clone() {
            DaemonStatus::NotRunning => ("not running", None, None),
            DaemonStatus::Starting { pid } => ("starting", pid, None),
            DaemonStatus::Ready { pid, info } => ("ready", pid, info),
            DaemonStatus::Shared { ref nodes } => {
                let ready = nodes.iter().find_map(|n| n.info.clone());
                (
                    if ready.is_some() { "ready" } else { "starting" },
                    None,
                    ready,
                )
            }
        };
        Ok(WorkspaceStatus {
            workspace: ws.root().display().to_string(),
            daemon,
            pid,
            model: info.as_ref().map(|i| i.model.clone()),
            workers: info.as_ref().map(|i| i.workers),
            started_at: info.as_ref().map(|i| i.started_at.clone()),
            version: info.map(|i| i.version),
            counts,
            probed,
        })
    }

    /// One line of JSON.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }
}

/// Says on stderr, once, that a wait on `ws` has nobody to end it: no daemon holds the
/// workspace (a mistyped path, freshly created by `wrk`, looks exactly like this).
pub fn warn_if_unserved(program: &str, ws: &Workspace) {
    // A probe that cannot read the lock file says nothing: the wait itself reports errors.
    if matches!(probe(ws.root()), Ok(DaemonStatus::NotRunning)) {
        let shown = ws.root().display();
        eprintln!(
            "{program}: warning: no daemon is running on {shown}: its jobs wait until one \
             starts (nrvnad MODEL {shown}); waiting anyway"
        );
    }
}
