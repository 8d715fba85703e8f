//! Several daemons on one workspace (`nrvnad --shared`): node ids, heartbeats, leases,
//! and who owns a running job.
//!
//! ```text
//! <ws>/.nodes/<node>         the node's heartbeat: JSON with a counter its daemon bumps
//!                            every lease/4 (rewritten by tmp + rename)
//! <ws>/.nodes/<node>.lock    flock held by the node's daemon for its lifetime
//! <ws>/.nodes/recovery.lock  flock held while a daemon takes over a dead node's job
//! processing/<id>/claim.json who runs the job: node, incarnation, claim nonce
//! ```
//!
//! A claim is the rename `input/ready/<id>` → `processing/<id>` followed by the
//! exclusive creation (`O_EXCL`) of `claim.json` in it: whoever creates the file owns the
//! job, so a claimer whose rename reported ENOENT after it succeeded (a retried rename on
//! NFS) can still own it, and one paused between the two steps cannot take a job someone
//! else has meanwhile recovered and claimed again. The claim is then recorded in
//! `meta.json` (`node`, `claim`, `attempts`, `started_at`).
//!
//! Liveness never compares clocks between machines: an observer reads the owner's
//! heartbeat and declares the lease lapsed only after the heartbeat has not changed for a
//! whole lease as its *own* monotonic clock measures it. A daemon whose wall clock is off
//! by hours sees exactly what the others see.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, QueueError, Result};
use crate::fsio::{sync_dir, write_atomic};
use crate::id::JobId;
use crate::lifecycle::DaemonInfo;
use crate::meta::{Meta, now_timestamp};
use crate::workspace::{Outcome, Recovery, State, Workspace, read_meta, write_meta};
use crate::{CLAIM_FILE, PROGRESS_DIR};

/// The nodes' directory in the workspace.
pub const NODES_DIR: &str = ".nodes";
const RECOVERY_LOCK: &str = "recovery.lock";

/// A daemon's name among those sharing a workspace: 1-64 characters from
/// `[A-Za-z0-9_.-]`, not starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(String);

impl NodeId {
    pub fn parse(text: &str) -> Result<NodeId> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && !text.starts_with('.')
            && !text.ends_with(".lock")
            && text != "recovery"
            && text != "cancel"
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(NodeId(text.to_owned()))
        } else {
            Err(QueueError::InvalidOption {
                what: "node id",
                expected: "1-64 characters from A-Z a-z 0-9 _ - . (not starting with '.', \
                           not ending in .lock, not `recovery` or `cancel`)"
                    .into(),
                got: crate::error::shown(text),
            })
        }
    }

    /// This machine's host name, the default node id (one daemon per machine).
    pub fn of_host() -> Result<NodeId> {
        NodeId::parse(&host_name())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Who claims in this process: the node and this run of it. A daemon restarted with the
/// same node id is a new incarnation, so the jobs its previous run left are recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimer {
    pub node: NodeId,
    pub incarnation: String,
}

impl Claimer {
    pub fn new(node: NodeId) -> Claimer {
        Claimer {
            node,
            incarnation: format!("{:08x}{:08x}", crate::id::random_u32(), std::process::id()),
        }
    }

    /// The claimer `nrvna cancel` is when it takes a queued job off a shared workspace:
    /// a node id no daemon can have, so its claim lapses if the command dies mid-way.
    pub(crate) fn canceller() -> Claimer {
        Claimer::new(NodeId("cancel".into()))
    }

    fn is(&self, claim: &ClaimRecord) -> bool {
        claim.node == self.node.as_str() && claim.incarnation == self.incarnation
    }
}

/// `processing/<id>/claim.json`: who runs the job now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub node: String,
    pub incarnation: String,
    /// Unique to this claim; `meta.json`'s `claim` repeats it once the start is counted.
    pub claim: String,
    pub pid: u32,
    pub host: String,
    /// When, by the claimer's clock: for people; no decision reads it.
    pub claimed_at: String,
}

/// `.nodes/<node>`: a node's heartbeat and what it says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeBeat {
    pub node: String,
    pub incarnation: String,
    /// Bumped at every beat; observers watch it change.
    pub beat: u64,
    pub pid: u32,
    pub host: String,
    pub lease_ms: u64,
    /// Set once the model is loaded and workers run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<DaemonInfo>,
}

/// The exclusive creation of `claim.json`: `Ok(true)` this claimer owns the job,
/// `Ok(false)` someone else does or the job left `processing/`.
pub(crate) fn create_claim(dir: &Path, claimer: &Claimer) -> Result<Option<ClaimRecord>> {
    let record = ClaimRecord {
        node: claimer.node.to_string(),
        incarnation: claimer.incarnation.clone(),
        claim: format!(
            "{:08x}{:08x}",
            crate::id::random_u32(),
            crate::id::random_u32()
        ),
        pid: std::process::id(),
        host: host_name(),
        claimed_at: now_timestamp(),
    };
    let path = dir.join(CLAIM_FILE);
    let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(f) => f,
        Err(e) if matches!(e.kind(), ErrorKind::AlreadyExists | ErrorKind::NotFound) => {
            return Ok(None);
        }
        Err(e) => return Err(e).at(&path),
    };
    let bytes = serde_json::to_vec(&record).map_err(|e| QueueError::BadMeta {
        id: CLAIM_FILE.into(),
        reason: e.to_string(),
    })?;
    let written = file.write_all(&bytes).and_then(|()| {
        if crate::fsio::fsync_enabled() {
            file.sync_all()
        } else {
            Ok(())
        }
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&path);
        return Err(e).at(&path);
    }
    sync_dir(dir)?;
    Ok(Some(record))
}

/// The job's `claim.json`: `Ok(None)` when it has none; a malformed one is `Err`.
pub(crate) fn read_claim(dir: &Path) -> std::result::Result<Option<ClaimRecord>, ()> {
    match fs::read(dir.join(CLAIM_FILE)) {
        Ok(bytes) if bytes.len() <= 4096 => {
            serde_json::from_slice(&bytes).map(Some).map_err(|_| ())
        }
        Ok(_) => Err(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(_) => Err(()),
    }
}

/// A node's membership of a workspace: its lock, and a thread that renews its lease.
/// Dropping it stops the heartbeat and removes it.
#[derive(Debug)]
pub struct Node {
    claimer: Claimer,
    beat_path: PathBuf,
    state: Arc<std::sync::Mutex<NodeBeat>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _lock: File,
}

impl Node {
    /// Joins the workspace at `root` as `id`, renewing a lease of `lease`. Fails if a
    /// daemon with that node id runs already.
    pub fn join(root: &Path, id: NodeId, lease: Duration) -> Result<Node> {
        let dir = root.join(NODES_DIR);
        fs::create_dir_all(&dir).at(&dir)?;
        let lock_path = dir.join(format!("{id}.lock"));
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .at(&lock_path)?;
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(QueueError::NodeInUse {
                    path: root.to_owned(),
                    node: id.to_string(),
                });
            }
            Err(e) => return Err(std::io::Error::from(e)).at(&lock_path),
        }
        let claimer = Claimer::new(id);
        let beat = NodeBeat {
            node: claimer.node.to_string(),
            incarnation: claimer.incarnation.clone(),
            beat: 0,
            pid: std::process::id(),
            host: host_name(),
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
            info: None,
        };
        let beat_path = dir.join(claimer.node.as_str());
        write_beat(&beat_path, &beat)?;
        let state = Arc::new(std::sync::Mutex::new(beat));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop, path) = (state.clone(), stop.clone(), beat_path.clone());
            let every = (lease / 4).max(Duration::from_millis(20));
            std::thread::Builder::new()
                .name("nrvna-heartbeat".into())
                .spawn(move || heartbeat(&path, &state, &stop, every))
                .map_err(|e| QueueError::Io {
                    path: beat_path.clone(),
                    source: e,
                })?
        };
        Ok(Node {
            claimer,
            beat_path,
            state,
            stop,
            thread: Some(thread),
            _lock: lock,
        })
    }

    pub fn claimer(&self) -> &Claimer {
        &self.claimer
    }

    /// Says in the heartbeat that the daemon is ready, and what it serves.
    pub fn mark_ready(&self, info: &DaemonInfo) -> Result<()> {
        let beat = {
            let mut state = self
                .state
                .lock()
                .map_err(|_| std::io::Error::other("heartbeat state poisoned"))
                .at(&self.beat_path)?;
            state.info = Some(info.clone());
            state.beat += 1;
            state.clone()
        };
        write_beat(&self.beat_path, &beat)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
        // Still under the node's lock: no later run of this node has written it.
        let _ = fs::remove_file(&self.beat_path);
    }
}

fn write_beat(path: &Path, beat: &NodeBeat) -> Result<()> {
    let bytes = serde_json::to_vec(beat).map_err(|e| QueueError::BadMeta {
        id: NODES_DIR.into(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

fn heartbeat(path: &Path, state: &std::sync::Mutex<NodeBeat>, stop: &AtomicBool, every: Duration) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::park_timeout(every);
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let beat = match state.lock() {
            Ok(mut s) => {
                s.beat += 1;
                s.clone()
            }
            Err(_) => return,
        };
        if let Err(e) = write_beat(path, &beat) {
            // Missed beats let the lease lapse: the others take this node's jobs.
            tracing::warn!("cannot renew this node's lease: {e}");
        }
    }
}

/// The nodes whose daemons are alive now (each holds its `.nodes/<id>.lock`), with their
/// heartbeats, for `nrvnad status`.
pub fn live_nodes(root: &Path) -> Vec<NodeBeat> {
    let dir = root.join(NODES_DIR);
    let mut nodes = Vec::new();
    for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(node) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        if node == "recovery" {
            continue;
        }
        let Ok(lock) = File::open(entry.path()) else {
            continue;
        };
        match flock(&lock, FlockOperation::NonBlockingLockShared) {
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                if let Some(beat) = fs::read(dir.join(node))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<NodeBeat>(&b).ok())
                {
                    nodes.push(beat);
                }
            }
            _ => {}
        }
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    nodes
}

/// What one observer has seen of the leases of others: the last value of each heartbeat
/// it looked at and when (on its own monotonic clock) that value first appeared.
#[derive(Debug)]
pub struct LeaseWatch {
    lease: Duration,
    seen: HashMap<String, (String, Instant)>,
}

impl LeaseWatch {
    pub fn new(lease: Duration) -> LeaseWatch {
        LeaseWatch {
            lease,
            seen: HashMap::new(),
        }
    }

    /// Records `value` for `key`; true once it has not changed for a whole lease.
    fn lapsed(&mut self, key: &str, value: &str, now: Instant) -> bool {
        match self.seen.get_mut(key) {
            Some((last, since)) if last == value => now.duration_since(*since) >= self.lease,
            Some(entry) => {
                *entry = (value.to_owned(), now);
                false
            }
            None => {
                self.seen.insert(key.to_owned(), (value.to_owned(), now));
                false
            }
        }
    }

    fn keep_only(&mut self, keys: &HashSet<String>) {
        self.seen.retain(|k, _| keys.contains(k));
    }
}

/// What an observer makes of a claim's owner: its heartbeat's counter while the same
/// incarnation writes it; `gone` when the node has left or restarted.
fn owner_value(root: &Path, claim: &ClaimRecord) -> String {
    // A node id from a file in the workspace: only a valid one names a file.
    if NodeId::parse(&claim.node).is_err() {
        return "gone".into();
    }
    match fs::read(root.join(NODES_DIR).join(&claim.node))
        .ok()
        .and_then(|b| serde_json::from_slice::<NodeBeat>(&b).ok())
    {
        Some(beat) if beat.incarnation == claim.incarnation => format!("beat {}", beat.beat),
        _ => "gone".into(),
    }
}

/// Held while a daemon takes a job over from a node whose lease lapsed, so two
/// observers never both act on one stale look.
struct RecoveryLock(File);

impl RecoveryLock {
    fn take(root: &Path) -> Result<RecoveryLock> {
        let dir = root.join(NODES_DIR);
        fs::create_dir_all(&dir).at(&dir)?;
        let path = dir.join(RECOVERY_LOCK);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(std::io::Error::from)
            .at(&path)?;
        Ok(RecoveryLock(file))
    }
}

impl Drop for RecoveryLock {
    fn drop(&mut self) {
        let _ = flock(&self.0, FlockOperation::Unlock);
    }
}

impl Workspace {
    /// Claims a queued job for `claimer` (see the module's doc): the rename, then the
    /// exclusive creation of `claim.json`, then the start recorded in `meta.json`.
    pub(crate) fn claim_shared(&self, id: &JobId, claimer: &Claimer) -> Result<crate::Claim> {
        use crate::Claim;
        let ready = self.job_dir(State::Queued, id);
        let running = self.job_dir(State::Running, id);
        match fs::symlink_metadata(&ready) {
            Ok(md) if md.file_type().is_dir() => {}
            Ok(_) => {
                let reason = "it is not a directory (symlink, FIFO or plain file)";
                self.quarantine(&ready, &format!("input/ready/{id} rejected: {reason}"))?;
                return Ok(Claim::Rejected(reason.into()));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).at(&ready),
        }
        let claimed_at = Instant::now();
        match fs::rename(&ready, &running) {
            Ok(()) => {}
            // Someone else won the rename, or (NFS) ours was retried after it succeeded,
            // or an earlier one was: if the job is in processing/, the claim file below
            // decides whose it is.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if !running.is_dir() {
                    return Ok(Claim::Gone);
                }
            }
            Err(e) => return Err(e).at(&ready),
        }
        let Some(record) = create_claim(&running, claimer)? else {
            return Ok(Claim::Gone);
        };
        let loaded = match self.load_claimed_at(&running, id) {
            Ok(loaded) => Ok(loaded),
            Err(crate::workspace::Unloadable::Host(e)) => {
                // Not the job's fault: back to the queue, its attempt not counted.
                self.requeue(id, false)?;
                return Err(e);
            }
            Err(crate::workspace::Unloadable::Job(reason)) => Err(reason),
        };
        let mut meta = crate::workspace::starting_meta(&running, id, &loaded);
        meta.node = Some(record.node.clone());
        meta.claim = Some(record.claim.clone());
        // The start cannot be recorded (full disk...): put the job back rather than run
        // it unaccounted. (A job to reject is settled below all the same.)
        if let Err(e) = write_meta(&running, &meta)
            && loaded.is_ok()
        {
            let _ = self.requeue(id, false);
            return Err(e);
        }
        match loaded {
            Ok((_, prompt)) => Ok(Claim::Claimed(Box::new(crate::ClaimedJob {
                id: id.clone(),
                dir: running,
                prompt,
                meta,
                claimed_at,
            }))),
            Err(reason) => {
                self.finish_job(id, meta, Err(&reason), Outcome::default(), Some(claimed_at))?;
                Ok(Claim::Rejected(reason))
            }
        }
    }

    /// Checks, before a claimed job is settled, that this claim still owns it: a daemon
    /// that was paused past its lease may find its job recovered and claimed again.
    pub(crate) fn check_still_owned(&self, id: &JobId, meta: &Meta) -> Result<()> {
        let Some(claim) = &meta.claim else {
            return Ok(());
        };
        let dir = self.job_dir(State::Running, id);
        match read_claim(&dir) {
            Ok(Some(record)) if record.claim == *claim => Ok(()),
            _ => Err(QueueError::ClaimLost { id: id.to_string() }),
        }
    }

    /// A workspace-wide duty of every shared daemon: jobs in `processing/` whose owner's
    /// lease has lapsed (or that no one finished claiming) are requeued with their attempt
    /// counted, or failed at `max_attempts`. Safe when several daemons do it at once.
    pub fn recover_lapsed(
        &self,
        claimer: &Claimer,
        watch: &mut LeaseWatch,
        max_attempts: u32,
    ) -> Result<Recovery> {
        let mut report = Recovery::default();
        let mut keys = HashSet::new();
        let mut owners: HashMap<(String, String), String> = HashMap::new();
        let now = Instant::now();
        for id in self.list(State::Running)? {
            let dir = self.job_dir(State::Running, &id);
            let claim = read_claim(&dir);
            let (key, value) = match &claim {
                Ok(Some(c)) if claimer.is(c) => continue,
                Ok(Some(c)) => {
                    let value = owners
                        .entry((c.node.clone(), c.incarnation.clone()))
                        .or_insert_with(|| owner_value(self.root(), c))
                        .clone();
                    (format!("owner {} {}", c.node, c.incarnation), value)
                }
                // Renamed but never claimed (the claimer died between the two steps), or
                // a claim file nobody can read: nobody's, once that lasts a whole lease.
                Ok(None) => (format!("unclaimed {id}"), "unclaimed".to_owned()),
                Err(()) => (format!("unreadable {id}"), "unreadable".to_owned()),
            };
            keys.insert(key.clone());
            if !watch.lapsed(&key, &value, now) {
                continue;
            }
            let _guard = RecoveryLock::take(self.root())?;
            // Look again under the lock: another daemon may have acted on its own look.
            let again = read_claim(&dir);
            if again != claim || !dir.is_dir() {
                continue;
            }
            let taken = match again {
                Ok(Some(record)) => record,
                // Nobody's: claim it for the takeover, so a late claimer loses.
                _ => {
                    if claim.is_err() {
                        let _ = fs::remove_file(dir.join(CLAIM_FILE));
                    }
                    match create_claim(&dir, claimer)? {
                        Some(record) => record,
                        None => continue,
                    }
                }
            };
            let mut meta = read_meta(&dir, &id).unwrap_or_else(|_| Meta {
                submitted_at: now_timestamp(),
                ..Meta::default()
            });
            // The dead claimer counted its start only if meta.json names its claim.
            if meta.claim.as_deref() != Some(taken.claim.as_str()) {
                meta.attempts += 1;
            }
            let owner = match &claim {
                Ok(Some(c)) => format!("node {} (pid {} on {})", c.node, c.pid, c.host),
                _ => "a claimer that never finished claiming it".to_owned(),
            };
            let _ = fs::remove_file(self.root().join(PROGRESS_DIR).join(&id));
            if meta.attempts >= max_attempts {
                let reason = format!(
                    "job was started {} times and never finished (last by {owner}, whose \
                     lease lapsed); giving up at the ceiling of {max_attempts} \
                     (NRVNA_MAX_ATTEMPTS)",
                    meta.attempts
                );
                meta.claim = Some(taken.claim);
                self.finish_job(&id, meta, Err(&reason), Outcome::default(), None)?;
                tracing::warn!("job {id}: {reason}");
                report.failed.push(id);
            } else {
                meta.claim = None;
                meta.started_at = None;
                write_meta(&dir, &meta)?;
                let _ = fs::remove_file(dir.join(CLAIM_FILE));
                let ready = self.job_dir(State::Queued, &id);
                crate::fsio::rename_durable(&dir, &ready).at(&ready)?;
                tracing::warn!(
                    "job {id}: requeued (attempt {} of {max_attempts}); it was running on \
                     {owner}, whose lease lapsed",
                    meta.attempts
                );
                report.requeued.push(id);
            }
        }
        watch.keep_only(&keys);
        Ok(report)
    }

    /// Removes staging directories left by a `wrk` that died mid-submission, judged by
    /// this daemon's own clock: an entry goes once it has been seen for `older_than`
    /// (modification times come from other machines' clocks). `seen` carries the looks
    /// from one call to the next. Safe when several daemons do it at once.
    pub fn clean_stale_staging_seen(
        &self,
        seen: &mut HashMap<std::ffi::OsString, Instant>,
        older_than: Duration,
    ) -> Result<usize> {
        let dir = self.state_dir(State::Writing);
        let now = Instant::now();
        let mut present = HashSet::new();
        let mut removed = 0;
        for entry in fs::read_dir(&dir).at(&dir)?.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            let since = *seen.entry(name.clone()).or_insert(now);
            present.insert(name.clone());
            if now.duration_since(since) < older_than {
                continue;
            }
            let path = entry.path();
            let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match gone {
                Ok(()) => removed += 1,
                // Another daemon removed it first.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
            }
        }
        seen.retain(|name, _| present.contains(name));
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lapses_only_after_no_change_for_a_whole_lease() {
        let mut watch = LeaseWatch::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(!watch.lapsed("n", "beat 1", t0));
        assert!(!watch.lapsed("n", "beat 1", t0 + Duration::from_secs(9)));
        // A change restarts the count.
        assert!(!watch.lapsed("n", "beat 2", t0 + Duration::from_secs(9)));
        assert!(!watch.lapsed("n", "beat 2", t0 + Duration::from_secs(18)));
        assert!(watch.lapsed("n", "beat 2", t0 + Duration::from_secs(19)));
    }

    #[test]
    fn node_ids_are_checked() {
        assert!(NodeId::parse("gpu-01.lab").is_ok());
        for bad in ["", ".x", "a/b", "x.lock", &"n".repeat(65)] {
            assert!(NodeId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_second_daemon_with_the_same_node_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = NodeId::parse("a").unwrap();
        let node = Node::join(dir.path(), id.clone(), Duration::from_secs(1)).unwrap();
        let err = Node::join(dir.path(), id.clone(), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, QueueError::NodeInUse { .. }), "{err}");
        assert_eq!(live_nodes(dir.path()).len(), 1);
        drop(node);
        assert!(live_nodes(dir.path()).is_empty());
        assert!(Node::join(dir.path(), id, Duration::from_secs(1)).is_ok());
    }
}
