//! The daemon's logic against the scripted engine (`nrvna_engine::scripted`) in a
//! temporary workspace: stop and grace, drain, cancel, interrupt and the settle
//! fallbacks, in milliseconds. Inference itself is the e2e tests' business (real model).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nrvna_engine::scripted::{Script, ScriptedBackend};
use nrvna_engine::{CancelFlag, EngineError};
use nrvna_queue::lifecycle::DaemonLock;
use nrvna_queue::{CancelOutcome, Claim, ClaimedJob, JobId, Meta, State, Submission, Workspace};
use nrvna_queue::{ERROR_FILE, RESPONSE_FILE, RESULT_FILE};
use tempfile::TempDir;

use super::{Daemon, DaemonOptions, Ended, JobEnd, SignalCounter, run_job};

/// Longest any test waits for something it expects within milliseconds.
const PATIENCE: Duration = Duration::from_secs(20);

/// A daemon running on its own thread over a test workspace.
struct TestDaemon {
    signals: SignalCounter,
    thread: JoinHandle<anyhow::Result<Ended>>,
}

/// Starts a daemon on `ws` as `daemon::start` does once its engine is loaded (lock, then
/// serve): two workers, no drain, a 10 s grace, then whatever `adjust` changes. The one
/// place a change to the daemon's start-up touches these tests.
fn start_daemon(
    ws: &Workspace,
    engine: &Arc<ScriptedBackend>,
    adjust: impl FnOnce(&mut DaemonOptions),
) -> TestDaemon {
    let mut options = DaemonOptions {
        workers: 2,
        drain: false,
        grace: Duration::from_secs(10),
        agents: None,
        http: None,
        poll: None,
        shared: None,
    };
    adjust(&mut options);
    let lock = DaemonLock::acquire(ws.root()).unwrap();
    let signals = SignalCounter::manual();
    let thread = {
        let (ws, engine, signals) = (ws.clone(), engine.clone(), signals.clone());
        std::thread::spawn(move || Daemon::new(ws, lock, engine, options).serve(&signals))
    };
    TestDaemon { signals, thread }
}

impl TestDaemon {
    /// Asks it to stop (one SIGTERM) and waits for it to end.
    fn stop(self) -> Ended {
        self.signals.request_stop();
        self.ended()
    }

    /// Waits for it to end by itself (`--drain`).
    fn ended(self) -> Ended {
        let deadline = Instant::now() + PATIENCE;
        while !self.thread.is_finished() {
            assert!(Instant::now() < deadline, "the daemon did not end");
            std::thread::sleep(Duration::from_millis(2));
        }
        self.thread.join().unwrap().unwrap()
    }
}

fn workspace() -> (TempDir, Workspace) {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::create(dir.path().join("ws")).unwrap();
    (dir, ws)
}

fn submit(ws: &Workspace, prompt: &str) -> JobId {
    ws.submit(Submission {
        prompt: prompt.into(),
        ..Submission::default()
    })
    .unwrap()
}

fn wait_for(ws: &Workspace, id: &JobId, state: State) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = ws.state_of(id).unwrap();
        if now == Some(state) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} is {now:?}, not {state:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn meta(ws: &Workspace, id: &JobId) -> Meta {
    let state = ws.state_of(id).unwrap().unwrap();
    ws.read_meta(state, id).unwrap()
}

fn file(ws: &Workspace, id: &JobId, name: &str) -> String {
    let state = ws.state_of(id).unwrap().unwrap();
    String::from_utf8(ws.read_file(state, id, name).unwrap()).unwrap()
}

#[test]
fn on_stop_a_running_job_finishes_within_the_grace_period_and_queued_ones_stay() {
    let (_dir, ws) = workspace();
    let engine = Arc::new(
        ScriptedBackend::new().by_default(Script::text("finished in time").after_steps(300)),
    );
    let first = submit(&ws, "first");
    let second = submit(&ws, "second");
    let daemon = start_daemon(&ws, &engine, |o| o.workers = 1);
    wait_for(&ws, &first, State::Running);
    assert!(matches!(daemon.stop(), Ended::Clean));

    assert_eq!(ws.state_of(&first).unwrap(), Some(State::Done));
    assert_eq!(file(&ws, &first, RESULT_FILE), "finished in time");
    // Stopping takes no new job.
    assert_eq!(ws.state_of(&second).unwrap(), Some(State::Queued));
    assert_eq!(meta(&ws, &second).attempts, 0);
    assert_eq!(engine.runs_of("second"), 0);
}

#[test]
fn a_job_still_running_after_the_grace_period_is_requeued_with_its_attempt_uncounted() {
    let (_dir, ws) = workspace();
    let engine = Arc::new(ScriptedBackend::new().by_default(Script::until_cancelled("half")));
    let id = submit(&ws, "endless");
    let daemon = start_daemon(&ws, &engine, |o| o.grace = Duration::from_millis(50));
    wait_for(&ws, &id, State::Running);
    assert!(matches!(daemon.stop(), Ended::Clean));

    assert_eq!(ws.state_of(&id).unwrap(), Some(State::Queued));
    let meta = meta(&ws, &id);
    assert_eq!(meta.attempts, 0);
    assert_eq!(meta.started_at, None);
    assert_eq!(meta.status, None);
    // Nothing of the interrupted run is kept: the job starts afresh.
    assert!(ws.read_file(State::Queued, &id, RESPONSE_FILE).is_err());
    assert!(ws.read_file(State::Queued, &id, ERROR_FILE).is_err());
    assert_eq!(engine.runs_of("endless"), 1);
}

#[test]
fn drain_exits_once_the_queue_is_empty_and_reports_the_failures() {
    let (_dir, ws) = workspace();
    let engine = Arc::new(
        ScriptedBackend::new()
            .on(
                "bad",
                Script::failure(|| EngineError::Decode("boom".into())),
            )
            .on("full", Script::context_full("cut short")),
    );
    let good: Vec<JobId> = (0..3).map(|i| submit(&ws, &format!("job {i}"))).collect();
    let bad = submit(&ws, "bad");
    let full = submit(&ws, "full");
    let daemon = start_daemon(&ws, &engine, |o| o.drain = true);
    assert!(matches!(daemon.ended(), Ended::DrainedWithFailures(2)));

    for (i, id) in good.iter().enumerate() {
        assert_eq!(ws.state_of(id).unwrap(), Some(State::Done));
        assert_eq!(file(&ws, id, RESULT_FILE), format!("job {i}"));
    }
    assert_eq!(file(&ws, &bad, ERROR_FILE), "decode failed: boom");
    assert!(file(&ws, &full, ERROR_FILE).contains("context of 4096 tokens filled"));
    assert_eq!(file(&ws, &full, RESPONSE_FILE), "cut short");
    let counts = ws.counts().unwrap();
    assert_eq!((counts.queued, counts.running), (0, 0));
}

#[test]
fn drain_with_no_failures_ends_clean() {
    let (_dir, ws) = workspace();
    let engine = Arc::new(ScriptedBackend::new());
    let id = submit(&ws, "fine");
    let daemon = start_daemon(&ws, &engine, |o| o.drain = true);
    assert!(matches!(daemon.ended(), Ended::Clean));
    assert_eq!(ws.state_of(&id).unwrap(), Some(State::Done));
}

#[test]
fn a_cancel_request_stops_a_running_job_and_keeps_its_output() {
    let (_dir, ws) = workspace();
    let engine = Arc::new(ScriptedBackend::new().by_default(Script::until_cancelled("so far")));
    let id = submit(&ws, "long");
    // Drain: the daemon ends once the cancelled job is settled, and a cancel is no failure.
    let daemon = start_daemon(&ws, &engine, |o| o.drain = true);
    wait_for(&ws, &id, State::Running);
    assert_eq!(ws.cancel(&id).unwrap(), CancelOutcome::Requested);
    assert!(matches!(daemon.ended(), Ended::Clean));

    assert_eq!(ws.state_of(&id).unwrap(), Some(State::Failed));
    assert_eq!(
        meta(&ws, &id).status,
        Some(nrvna_queue::JobStatus::Cancelled)
    );
    assert_eq!(file(&ws, &id, ERROR_FILE), "cancelled");
    assert_eq!(file(&ws, &id, RESPONSE_FILE), "so far");
    assert!(ws.cancel_requests().is_empty());
}

/// Submits a job and claims it, as a worker does before it runs the job.
fn claimed(ws: &Workspace, prompt: &str) -> ClaimedJob {
    let id = submit(ws, prompt);
    match ws.claim(&id).unwrap() {
        Claim::Claimed(job) => *job,
        other => panic!("cannot claim {id}: {other:?}"),
    }
}

/// Runs a claimed job to its end on `engine`, as a worker does.
fn run_claimed(ws: &Workspace, engine: &ScriptedBackend, job: &ClaimedJob) -> JobEnd {
    let progress = nrvna_engine::TokenCount::new();
    run_job(
        ws,
        engine,
        job,
        CancelFlag::new(),
        progress,
        &AtomicBool::new(false),
        None,
    )
}

/// Puts a directory where the daemon writes file `name` of the job, so writing it fails.
fn block_file(job: &ClaimedJob, name: &str) {
    std::fs::create_dir(job.dir.join(name)).unwrap();
}

#[test]
fn a_result_that_cannot_be_written_fails_the_job() {
    let (_dir, ws) = workspace();
    let job = claimed(&ws, "p");
    block_file(&job, RESULT_FILE);
    let end = run_claimed(&ws, &ScriptedBackend::new(), &job);

    assert!(matches!(&end, JobEnd::Failed(r) if r.starts_with("cannot write the result")));
    assert_eq!(ws.state_of(&job.id).unwrap(), Some(State::Failed));
    assert!(file(&ws, &job.id, ERROR_FILE).starts_with("cannot write the result"));
}

#[test]
fn a_failure_that_cannot_be_recorded_with_its_output_is_recorded_without_it() {
    let (_dir, ws) = workspace();
    let job = claimed(&ws, "p");
    block_file(&job, RESPONSE_FILE);
    let engine = ScriptedBackend::new().by_default(Script::context_full("partial"));
    let end = run_claimed(&ws, &engine, &job);

    assert!(matches!(&end, JobEnd::Failed(r) if r.contains("and cannot record the failure")));
    assert_eq!(ws.state_of(&job.id).unwrap(), Some(State::Failed));
    let error = file(&ws, &job.id, ERROR_FILE);
    assert!(error.starts_with("generation truncated"), "{error}");
}

#[test]
fn a_job_that_can_be_neither_completed_nor_failed_is_requeued_with_its_attempt_counted() {
    let (_dir, ws) = workspace();
    let job = claimed(&ws, "p");
    block_file(&job, RESULT_FILE);
    block_file(&job, ERROR_FILE);
    let end = run_claimed(&ws, &ScriptedBackend::new(), &job);

    assert!(matches!(end, JobEnd::Requeued));
    assert_eq!(ws.state_of(&job.id).unwrap(), Some(State::Queued));
    // Counted, so the attempt ceiling still bounds a job that can never be settled.
    assert_eq!(meta(&ws, &job.id).attempts, 1);
}

#[test]
fn a_job_whose_directory_vanished_is_reported_lost() {
    let (_dir, ws) = workspace();
    let job = claimed(&ws, "p");
    std::fs::remove_dir_all(&job.dir).unwrap();
    let end = run_claimed(&ws, &ScriptedBackend::new(), &job);

    assert!(matches!(&end, JobEnd::Lost(r) if r.contains("requeue failed too")));
    assert_eq!(ws.state_of(&job.id).unwrap(), None);
}
