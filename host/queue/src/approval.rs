//! Held jobs and the people who decide about them.
//!
//! `wrk --hold` queues a job into `input/held/`, where no daemon looks. `approve` moves it
//! on to `input/ready/`; `deny` ends it in `failed/` with status `denied`. Each decision is
//! written in the job's `meta.json` and appended to the workspace's `audit.jsonl`.
//!
//! The steps, and why a crash anywhere leaves a decision either recorded or not made:
//! 1. Lock the job directory (flock; released when the process dies) and rename it from
//!    `input/held/` into `.deciding/`. The rename has exactly one winner; every other
//!    approver, denier or canceller finds the job gone and is told where it is now.
//! 2. Write the decision into `meta.json` (durably): from here on it is recorded.
//! 3. Append it to `audit.jsonl` (fsynced).
//! 4. Rename the job to `input/ready/` or `failed/`.
//!
//! A job left in `.deciding/` by a crash ([`Workspace::recover_decisions`], run by every
//! approve, deny, verify and status command and by a daemon's start) is put back in
//! `input/held/` if step 2 had not happened, or else carried through steps 3 and 4 (the
//! audit line is appended only if it is not there yet). The lock keeps recovery away from
//! a decision still in progress.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, QueueError, Result};
use crate::files::{AUDIT_FILE, DECIDING_DIR, ERROR_FILE};
use crate::fsio::{rename_durable, sync_dir, write_synced};
use crate::id::JobId;
use crate::meta::{Decision, JobStatus, Meta, Verdict, now_timestamp};
use crate::spec::Spec;
use crate::workspace::{State, Workspace, read_meta, write_meta};

/// Who decides: a user name and the uid it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub uid: u32,
}

/// What an approve or deny did.
#[derive(Debug, Clone, PartialEq)]
pub enum DecideOutcome {
    /// This call made the decision; it is recorded and the job has moved on.
    Decided(Decision),
    /// The job is not held (any more): someone else decided it first, or it was never
    /// held. Its state now.
    NotHeld(State),
    NotFound,
    /// Approval refused: the spec changed since submission (the parts that differ). The
    /// job stays held.
    SpecChanged(String),
}

/// One line of `audit.jsonl`: the job id, its tags, and the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(flatten)]
    pub decision: Decision,
}

impl Workspace {
    fn deciding_dir(&self, id: &JobId) -> PathBuf {
        self.root().join(DECIDING_DIR).join(id)
    }

    /// Approves held job `id`: it moves to `input/ready/`, its approval recorded.
    pub fn approve(&self, id: &JobId, actor: &Actor, note: Option<&str>) -> Result<DecideOutcome> {
        self.decide(id, actor, Verdict::Approved, note)
    }

    /// Denies held job `id`: it ends in `failed/` with status `denied` and `reason`.
    pub fn deny(&self, id: &JobId, actor: &Actor, reason: &str) -> Result<DecideOutcome> {
        self.decide(id, actor, Verdict::Denied, Some(reason))
    }

    fn decide(
        &self,
        id: &JobId,
        actor: &Actor,
        verdict: Verdict,
        text: Option<&str>,
    ) -> Result<DecideOutcome> {
        let Some((dir, _lock)) = self.take_held(id)? else {
            return self.not_held(id);
        };
        crate::failpoint!("decide-taken");
        let mut meta = match read_meta(&dir, id) {
            Ok(meta) => meta,
            Err(e) => {
                self.put_back(id, &dir)?;
                return Err(e);
            }
        };
        let spec = match Spec::of(&dir, &meta) {
            Ok(spec) => spec,
            Err(e) => {
                self.put_back(id, &dir)?;
                return Err(e);
            }
        };
        if verdict == Verdict::Approved
            && let Some(recorded) = &meta.spec_sha256
            && *recorded != spec.sha256
        {
            self.put_back(id, &dir)?;
            return Ok(DecideOutcome::SpecChanged(
                spec.describe_differences(&meta.spec_parts),
            ));
        }
        let decision = Decision {
            verdict,
            by: actor.name.clone(),
            uid: actor.uid,
            at: now_timestamp(),
            note: text
                .filter(|_| verdict == Verdict::Approved)
                .map(str::to_owned),
            reason: text
                .filter(|_| verdict == Verdict::Denied)
                .map(str::to_owned),
            spec_sha256: Some(spec.sha256),
        };
        meta.decision = Some(decision.clone());
        if verdict == Verdict::Denied {
            meta.status = Some(JobStatus::Denied);
            meta.completed_at = Some(decision.at.clone());
        }
        // The record: once this rename lands the decision stands (recovery completes it).
        write_meta(&dir, &meta)?;
        sync_dir(&dir)?;
        crate::failpoint!("decide-recorded");
        self.append_audit(id, &meta, &decision)?;
        crate::failpoint!("decide-audited");
        self.settle_decided(id, &dir, &meta)?;
        Ok(DecideOutcome::Decided(decision))
    }

    /// Cancels a held job: it ends in `failed/` with status `cancelled`. `Ok(false)` if
    /// it was not held (decided or cancelled meanwhile).
    pub fn cancel_held(&self, id: &JobId) -> Result<bool> {
        let Some((dir, _lock)) = self.take_held(id)? else {
            return Ok(false);
        };
        let mut meta = read_meta(&dir, id).unwrap_or_default();
        meta.status = Some(JobStatus::Cancelled);
        meta.completed_at = Some(now_timestamp());
        write_meta(&dir, &meta)?;
        sync_dir(&dir)?;
        self.settle_decided(id, &dir, &meta)?;
        Ok(true)
    }

    /// Step 1: locks held job `id` and moves it into `.deciding/`. `None` if another
    /// caller has it (or it is not held).
    fn take_held(&self, id: &JobId) -> Result<Option<(PathBuf, File)>> {
        let held = self.job_dir(State::Held, id);
        let lock = match File::open(&held) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(&held),
        };
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => return Ok(None),
            Err(e) => return Err(std::io::Error::from(e)).at(&held),
        }
        let area = self.root().join(DECIDING_DIR);
        fs::create_dir_all(&area).at(&area)?;
        let dir = self.deciding_dir(id);
        match fs::rename(&held, &dir) {
            Ok(()) => Ok(Some((dir, lock))),
            // Someone else won the rename (and has since released its lock).
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&held),
        }
    }

    fn not_held(&self, id: &JobId) -> Result<DecideOutcome> {
        // A decision in progress elsewhere shows as held; wait for it to move on.
        for _ in 0..100 {
            match self.state_of(id)? {
                None => return Ok(DecideOutcome::NotFound),
                Some(State::Held) => std::thread::sleep(std::time::Duration::from_millis(20)),
                Some(state) => return Ok(DecideOutcome::NotHeld(state)),
            }
        }
        Ok(DecideOutcome::NotHeld(State::Held))
    }

    fn put_back(&self, id: &JobId, dir: &Path) -> Result<()> {
        let held = self.job_dir(State::Held, id);
        rename_durable(dir, &held).at(&held)
    }

    /// Steps 4 (and what a denial or cancel writes beside its meta.json): moves a job
    /// whose ending or decision is recorded out of `.deciding/`.
    fn settle_decided(&self, id: &JobId, dir: &Path, meta: &Meta) -> Result<()> {
        let target = match meta.status {
            Some(JobStatus::Denied) => {
                let reason = meta
                    .decision
                    .as_ref()
                    .and_then(|d| d.reason.as_deref())
                    .unwrap_or("");
                let by = meta.decision.as_ref().map_or("", |d| d.by.as_str());
                write_synced(
                    &dir.join(ERROR_FILE),
                    format!("denied by {by}: {reason}").as_bytes(),
                )?;
                State::Failed
            }
            Some(JobStatus::Cancelled) => {
                write_synced(&dir.join(ERROR_FILE), b"cancelled")?;
                State::Failed
            }
            _ => State::Queued,
        };
        if target == State::Failed {
            let mut meta = meta.clone();
            if !meta.artifacts.iter().any(|a| a == ERROR_FILE) {
                meta.artifacts.push(ERROR_FILE.into());
            }
            write_meta(dir, &meta)?;
            sync_dir(dir)?;
        }
        let to = self.job_dir(target, id);
        rename_durable(dir, &to).at(&to)
    }

    /// Step 3: appends the decision to `audit.jsonl` and fsyncs it.
    fn append_audit(&self, id: &JobId, meta: &Meta, decision: &Decision) -> Result<()> {
        let record = AuditRecord {
            id: id.to_string(),
            tags: meta.tags.clone(),
            decision: decision.clone(),
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| QueueError::BadMeta {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        let path = self.root().join(AUDIT_FILE);
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .at(&path)?;
        // One write of the whole line: a crash never leaves half of it.
        file.write_all(&line).at(&path)?;
        if crate::fsync_enabled() {
            file.sync_all().at(&path)?;
        }
        if created {
            sync_dir(self.root())?;
        }
        Ok(())
    }

    /// Every line of `audit.jsonl` that parses (a line a power loss cut is skipped).
    pub fn audit_records(&self) -> Result<Vec<AuditRecord>> {
        let path = self.root().join(AUDIT_FILE);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).at(&path),
        };
        let mut out = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.at(&path)?;
            if let Ok(record) = serde_json::from_str::<AuditRecord>(&line) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Whether `audit.jsonl` holds `decision` for job `id`.
    pub fn audited(&self, id: &JobId, decision: &Decision) -> Result<bool> {
        Ok(self
            .audit_records()?
            .iter()
            .any(|r| r.id == id.as_str() && r.decision == *decision))
    }

    /// Finishes or undoes the decisions a crash interrupted (see the module's doc).
    /// Returns the jobs it finished and those it put back in `input/held/`.
    pub fn recover_decisions(&self) -> Result<(Vec<JobId>, Vec<JobId>)> {
        let area = self.root().join(DECIDING_DIR);
        let entries = match fs::read_dir(&area) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Default::default()),
            Err(e) => return Err(e).at(&area),
        };
        let (mut finished, mut restored) = (Vec::new(), Vec::new());
        for entry in entries.filter_map(|e| e.ok()) {
            let Some(Ok(id)) = entry.file_name().to_str().map(JobId::parse) else {
                continue;
            };
            let dir = entry.path();
            let Ok(lock) = File::open(&dir) else { continue };
            if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
                continue; // a decision in progress
            }
            if !dir.exists() {
                continue; // finished between the listing and the lock
            }
            let meta = read_meta(&dir, &id).ok();
            match meta {
                Some(meta) if meta.decision.is_some() || meta.status.is_some() => {
                    if let Some(decision) = &meta.decision
                        && !self.audited(&id, decision)?
                    {
                        self.append_audit(&id, &meta, decision)?;
                    }
                    self.settle_decided(&id, &dir, &meta)?;
                    finished.push(id);
                }
                _ => {
                    self.put_back(&id, &dir)?;
                    restored.push(id);
                }
            }
        }
        Ok((finished, restored))
    }
}
