//! The `jobs` interface: the run's view of its workspaces.
//!
//! A run names jobs only in its own workspace (index 0) and its granted routes. Every id
//! a component hands over is parsed with [`JobId::parse`] before it reaches a path, so
//! `../`, absolute paths and NUL bytes are `invalid`, never a file lookup.
//! [`RunShared`] is shared by every sandbox of one run (nested `agents.call` included):
//! quotas and budgets are per run, not per sandbox.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nrvna_queue::workspace::{EMBEDDING_FILE, ERROR_FILE, RESULT_FILE};
use nrvna_queue::{
    CancelOutcome, JobId, Mode, OutputFormat, QueueError, Sampling, State, Submission, Workspace,
};

use crate::bindings::nrvna::agent::types::{JobError, JobOutput, JobState, SubmitOptions};
use crate::grants::Grants;
use crate::kv::{self, AGENTS_DIR, Kv};
use crate::limits::RunBudget;
use crate::log::{LogLevel, RunLog};
use crate::runtime::{RunContext, Runtime};
use crate::watch::{WsWatch, deadline_in, wait_for};

/// Most ids one `wait-any`/`wait-all` may name.
pub const MAX_WAIT_IDS: usize = 10_000;
/// Most images one job may carry (the queue's limit).
const MAX_IMAGES: usize = 16;
/// Largest JSON Schema accepted in submit options.
const MAX_SCHEMA_BYTES: usize = 1 << 20;
/// Longest part of an `error.txt` handed back.
const MAX_ERROR_TEXT: usize = 64 << 10;
/// The grammar file a structured-output job carries (what the daemon reads).
const GRAMMAR_FILE: &str = "grammar.gbnf";
/// How often the in-flight count is re-checked against the disk when at its limit.
const IN_FLIGHT_REFRESH: Duration = Duration::from_millis(100);

/// Jobs this run submitted that it has not seen end.
#[derive(Default)]
struct Tracked {
    open: Vec<(usize, JobId)>,
    /// Workspace index of every job the run submitted.
    located: HashMap<JobId, usize>,
    refreshed: Option<Instant>,
}

pub(crate) struct RunShared {
    pub(crate) runtime: Runtime,
    pub(crate) grants: Grants,
    pub(crate) budget: Arc<RunBudget>,
    pub(crate) workspaces: Vec<Workspace>,
    route_names: Vec<String>,
    watches: Vec<OnceLock<Arc<WsWatch>>>,
    parent_job: Option<JobId>,
    pub(crate) log: Arc<RunLog>,
    /// The top-level agent, for the host's own log lines.
    agent_name: String,
    keep_jobs: bool,
    tracked: Mutex<Tracked>,
    /// Serialises keyed submissions (`submit-options.key`).
    keyed: Mutex<()>,
    finished: AtomicBool,
}

impl RunShared {
    pub(crate) fn new(
        runtime: Runtime,
        ctx: RunContext,
        workspaces: Vec<Workspace>,
        route_names: Vec<String>,
    ) -> RunShared {
        let budget = RunBudget::new(ctx.grants.limits.clone(), runtime.inner().tick);
        let watches = workspaces.iter().map(|_| OnceLock::new()).collect();
        RunShared {
            runtime,
            log: Arc::new(RunLog::new(ctx.log, ctx.grants.limits.log_bytes)),
            grants: ctx.grants,
            budget: Arc::new(budget),
            workspaces,
            route_names,
            watches,
            parent_job: ctx.parent_job,
            agent_name: ctx.agent_name,
            keep_jobs: ctx.keep_jobs,
            tracked: Mutex::new(Tracked::default()),
            keyed: Mutex::new(()),
            finished: AtomicBool::new(false),
        }
    }

    /// Ends the run: cancels the jobs it submitted that are still queued or running
    /// (unless told to keep them). Returns how many it cancelled. Runs once.
    pub(crate) fn finish(&self) -> usize {
        if self.finished.swap(true, Ordering::SeqCst) || self.keep_jobs {
            return 0;
        }
        let open = match self.tracked.lock() {
            Ok(mut t) => std::mem::take(&mut t.open),
            Err(_) => return 0,
        };
        let mut cancelled = 0;
        for (wsi, id) in open {
            match self.workspaces[wsi].cancel(&id) {
                Ok(CancelOutcome::Cancelled) | Ok(CancelOutcome::Requested) => cancelled += 1,
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot cancel job {id} left by an agent run: {e}"),
            }
        }
        if cancelled > 0 {
            self.log.host(
                &self.agent_name,
                LogLevel::Info,
                &format!("cancelled {cancelled} unfinished job(s) the run submitted"),
            );
        }
        cancelled
    }

    // ----- lookup -------------------------------------------------------------------------

    fn watch(&self, wsi: usize) -> Arc<WsWatch> {
        self.watches[wsi]
            .get_or_init(|| self.runtime.inner().watchers.watch(&self.workspaces[wsi]))
            .clone()
    }

    /// Where a job is: its workspace index and state; `None` if no granted workspace has it.
    fn locate(&self, id: &JobId) -> Result<Option<(usize, State)>, JobError> {
        let known = self
            .tracked
            .lock()
            .ok()
            .and_then(|t| t.located.get(id).copied());
        let order: Vec<usize> = match known {
            Some(i) => vec![i],
            None => (0..self.workspaces.len()).collect(),
        };
        for wsi in order {
            if let Some(state) = self.workspaces[wsi].state_of(id).map_err(queue_failure)? {
                return Ok(Some((wsi, state)));
            }
        }
        Ok(None)
    }

    fn job_state(&self, wsi: usize, id: &JobId, state: State) -> JobState {
        match state {
            State::Writing | State::Queued => JobState::Queued,
            State::Running => JobState::Running,
            State::Done => JobState::Done,
            State::Failed => match self.workspaces[wsi].read_meta(State::Failed, id) {
                Ok(meta) if meta.status.as_deref() == Some("cancelled") => JobState::Cancelled,
                _ => JobState::Failed,
            },
        }
    }

    /// The output of an ended job, as `follow` returns it.
    fn output(&self, wsi: usize, id: &JobId, state: State) -> Result<JobOutput, JobError> {
        let ws = &self.workspaces[wsi];
        let meta = ws.read_meta(state, id).map_err(queue_failure)?;
        if state == State::Failed {
            if meta.status.as_deref() == Some("cancelled") {
                return Err(JobError::Cancelled);
            }
            let text = match ws.read_file(State::Failed, id, ERROR_FILE) {
                Ok(bytes) => cut(String::from_utf8_lossy(&bytes).into_owned(), MAX_ERROR_TEXT),
                Err(e) => format!("the job failed and its {ERROR_FILE} is unreadable: {e}"),
            };
            return Err(JobError::Failed(text));
        }
        let bytes = match ws.read_file(State::Done, id, RESULT_FILE) {
            Ok(bytes) => bytes,
            Err(QueueError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                ws.read_file(State::Done, id, EMBEDDING_FILE)
                    .map_err(queue_failure)?
            }
            Err(e) => return Err(queue_failure(e)),
        };
        Ok(JobOutput {
            id: id.to_string(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
            prompt_tokens: meta.prompt_tokens.unwrap_or(0),
            generated_tokens: meta.generated_tokens.unwrap_or(0),
        })
    }

    fn mark_ended(&self, id: &JobId) {
        if let Ok(mut t) = self.tracked.lock() {
            t.open.retain(|(_, open)| open != id);
        }
    }

    /// Jobs of this run still queued or running; re-checked on disk (at most every
    /// [`IN_FLIGHT_REFRESH`]) when the count is at the limit.
    fn in_flight(&self) -> u64 {
        let Ok(mut t) = self.tracked.lock() else {
            return u64::MAX;
        };
        let limit = self.budget.max_in_flight();
        let stale = t
            .refreshed
            .is_none_or(|at| at.elapsed() >= IN_FLIGHT_REFRESH);
        if t.open.len() as u64 >= limit && stale {
            let workspaces = &self.workspaces;
            t.open
                .retain(|(wsi, id)| match workspaces[*wsi].state_of(id) {
                    Ok(Some(s)) => !s.is_terminal(),
                    Ok(None) => false,
                    Err(_) => true,
                });
            t.refreshed = Some(Instant::now());
        }
        t.open.len() as u64
    }

    // ----- the interface ---------------------------------------------------------------------

    pub(crate) fn routes(&self) -> Vec<String> {
        self.route_names.clone()
    }

    /// Queues a prompt for the guest. `keys` is the submitting agent's record of
    /// submit keys (see `submit-options.key`).
    pub(crate) async fn submit(
        self: Arc<Self>,
        prompt: String,
        options: SubmitOptions,
        keys: Kv,
    ) -> Result<String, JobError> {
        if prompt.is_empty() {
            return Err(JobError::Invalid("the prompt is empty".into()));
        }
        if let Some(key) = &options.key
            && kv::file_name(key).is_err()
        {
            return Err(JobError::Invalid(format!(
                "submit key {:?}: keys are 1-{} characters from A-Z a-z 0-9 _ - . / without `..`",
                shown(key, 140),
                kv::MAX_KEY_LEN
            )));
        }
        let bytes = prompt.len() as u64 + options.system.as_ref().map_or(0, |s| s.len() as u64);
        self.budget.check_prompt_size(bytes)?;
        let wsi = match &options.route {
            None => 0,
            Some(name) => match self.route_names.iter().position(|r| r == name) {
                Some(i) => i + 1,
                None => {
                    return Err(JobError::Denied(format!(
                        "route {:?} is not granted to this component (granted: {})",
                        shown(name, 100),
                        if self.route_names.is_empty() {
                            "none".to_owned()
                        } else {
                            self.route_names.join(", ")
                        }
                    )));
                }
            },
        };
        let parent = match &options.parent {
            Some(p) => Some(parse_id(p)?),
            None => self.parent_job.clone(),
        };
        if options.images.len() > MAX_IMAGES {
            return Err(JobError::Invalid(format!(
                "{} images; a job takes at most {MAX_IMAGES}",
                options.images.len()
            )));
        }
        let mut files = Vec::new();
        let mut output_format = None;
        if let Some(schema) = &options.json_schema {
            let (schema_file, grammar) = self.compile_schema(schema)?;
            files.push(("schema.json".to_owned(), schema_file));
            files.push((GRAMMAR_FILE.to_owned(), grammar));
            output_format = Some(OutputFormat::JsonSchema);
        }
        // Quotas last: bad input is `invalid` whatever the counts are.
        self.budget.check_job_quota(|| self.in_flight())?;
        let mode = if options.images.is_empty() {
            Mode::Text
        } else {
            Mode::Vision
        };
        let sub = Submission {
            prompt,
            mode,
            images: Vec::new(),
            parent,
            tags: options.tags,
            system: options.system,
            sampling: Sampling {
                max_tokens: options.max_tokens,
                temperature: options.temperature,
                seed: options.seed,
                top_k: None,
                top_p: None,
            },
            output_format,
            files,
            extra_meta: Default::default(),
        };
        let run = self.clone();
        let images = options.images;
        let keyed = options.key.map(|key| (keys, key));
        // Staging images and publishing the job fsync several files: off the async threads.
        let joined = tokio::task::spawn_blocking(move || match keyed {
            Some((keys, key)) => run.submit_keyed(wsi, sub, &images, &keys, &key),
            None => run.submit_blocking(wsi, sub, &images, |_| Ok(())),
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(e) => Err(JobError::Failed(format!("submit task failed: {e}"))),
        }
    }

    /// Stages and queues a job; `before_publish` runs once it is staged and before it
    /// is queued (an `Err` from it queues nothing and is returned).
    fn submit_blocking(
        &self,
        wsi: usize,
        mut sub: Submission,
        images: &[String],
        before_publish: impl FnOnce(&JobId) -> Result<(), JobError>,
    ) -> Result<String, JobError> {
        let ws = &self.workspaces[wsi];
        let staged = StagedImages::stage(self, ws, images)?;
        sub.images = staged.paths.clone();
        let mut refused = None;
        let submitted = ws.submit_with(sub, |id| {
            before_publish(id).map_err(|e| {
                let text = format!("{e:?}");
                refused = Some(e);
                QueueError::Refused(text)
            })
        });
        let id = match submitted {
            Ok(id) => id,
            Err(e) => return Err(refused.unwrap_or_else(|| submit_failure(e))),
        };
        drop(staged);
        self.budget.count_job_submitted();
        self.track(wsi, &id);
        Ok(id.to_string())
    }

    /// A job this run now owns: tracked even if the guest's future is gone by now, so
    /// the run's end cancels it.
    fn track(&self, wsi: usize, id: &JobId) {
        if let Ok(mut t) = self.tracked.lock() {
            t.open.push((wsi, id.clone()));
            t.located.insert(id.clone(), wsi);
        }
        if self.finished.load(Ordering::SeqCst) && !self.keep_jobs {
            // The run ended while this submission was being written.
            let _ = self.workspaces[wsi].cancel(id);
        }
    }

    /// An idempotent submission: the job recorded under `key` for this route if it is
    /// queued, running or done, else a new job whose id is recorded (durably) before
    /// it is queued.
    fn submit_keyed(
        &self,
        wsi: usize,
        sub: Submission,
        images: &[String],
        keys: &Kv,
        key: &str,
    ) -> Result<String, JobError> {
        // One keyed submission at a time in this run, so two racing on one key agree.
        let _one = self.keyed.lock().map_err(|_| {
            JobError::Failed("submit: the key lock was poisoned by a crashed thread".into())
        })?;
        let route = match wsi {
            0 => "-",
            i => self.route_names[i - 1].as_str(),
        };
        if let Some(record) = keys.get(key)? {
            let record = String::from_utf8_lossy(&record);
            let mut lines = record.lines();
            if lines.next() == Some(route)
                && let Some(Ok(id)) = lines.next().map(JobId::parse)
                && matches!(
                    self.workspaces[wsi].state_of(&id),
                    Ok(Some(State::Queued | State::Running | State::Done))
                )
            {
                self.track(wsi, &id);
                return Ok(id.to_string());
            }
        }
        // A full record forgets its oldest keys: an agent cannot fill its storage with them.
        self.submit_blocking(wsi, sub, images, |id| {
            keys.set(key, format!("{route}\n{id}\n").as_bytes())
        })
    }

    fn compile_schema(&self, schema: &str) -> Result<(Vec<u8>, Vec<u8>), JobError> {
        if schema.len() > MAX_SCHEMA_BYTES {
            return Err(JobError::Invalid(format!(
                "json-schema is {} bytes; the limit is {MAX_SCHEMA_BYTES}",
                schema.len()
            )));
        }
        serde_json::from_str::<serde_json::Value>(schema)
            .map_err(|e| JobError::Invalid(format!("json-schema is not valid JSON: {e}")))?;
        let Some(convert) = &self.runtime.inner().schema_to_grammar else {
            return Err(JobError::Invalid(
                "json-schema is not supported by this host (it has no schema compiler)".into(),
            ));
        };
        let grammar =
            convert(schema).map_err(|e| JobError::Invalid(format!("json-schema: {e}")))?;
        Ok((schema.as_bytes().to_vec(), grammar.into_bytes()))
    }

    pub(crate) fn status(&self, id: &str) -> Result<JobState, JobError> {
        let id = parse_id(id)?;
        Ok(match self.locate(&id)? {
            Some((wsi, state)) => self.job_state(wsi, &id, state),
            None => JobState::Missing,
        })
    }

    pub(crate) async fn cancel(self: Arc<Self>, id: &str) -> Result<(), JobError> {
        let id = parse_id(id)?;
        let Some((wsi, _)) = self.locate(&id)? else {
            return Err(not_found(&id));
        };
        let ws = self.workspaces[wsi].clone();
        let job = id.clone();
        let outcome = tokio::task::spawn_blocking(move || ws.cancel(&job))
            .await
            .map_err(|e| JobError::Failed(format!("cancel task failed: {e}")))?
            .map_err(queue_failure)?;
        match outcome {
            CancelOutcome::Cancelled | CancelOutcome::Requested => Ok(()),
            CancelOutcome::AlreadyEnded(state) => Err(JobError::Invalid(format!(
                "job {id} has already ended ({})",
                state.name()
            ))),
            CancelOutcome::NotFound => Err(not_found(&id)),
        }
    }

    pub(crate) async fn follow(
        self: Arc<Self>,
        id: &str,
        timeout_ms: Option<u64>,
    ) -> Result<JobOutput, JobError> {
        let id = parse_id(id)?;
        let Some((wsi, _)) = self.locate(&id)? else {
            return Err(not_found(&id));
        };
        let watch = self.watch(wsi);
        let mut rx = self.runtime.inner().watchers.subscribe();
        let ws = &self.workspaces[wsi];
        let ended = wait_for(
            &mut rx,
            watch.notifies(),
            deadline_in(timeout_ms),
            || match ws.state_of(&id) {
                Ok(Some(s)) if s.is_terminal() => Some(Ok(s)),
                Ok(Some(_)) => None,
                Ok(None) => Some(Err(not_found(&id))),
                Err(e) => Some(Err(queue_failure(e))),
            },
        )
        .await;
        match ended {
            None => Err(JobError::Timeout),
            Some(Err(e)) => Err(e),
            Some(Ok(state)) => {
                self.mark_ended(&id);
                self.output(wsi, &id, state)
            }
        }
    }

    /// Parses and locates every id (in order); the first bad one is the error.
    fn resolve_all(&self, ids: &[String]) -> Result<Vec<(usize, JobId)>, JobError> {
        if ids.is_empty() {
            return Err(JobError::Invalid("no job ids given".into()));
        }
        if ids.len() > MAX_WAIT_IDS {
            return Err(JobError::Invalid(format!(
                "{} job ids; one wait takes at most {MAX_WAIT_IDS}",
                ids.len()
            )));
        }
        let mut out = Vec::with_capacity(ids.len());
        for (i, raw) in ids.iter().enumerate() {
            let id = parse_id(raw).map_err(|e| match e {
                JobError::Invalid(m) => JobError::Invalid(format!("ids[{i}]: {m}")),
                other => other,
            })?;
            match self.locate(&id)? {
                Some((wsi, _)) => out.push((wsi, id)),
                None => return Err(not_found(&id)),
            }
        }
        Ok(out)
    }

    pub(crate) async fn wait_any(
        self: Arc<Self>,
        ids: &[String],
        timeout_ms: Option<u64>,
    ) -> Result<u32, JobError> {
        let jobs = self.resolve_all(ids)?;
        let notifies = self.watch_all(&jobs);
        let mut rx = self.runtime.inner().watchers.subscribe();
        let found = wait_for(&mut rx, notifies, deadline_in(timeout_ms), || {
            jobs.iter().position(|(wsi, id)| {
                matches!(self.workspaces[*wsi].state_of(id), Ok(Some(s)) if s.is_terminal())
            })
        })
        .await;
        match found {
            Some(i) => Ok(i as u32),
            None => Err(JobError::Timeout),
        }
    }

    pub(crate) async fn wait_all(
        self: Arc<Self>,
        ids: &[String],
        timeout_ms: Option<u64>,
    ) -> Vec<Result<JobOutput, JobError>> {
        if ids.len() > MAX_WAIT_IDS {
            let msg = format!(
                "{} job ids; one wait takes at most {MAX_WAIT_IDS}",
                ids.len()
            );
            return ids
                .iter()
                .map(|_| Err(JobError::Invalid(msg.clone())))
                .collect();
        }
        let mut results: Vec<Option<Result<JobOutput, JobError>>> = Vec::with_capacity(ids.len());
        let mut pending = Vec::new();
        for (i, raw) in ids.iter().enumerate() {
            match parse_id(raw).and_then(|id| Ok((self.locate(&id)?, id))) {
                Err(e) => results.push(Some(Err(e))),
                Ok((None, id)) => results.push(Some(Err(not_found(&id)))),
                Ok((Some((wsi, _)), id)) => {
                    results.push(None);
                    pending.push((i, wsi, id));
                }
            }
        }
        let jobs: Vec<(usize, JobId)> = pending.iter().map(|(_, w, id)| (*w, id.clone())).collect();
        let notifies = self.watch_all(&jobs);
        let mut rx = self.runtime.inner().watchers.subscribe();
        let _ = wait_for(&mut rx, notifies, deadline_in(timeout_ms), || {
            pending.retain(|(i, wsi, id)| {
                let done = match self.workspaces[*wsi].state_of(id) {
                    Ok(Some(s)) if s.is_terminal() => {
                        self.mark_ended(id);
                        Some(self.output(*wsi, id, s))
                    }
                    Ok(Some(_)) => None,
                    Ok(None) => Some(Err(not_found(id))),
                    Err(e) => Some(Err(queue_failure(e))),
                };
                match done {
                    Some(r) => {
                        results[*i] = Some(r);
                        false
                    }
                    None => true,
                }
            });
            pending.is_empty().then_some(())
        })
        .await;
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(JobError::Timeout)))
            .collect()
    }

    /// Watches every workspace the jobs are in; true if all of them notify.
    fn watch_all(&self, jobs: &[(usize, JobId)]) -> bool {
        let mut notifies = true;
        let mut seen = vec![false; self.workspaces.len()];
        for (wsi, _) in jobs {
            if !seen[*wsi] {
                seen[*wsi] = true;
                notifies &= self.watch(*wsi).notifies();
            }
        }
        notifies
    }
}

impl Drop for RunShared {
    fn drop(&mut self) {
        // A run whose future was dropped never reached `finish`.
        self.finish();
    }
}

/// Images a job names, copied out of the granted directories into the workspace before
/// submission (so what the job gets is what was checked), removed afterwards.
struct StagedImages {
    paths: Vec<PathBuf>,
}

impl StagedImages {
    fn stage(run: &RunShared, ws: &Workspace, images: &[String]) -> Result<StagedImages, JobError> {
        let mut staged = StagedImages { paths: Vec::new() };
        if images.is_empty() {
            return Ok(staged);
        }
        let dir = ws.root().join(AGENTS_DIR).join(".staging");
        std::fs::create_dir_all(&dir)
            .map_err(|e| JobError::Failed(format!("cannot stage images: {e}")))?;
        let max = ws.limits().max_image_bytes;
        for (i, guest_path) in images.iter().enumerate() {
            let bytes = read_granted(run, guest_path, max)?;
            let ext: String = Path::new(guest_path)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(8)
                .collect();
            let path = dir.join(format!(
                "img-{}-{}-{i}.{ext}",
                std::process::id(),
                JobId::generate()
            ));
            std::fs::write(&path, &bytes)
                .map_err(|e| JobError::Failed(format!("cannot stage image: {e}")))?;
            staged.paths.push(path);
        }
        Ok(staged)
    }
}

impl Drop for StagedImages {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Reads a file the component names by its guest path, through the `--dir` grant that
/// contains it, with cap-std (so `..` and symlinks cannot leave the grant).
fn read_granted(run: &RunShared, guest_path: &str, max: u64) -> Result<Vec<u8>, JobError> {
    use std::io::Read;
    let shown = shown(guest_path, 200);
    let denied = || {
        JobError::Denied(format!(
            "image {shown} is not inside a directory granted with --dir"
        ))
    };
    let path = Path::new(guest_path);
    let grant = run
        .grants
        .dirs
        .iter()
        .filter_map(|d| path.strip_prefix(&d.guest).ok().map(|rel| (d, rel)))
        .max_by_key(|(d, _)| d.guest.len());
    let Some((grant, rel)) = grant else {
        return Err(denied());
    };
    if guest_path.contains('\0')
        || rel.as_os_str().is_empty()
        || rel.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(denied());
    }
    let dir = cap_std::fs::Dir::open_ambient_dir(&grant.host, cap_std::ambient_authority())
        .map_err(|e| JobError::Failed(format!("image {shown}: {e}")))?;
    let file = dir
        .open(rel)
        .map_err(|e| JobError::Denied(format!("image {shown}: {e}")))?;
    let md = file
        .metadata()
        .map_err(|e| JobError::Failed(format!("image {shown}: {e}")))?;
    if !md.is_file() || md.len() > max {
        return Err(JobError::Invalid(format!(
            "image {shown} is not a regular file of at most {max} bytes"
        )));
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| JobError::Failed(format!("image {shown}: {e}")))?;
    Ok(bytes)
}

/// Parses a component-supplied id; the only way an id reaches a path.
pub(crate) fn parse_id(raw: &str) -> Result<JobId, JobError> {
    JobId::parse(raw).map_err(|e| JobError::Invalid(cut(e.to_string(), 400)))
}

fn not_found(id: &JobId) -> JobError {
    JobError::NotFound(format!("no job {id} in this run's workspaces"))
}

fn queue_failure(e: QueueError) -> JobError {
    JobError::Failed(format!("workspace: {e}"))
}

/// Submission errors: bad input is `invalid`, the rest is the workspace failing.
fn submit_failure(e: QueueError) -> JobError {
    match e {
        QueueError::Io { .. }
        | QueueError::NotAWorkspace(_)
        | QueueError::Locked { .. }
        | QueueError::Watch(_)
        | QueueError::BadMeta { .. }
        | QueueError::WrongState { .. }
        | QueueError::NotFound(_) => queue_failure(e),
        other => JobError::Invalid(other.to_string()),
    }
}

/// Guest text for a message, escaped: only its first `max` characters are looked at, so a
/// huge string costs no more than a short one.
fn shown(text: &str, max: usize) -> String {
    let head: String = text.chars().take(max + 1).collect();
    cut(head.escape_debug().to_string(), max)
}

fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeConfig;
    use nrvna_queue::{Claim, Outcome};

    fn options() -> SubmitOptions {
        SubmitOptions {
            route: None,
            images: Vec::new(),
            max_tokens: Some(4),
            temperature: None,
            seed: None,
            system: None,
            json_schema: None,
            parent: None,
            tags: Vec::new(),
            key: None,
        }
    }

    async fn submit(
        run: &Arc<RunShared>,
        prompt: String,
        options: SubmitOptions,
    ) -> Result<String, JobError> {
        let keys = Kv::submitted(run.workspaces[0].root().to_owned(), "t".into());
        run.clone().submit(prompt, options, keys).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_keyed_submit_returns_its_job_until_that_job_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let run = run_on(&tmp.path().join("ws"), Grants::default());
        let ws = run.workspaces[0].clone();
        let keyed = |key: &str| SubmitOptions {
            key: Some(key.into()),
            ..options()
        };
        let first = submit(&run, "a".into(), keyed("round/1")).await.unwrap();
        // Again, as a component run again after a crash would: the same job.
        let again = submit(&run, "a".into(), keyed("round/1")).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(ws.list(State::Queued).unwrap().len(), 1);
        // Another key is another job.
        let other = submit(&run, "b".into(), keyed("round/2")).await.unwrap();
        assert_ne!(other, first);
        // A done job is still the key's job.
        let id = JobId::parse(&first).unwrap();
        let Claim::Claimed(job) = ws.claim(&id).unwrap() else {
            panic!("claim");
        };
        ws.complete(&job, Outcome::default()).unwrap();
        assert_eq!(
            submit(&run, "a".into(), keyed("round/1")).await.unwrap(),
            first
        );
        // A cancelled one is replaced, and the key now names the new job.
        ws.cancel(&JobId::parse(&other).unwrap()).unwrap();
        let replaced = submit(&run, "b".into(), keyed("round/2")).await.unwrap();
        assert_ne!(replaced, other);
        assert_eq!(
            submit(&run, "b".into(), keyed("round/2")).await.unwrap(),
            replaced
        );
        // The record lives with the agent's state, not in its kv.
        assert!(tmp.path().join("ws/.agents/t/submitted").is_dir());
        // Keys are checked like kv keys.
        for bad in ["", "../x", "a b", &"k".repeat(129)] {
            let r = submit(&run, "c".into(), keyed(bad)).await;
            assert!(
                matches!(&r, Err(JobError::Invalid(m)) if m.contains("submit key")),
                "{bad:?}: {r:?}"
            );
        }
    }

    fn run_on(ws: &Path, grants: Grants) -> Arc<RunShared> {
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let mut ctx = RunContext::new(ws, "t");
        ctx.grants = grants;
        ctx.parent_job = Some(JobId::parse("1_2").unwrap());
        let own = Workspace::create(ws).unwrap();
        Arc::new(RunShared::new(runtime, ctx, vec![own], Vec::new()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quotas_validation_follow_and_cleanup() {
        let tmp = tempfile::tempdir().unwrap();
        let mut grants = Grants::default();
        grants.limits.max_in_flight = 2;
        grants.limits.max_jobs = 3;
        grants.limits.max_prompt_bytes = 100;
        let run = run_on(&tmp.path().join("ws"), grants);
        let ws = run.workspaces[0].clone();

        let a = submit(&run, "a".into(), options()).await.unwrap();
        let b = submit(&run, "b".into(), options()).await.unwrap();
        let a = JobId::parse(&a).unwrap();
        // The run's own job is the default parent.
        assert_eq!(
            ws.read_meta(State::Queued, &a).unwrap().parent.as_deref(),
            Some("1_2")
        );
        let third = submit(&run, "c".into(), options()).await;
        assert!(
            matches!(&third, Err(JobError::Quota(m)) if m.contains("--max-in-flight")),
            "{third:?}"
        );

        // Bad input is `invalid`/`denied` and costs nothing.
        let big = submit(&run, "x".repeat(101), options()).await;
        assert!(
            matches!(&big, Err(JobError::Invalid(m)) if m.contains("--max-prompt-bytes")),
            "{big:?}"
        );
        let mut routed = options();
        routed.route = Some("elsewhere".into());
        assert!(matches!(
            submit(&run, "r".into(), routed).await,
            Err(JobError::Denied(_))
        ));
        let mut parented = options();
        parented.parent = Some("../1".into());
        assert!(matches!(
            submit(&run, "p".into(), parented).await,
            Err(JobError::Invalid(_))
        ));
        let mut schema = options();
        schema.json_schema = Some("{}".into());
        assert!(
            matches!(submit(&run, "s".into(), schema).await, Err(JobError::Invalid(m)) if m.contains("schema compiler"))
        );

        // A job that ends frees its slot (after the refresh interval).
        let Claim::Claimed(job) = ws.claim(&a).unwrap() else {
            panic!("claim");
        };
        ws.complete(
            &job,
            Outcome {
                artifacts: vec![(RESULT_FILE.into(), b"done text".to_vec())],
                prompt_tokens: Some(5),
                generated_tokens: Some(2),
                model: None,
            },
        )
        .unwrap();
        tokio::time::sleep(IN_FLIGHT_REFRESH).await;
        let c = submit(&run, "c".into(), options()).await.unwrap();
        let fourth = submit(&run, "d".into(), options()).await;
        assert!(
            matches!(&fourth, Err(JobError::Quota(m)) if m.contains("--max-jobs")),
            "{fourth:?}"
        );

        let out = run.clone().follow(a.as_str(), Some(10)).await.unwrap();
        assert_eq!(
            (out.text.as_str(), out.prompt_tokens, out.generated_tokens),
            ("done text", 5, 2)
        );
        assert!(matches!(
            run.clone().follow(&b, Some(50)).await,
            Err(JobError::Timeout)
        ));
        assert!(matches!(run.status(&b), Ok(JobState::Queued)));
        assert!(matches!(run.status("9_9"), Ok(JobState::Missing)));
        assert!(matches!(
            run.clone()
                .wait_any(&[b.clone(), a.to_string()], Some(0))
                .await,
            Ok(1)
        ));
        let all = run
            .clone()
            .wait_all(&[a.to_string(), b.clone(), "x".into()], Some(20))
            .await;
        assert!(
            matches!(
                &all[..],
                [Ok(_), Err(JobError::Timeout), Err(JobError::Invalid(_))]
            ),
            "{all:?}"
        );
        assert!(
            matches!(run.clone().cancel(a.as_str()).await, Err(JobError::Invalid(m)) if m.contains("already ended"))
        );

        // The run's end cancels what it left queued.
        assert_eq!(run.finish(), 2);
        for id in [&b, &c] {
            let id = JobId::parse(id).unwrap();
            assert_eq!(
                ws.read_meta(State::Failed, &id).unwrap().status.as_deref(),
                Some("cancelled")
            );
        }
        assert_eq!(run.finish(), 0);
        assert_eq!(run.budget.jobs_submitted(), 3);
    }
}
