//! Daemon ownership of a workspace.
//!
//! `.nrvnad.lock` holds an OS file lock (flock) for as long as a daemon lives; it is the
//! only liveness truth, so a SIGKILLed daemon never blocks the next one. Beside it:
//! `.nrvnad.pid` (written once the lock is held), `.nrvnad.ready` and `.nrvnad.info`
//! (written once the model is loaded). The predecessor's scripts poll `.nrvnad.pid`.
//!
//! Daemons sharing a workspace (`nrvnad --shared`, crate::nodes) each hold the lock
//! *shared*, which keeps an exclusive daemon out while any of them runs (and them out
//! while it does); each says who it is in `.nodes/<id>` instead of the files above.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, QueueError, Result};
use crate::fsio::write_durable;
use crate::nodes::{Node, NodeBeat, NodeId, live_nodes};

pub const LOCK_FILE: &str = ".nrvnad.lock";
pub const PID_FILE: &str = ".nrvnad.pid";
pub const READY_FILE: &str = ".nrvnad.ready";
pub const INFO_FILE: &str = ".nrvnad.info";

/// What a running daemon says about itself in `.nrvnad.info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DaemonInfo {
    pub pid: u32,
    pub model: String,
    pub workers: usize,
    pub started_at: String,
    #[serde(default)]
    pub version: String,
}

/// Opens the workspace's lock file, creating it (never truncating: it names the holder).
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at(path)
}

/// Tries the non-blocking `op` on the lock for up to 300 ms, as another process may hold
/// it for a moment: `true` once taken, `false` when it is still held after that.
fn lock_within_grace(file: &File, op: FlockOperation, path: &Path) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_millis(300);
    loop {
        match flock(file, op) {
            Ok(()) => return Ok(true),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => return Ok(false),
            Err(e) => return Err(std::io::Error::from(e)).at(path),
        }
    }
}

/// The error for a lock held by an exclusive daemon, naming the pid it wrote.
fn locked_by(root: &Path, file: &mut File) -> QueueError {
    let mut pid = String::new();
    let _ = file.read_to_string(&mut pid);
    QueueError::Locked {
        path: root.to_owned(),
        pid: pid.trim().to_owned(),
    }
}

/// Held for the daemon's lifetime; dropping it removes the pid/ready/info files.
#[derive(Debug)]
pub struct DaemonLock {
    root: PathBuf,
    _file: File,
    /// The node this daemon is, on a shared workspace.
    node: Option<Node>,
}

impl DaemonLock {
    /// Takes the workspace's lock or reports who holds it.
    pub fn acquire(root: &Path) -> Result<DaemonLock> {
        let path = root.join(LOCK_FILE);
        let mut file = open_lock_file(&path)?;
        // A `status` probe holds the lock for microseconds; don't mistake it for a daemon.
        if !lock_within_grace(&file, FlockOperation::NonBlockingLockExclusive, &path)? {
            if !live_nodes(root).is_empty() {
                return Err(QueueError::ServedShared {
                    path: root.to_owned(),
                });
            }
            return Err(locked_by(root, &mut file));
        }
        let pid = std::process::id().to_string();
        file.set_len(0).at(&path)?;
        file.rewind().at(&path)?;
        file.write_all(pid.as_bytes()).at(&path)?;
        file.sync_all().at(&path)?;
        let _ = fs::remove_file(root.join(READY_FILE));
        let _ = fs::remove_file(root.join(INFO_FILE));
        write_durable(&root.join(PID_FILE), pid.as_bytes())?;
        Ok(DaemonLock {
            root: root.to_owned(),
            _file: file,
            node: None,
        })
    }

    /// Joins the workspace beside other shared daemons as node `id`, renewing a lease
    /// of `lease` (crate::nodes). Refused while an exclusive daemon holds it.
    pub fn acquire_shared(root: &Path, id: NodeId, lease: Duration) -> Result<DaemonLock> {
        let path = root.join(LOCK_FILE);
        let mut file = open_lock_file(&path)?;
        // An exclusive daemon starting holds it for a moment even when it then fails.
        if !lock_within_grace(&file, FlockOperation::NonBlockingLockShared, &path)? {
            return Err(locked_by(root, &mut file));
        }
        let node = Node::join(root, id, lease)?;
        Ok(DaemonLock {
            root: root.to_owned(),
            _file: file,
            node: Some(node),
        })
    }

    /// The node this daemon is, when it shares the workspace.
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// Marks the daemon ready (model loaded, workers running).
    pub fn mark_ready(&self, info: &DaemonInfo) -> Result<()> {
        if let Some(node) = &self.node {
            return node.mark_ready(info);
        }
        let json = serde_json::to_vec_pretty(info).map_err(|e| QueueError::BadMeta {
            id: INFO_FILE.into(),
            reason: e.to_string(),
        })?;
        write_durable(&self.root.join(INFO_FILE), &json)?;
        write_durable(&self.root.join(READY_FILE), info.started_at.as_bytes())
    }
}

impl Drop for DaemonLock {
    fn drop(&mut self) {
        if self.node.is_some() {
            return; // the node removes its own heartbeat
        }
        for name in [READY_FILE, INFO_FILE, PID_FILE] {
            let _ = fs::remove_file(self.root.join(name));
        }
    }
}

/// What `nrvnad status` reports.
#[derive(Debug, Clone, PartialEq)]
pub enum DaemonStatus {
    NotRunning,
    /// Lock held, model still loading.
    Starting {
        pid: Option<u32>,
    },
    Ready {
        pid: Option<u32>,
        info: Option<DaemonInfo>,
    },
    /// Daemons sharing the workspace (`nrvnad --shared`), by node id; a node whose
    /// heartbeat has `info` is ready.
    Shared {
        nodes: Vec<NodeBeat>,
    },
}

impl DaemonStatus {
    /// Whether a daemon (at least one) has loaded its model and works the queue.
    pub fn is_ready(&self) -> bool {
        match self {
            DaemonStatus::Ready { .. } => true,
            DaemonStatus::Shared { nodes } => nodes.iter().any(|n| n.info.is_some()),
            _ => false,
        }
    }
}

/// Probes a workspace's daemon without disturbing it; cleans files a dead one left.
pub fn probe(root: &Path) -> Result<DaemonStatus> {
    let path = root.join(LOCK_FILE);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(DaemonStatus::NotRunning),
        Err(e) => return Err(e).at(&path),
    };
    match flock(&file, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            // Nobody holds it: whatever pid/ready/info files exist are stale.
            for name in [READY_FILE, INFO_FILE, PID_FILE] {
                let _ = fs::remove_file(root.join(name));
            }
            let _ = flock(&file, FlockOperation::Unlock);
            let nodes = live_nodes(root);
            if nodes.is_empty() {
                Ok(DaemonStatus::NotRunning)
            } else {
                Ok(DaemonStatus::Shared { nodes })
            }
        }
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let pid = text.trim().parse().ok();
            if root.join(READY_FILE).exists() {
                let info = fs::read(root.join(INFO_FILE))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                Ok(DaemonStatus::Ready { pid, info })
            } else {
                Ok(DaemonStatus::Starting { pid })
            }
        }
        Err(e) => Err(std::io::Error::from(e)).at(&path),
    }
}
