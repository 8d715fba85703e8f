//! One run's shared state: its workspaces and their watches, the jobs it submitted (so
//! its end can cancel those still queued or running), its budget and its log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nrvna_queue::{CancelOutcome, JobId, Workspace};

use crate::grants::Grants;
use crate::limits::RunBudget;
use crate::log::{LogLevel, RunLog};
use crate::runtime::{RunContext, Runtime};
use crate::watch::WsWatch;

/// How often the in-flight count is re-checked against the disk when at its limit.
pub(crate) const IN_FLIGHT_REFRESH: Duration = Duration::from_millis(100);

/// The jobs a run submitted: where each is, and which it has not seen end.
#[derive(Default)]
struct SubmittedJobs {
    /// Workspace index and id of each job not yet seen to end.
    open: Vec<(usize, JobId)>,
    /// Workspace index of every job the run submitted.
    located: HashMap<JobId, usize>,
    /// When `open` was last re-checked against the disk.
    refreshed: Option<Instant>,
}

/// One run's state, shared by each of its sandboxes (nested `agents.call` included).
pub(crate) struct RunShared {
    pub(crate) runtime: Runtime,
    pub(crate) grants: Grants,
    pub(crate) budget: Arc<RunBudget>,
    /// The run's own workspace (index 0), then its routes'.
    pub(crate) workspaces: Vec<Workspace>,
    /// Names of the granted routes; route `i` is workspace `i + 1`.
    pub(crate) route_names: Vec<String>,
    watches: Vec<OnceLock<Arc<WsWatch>>>,
    /// The agent job this run is, if it is one: the default parent of its jobs.
    pub(crate) parent_job: Option<JobId>,
    pub(crate) log: Arc<RunLog>,
    /// The top-level agent, for the host's own log lines.
    agent_name: String,
    keep_jobs: bool,
    submitted: Mutex<SubmittedJobs>,
    /// Serialises keyed submissions (`submit-options.key`).
    pub(crate) keyed: Mutex<()>,
    finished: AtomicBool,
    /// When the run started (its wall clock).
    pub(crate) started: Instant,
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
            submitted: Mutex::new(SubmittedJobs::default()),
            keyed: Mutex::new(()),
            finished: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// What a journal's header records of a run of `agent` (as `name`) with `args`:
    /// grants by name (environment values are left out: they may be secrets).
    pub(crate) fn header_fields<'a>(
        &'a self,
        agent: &'a crate::runtime::Agent,
        name: &'a str,
        args: &'a [String],
    ) -> crate::journal::HeaderFields<'a> {
        let g = &self.grants;
        crate::journal::HeaderFields {
            component_sha256: agent.digest(),
            agent: name,
            args,
            grants: serde_json::json!({
                "dirs": g.dirs.iter().map(|d| format!(
                    "{}:{}{}", d.host.display(), d.guest, if d.read_only { ":ro" } else { "" }
                )).collect::<Vec<_>>(),
                "env": g.env.iter().map(|v| v.key.clone()).collect::<Vec<_>>(),
                "routes": g.routes.iter().map(|(n, p)| format!("{n}={}", p.display())).collect::<Vec<_>>(),
                "agents": g.agents.iter().map(|(n, p)| format!("{n}={}", p.display())).collect::<Vec<_>>(),
                "approve_submits": g.approve_submits,
            }),
            limits: serde_json::Value::String(format!("{:?}", g.limits)),
        }
    }

    /// Ends the run: cancels the jobs it submitted that are still queued or running
    /// (unless told to keep them). Returns how many it cancelled. Runs once.
    pub(crate) fn finish(&self) -> usize {
        if self.finished.swap(true, Ordering::SeqCst) || self.keep_jobs {
            return 0;
        }
        let open = match self.submitted.lock() {
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

    /// The workspace's watch, set up on first use.
    pub(crate) fn watch(&self, wsi: usize) -> Arc<WsWatch> {
        self.watches[wsi]
            .get_or_init(|| self.runtime.inner().watchers.watch(&self.workspaces[wsi]))
            .clone()
    }

    /// The run saw `id` end: its end need not cancel it.
    pub(crate) fn mark_ended(&self, id: &JobId) {
        if let Ok(mut t) = self.submitted.lock() {
            t.open.retain(|(_, open)| open != id);
        }
    }

    /// Jobs of this run still queued or running; re-checked on disk (at most every
    /// [`IN_FLIGHT_REFRESH`]) when the count is at the limit.
    pub(crate) fn in_flight(&self) -> u64 {
        let Ok(mut t) = self.submitted.lock() else {
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

    /// A job this run now owns: tracked even if the guest's future is gone by now, so
    /// the run's end cancels it.
    pub(crate) fn track(&self, wsi: usize, id: &JobId) {
        if let Ok(mut t) = self.submitted.lock() {
            t.open.push((wsi, id.clone()));
            t.located.insert(id.clone(), wsi);
        }
        if self.finished.load(Ordering::SeqCst) && !self.keep_jobs {
            // The run ended while this submission was being written.
            let _ = self.workspaces[wsi].cancel(id);
        }
    }

    /// The workspace index of a job this run submitted.
    pub(crate) fn submitted_in(&self, id: &JobId) -> Option<usize> {
        self.submitted
            .lock()
            .ok()
            .and_then(|t| t.located.get(id).copied())
    }

    /// Watches every workspace the jobs are in; true if all of them notify.
    pub(crate) fn watch_all(&self, jobs: &[(usize, JobId)]) -> bool {
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
