//! `nrvnad`: owns a workspace, loads the model once, and works through the queue.
//!
//! [`config`] turns flags and variables into a [`DaemonConfig`]; [`start`] takes the
//! workspace and loads the model (the one start-up path of `nrvnad` and `nrvna exec
//! --model`); [`Daemon::serve`] runs the loop below.
//!
//! Threads: a watcher (file-system notifications on `input/ready/`, plus a periodic
//! sweep as a safety net) feeds [`Pending`]; N workers claim ids from it and block in the
//! engine, which batches all of them together; the main thread handles signals and
//! `--drain`.

mod agent;
pub mod config;
mod job;
mod pending;
pub mod scale;
mod start;
#[cfg(test)]
mod tests;

pub use agent::AgentHost;
pub use config::{AgentSettings, DaemonConfig};
pub use job::{JobEnd, run_job, settle};
pub use start::{Banner, Daemon, InProcessDaemon, agent_runtime, start};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nrvna_engine::{Backend, CancelFlag, TokenCount};
use nrvna_queue::lifecycle::{DaemonInfo, DaemonLock};
use nrvna_queue::watch::DirWatcher;
use nrvna_queue::{Claim, JobId, Mode, State, Workspace};

use pending::Pending;

/// How often the ready directory is swept even without notifications.
const SAFETY_SWEEP: Duration = Duration::from_secs(2);
/// Staging directories older than this were left by a `wrk` that died.
pub const STALE_STAGING: Duration = Duration::from_secs(3600);

/// How a started daemon serves (what [`start`] built from a [`DaemonConfig`]).
pub struct DaemonOptions {
    pub workers: usize,
    /// Work until the queue is empty, then exit.
    pub drain: bool,
    /// How long in-flight jobs may run on after SIGINT/SIGTERM before they are requeued.
    pub grace: Duration,
    /// Runs agent jobs; `None` fails them with a reason.
    pub agents: Option<AgentHost>,
    /// The HTTP API this daemon serves, and the metrics it reports to.
    pub http: Option<(nrvna_http::HttpServer, nrvna_http::Metrics)>,
    /// List `input/ready/` this often (with jitter) instead of watching it.
    pub poll: Option<Duration>,
    /// On a shared workspace: the duties every daemon sharing it takes its turn at.
    pub shared: Option<scale::SharedDuties>,
}

/// A job being worked on, so shutdown can interrupt it and `nrvna ps` can see it.
struct InFlight {
    cancel: CancelFlag,
    interrupted: Arc<AtomicBool>,
    /// Tokens the engine has generated for it so far.
    progress: TokenCount,
}

/// How often a running job's token count is written to `.progress/`.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

struct Shared {
    ws: Workspace,
    engine: Arc<dyn Backend>,
    pending: Pending,
    in_flight: Mutex<HashMap<JobId, InFlight>>,
    stopping: AtomicBool,
    failures: AtomicUsize,
    agents: Option<AgentHost>,
    metrics: Option<nrvna_http::Metrics>,
    /// The HTTP server's live view of jobs, told of each job's start, text and end.
    live: Option<nrvna_http::LiveJobs>,
}

/// How the daemon ended, for its exit code.
pub enum Ended {
    /// Stopped by a signal or drained with no failures.
    Clean,
    /// `--drain` finished but some jobs failed.
    DrainedWithFailures(usize),
}

/// Runs the daemon until a signal (or, with `--drain`, an empty queue). The caller holds
/// `lock` and has recovered the workspace ([`start`] does both).
fn run(
    mut opts: DaemonOptions,
    lock: DaemonLock,
    ws: Workspace,
    engine: Arc<dyn Backend>,
    signals: &SignalCounter,
) -> Result<Ended> {
    let info = engine.info().clone();
    lock.mark_ready(&DaemonInfo {
        pid: std::process::id(),
        model: info.path.clone(),
        workers: opts.workers,
        started_at: nrvna_queue::meta::now_timestamp(),
        version: env!("CARGO_PKG_VERSION").into(),
    })?;
    let shared = Arc::new(Shared {
        ws,
        engine,
        pending: Pending::default(),
        in_flight: Mutex::new(HashMap::new()),
        stopping: AtomicBool::new(false),
        failures: AtomicUsize::new(0),
        agents: opts.agents.take(),
        metrics: opts.http.as_ref().map(|(_, m)| m.clone()),
        live: opts.http.as_ref().map(|(server, _)| server.live()),
    });
    let http = opts.http.take().map(|(server, _)| server);

    let ready_dir = shared.ws.state_dir(State::Queued);
    let watching = match opts.poll {
        Some(every) => Watching::Poll(every),
        None => {
            Watching::Notify(DirWatcher::new(&[&ready_dir]).context("cannot watch input/ready")?)
        }
    };
    shared.pending.push_all(shared.ws.sweep_ready()?);
    let watch_thread = {
        let shared = shared.clone();
        let duties = opts.shared.take();
        std::thread::Builder::new()
            .name("nrvna-watch".into())
            .spawn(move || watch_loop(&shared, &watching, duties))?
    };
    let mut workers = Vec::new();
    for i in 0..opts.workers {
        let shared = shared.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("nrvna-worker-{i}"))
                .spawn(move || worker_loop(&shared))?,
        );
    }

    // Main thread: signals and drain.
    let mut stop_at: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let signals_seen = signals.count();
        if signals_seen > 0 && stop_at.is_none() {
            eprintln!(
                "nrvnad: stopping: no new jobs; waiting up to {:.0}s for {} running job(s)",
                opts.grace.as_secs_f64(),
                shared.in_flight.lock().map(|m| m.len()).unwrap_or(0)
            );
            shared.stopping.store(true, Ordering::SeqCst);
            shared.pending.close();
            stop_at = Some(Instant::now() + opts.grace);
            if let Some(server) = &http {
                server.draining();
            }
        }
        if let Some(deadline) = stop_at {
            let idle = shared
                .in_flight
                .lock()
                .map(|m| m.is_empty())
                .unwrap_or(true);
            if idle {
                break;
            }
            if signals_seen > 1 || Instant::now() >= deadline {
                interrupt_all(&shared);
            }
            continue;
        }
        if opts.drain && is_drained(&shared)? {
            shared.stopping.store(true, Ordering::SeqCst);
            shared.pending.close();
            break;
        }
    }
    for w in workers {
        let _ = w.join();
    }
    let _ = watch_thread.join();
    // Nothing runs any more: no job's progress is current (on a shared workspace, other
    // daemons' jobs still run: their entries stay).
    if shared.ws.claimer().is_none() {
        shared.ws.clear_progress(None);
    }
    drop(http);
    drop(lock);
    let failures = shared.failures.load(Ordering::SeqCst);
    if opts.drain && failures > 0 {
        Ok(Ended::DrainedWithFailures(failures))
    } else {
        Ok(Ended::Clean)
    }
}

fn is_drained(shared: &Shared) -> Result<bool> {
    let busy = shared
        .in_flight
        .lock()
        .map(|m| !m.is_empty())
        .unwrap_or(false);
    if busy || !shared.pending.is_empty() {
        return Ok(false);
    }
    Ok(shared.ws.list(State::Queued)?.is_empty() && shared.ws.list(State::Running)?.is_empty())
}

/// Acts on `nrvna cancel` requests (`.cancel/<id>`): a job this daemon runs is stopped
/// at the engine's next step; one that went back to the queue meanwhile (recovered after
/// a crash) is cancelled there; the request is dropped once the job has ended.
fn apply_cancel_requests(shared: &Shared) {
    for id in shared.ws.cancel_requests() {
        let running_here = shared
            .in_flight
            .lock()
            .map(|map| map.get(&id).map(|job| job.cancel.cancel()).is_some())
            .unwrap_or(false);
        let done = running_here
            || match shared.ws.state_of(&id) {
                Ok(Some(State::Queued)) => shared.ws.cancel_queued(&id).unwrap_or(false),
                // Being claimed right now: look again on the next round.
                Ok(Some(State::Running)) | Ok(Some(State::Writing)) => false,
                _ => true,
            };
        if done {
            shared.ws.clear_cancel_request(&id);
        }
    }
}

/// Cancels every in-flight job so its worker requeues it.
fn interrupt_all(shared: &Shared) {
    if let Ok(map) = shared.in_flight.lock() {
        for job in map.values() {
            if !job.interrupted.swap(true, Ordering::SeqCst) {
                job.cancel.cancel();
            }
        }
    }
}

/// Writes the token counts of running jobs that changed since they were last written,
/// and removes the entries of jobs that have ended. Only the watch thread touches
/// `.progress/`, so an entry is never written back after its job's end removed it.
fn publish_progress(shared: &Shared, written: &mut HashMap<JobId, u32>) {
    let counts: Vec<(JobId, u32)> = match shared.in_flight.lock() {
        Ok(map) => map
            .iter()
            .map(|(id, job)| (id.clone(), job.progress.get()))
            .collect(),
        Err(_) => return,
    };
    written.retain(|id, _| {
        let running = counts.iter().any(|(running, _)| running == id);
        if !running {
            shared.ws.clear_progress(Some(id));
        }
        running
    });
    for (id, tokens) in counts {
        if tokens > 0 && written.get(&id) != Some(&tokens) {
            // A display only: a failure here must not disturb the job.
            if shared.ws.set_progress(&id, tokens).is_ok() {
                written.insert(id, tokens);
            }
        }
    }
}

/// How the watch thread learns of new jobs.
enum Watching {
    Notify(DirWatcher),
    /// Lists the directory this often, give or take a quarter (a network file system).
    Poll(Duration),
}

fn watch_loop(shared: &Shared, watching: &Watching, mut duties: Option<scale::SharedDuties>) {
    let mut last_sweep = Instant::now();
    let mut last_progress = Instant::now();
    let mut progress_written = HashMap::new();
    let mut next_poll = Instant::now();
    while !shared.stopping.load(Ordering::SeqCst) {
        let (paths, polled) = match watching {
            Watching::Notify(watcher) => (watcher.wait(Duration::from_millis(250)), false),
            Watching::Poll(every) => {
                let nap = next_poll
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(250));
                std::thread::sleep(nap);
                let due = Instant::now() >= next_poll;
                if due {
                    next_poll = Instant::now() + scale::jittered(*every);
                }
                (Vec::new(), due)
            }
        };
        if let Some(duties) = &mut duties {
            duties.tick(&shared.ws);
        }
        let mut ids = Vec::new();
        let mut sweep = polled || last_sweep.elapsed() >= SAFETY_SWEEP;
        for path in &paths {
            match path.file_name().and_then(|n| n.to_str()).map(JobId::parse) {
                Some(Ok(id)) => ids.push(id),
                // Unknown change or a malformed entry: let the sweep deal with it.
                _ => sweep = true,
            }
        }
        shared.pending.push_all(ids);
        apply_cancel_requests(shared);
        if last_progress.elapsed() >= PROGRESS_EVERY {
            publish_progress(shared, &mut progress_written);
            last_progress = Instant::now();
        }
        if sweep {
            match shared.ws.sweep_ready() {
                Ok(ids) => shared.pending.push_all(ids),
                Err(e) => tracing::warn!("cannot sweep input/ready: {e}"),
            }
            last_sweep = Instant::now();
        }
    }
}

fn worker_loop(shared: &Arc<Shared>) {
    while !shared.stopping.load(Ordering::SeqCst) {
        let Some(id) = shared.pending.take(Duration::from_millis(250)) else {
            continue;
        };
        // Register before claiming so a shutdown can never miss a job in flight.
        let cancel = CancelFlag::new();
        let interrupted = Arc::new(AtomicBool::new(false));
        let progress = TokenCount::new();
        if let Ok(mut map) = shared.in_flight.lock() {
            map.insert(
                id.clone(),
                InFlight {
                    cancel: cancel.clone(),
                    interrupted: interrupted.clone(),
                    progress: progress.clone(),
                },
            );
        }
        if shared.stopping.load(Ordering::SeqCst) {
            unregister(shared, &id);
            break;
        }
        // Held until the job is settled: a reader that comes later finds it here.
        let live = shared.live.as_ref().map(|l| l.job(&id));
        match shared.ws.claim(&id) {
            Ok(Claim::Claimed(job)) => {
                if let Some(live) = &live {
                    live.begin();
                }
                job_line(&id, "running", None, "");
                if let Some(metrics) = &shared.metrics {
                    metrics.job_started(queue_wait(&id));
                }
                if job.meta.mode == Mode::Agent
                    && let Some(host) = &shared.agents
                {
                    // Agents wait on the jobs they submit: run them off the workers.
                    let done_shared = shared.clone();
                    let done_id = id.clone();
                    agent::spawn_agent_job(
                        host,
                        shared.ws.clone(),
                        *job,
                        cancel,
                        interrupted,
                        move |end, took| {
                            if let Some(live) = live {
                                live.settle();
                            }
                            report_end(&done_shared, &done_id, &end, took);
                            unregister(&done_shared, &done_id);
                            done_shared.pending.settle(&done_id);
                        },
                    );
                    continue;
                }
                let started = Instant::now();
                let end = run_job(
                    &shared.ws,
                    shared.engine.as_ref(),
                    &job,
                    cancel,
                    progress,
                    &interrupted,
                    live.as_deref(),
                );
                // Waiting clients first: the job is settled; the log and metrics can wait.
                if let Some(live) = &live {
                    live.settle();
                }
                report_end(shared, &id, &end, started.elapsed());
            }
            Ok(Claim::Gone) => {}
            Ok(Claim::Rejected(reason)) => {
                shared.failures.fetch_add(1, Ordering::SeqCst);
                job_line(&id, "failed", None, &reason);
            }
            Err(e) => {
                tracing::warn!("cannot claim {id}: {e}");
                // The job stays queued (the periodic sweep offers it again); don't spin
                // on it while the cause (typically a full disk) lasts.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        if let Some(live) = live {
            live.settle();
        }
        unregister(shared, &id);
        shared.pending.settle(&id);
    }
}

/// How long a job waited between its submission (its id says when) and now.
fn queue_wait(id: &JobId) -> Option<Duration> {
    let submitted = Duration::from_micros(u64::try_from(id.submitted_micros()?).ok()?);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    now.checked_sub(submitted)
}

/// Tells the metrics how a job ended, with its tokens from its meta.json.
fn count_end(shared: &Shared, id: &JobId, end: &JobEnd, took: Duration) {
    let Some(metrics) = &shared.metrics else {
        return;
    };
    let (how, state) = match end {
        JobEnd::Done => ("done", Some(State::Done)),
        JobEnd::Failed(_) => ("failed", Some(State::Failed)),
        JobEnd::Cancelled => ("cancelled", Some(State::Failed)),
        JobEnd::Requeued => ("requeued", None),
        JobEnd::Lost(_) => ("lost", None),
    };
    let meta = state.and_then(|s| shared.ws.read_meta(s, id).ok());
    let tokens = meta.map_or_else(nrvna_http::JobTokens::default, |m| nrvna_http::JobTokens {
        prompt: m.prompt_tokens.unwrap_or(0),
        cached: m.cached_tokens.unwrap_or(0),
        generated: m.generated_tokens.unwrap_or(0),
    });
    metrics.job_ended(how, took, tokens);
}

fn report_end(shared: &Shared, id: &JobId, end: &JobEnd, took: Duration) {
    count_end(shared, id, end, took);
    let secs = Some(took.as_secs_f64());
    match end {
        JobEnd::Done => {
            // A text job's rate is in its meta.json now; other jobs have none.
            let rate = shared
                .ws
                .read_meta(State::Done, id)
                .ok()
                .and_then(|meta| meta.tokens_per_s)
                .map(|rate| format!("{rate:.1} tok/s"))
                .unwrap_or_default();
            job_line(id, "done", secs, &rate)
        }
        JobEnd::Failed(reason) => {
            shared.failures.fetch_add(1, Ordering::SeqCst);
            job_line(id, "failed", secs, reason);
        }
        JobEnd::Cancelled => job_line(id, "cancelled", secs, ""),
        JobEnd::Requeued => job_line(id, "requeued", secs, ""),
        JobEnd::Lost(reason) => {
            shared.failures.fetch_add(1, Ordering::SeqCst);
            job_line(id, "lost", secs, reason);
        }
    }
}

fn unregister(shared: &Shared, id: &JobId) {
    if let Ok(mut map) = shared.in_flight.lock() {
        map.remove(id);
    }
}

/// One line per job event on stderr, as the predecessor prints them. `detail` is a
/// reason (its first line, in brackets), or for `done` the job's tokens/s.
fn job_line(id: &JobId, what: &str, secs: Option<f64>, detail: &str) {
    let time = chrono::Local::now().format("%H:%M:%S");
    let secs = secs.map(|s| format!("  {s:5.1}s")).unwrap_or_default();
    let detail = match detail.lines().next() {
        None => String::new(),
        Some(rate) if what == "done" => format!("  {rate}"),
        Some(reason) => format!("  [{reason}]"),
    };
    eprintln!("    {time}  {id}  {what}{secs}{detail}");
}

/// Counts SIGINT/SIGTERM deliveries; SIGXFSZ is ignored so a file-size limit surfaces as
/// a write error (a failed job) instead of killing the daemon.
#[derive(Clone)]
pub struct SignalCounter {
    count: Arc<AtomicUsize>,
}

impl SignalCounter {
    pub fn install() -> Result<SignalCounter> {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGXFSZ};
        let count = Arc::new(AtomicUsize::new(0));
        for sig in [SIGINT, SIGTERM] {
            let count = count.clone();
            // SAFETY: the handler only touches an atomic, which is async-signal-safe.
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    count.fetch_add(1, Ordering::SeqCst);
                })
            }
            .context("cannot install signal handlers")?;
        }
        // SAFETY: an empty handler is async-signal-safe.
        unsafe { signal_hook::low_level::register(SIGXFSZ, || {}) }
            .context("cannot install SIGXFSZ handler")?;
        Ok(SignalCounter { count })
    }

    /// A counter no signal reaches: for an in-process daemon (`nrvna exec --model`) that
    /// its owner stops with [`SignalCounter::request_stop`].
    pub fn manual() -> SignalCounter {
        SignalCounter {
            count: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Acts like one SIGTERM.
    pub fn request_stop(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}
