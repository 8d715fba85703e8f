//! The `jobs` interface: the run's view of its workspaces.
//!
//! A run names jobs only in its own workspace (index 0) and its granted routes. Every id
//! a component hands over is parsed with [`JobId::parse`] before it reaches a path, so
//! `../`, absolute paths and NUL bytes are `invalid`, never a file lookup. The operations
//! are on [`RunShared`]: every sandbox of a run (nested `agents.call` included) sees the
//! same jobs.

mod images;

use std::sync::Arc;

use nrvna_queue::{
    CancelOutcome, GRAMMAR_FILE, JobId, JobOutcome, Mode, OutputFormat, QueueError, SCHEMA_FILE,
    Sampling, State, Submission,
};

use crate::bindings::nrvna::agent::jobs;
use crate::bindings::nrvna::agent::types::{JobError, JobOutput, JobState, SubmitOptions};
use crate::host::{Call, HostCallError, HostState, trap_only};
use crate::journal::codec;
use crate::kv::{self, Kv};
use crate::limits::{ApprovalTimer, measure_cpu};
use crate::run::RunShared;
use crate::text::{cut, prefix, quoted};
use crate::watch::{deadline_in, wait_for};
use images::StagedImages;
use serde_json::{Value, json};

/// Most ids one `wait-any`/`wait-all` may name.
pub const MAX_WAIT_IDS: usize = 10_000;
/// Largest JSON Schema accepted in submit options.
const MAX_SCHEMA_BYTES: usize = 1 << 20;
/// Longest a JSON Schema's conversion to a grammar may take (waiting for a slot included).
const SCHEMA_TIME: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest part of an `error.txt` handed back.
const MAX_ERROR_TEXT: usize = 64 << 10;
/// Longest message about an invalid job id.
const MAX_SHOWN_ID_ERROR: usize = 400;

impl jobs::Host for HostState {
    async fn submit(
        &mut self,
        prompt: String,
        mut options: SubmitOptions,
    ) -> Result<String, HostCallError> {
        // Not `effect`: the journal is made durable in `submit`, once the submission
        // has passed its checks, so a refused submit costs no fsync.
        let pending = match self.journal_begin("jobs.submit", false, || {
            json!({ "prompt": codec::text_arg(&prompt), "options": codec::submit_options(&options) })
        })? {
            Call::Replayed(out) => return out,
            Call::Live(p) => p,
        };
        crate::failpoint!("journal-submit-before");
        // A crash between the job being queued and its entry: the resumed run submits
        // again with the same key, and gets the same job back.
        if let (Some(journal), Some(p), None) = (&self.journal, &pending, &options.key) {
            options.key = Some(journal.submit_key(p.index));
        }
        let keys = self.kv.submitted_keys();
        let journal = self.journal.clone();
        let submitted = self
            .run
            .clone()
            .submit(prompt, options, keys, journal)
            .await;
        // Converting a schema and copying images was host CPU the run pays for.
        self.run.budget.check_cpu()?;
        crate::failpoint!("journal-submit-queued");
        self.journal_end(pending, submitted.map_err(HostCallError::from))
    }

    async fn follow(
        &mut self,
        id: String,
        timeout_ms: Option<u64>,
    ) -> Result<JobOutput, HostCallError> {
        let pending = match self.journal_begin(
            "jobs.follow",
            false,
            || json!({ "id": codec::text_arg(&id), "timeout_ms": timeout_ms }),
        )? {
            Call::Replayed(out) => return out,
            Call::Live(p) => p,
        };
        crate::failpoint!("journal-follow");
        if self.depth > 0 {
            crate::failpoint!("journal-nested-follow");
        }
        let out = self.run.clone().follow(&id, timeout_ms).await;
        crate::failpoint!("journal-follow-ended");
        self.journal_end(pending, out.map_err(HostCallError::from))
    }

    async fn status(&mut self, id: String) -> Result<JobState, HostCallError> {
        let pending = match self.journal_begin(
            "jobs.status",
            false,
            || json!({ "id": codec::text_arg(&id) }),
        )? {
            Call::Replayed(out) => return out,
            Call::Live(p) => p,
        };
        // File-system lookups on this thread: host CPU the run pays for.
        let (out, spent) = measure_cpu(|| self.run.status(&id));
        self.run.budget.charge_host_cpu_in_call(spent);
        self.run.budget.check_cpu()?;
        self.journal_end(pending, out.map_err(HostCallError::from))
    }

    async fn cancel(&mut self, id: String) -> Result<(), HostCallError> {
        let pending = match self.journal_begin(
            "jobs.cancel",
            true,
            || json!({ "id": codec::text_arg(&id) }),
        )? {
            Call::Replayed(out) => return out,
            Call::Live(p) => p,
        };
        let out = self.run.clone().cancel(&id).await;
        self.journal_end(pending, out.map_err(HostCallError::from))
    }

    async fn wait_any(
        &mut self,
        ids: Vec<String>,
        timeout_ms: Option<u64>,
    ) -> Result<u32, HostCallError> {
        // The order in which jobs were seen to end is what the entry records.
        let pending = match self.journal_begin(
            "jobs.wait-any",
            false,
            || json!({ "ids": codec::text_args(&ids), "timeout_ms": timeout_ms }),
        )? {
            Call::Replayed(out) => return out,
            Call::Live(p) => p,
        };
        let out = self.run.clone().wait_any(&ids, timeout_ms).await;
        self.journal_end(pending, out.map_err(HostCallError::from))
    }

    async fn wait_all(
        &mut self,
        ids: Vec<String>,
        timeout_ms: Option<u64>,
    ) -> wasmtime::Result<Vec<Result<JobOutput, JobError>>> {
        let pending = match self.journal_begin(
            "jobs.wait-all",
            false,
            || json!({ "ids": codec::text_args(&ids), "timeout_ms": timeout_ms }),
        ) {
            Ok(Call::Replayed(out)) => return trap_only(out),
            Ok(Call::Live(p)) => p,
            Err(e) => return trap_only(Err(e)),
        };
        // Building the results (a lookup and a read per id) is charged inside.
        let out = self.run.clone().wait_all(&ids, timeout_ms).await;
        self.run.budget.check_cpu()?;
        trap_only(self.journal_end(pending, Ok(out)))
    }

    async fn routes(&mut self) -> wasmtime::Result<Vec<String>> {
        let pending = match self.journal_begin("jobs.routes", false, || Value::Null) {
            Ok(Call::Replayed(out)) => return trap_only(out),
            Ok(Call::Live(p)) => p,
            Err(e) => return trap_only(Err(e)),
        };
        let out = self.run.routes();
        trap_only(self.journal_end(pending, Ok(out)))
    }
}

impl RunShared {
    /// Where a job is: its workspace index and state; `None` if no granted workspace has it.
    fn locate(&self, id: &JobId) -> Result<Option<(usize, State)>, JobError> {
        let order: Vec<usize> = match self.submitted_in(id) {
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
            // A held job waits for its approval: to the component it is queued.
            State::Writing | State::Held | State::Queued => JobState::Queued,
            State::Running => JobState::Running,
            State::Done => JobState::Done,
            State::Failed => match self.workspaces[wsi].outcome(State::Failed, id) {
                Ok(Some(JobOutcome::Cancelled)) => JobState::Cancelled,
                _ => JobState::Failed,
            },
        }
    }

    /// The output of an ended job, as `follow` returns it.
    fn output(&self, wsi: usize, id: &JobId, state: State) -> Result<JobOutput, JobError> {
        let ws = &self.workspaces[wsi];
        match ws.outcome(state, id).map_err(queue_failure)? {
            Some(JobOutcome::Done(artifact)) => {
                let meta = ws.read_meta(state, id).map_err(queue_failure)?;
                Ok(JobOutput {
                    id: id.to_string(),
                    text: String::from_utf8_lossy(&artifact.bytes).into_owned(),
                    prompt_tokens: meta.prompt_tokens.unwrap_or(0),
                    generated_tokens: meta.generated_tokens.unwrap_or(0),
                })
            }
            Some(JobOutcome::Cancelled) => Err(JobError::Cancelled),
            Some(JobOutcome::Denied { reason }) => Err(JobError::Denied(format!(
                "job {id} was {}",
                cut(reason, MAX_ERROR_TEXT, "...")
            ))),
            Some(JobOutcome::Failed { reason, .. }) => {
                Err(JobError::Failed(cut(reason, MAX_ERROR_TEXT, "...")))
            }
            None => Err(JobError::Invalid(format!(
                "job {id} has not ended (it is {})",
                state.name()
            ))),
        }
    }

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
        journal: Option<Arc<crate::journal::Journal>>,
    ) -> Result<String, JobError> {
        if prompt.is_empty() {
            return Err(JobError::Invalid("the prompt is empty".into()));
        }
        if let Some(key) = &options.key
            && kv::file_name(key).is_err()
        {
            return Err(JobError::Invalid(format!(
                "submit key {}: keys are 1-{} characters from A-Z a-z 0-9 _ - . / without `..`",
                quoted(key, kv::MAX_KEY_LEN + 1),
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
                        "route {} is not granted to this component (granted: {})",
                        quoted(name, 100),
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
        let max_images = nrvna_queue::Limits::default().max_images;
        if options.images.len() > max_images {
            return Err(JobError::Invalid(format!(
                "{} images; a job takes at most {max_images}",
                options.images.len()
            )));
        }
        let mut files = Vec::new();
        let mut output_format = None;
        if let Some(schema) = &options.json_schema {
            let (schema_file, grammar) = self.compile_schema(schema).await?;
            files.push((SCHEMA_FILE.to_owned(), schema_file));
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
                stop: Vec::new(),
            },
            output_format,
            files,
            agent: Default::default(),
            raw_prompt: false,
        };
        let run = self.clone();
        let images = options.images;
        let keyed = options.key.map(|key| (keys, key));
        // Staging images and publishing the job fsync several files: off the async threads.
        let joined = tokio::task::spawn_blocking(move || {
            if let Some(journal) = &journal
                && let Err(e) = journal.sync_before_effect()
            {
                return Err(JobError::Failed(format!(
                    "submit: the run's journal could not be made durable: {e:?}"
                )));
            }
            let (submitted, spent) = measure_cpu(|| match keyed {
                Some((keys, key)) => run.submit_keyed(wsi, sub, &images, &keys, &key),
                None => run.submit_blocking(wsi, sub, &images, |_| Ok(())),
            });
            run.budget.charge_host_cpu(spent);
            submitted
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
        sub.images = staged.paths().to_vec();
        let mut refused = None;
        let hook = |id: &JobId| {
            before_publish(id).map_err(|e| {
                let text = format!("{e:?}");
                refused = Some(e);
                QueueError::Refused(text)
            })
        };
        // `--approve submits`: the job waits in input/held/ for a person.
        let submitted = if self.grants.approve_submits {
            ws.submit_held_with(sub, hook)
        } else {
            ws.submit_with(sub, hook)
        };
        let id = match submitted {
            Ok(id) => id,
            // The staged copy's path is the host's: name the image as the guest did.
            Err(QueueError::InvalidImage { path, reason }) => {
                let shown = staged
                    .paths()
                    .iter()
                    .position(|p| *p == path)
                    .and_then(|i| images.get(i))
                    .map_or_else(|| "?".to_owned(), |guest| quoted(guest, 200));
                return Err(JobError::Invalid(format!("image {shown}: {reason}")));
            }
            Err(e) => return Err(refused.unwrap_or_else(|| submit_failure(e))),
        };
        drop(staged);
        self.budget.count_job_submitted();
        self.track(wsi, &id);
        Ok(id.to_string())
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

    /// Checks and converts a JSON Schema to a grammar: on the blocking pool (a slot of
    /// [`SCHEMA_SLOTS`](crate::runtime::SCHEMA_SLOTS)), never on the threads that drive
    /// every guest, and refused as `invalid` past [`SCHEMA_TIME`].
    async fn compile_schema(&self, schema: &str) -> Result<(Vec<u8>, Vec<u8>), JobError> {
        if schema.len() > MAX_SCHEMA_BYTES {
            return Err(JobError::Invalid(format!(
                "json-schema is {} bytes; the limit is {MAX_SCHEMA_BYTES}",
                schema.len()
            )));
        }
        serde_json::from_str::<serde_json::Value>(schema)
            .map_err(|e| JobError::Invalid(format!("json-schema is not valid JSON: {e}")))?;
        let Some(convert) = self.runtime.inner().schema_to_grammar.clone() else {
            return Err(JobError::Invalid(
                "json-schema is not supported by this host (it has no schema compiler)".into(),
            ));
        };
        let slots = self.runtime.inner().schema_slots.clone();
        let owned = schema.to_owned();
        let budget = Arc::clone(&self.budget);
        let converted = tokio::time::timeout(SCHEMA_TIME, async move {
            let slot = slots
                .acquire_owned()
                .await
                .map_err(|e| JobError::Failed(format!("json-schema: {e}")))?;
            // The slot goes with the conversion: one that outlives the time limit still
            // holds it, so at most SCHEMA_SLOTS threads ever convert at once.
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                let (grammar, spent) = measure_cpu(|| convert(&owned));
                // Charged also when it ends after the time limit refused it.
                budget.charge_host_cpu(spent);
                grammar
            })
            .await
            .map_err(|e| JobError::Failed(format!("json-schema conversion task: {e}")))
        })
        .await;
        let grammar = match converted {
            Err(_) => {
                return Err(JobError::Invalid(format!(
                    "json-schema: converting it to a grammar took longer than {}s, the limit; \
                     simplify the schema",
                    SCHEMA_TIME.as_secs()
                )));
            }
            Ok(result) => result?.map_err(|e| JobError::Invalid(format!("json-schema: {e}")))?,
        };
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
        let mut approval = ApprovalTimer::new(self.budget.clone());
        let ended = wait_for(
            &mut rx,
            watch.notifies(),
            deadline_in(timeout_ms),
            || match ws.state_of(&id) {
                Ok(Some(s)) if s.is_terminal() => Some(Ok(s)),
                Ok(Some(s)) => {
                    approval.set(s == State::Held);
                    None
                }
                Ok(None) => Some(Err(not_found(&id))),
                Err(e) => Some(Err(queue_failure(e))),
            },
        )
        .await;
        drop(approval);
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
        let mut approval = ApprovalTimer::new(self.budget.clone());
        let found = wait_for(&mut rx, notifies, deadline_in(timeout_ms), || {
            let states: Vec<_> = jobs
                .iter()
                .map(|(wsi, id)| self.workspaces[*wsi].state_of(id).ok().flatten())
                .collect();
            approval.set(states.iter().all(|s| *s == Some(State::Held)));
            states
                .iter()
                .position(|s| s.is_some_and(|s| s.is_terminal()))
        })
        .await;
        drop(approval);
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
        // Looking every id up and building every result is host work for the run, done
        // on its thread: measured and charged to its CPU budget.
        let ((), spent) = measure_cpu(|| {
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
        });
        self.budget.charge_host_cpu_in_call(spent);
        let jobs: Vec<(usize, JobId)> = pending.iter().map(|(_, w, id)| (*w, id.clone())).collect();
        let notifies = self.watch_all(&jobs);
        let mut rx = self.runtime.inner().watchers.subscribe();
        // Results are built here before the guest's memory limit can apply to them: hand
        // back no more text than half the memory the run may still grow by (the guest
        // needs room to hold them), the rest as `quota`.
        let mut room = self.budget.memory_left() / 2;
        let mut approval = ApprovalTimer::new(self.budget.clone());
        let _ = wait_for(&mut rx, notifies, deadline_in(timeout_ms), || {
            let (all_held, spent) =
                measure_cpu(|| self.collect_ended(&mut pending, &mut results, &mut room));
            // Each look is charged on its own: time waiting between looks is not CPU.
            self.budget.charge_host_cpu_in_call(spent);
            approval.set(all_held && !pending.is_empty());
            pending.is_empty().then_some(())
        })
        .await;
        drop(approval);
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(JobError::Timeout)))
            .collect()
    }

    /// One look of `wait-all`: the results of the `pending` jobs that have ended, each
    /// within the `room` left for result text (the rest `quota`).
    fn collect_ended(
        &self,
        pending: &mut Vec<(usize, usize, JobId)>,
        results: &mut [Option<Result<JobOutput, JobError>>],
        room: &mut u64,
    ) -> bool {
        let mut all_held = true;
        let mut left = *room;
        pending.retain(|(i, wsi, id)| {
            let done = match self.workspaces[*wsi].state_of(id) {
                Ok(Some(s)) if s.is_terminal() => {
                    self.mark_ended(id);
                    Some(match self.output(*wsi, id, s) {
                        Ok(out) if out.text.len() as u64 > left => Err(JobError::Quota(format!(
                            "result bytes: job {id}'s result is {} bytes; this wait \
                                     may return {left} more (half the memory the run may \
                                     still use, --memory); wait for fewer jobs at once",
                            out.text.len()
                        ))),
                        Ok(out) => {
                            left -= out.text.len() as u64;
                            Ok(out)
                        }
                        Err(e) => Err(e),
                    })
                }
                Ok(Some(s)) => {
                    all_held &= s == State::Held;
                    None
                }
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
        *room = left;
        all_held
    }
}

/// Parses a component-supplied id; the only way an id reaches a path.
pub(crate) fn parse_id(raw: &str) -> Result<JobId, JobError> {
    // The queue's error quotes the whole id: hand it no more than the message can show
    // (anything that long is no id either way).
    let (head, _) = prefix(raw, MAX_SHOWN_ID_ERROR);
    JobId::parse(head).map_err(|e| JobError::Invalid(cut(e.to_string(), MAX_SHOWN_ID_ERROR, "...")))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::grants::Grants;
    use crate::run::IN_FLIGHT_REFRESH;
    use crate::runtime::{RunContext, Runtime, RuntimeConfig};
    use nrvna_queue::Workspace;
    use nrvna_queue::{Claim, Outcome, RESULT_FILE};
    use std::path::Path;

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
        run.clone().submit(prompt, options, keys, None).await
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

    #[test]
    fn a_huge_invalid_id_costs_a_short_message() {
        let huge = format!("1_\n{}", "9".repeat(16 << 20));
        let Err(JobError::Invalid(message)) = parse_id(&huge) else {
            panic!("accepted");
        };
        assert!(message.starts_with("invalid job id"), "{message}");
        assert!(message.len() <= MAX_SHOWN_ID_ERROR + 3, "{}", message.len());
        assert!(parse_id("12_34").is_ok());
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
                ..Outcome::default()
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
                ws.read_meta(State::Failed, &id)
                    .unwrap()
                    .status
                    .map(nrvna_queue::JobStatus::as_str),
                Some("cancelled")
            );
        }
        assert_eq!(run.finish(), 0);
        assert_eq!(run.budget.jobs_submitted(), 3);
    }
}
