//! Agent jobs: a job whose payload is a WebAssembly component (`wrk WS --agent X.wasm`).
//!
//! They run on the agent runtime's async executor, not on an inference worker: an agent
//! spends its life waiting for the jobs it submits, and those jobs need the workers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nrvna_engine::CancelFlag;
use nrvna_queue::{AGENT_FILE, ClaimedJob, Outcome, RESULT_FILE, Workspace};
use nrvna_sandbox::{Grants, JOURNAL_FILE, JournalSpec, LogSink, RunContext, Runtime};

use super::job::{JobEnd, settle};

/// What the daemon needs to run agent jobs.
pub struct AgentHost {
    pub runtime: Runtime,
    /// The grants every agent job of this daemon gets (nrvnad's grant flags).
    pub grants: Grants,
    /// `None` only once dropped.
    executor: Option<tokio::runtime::Runtime>,
    /// Agent jobs running at once; more wait (still counted as running).
    pub slots: Arc<tokio::sync::Semaphore>,
}

impl AgentHost {
    pub fn new(runtime: Runtime, grants: Grants, max_running: usize) -> std::io::Result<AgentHost> {
        let executor = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nrvna-agent")
            .enable_all()
            .build()?;
        Ok(AgentHost {
            runtime,
            grants,
            executor: Some(executor),
            slots: Arc::new(tokio::sync::Semaphore::new(max_running.max(1))),
        })
    }
}

impl Drop for AgentHost {
    fn drop(&mut self) {
        // A host thread blocked for a guest (an open() of a FIFO waits for a writer
        // forever) must not keep the daemon from stopping.
        if let Some(executor) = self.executor.take() {
            executor.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Runs one claimed agent job to its end; `done` is called with the outcome.
pub fn spawn_agent_job(
    host: &AgentHost,
    ws: Workspace,
    job: ClaimedJob,
    cancel: CancelFlag,
    interrupted: Arc<AtomicBool>,
    done: impl FnOnce(JobEnd, Duration) + Send + 'static,
) {
    let runtime = host.runtime.clone();
    let grants = host.grants.clone();
    let slots = host.slots.clone();
    let Some(executor) = &host.executor else {
        return;
    };
    executor.spawn(async move {
        let started = Instant::now();
        let _permit = slots.acquire_owned().await;
        let end = run_agent_job(&runtime, grants, &ws, &job, &cancel, &interrupted).await;
        done(end, started.elapsed());
    });
}

async fn run_agent_job(
    runtime: &Runtime,
    mut grants: Grants,
    ws: &Workspace,
    job: &ClaimedJob,
    cancel: &CancelFlag,
    interrupted: &AtomicBool,
) -> JobEnd {
    let wasm: PathBuf = job.dir.join(AGENT_FILE);
    let args = job.meta.agent.args.clone().unwrap_or_default();
    // Compiling is host work: off the threads that drive every agent, and counted
    // against the run's wall clock.
    let wall = grants.limits.wall;
    let loading = {
        let runtime = runtime.clone();
        let limits = grants.limits.clone();
        tokio::task::spawn_blocking(move || runtime.load_within(&wasm, &limits))
    };
    let agent = match loading.await {
        Ok(Ok((agent, took))) => {
            grants.limits.wall = wall.saturating_sub(took);
            agent
        }
        Ok(Err(e)) => return settle(ws, job, Err((e.to_string(), Outcome::default()))),
        Err(e) => {
            let reason = format!("loading the component: {e}");
            return settle(ws, job, Err((reason, Outcome::default())));
        }
    };
    let name = job
        .meta
        .agent
        .name
        .as_deref()
        .filter(|n| nrvna_sandbox::check_name(n).is_ok())
        .unwrap_or(agent.name())
        .to_owned();
    let ctx = RunContext {
        workspace: ws.root().to_owned(),
        agent_name: name,
        parent_job: Some(job.id.clone()),
        grants,
        log: LogSink::Tracing,
        keep_jobs: false,
        // In the job's directory, so it travels with the job to output/ or failed/; a
        // job requeued after a crash finds it there and resumes by replaying it.
        journal: Some(JournalSpec {
            path: job.dir.join(JOURNAL_FILE),
            run_id: job.id.to_string(),
        }),
    };
    let run = runtime.run(&agent, args, ctx);
    let stop = async {
        while !cancel.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Dropping the run future stops the component and cancels its unfinished jobs.
    let result = tokio::select! {
        r = run => Some(r),
        () = stop => None,
    };
    let Some(result) = result else {
        if interrupted.load(Ordering::SeqCst) {
            return match ws.requeue_claimed(job, true) {
                Ok(()) => JobEnd::Requeued,
                Err(e) => JobEnd::Lost(e.to_string()),
            };
        }
        return match ws.cancel_claimed(job, Outcome::default()) {
            Ok(()) => JobEnd::Cancelled,
            Err(e) => JobEnd::Lost(e.to_string()),
        };
    };
    let settled = match result {
        Ok(outcome) => match outcome.output {
            Ok(text) => Ok(Outcome {
                artifacts: vec![(RESULT_FILE.into(), text.into_bytes())],
                ..Outcome::default()
            }),
            Err(text) => Err((
                format!("the agent returned an error: {text}"),
                Outcome::default(),
            )),
        },
        Err(e) => Err((e.to_string(), Outcome::default())),
    };
    settle(ws, job, settled)
}
