//! The workspace: five state directories, one directory per job, one rename per transition.
//!
//! ```text
//! input/writing/  staging (invisible to daemons)   --publish-->  input/ready/  (queued)
//!                                          (--hold) -->  input/held/  --approve--> input/ready/
//! input/ready/    --claim-->  processing/  (running)  --complete-->  output/ | failed/
//! ```
//! A job's location is its state. Files a rename publishes are fsynced before it, and
//! `meta.json` is complete before the job shows up in its new state.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::error::{IoContext, QueueError, Result};
use crate::fsio::{rename_durable, sync_dir, write_atomic, write_durable, write_synced};
use crate::id::JobId;
use crate::meta::{AgentJob, JobStatus, Meta, Mode, OutputFormat, Sampling, now_timestamp};
use crate::nodes::Claimer;
use crate::spec::Spec;

pub use crate::files::*;

/// A job's state, which is the directory it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being written by `wrk`; not yet visible to daemons.
    Writing,
    /// Waiting for a person to approve it (`wrk --hold`); no daemon runs it.
    Held,
    Queued,
    Running,
    Done,
    Failed,
}

impl State {
    /// Lifecycle order. Lookups go in this order so a job moving forward is never missed.
    pub const ALL: [State; 6] = [
        State::Writing,
        State::Held,
        State::Queued,
        State::Running,
        State::Done,
        State::Failed,
    ];

    /// The state's directory, relative to the workspace root.
    pub fn dir(self) -> &'static str {
        match self {
            State::Writing => "input/writing",
            State::Held => "input/held",
            State::Queued => "input/ready",
            State::Running => "processing",
            State::Done => "output",
            State::Failed => "failed",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Writing => "writing",
            State::Held => "held",
            State::Queued => "queued",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, State::Done | State::Failed)
    }
}

/// Size limits enforced at submission and again when a daemon claims a job.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_prompt_bytes: u64,
    pub max_image_bytes: u64,
    pub max_images: usize,
    pub max_tags: usize,
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_prompt_bytes: 4 << 20,
            max_image_bytes: 50 << 20,
            max_images: 16,
            max_tags: 32,
            max_file_bytes: 64 << 20,
        }
    }
}

/// Most stop strings one job may have.
pub const MAX_STOP: usize = 16;

/// A job to submit. Build it, then hand it to [`Workspace::submit`].
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub prompt: String,
    pub mode: Mode,
    pub images: Vec<PathBuf>,
    pub parent: Option<JobId>,
    pub tags: Vec<String>,
    pub system: Option<String>,
    pub sampling: Sampling,
    pub output_format: Option<OutputFormat>,
    /// Extra payload files (`grammar.gbnf`, `schema.json`, `agent.wasm`, ...), by plain name.
    pub files: Vec<(String, Vec<u8>)>,
    /// An agent job's arguments and name.
    pub agent: AgentJob,
    /// The prompt goes to the model as it is, without the chat template.
    pub raw_prompt: bool,
}

impl Submission {
    /// Checks the submission against `limits` without touching any workspace, so a
    /// submitter can refuse bad input before it creates one.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        // Agent jobs may have no arguments; embed jobs may embed images alone.
        let may_be_empty =
            self.mode == Mode::Agent || (self.mode == Mode::Embed && !self.images.is_empty());
        if self.prompt.is_empty() && !may_be_empty {
            return Err(QueueError::EmptyPrompt);
        }
        let size = self.prompt.len() as u64;
        if size > limits.max_prompt_bytes {
            return Err(QueueError::PromptTooLarge {
                size,
                limit: limits.max_prompt_bytes,
            });
        }
        if self.tags.len() > limits.max_tags {
            return Err(QueueError::TooManyTags {
                count: self.tags.len(),
                limit: limits.max_tags,
            });
        }
        for tag in &self.tags {
            validate_tag(tag)?;
        }
        if self.images.len() > limits.max_images {
            return Err(QueueError::InvalidOption {
                what: "number of images",
                expected: format!("at most {}", limits.max_images),
                got: self.images.len().to_string(),
            });
        }
        for image in &self.images {
            validate_image(image, limits)?;
        }
        for (name, bytes) in &self.files {
            if !is_plain_file_name(name) || name == PROMPT_FILE || name == META_FILE {
                return Err(QueueError::InvalidOption {
                    what: "attachment name",
                    expected: "a plain file name".into(),
                    got: crate::error::shown(name),
                });
            }
            if bytes.len() as u64 > limits.max_file_bytes {
                return Err(QueueError::InvalidOption {
                    what: "attachment size",
                    expected: format!("at most {} bytes", limits.max_file_bytes),
                    got: format!("{} bytes ({name})", bytes.len()),
                });
            }
        }
        if let Some(t) = self.sampling.temperature
            && !(0.0..=5.0).contains(&t)
        {
            return Err(QueueError::InvalidOption {
                what: "temperature",
                expected: "between 0 and 5".into(),
                got: t.to_string(),
            });
        }
        if let Some(p) = self.sampling.top_p
            && (p.is_nan() || p <= 0.0 || p > 1.0)
        {
            return Err(QueueError::InvalidOption {
                what: "top-p",
                expected: "in (0, 1]".into(),
                got: p.to_string(),
            });
        }
        if self.sampling.stop.len() > MAX_STOP
            || self
                .sampling
                .stop
                .iter()
                .any(|s| s.is_empty() || s.len() > 256)
        {
            return Err(QueueError::InvalidOption {
                what: "stop strings",
                expected: format!("at most {MAX_STOP}, each 1-256 bytes"),
                got: format!("{:?}", self.sampling.stop),
            });
        }
        if self.sampling.max_tokens == Some(0) {
            return Err(QueueError::InvalidOption {
                what: "max tokens",
                expected: "at least 1".into(),
                got: "0".into(),
            });
        }
        Ok(())
    }
}

fn validate_image(path: &Path, limits: &Limits) -> Result<()> {
    let bad = |reason: String| QueueError::InvalidImage {
        path: path.to_owned(),
        reason,
    };
    let ext = path
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if !IMAGE_EXTENSIONS.contains(&ext.as_str()) {
        return Err(bad(format!(
            "unsupported extension {ext:?}; expected one of {}",
            IMAGE_EXTENSIONS.join(", ")
        )));
    }
    let md = fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !md.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if md.len() > limits.max_image_bytes {
        return Err(bad(format!(
            "{} bytes; the limit is {} bytes",
            md.len(),
            limits.max_image_bytes
        )));
    }
    let mut head = Vec::with_capacity(12);
    File::open(path)
        .and_then(|f| f.take(12).read_to_end(&mut head))
        .map_err(|e| bad(e.to_string()))?;
    // The extension names the format; the first bytes must agree with it.
    match image_format(&head) {
        Some(format) if image_format_of_extension(&ext) == Some(format) => Ok(()),
        Some(format) => Err(bad(format!(
            "the extension says {ext} but the content is a {format} image"
        ))),
        None => Err(bad(format!(
            "the content is not a {} image",
            IMAGE_EXTENSIONS.join(", ")
        ))),
    }
}

/// The image format the first bytes of a file announce (its magic number).
fn image_format(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if head.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("jpeg")
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some("gif")
    } else if head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP" {
        Some("webp")
    } else {
        None
    }
}

fn image_format_of_extension(ext: &str) -> Option<&'static str> {
    match ext {
        "png" => Some("png"),
        "jpg" | "jpeg" => Some("jpeg"),
        "gif" => Some("gif"),
        "webp" => Some("webp"),
        _ => None,
    }
}

/// Job counts per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub writing: usize,
    pub held: usize,
    pub queued: usize,
    pub running: usize,
    pub done: usize,
    pub failed: usize,
}

/// A job a worker has claimed (it is now in `processing/`).
#[derive(Debug)]
pub struct ClaimedJob {
    pub id: JobId,
    pub dir: PathBuf,
    pub prompt: String,
    pub meta: Meta,
    pub claimed_at: Instant,
}

/// What `claim` found.
#[derive(Debug)]
pub enum Claim {
    Claimed(Box<ClaimedJob>),
    /// Someone else claimed it first, or it vanished.
    Gone,
    /// It was malformed and has been moved to `failed/` with this reason.
    Rejected(String),
}

/// How a claimed job ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Files to write into the job directory before it moves (name, bytes).
    pub artifacts: Vec<(String, Vec<u8>)>,
    pub prompt_tokens: Option<u32>,
    /// Prompt tokens the engine served from its prefix cache.
    pub cached_tokens: Option<u32>,
    pub generated_tokens: Option<u32>,
    /// Name of the model the job ran on.
    pub model: Option<String>,
    /// What served it: `llama.cpp` (in the daemon) or a remote server's base URL.
    pub backend: Option<String>,
    /// `stop` or `length`, for a text job's generation.
    pub finish_reason: Option<String>,
}

/// What an ended job produced ([`Workspace::outcome`]).
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Done(Artifact),
    /// `reason` is `error.txt`; `partial` is `response.txt`, the output of a generation
    /// that failed (cut off, or not valid JSON), if there was one.
    Failed {
        reason: String,
        partial: Option<String>,
    },
    Cancelled,
    /// A held job someone denied; `reason` is `error.txt` (who denied it, and why).
    Denied {
        reason: String,
    },
}

impl JobOutcome {
    /// How `meta.json` words this ending.
    pub fn status(&self) -> JobStatus {
        match self {
            JobOutcome::Done(_) => JobStatus::Done,
            JobOutcome::Failed { .. } => JobStatus::Failed,
            JobOutcome::Cancelled => JobStatus::Cancelled,
            JobOutcome::Denied { .. } => JobStatus::Denied,
        }
    }
}

/// The output file of a done job.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub kind: ArtifactKind,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    /// `result.txt`: a text or agent job's output.
    Text,
    /// `embedding.json`: `{"dim": N, "vector": [...]}`.
    Embedding,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Text => "text",
            ArtifactKind::Embedding => "embedding",
        }
    }
}

/// What [`Workspace::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued and is now in `failed/` with status `cancelled`.
    Cancelled,
    /// It is running; its daemon has been asked to stop it.
    Requested,
    /// It had already ended in this state.
    AlreadyEnded(State),
    NotFound,
}

/// What start-up recovery did with jobs a crashed daemon left in `processing/`.
#[derive(Debug, Default)]
pub struct Recovery {
    pub requeued: Vec<JobId>,
    pub failed: Vec<JobId>,
}

#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    limits: Limits,
    /// Set for a daemon sharing the workspace with others (`nrvnad --shared`): claims
    /// record their owner in `claim.json` (crate::nodes).
    claimer: Option<Claimer>,
}

impl Workspace {
    /// Opens the workspace at `root`, creating it and any missing state directory.
    pub fn create(root: impl Into<PathBuf>) -> Result<Workspace> {
        let root = root.into();
        for state in State::ALL {
            let dir = root.join(state.dir());
            fs::create_dir_all(&dir).at(&dir)?;
        }
        Ok(Workspace {
            root,
            limits: Limits::default(),
            claimer: None,
        })
    }

    /// Opens an existing workspace; fails if it is not one (readers must not create).
    pub fn open(root: impl Into<PathBuf>) -> Result<Workspace> {
        let root = root.into();
        for state in State::ALL {
            // input/held/ came later: a workspace made before it is still one.
            if state != State::Held && !root.join(state.dir()).is_dir() {
                return Err(QueueError::NotAWorkspace(root));
            }
        }
        let _ = fs::create_dir(root.join(State::Held.dir()));
        Ok(Workspace {
            root,
            limits: Limits::default(),
            claimer: None,
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state_dir(&self, state: State) -> PathBuf {
        self.root.join(state.dir())
    }

    pub fn job_dir(&self, state: State, id: &JobId) -> PathBuf {
        self.state_dir(state).join(id)
    }

    // ----- submission -------------------------------------------------------------------

    /// Validates and publishes a job; returns its id. On any error nothing is left behind.
    pub fn submit(&self, sub: Submission) -> Result<JobId> {
        self.submit_with(sub, |_| Ok(()))
    }

    /// [`Workspace::submit`], calling `before_publish` with the new id once the job is
    /// fully staged and before it is queued: what it records about the id is on record
    /// before any daemon can see the job. If it fails, nothing is queued.
    pub fn submit_with(
        &self,
        sub: Submission,
        before_publish: impl FnOnce(&JobId) -> Result<()>,
    ) -> Result<JobId> {
        self.submit_into(State::Queued, sub, before_publish)
    }

    /// [`Workspace::submit_with`] into `input/held/`: the job waits for
    /// [`Workspace::approve`] (or [`Workspace::deny`]) and no daemon runs it until then.
    pub fn submit_held_with(
        &self,
        sub: Submission,
        before_publish: impl FnOnce(&JobId) -> Result<()>,
    ) -> Result<JobId> {
        self.submit_into(State::Held, sub, before_publish)
    }

    fn submit_into(
        &self,
        target: State,
        sub: Submission,
        before_publish: impl FnOnce(&JobId) -> Result<()>,
    ) -> Result<JobId> {
        self.validate(&sub)?;
        let mut attempt = 0;
        loop {
            let id = JobId::generate();
            let staging = self.job_dir(State::Writing, &id);
            match fs::create_dir(&staging) {
                Ok(()) => {}
                // Another writer picked the same id: take a new one.
                Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e).at(&staging),
            }
            let result = self
                .stage(&staging, &sub)
                .and_then(|()| before_publish(&id))
                .and_then(|()| self.publish(&staging, target, &id));
            if result.is_err() {
                let _ = fs::remove_dir_all(&staging);
            }
            return result.map(|()| id);
        }
    }

    fn validate(&self, sub: &Submission) -> Result<()> {
        sub.validate(&self.limits)
    }

    fn stage(&self, staging: &Path, sub: &Submission) -> Result<()> {
        // Nobody sees input/writing/: files go straight to their names, fsynced, and the
        // directory is fsynced once before the publishing rename.
        write_synced(&staging.join(PROMPT_FILE), sub.prompt.as_bytes())?;
        if !sub.images.is_empty() {
            let images = staging.join(IMAGES_DIR);
            fs::create_dir(&images).at(&images)?;
            for (i, src) in sub.images.iter().enumerate() {
                let ext = src
                    .extension()
                    .and_then(OsStr::to_str)
                    .unwrap_or("img")
                    .to_owned();
                let dst = images.join(format!("image_{i:06}.{ext}"));
                fs::copy(src, &dst).at(&dst)?;
                File::open(&dst).and_then(|f| f.sync_all()).at(&dst)?;
            }
            sync_dir(&images)?;
        }
        for (name, bytes) in &sub.files {
            write_synced(&staging.join(name), bytes)?;
        }
        let meta = Meta {
            submitted_at: now_timestamp(),
            mode: sub.mode,
            parent: sub.parent.as_ref().map(|p| p.to_string()),
            tags: sub.tags.clone(),
            system: sub.system.clone(),
            sampling: sub.sampling.clone(),
            output_format: sub.output_format,
            agent: sub.agent.clone(),
            raw_prompt: sub.raw_prompt,
            ..Meta::default()
        };
        // Everything the spec covers is staged by now.
        let spec = Spec::of(staging, &meta)?;
        let meta = Meta {
            spec_sha256: Some(spec.sha256),
            spec_parts: spec.parts,
            ..meta
        };
        write_synced(&staging.join(META_FILE), &meta_bytes(&meta)?)?;
        sync_dir(staging)
    }

    fn publish(&self, staging: &Path, target: State, id: &JobId) -> Result<()> {
        let to = self.job_dir(target, id);
        rename_durable(staging, &to).at(&to)
    }

    // ----- lookup -----------------------------------------------------------------------

    /// Where the job is now, or `None` if it does not exist.
    ///
    /// Checks states in lifecycle order, so a job moving forward is found; a second pass
    /// catches the one backward move (a requeue) racing with the first.
    pub fn state_of(&self, id: &JobId) -> Result<Option<State>> {
        for _ in 0..2 {
            for state in State::ALL {
                let path = self.job_dir(state, id);
                match fs::symlink_metadata(&path) {
                    Ok(_) => return Ok(Some(state)),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e).at(path),
                }
            }
            // Being approved or denied right now: still held until it moves on.
            if fs::symlink_metadata(self.root.join(DECIDING_DIR).join(id)).is_ok() {
                return Ok(Some(State::Held));
            }
        }
        Ok(None)
    }

    /// Valid job ids in `state`, oldest first. Anything else in the directory is ignored.
    pub fn list(&self, state: State) -> Result<Vec<JobId>> {
        let dir = self.state_dir(state);
        let entries = match fs::read_dir(&dir) {
            // A workspace made before input/held/ existed has no held jobs.
            Err(e) if e.kind() == ErrorKind::NotFound && state == State::Held => {
                return Ok(Vec::new());
            }
            entries => entries.at(&dir)?,
        };
        let mut ids: Vec<JobId> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| JobId::parse(entry.file_name().to_str()?).ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub fn counts(&self) -> Result<Counts> {
        Ok(Counts {
            writing: self.list(State::Writing)?.len(),
            held: self.list(State::Held)?.len(),
            queued: self.list(State::Queued)?.len(),
            running: self.list(State::Running)?.len(),
            done: self.list(State::Done)?.len(),
            failed: self.list(State::Failed)?.len(),
        })
    }

    /// Every job with its state, newest first.
    pub fn all_jobs(&self) -> Result<Vec<(JobId, State)>> {
        let mut all = Vec::new();
        for state in State::ALL {
            if state == State::Writing {
                continue;
            }
            all.extend(self.list(state)?.into_iter().map(|id| (id, state)));
        }
        all.sort_by(|a, b| b.0.cmp(&a.0));
        Ok(all)
    }

    pub fn read_meta(&self, state: State, id: &JobId) -> Result<Meta> {
        read_meta(&self.job_dir(state, id), id)
    }

    /// Reads a payload file of a job, up to the file-size limit.
    pub fn read_file(&self, state: State, id: &JobId, name: &str) -> Result<Vec<u8>> {
        let path = self.job_dir(state, id).join(name);
        read_limited(
            &path,
            self.limits.max_file_bytes.max(self.limits.max_prompt_bytes),
        )
    }

    /// What a job in `state` has produced: `None` while it has not ended. The one place
    /// that knows which file holds what: done → `result.txt` (text and agent jobs) or
    /// `embedding.json`; failed → `error.txt` (with `response.txt`, if the generation got
    /// that far), or cancelled when `meta.json` says so.
    pub fn outcome(&self, state: State, id: &JobId) -> Result<Option<JobOutcome>> {
        match state {
            State::Done => {
                for (file, kind) in [
                    (RESULT_FILE, ArtifactKind::Text),
                    (EMBEDDING_FILE, ArtifactKind::Embedding),
                ] {
                    match self.read_file(state, id, file) {
                        Ok(bytes) => {
                            return Ok(Some(JobOutcome::Done(Artifact {
                                kind,
                                path: self.job_dir(state, id).join(file),
                                bytes,
                            })));
                        }
                        Err(QueueError::Io { source, .. })
                            if source.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(std::io::Error::new(
                    ErrorKind::NotFound,
                    format!("a done job has neither {RESULT_FILE} nor {EMBEDDING_FILE}"),
                ))
                .at(self.job_dir(state, id))
            }
            State::Failed => {
                let status = self.read_meta(state, id).ok().and_then(|m| m.status);
                if status == Some(JobStatus::Cancelled) {
                    return Ok(Some(JobOutcome::Cancelled));
                }
                let text = |file: &str| {
                    self.read_file(state, id, file)
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                };
                let reason = text(ERROR_FILE)
                    .unwrap_or_else(|e| format!("(the job failed; no readable {ERROR_FILE}: {e})"));
                if status == Some(JobStatus::Denied) {
                    return Ok(Some(JobOutcome::Denied { reason }));
                }
                Ok(Some(JobOutcome::Failed {
                    reason,
                    partial: text(RESPONSE_FILE).ok(),
                }))
            }
            State::Writing | State::Held | State::Queued | State::Running => Ok(None),
        }
    }

    // ----- daemon side ------------------------------------------------------------------

    /// Lists the ids queued in `input/ready/`, oldest first, moving anything that cannot
    /// be a job (bad name, symlink, FIFO, plain file) to `failed/` with a reason.
    pub fn sweep_ready(&self) -> Result<Vec<JobId>> {
        let dir = self.state_dir(State::Queued);
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).at(&dir)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            match name.to_str().map(JobId::parse) {
                Some(Ok(id)) if is_dir => ids.push(id),
                _ => {
                    let why = if is_dir {
                        "its name is not a valid job id"
                    } else {
                        "it is not a directory (symlink, FIFO or plain file)"
                    };
                    let shown = name.to_string_lossy().into_owned();
                    if let Err(e) = self.quarantine(
                        &dir.join(&name),
                        &format!("input/ready/{shown} rejected: {why}"),
                    ) {
                        tracing::warn!("cannot move malformed input/ready/{shown} aside: {e}");
                    }
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Moves a malformed entry into a fresh failed job, as `failed/<new id>/rejected`.
    pub(crate) fn quarantine(&self, entry: &Path, reason: &str) -> Result<()> {
        let id = JobId::generate();
        let holder = self.job_dir(State::Running, &id);
        fs::create_dir(&holder).at(&holder)?;
        if let Err(e) = fs::rename(entry, holder.join("rejected")) {
            let _ = fs::remove_dir(&holder);
            if e.kind() == ErrorKind::NotFound {
                return Ok(()); // someone else dealt with it
            }
            return Err(e).at(entry);
        }
        let meta = Meta {
            submitted_at: now_timestamp(),
            ..Meta::default()
        };
        write_meta(&holder, &meta)?;
        self.finish(&id, meta, Err(reason), Outcome::default(), None)
    }

    /// This workspace as a daemon sharing it sees it: its claims are `claimer`'s
    /// (crate::nodes), and it settles only jobs it still owns.
    pub fn with_claimer(mut self, claimer: Claimer) -> Workspace {
        self.claimer = Some(claimer);
        self
    }

    /// [`Workspace::with_claimer`] when `claimer` is `Some`.
    pub fn with_claimer_opt(self, claimer: Option<Claimer>) -> Workspace {
        match claimer {
            Some(c) => self.with_claimer(c),
            None => self,
        }
    }

    /// The node this workspace claims for, when it is shared.
    pub fn claimer(&self) -> Option<&Claimer> {
        self.claimer.as_ref()
    }

    /// Claims a queued job for this process: one rename from `input/ready/` to
    /// `processing/` (followed, on a shared workspace, by the claim file).
    pub fn claim(&self, id: &JobId) -> Result<Claim> {
        if let Some(claimer) = &self.claimer {
            return self.claim_shared(id, claimer);
        }
        let ready = self.job_dir(State::Queued, id);
        let running = self.job_dir(State::Running, id);
        // Never follow a symlink swapped in since the sweep: the start is written into
        // the job directory below, and that must not land outside the workspace.
        match fs::symlink_metadata(&ready) {
            Ok(md) if md.file_type().is_dir() => {}
            Ok(_) => {
                let reason = "it is not a directory (symlink, FIFO or plain file)";
                self.quarantine(&ready, &format!("input/ready/{id} rejected: {reason}"))?;
                return Ok(Claim::Rejected(reason.into()));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Claim::Gone),
            Err(e) => return Err(e).at(&ready),
        }
        let claimed_at = Instant::now();
        let loaded = match self.load_claimed_at(&ready, id) {
            // The host is short of descriptors, not the job at fault: leave it queued for
            // a later claim rather than reject (or strand) it.
            Err(Unloadable::Host(e)) => return Err(e),
            Err(Unloadable::Job(reason)) => Err(reason),
            Ok(loaded) => Ok(loaded),
        };
        let meta = starting_meta(&ready, id, &loaded);
        // The start is recorded while the job is still queued, so it is complete the
        // moment the job shows as running. Only this daemon (it holds the workspace lock)
        // writes into input/ready/. Not fsynced: a daemon crash keeps the page cache, so
        // the attempt counter that bounds crash loops survives; only a power loss can undo
        // it, and then the job is simply queued again. A crash between this write and the
        // rename counts one attempt that never ran.
        if let Err(e) = write_atomic(&ready.join(META_FILE), &meta_bytes(&meta)?) {
            if !ready.exists() {
                return Ok(Claim::Gone); // cancelled meanwhile
            }
            if loaded.is_ok() {
                // The start cannot be recorded (full disk, ...): leave the job queued,
                // untouched, rather than run it unaccounted.
                return Err(e);
            }
        }
        match fs::rename(&ready, &running) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Claim::Gone),
            Err(e) => return Err(e).at(&ready),
        }
        match loaded {
            Ok((_, prompt)) => Ok(Claim::Claimed(Box::new(ClaimedJob {
                id: id.clone(),
                dir: running,
                prompt,
                meta,
                claimed_at,
            }))),
            Err(reason) => {
                self.finish(id, meta, Err(&reason), Outcome::default(), Some(claimed_at))?;
                Ok(Claim::Rejected(reason))
            }
        }
    }

    /// Reads what a claimed job needs; an `Err` is the reason to reject it.
    pub(crate) fn load_claimed_at(
        &self,
        dir: &Path,
        id: &JobId,
    ) -> std::result::Result<(Meta, String), Unloadable> {
        let prompt_path = dir.join(PROMPT_FILE);
        let md = fs::symlink_metadata(&prompt_path)
            .map_err(|e| format!("no readable {PROMPT_FILE}: {e}"))?;
        if !md.file_type().is_file() {
            return Err(format!(
                "{PROMPT_FILE} is not a regular file (symlink, FIFO or directory)"
            )
            .into());
        }
        if md.len() > self.limits.max_prompt_bytes {
            return Err(format!(
                "{PROMPT_FILE} is {} bytes; the limit is {} bytes",
                md.len(),
                self.limits.max_prompt_bytes
            )
            .into());
        }
        let meta = match read_meta(dir, id) {
            Ok(meta) => meta,
            // A job staged by hand with only a prompt is fine: it is a text job.
            Err(QueueError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Meta {
                submitted_at: now_timestamp(),
                ..Meta::default()
            },
            Err(e) => return Err(Unloadable::from(e)),
        };
        let bytes = read_limited(&prompt_path, self.limits.max_prompt_bytes)?;
        let prompt =
            String::from_utf8(bytes).map_err(|_| format!("{PROMPT_FILE} is not valid UTF-8"))?;
        if prompt.is_empty() && meta.mode != Mode::Embed && meta.mode != Mode::Agent {
            return Err("empty prompt".into());
        }
        check_spec(dir, &meta)?;
        Ok((meta, prompt))
    }

    /// Moves a claimed job to `output/` with its artifacts and completion metadata.
    pub fn complete(&self, job: &ClaimedJob, outcome: Outcome) -> Result<()> {
        self.finish(
            &job.id,
            job.meta.clone(),
            Ok(()),
            outcome,
            Some(job.claimed_at),
        )
    }

    /// Moves a claimed job to `failed/` with `error.txt` (and any artifacts, e.g. the raw
    /// response of a generation that failed validation).
    pub fn fail(&self, job: &ClaimedJob, reason: &str, outcome: Outcome) -> Result<()> {
        self.finish(
            &job.id,
            job.meta.clone(),
            Err(reason),
            outcome,
            Some(job.claimed_at),
        )
    }

    /// Marks a job in `processing/` as cancelled (it goes to `failed/`, status `cancelled`).
    pub fn cancel_claimed(&self, job: &ClaimedJob, outcome: Outcome) -> Result<()> {
        let mut meta = job.meta.clone();
        meta.status = Some(JobStatus::Cancelled);
        self.finish(
            &job.id,
            meta,
            Err("cancelled"),
            outcome,
            Some(job.claimed_at),
        )
    }

    /// Cancels a queued job: claims it and moves it to `failed/` with status `cancelled`.
    /// Returns `Ok(false)` if it was not queued (a daemon may own it now).
    pub fn cancel_queued(&self, id: &JobId) -> Result<bool> {
        let ready = self.job_dir(State::Queued, id);
        let running = self.job_dir(State::Running, id);
        match fs::rename(&ready, &running) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).at(&ready),
        }
        // A shared workspace (crate::nodes): a claimer whose rename reported ENOENT may
        // still claim this directory; the claim file settles which of us has it.
        if self.root.join(crate::nodes::NODES_DIR).is_dir() {
            let canceller = Claimer::canceller();
            if crate::nodes::create_claim(&running, &canceller)?.is_none() {
                return Ok(false);
            }
        }
        let mut meta = read_meta(&running, id).unwrap_or_default();
        meta.status = Some(JobStatus::Cancelled);
        // A claim that lost the race to this rename may have recorded a start first.
        if meta.started_at.take().is_some() {
            meta.attempts = meta.attempts.saturating_sub(1);
        }
        self.finish(id, meta, Err("cancelled"), Outcome::default(), None)?;
        Ok(true)
    }

    /// Cancels a queued job at once, or asks the daemon running it to stop it.
    pub fn cancel(&self, id: &JobId) -> Result<CancelOutcome> {
        for _ in 0..3 {
            match self.state_of(id)? {
                None => return Ok(CancelOutcome::NotFound),
                Some(s) if s.is_terminal() => return Ok(CancelOutcome::AlreadyEnded(s)),
                Some(State::Held) => {
                    if self.cancel_held(id)? {
                        return Ok(CancelOutcome::Cancelled);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Some(State::Queued | State::Writing) => {
                    if self.cancel_queued(id)? {
                        return Ok(CancelOutcome::Cancelled);
                    }
                    // Claimed meanwhile (or still being written): look again.
                    std::thread::sleep(Duration::from_millis(10));
                }
                Some(_) => break,
            }
        }
        // Running, or it kept slipping out of the queue: its daemon acts on the request.
        let dir = self.root.join(CANCEL_DIR);
        fs::create_dir_all(&dir).at(&dir)?;
        write_durable(&dir.join(id), b"")?;
        Ok(CancelOutcome::Requested)
    }

    /// Records that running job `id` has generated `tokens` so far (`.progress/<id>`).
    /// Not fsynced: it is a display, rewritten every second, worthless after a crash.
    pub fn set_progress(&self, id: &JobId, tokens: u32) -> Result<()> {
        let dir = self.root.join(PROGRESS_DIR);
        fs::create_dir_all(&dir).at(&dir)?;
        write_atomic(&dir.join(id), tokens.to_string().as_bytes())
    }

    /// Tokens running job `id` has generated so far, if its daemon has said.
    pub fn progress(&self, id: &JobId) -> Option<u32> {
        let bytes = read_limited(&self.root.join(PROGRESS_DIR).join(id), 32).ok()?;
        std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
    }

    /// Forgets a job's progress (it ended), or every job's (`None`: a daemon starting).
    pub fn clear_progress(&self, id: Option<&JobId>) {
        let dir = self.root.join(PROGRESS_DIR);
        match id {
            Some(id) => {
                let _ = fs::remove_file(dir.join(id));
            }
            None => {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }

    /// Pending cancel requests (ids in `.cancel/`).
    pub fn cancel_requests(&self) -> Vec<JobId> {
        fs::read_dir(self.root.join(CANCEL_DIR))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| JobId::parse(e.file_name().to_str()?).ok())
            .collect()
    }

    /// Forgets a cancel request (done, or its job is no longer running).
    pub fn clear_cancel_request(&self, id: &JobId) {
        let _ = fs::remove_file(self.root.join(CANCEL_DIR).join(id));
    }

    pub(crate) fn finish_job(
        &self,
        id: &JobId,
        meta: Meta,
        result: std::result::Result<(), &str>,
        outcome: Outcome,
        claimed_at: Option<Instant>,
    ) -> Result<()> {
        self.finish(id, meta, result, outcome, claimed_at)
    }

    fn finish(
        &self,
        id: &JobId,
        mut meta: Meta,
        result: std::result::Result<(), &str>,
        outcome: Outcome,
        claimed_at: Option<Instant>,
    ) -> Result<()> {
        if self.claimer.is_some() {
            self.check_still_owned(id, &meta)?;
        }
        // The claim file stays with the job (who ran it); meta.json's `node` says so too.
        meta.claim = None;
        let dir = self.job_dir(State::Running, id);
        let mut artifacts = Vec::new();
        for (name, bytes) in &outcome.artifacts {
            write_synced(&dir.join(name), bytes)?;
            artifacts.push(name.clone());
        }
        let target = match result {
            Ok(()) => {
                meta.status = Some(JobStatus::Done);
                State::Done
            }
            Err(reason) => {
                write_synced(&dir.join(ERROR_FILE), reason.as_bytes())?;
                artifacts.push(ERROR_FILE.into());
                if meta.status != Some(JobStatus::Cancelled) {
                    meta.status = Some(JobStatus::Failed);
                }
                State::Failed
            }
        };
        let took = claimed_at.map(|t| t.elapsed().as_secs_f64());
        meta.completed_at = Some(now_timestamp());
        meta.duration_s = took.map(|secs| (secs * 100.0).round() / 100.0);
        meta.artifacts = artifacts;
        if outcome.prompt_tokens.is_some() {
            meta.prompt_tokens = outcome.prompt_tokens;
        }
        if outcome.cached_tokens.is_some() {
            meta.cached_tokens = outcome.cached_tokens;
        }
        if outcome.generated_tokens.is_some() {
            meta.generated_tokens = outcome.generated_tokens;
        }
        if target == State::Done
            && meta.mode == Mode::Text
            && let (Some(tokens), Some(secs)) = (meta.generated_tokens, took)
            && secs > 0.0
        {
            meta.tokens_per_s = Some((f64::from(tokens) / secs * 100.0).round() / 100.0);
        }
        if outcome.model.is_some() {
            meta.model = outcome.model;
        }
        if outcome.backend.is_some() {
            meta.backend = outcome.backend;
        }
        if outcome.finish_reason.is_some() {
            meta.finish_reason = outcome.finish_reason;
        }
        write_meta(&dir, &meta)?;
        sync_dir(&dir)?;
        let to = self.job_dir(target, id);
        rename_durable(&dir, &to).at(&to)
    }

    /// [`Workspace::requeue`] of a job this process claimed: on a shared workspace, only
    /// while the claim is still its own (a daemon paused past its lease may find the job
    /// taken over, and must not put someone else's run back in the queue).
    pub fn requeue_claimed(&self, job: &ClaimedJob, uncount: bool) -> Result<()> {
        if self.claimer.is_some() {
            self.check_still_owned(&job.id, &job.meta)?;
        }
        self.requeue(&job.id, uncount)
    }

    /// Puts a job in `processing/` back into `input/ready/`. `uncount` undoes the attempt
    /// its claim counted (for jobs interrupted by a graceful shutdown, not by a crash).
    pub fn requeue(&self, id: &JobId, uncount: bool) -> Result<()> {
        let dir = self.job_dir(State::Running, id);
        // Best effort: a queued job has no start time; if the disk is full the rename
        // below still puts the job back.
        if let Ok(mut meta) = read_meta(&dir, id) {
            if uncount {
                meta.attempts = meta.attempts.saturating_sub(1);
            }
            meta.started_at = None;
            meta.claim = None;
            if let Err(e) = write_meta(&dir, &meta) {
                tracing::warn!("job {id}: requeueing without updating meta.json: {e}");
            }
        }
        // Whoever claims it next creates its own claim file.
        match fs::remove_file(dir.join(CLAIM_FILE)) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e).at(dir.join(CLAIM_FILE)),
            _ => {}
        }
        let ready = self.job_dir(State::Queued, id);
        rename_durable(&dir, &ready).at(&ready)
    }

    /// Start-up recovery: jobs a crashed daemon left in `processing/` are requeued, or
    /// failed with a reason once they have been started `max_attempts` times.
    pub fn recover(&self, max_attempts: u32) -> Result<Recovery> {
        let mut report = Recovery::default();
        for id in self.list(State::Running)? {
            let dir = self.job_dir(State::Running, &id);
            let meta = read_meta(&dir, &id).unwrap_or_else(|_| Meta {
                submitted_at: now_timestamp(),
                ..Meta::default()
            });
            if meta.attempts >= max_attempts {
                let reason = format!(
                    "job was started {} times and never finished (the daemon crashed or was \
                     killed each time); giving up at the ceiling of {max_attempts} \
                     (NRVNA_MAX_ATTEMPTS)",
                    meta.attempts
                );
                self.finish(&id, meta, Err(&reason), Outcome::default(), None)?;
                report.failed.push(id);
            } else {
                self.requeue(&id, false)?;
                report.requeued.push(id);
            }
        }
        Ok(report)
    }

    /// Removes staging directories left by a `wrk` that died mid-submission.
    pub fn clean_stale_staging(&self, older_than: Duration) -> Result<usize> {
        let dir = self.state_dir(State::Writing);
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in fs::read_dir(&dir).at(&dir)?.filter_map(|e| e.ok()) {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > older_than);
            if stale {
                let path = entry.path();
                let gone = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                if gone.is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Tags are 1-64 characters from `[A-Za-z0-9_-]`.
pub fn validate_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 64
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(QueueError::InvalidTag(crate::error::shown(tag)))
    }
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Why a queued job cannot be loaded to run.
/// The meta.json a claimed job starts with: what was loaded (for a job to reject, what
/// can still be read, or a fresh one), its attempt counted and its start stamped.
pub(crate) fn starting_meta(
    dir: &Path,
    id: &JobId,
    loaded: &std::result::Result<(Meta, String), String>,
) -> Meta {
    let mut meta = match loaded {
        Ok((meta, _)) => meta.clone(),
        Err(_) => read_meta(dir, id).unwrap_or_else(|_| Meta {
            submitted_at: now_timestamp(),
            ..Meta::default()
        }),
    };
    meta.attempts += 1;
    meta.started_at = Some(now_timestamp());
    meta
}

pub(crate) enum Unloadable {
    /// The job itself: it is rejected, with this reason.
    Job(String),
    /// The host (out of file descriptors): the job stays queued.
    Host(QueueError),
}

impl From<String> for Unloadable {
    fn from(reason: String) -> Unloadable {
        Unloadable::Job(reason)
    }
}

impl From<&str> for Unloadable {
    fn from(reason: &str) -> Unloadable {
        Unloadable::Job(reason.to_owned())
    }
}

impl From<QueueError> for Unloadable {
    fn from(e: QueueError) -> Unloadable {
        match &e {
            QueueError::Io { source, .. } if out_of_descriptors(source) => Unloadable::Host(e),
            _ => Unloadable::Job(e.to_string()),
        }
    }
}

/// EMFILE or ENFILE: the process or the system has no file descriptor to spare.
pub(crate) fn out_of_descriptors(e: &std::io::Error) -> bool {
    let raw = e.raw_os_error();
    raw == Some(rustix::io::Errno::MFILE.raw_os_error())
        || raw == Some(rustix::io::Errno::NFILE.raw_os_error())
}

/// The claim's check of a job's spec: a job whose spec differs from the one recorded at
/// submission, or (approved jobs) from the one approved, is not run; `Err` says why.
/// Jobs without a recorded spec (staged by hand, or by an older nrvna) are not checked.
/// Short of file descriptors, the job stays queued as for the rest of the claim.
fn check_spec(dir: &Path, meta: &Meta) -> std::result::Result<(), Unloadable> {
    let approved = meta
        .decision
        .as_ref()
        .filter(|d| d.verdict == crate::meta::Verdict::Approved)
        .and_then(|d| d.spec_sha256.as_ref());
    if meta.spec_sha256.is_none() && approved.is_none() {
        return Ok(());
    }
    let spec = Spec::of(dir, meta).map_err(|e| match Unloadable::from(e) {
        Unloadable::Job(reason) => Unloadable::Job(format!("cannot read the job's spec: {reason}")),
        host => host,
    })?;
    if let Some(recorded) = &meta.spec_sha256
        && *recorded != spec.sha256
    {
        return Err(Unloadable::Job(format!(
            "the job's spec changed after it was submitted ({}); it was not run \
             (nrvna verify shows the check)",
            spec.describe_differences(&meta.spec_parts)
        )));
    }
    if let Some(approved) = approved
        && *approved != spec.sha256
    {
        return Err(Unloadable::from(
            "the job's spec changed after it was approved (its sha256 differs from the one \
             approved); it was not run",
        ));
    }
    Ok(())
}

pub(crate) fn read_meta(dir: &Path, id: &JobId) -> Result<Meta> {
    let path = dir.join(META_FILE);
    let bytes = read_limited(&path, 1 << 20)?;
    serde_json::from_slice(&bytes).map_err(|e| QueueError::BadMeta {
        id: id.to_string(),
        reason: e.to_string(),
    })
}

fn meta_bytes(meta: &Meta) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(meta).map_err(|e| QueueError::BadMeta {
        id: META_FILE.into(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Replaces meta.json atomically and durably (readers may look at any time).
pub(crate) fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
    write_durable(&dir.join(META_FILE), &meta_bytes(meta)?)
}

/// Reads a regular file (never a FIFO or device: opening those could block or stream
/// forever), refusing files over `limit` bytes.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let md = fs::metadata(path).at(path)?;
    if !md.is_file() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "not a regular file",
        ))
        .at(path);
    }
    if md.len() > limit {
        return Err(std::io::Error::new(
            ErrorKind::FileTooLarge,
            format!("{} bytes; the limit is {limit}", md.len()),
        ))
        .at(path);
    }
    let mut buf = Vec::with_capacity(md.len() as usize);
    File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut buf))
        .at(path)?;
    Ok(buf)
}
