//! Benchmarks of the agent runtime, as a markdown table: what starting a component
//! costs (compile vs the on-disk cache), what a host call costs, and what running a
//! pattern as a component adds to the inference it drives. Numbers, not assertions.
//!
//! ```bash
//! cargo run --release -p nrvna-tests --example bench-sandbox
//! ```
//!
//! It lives with the tests because it runs their fixture components (built by
//! `tests/build.rs`); the model is the default one (`NRVNA_BENCH_MODEL` overrides).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nrvna::cli::{DEFAULT_MODEL_FILE, resolve_model};
use nrvna_queue::{JobId, Sampling, State, Submission, Workspace};
use nrvna_sandbox::{Agent, JournalSpec, LogSink, RunContext, Runtime};
use nrvna_tests::guest;

/// The components `tests/build.rs` builds. This bench runs two of them; that every one
/// is used is checked where they are tested (the e2e crate), hence the `allow` here.
#[allow(dead_code)]
mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

use components::{FX_FANOUT, FX_HOSTCALLS};

const PROMPTS: [&str; 4] = [
    "Name a colour.",
    "Name a fruit.",
    "Name an animal.",
    "Name a country.",
];

fn main() -> std::process::ExitCode {
    // Components compile in a child of this program, as under nrvna exec and nrvnad.
    if let Some(code) = nrvna_sandbox::serve_compile_child() {
        return code;
    }
    match run() {
        Ok(table) => {
            print!("agent runtime:\n\n{table}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-sandbox: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where a daemon of this process serves jobs, for [`nrvna_exec`].
struct Serve<'a> {
    workspace: &'a Path,
    model: &'a Path,
    workers: usize,
}

/// The bench's one contact with nrvna's start-up code: the agent runtime as `nrvna exec`
/// builds it, its compile cache in `cache_dir`; with `serve`, also the daemon `nrvna exec
/// --model` starts, on a thread of this process, serving until it is dropped.
fn nrvna_exec(
    cache_dir: Option<PathBuf>,
    serve: Option<Serve>,
) -> Result<(Runtime, Option<nrvna::daemon::InProcessDaemon>)> {
    let daemon = match serve {
        Some(s) => Some(nrvna::cmd::exec::in_process_daemon(
            s.workspace,
            &s.model.display().to_string(),
            Some(s.workers),
        )?),
        None => None,
    };
    Ok((nrvna::daemon::agent_runtime(cache_dir)?, daemon))
}

fn run() -> Result<String> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows: Vec<[String; 3]> = Vec::new();
    start_up(&tokio, &mut rows)?;
    host_calls(&tokio, &mut rows)?;
    journaling(&tokio, &mut rows)?;
    pattern_overhead(&tokio, &mut rows)?;

    let mut out = String::from("| measurement | value | how |\n|---|---:|---|\n");
    for [what, value, how] in rows {
        out.push_str(&format!("| {what} | {value} | {how} |\n"));
    }
    Ok(out)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ctx(ws: &Path) -> RunContext {
    let mut ctx = RunContext::new(ws, "bench");
    ctx.log = LogSink::Discard;
    ctx
}

/// Runs `agent` once; the wall time of `Runtime::run`.
fn time_run(
    tokio: &tokio::runtime::Runtime,
    rt: &Runtime,
    agent: &Agent,
    args: &[&str],
    ws: &Path,
) -> Result<Duration> {
    time_run_journaled(tokio, rt, agent, args, ws, None)
}

/// Runs `agent` once with its host calls journaled at `journal` (replayed if the file
/// exists); the wall time of `Runtime::run`.
fn time_run_journaled(
    tokio: &tokio::runtime::Runtime,
    rt: &Runtime,
    agent: &Agent,
    args: &[&str],
    ws: &Path,
    journal: Option<&Path>,
) -> Result<Duration> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut ctx = ctx(ws);
    // A run id of its own per journal: submit keys derive from it.
    ctx.journal = journal.map(|path| JournalSpec {
        path: path.to_owned(),
        run_id: path
            .file_stem()
            .map_or_else(|| "bench".into(), |s| s.to_string_lossy().into_owned()),
    });
    let started = Instant::now();
    let outcome = tokio.block_on(rt.run(agent, args, ctx))?;
    let elapsed = started.elapsed();
    if let Err(e) = outcome.output {
        bail!("{} failed: {e}", agent.name());
    }
    Ok(elapsed)
}

fn start_up(tokio: &tokio::runtime::Runtime, rows: &mut Vec<[String; 3]>) -> Result<()> {
    let wasm = guest(FX_HOSTCALLS);
    let size = std::fs::metadata(&wasm)?.len();
    let scratch = tempfile::tempdir()?;
    let ws = scratch.path().join("ws");
    let (mut cold, mut cached, mut memory, mut first_run) = (vec![], vec![], vec![], vec![]);
    for i in 0..5 {
        let cache = scratch.path().join(format!("cache-{i}"));
        // A fresh engine each time: what a new process pays.
        let (rt, _) = nrvna_exec(Some(cache.clone()), None)?;
        let t = Instant::now();
        rt.load(&wasm)?;
        cold.push(t.elapsed());
        let t = Instant::now();
        rt.load(&wasm)?;
        memory.push(t.elapsed());

        let (rt, _) = nrvna_exec(Some(cache), None)?;
        let t = Instant::now();
        let agent = rt.load(&wasm)?;
        cached.push(t.elapsed());
        first_run.push(t.elapsed() + time_run(tokio, &rt, &agent, &["log", "0"], &ws)?);
    }
    let (rt, _) = nrvna_exec(None, None)?;
    let agent = rt.load(&wasm)?;
    let mut runs = Vec::new();
    for _ in 0..50 {
        runs.push(time_run(tokio, &rt, &agent, &["log", "0"], &ws)?);
    }
    let name = format!("{}.wasm, {} KB", FX_HOSTCALLS.name, size / 1000);
    let measured = [
        (
            format!("cold start: compile ({name})"),
            cold,
            "fresh engine, `Runtime::load`, median of 5",
        ),
        (
            "cached start: load from the disk cache".into(),
            cached,
            "fresh engine, same cache dir, median of 5",
        ),
        (
            "cached start to result (load + instantiate + run)".into(),
            first_run,
            "fresh engine, cached, a `run` making no host call",
        ),
        (
            "load again in the same process".into(),
            memory,
            "in-memory `InstancePre`",
        ),
        (
            "one run (new store, instantiate, call `run`)".into(),
            runs,
            "median of 50",
        ),
    ];
    for (what, times, how) in measured {
        rows.push([what, ms(median(times)), how.into()]);
    }
    Ok(())
}

fn host_calls(tokio: &tokio::runtime::Runtime, rows: &mut Vec<[String; 3]>) -> Result<()> {
    let (rt, _) = nrvna_exec(None, None)?;
    let agent = rt.load(&guest(FX_HOSTCALLS))?;
    let scratch = tempfile::tempdir()?;
    let ws = scratch.path().join("ws");
    let base = median(
        (0..5)
            .map(|_| time_run(tokio, &rt, &agent, &["log", "0"], &ws))
            .collect::<Result<Vec<_>>>()?,
    );
    for (kind, n, what) in [
        ("log", 100_000u32, "`log.log` (discarding sink)"),
        ("routes", 100_000, "`jobs.routes`"),
        (
            "status",
            20_000,
            "`jobs.status` of an absent job (stats 5 state dirs twice)",
        ),
        (
            "kv-get",
            20_000,
            "`kv.get` of an absent key (blocking-pool hop + open)",
        ),
    ] {
        let count = n.to_string();
        let t = median(
            (0..3)
                .map(|_| time_run(tokio, &rt, &agent, &[kind, &count], &ws))
                .collect::<Result<Vec<_>>>()?,
        );
        let per_call = t.saturating_sub(base).as_secs_f64() / f64::from(n);
        rows.push([
            format!("host call: {what}"),
            format!("{:.2} µs", per_call * 1e6),
            format!("({n} calls − 0 calls) / {n}, median of 3"),
        ]);
    }
    Ok(())
}

/// What journaling adds to a host call (the same calls with and without a journal, as
/// `nrvna exec --ws` and agent jobs run), and how long replaying a journal of 1 000
/// calls takes (a resumed run answered from it, against the same run live unjournaled).
fn journaling(tokio: &tokio::runtime::Runtime, rows: &mut Vec<[String; 3]>) -> Result<()> {
    let (rt, _) = nrvna_exec(None, None)?;
    let agent = rt.load(&guest(FX_HOSTCALLS))?;
    let scratch = tempfile::tempdir()?;
    let ws = scratch.path().join("ws");
    let mut fresh = 0u32;
    let mut journal = || {
        fresh += 1;
        scratch.path().join(format!("journal-{fresh}.jsonl"))
    };
    for (kind, n, what) in [
        ("log", 20_000u32, "`log.log`"),
        ("status", 5_000, "`jobs.status` of an absent job"),
        ("kv-get", 5_000, "`kv.get` of an absent key"),
    ] {
        let count = n.to_string();
        let mut plain = Vec::new();
        let mut journaled = Vec::new();
        // Alternated, so neither always runs on the other's warm caches.
        for _ in 0..3 {
            plain.push(time_run(tokio, &rt, &agent, &[kind, &count], &ws)?);
            let path = journal();
            journaled.push(time_run_journaled(
                tokio,
                &rt,
                &agent,
                &[kind, &count],
                &ws,
                Some(&path),
            )?);
        }
        let (plain, journaled) = (median(plain), median(journaled));
        let added = journaled.saturating_sub(plain).as_secs_f64() / f64::from(n);
        rows.push([
            format!("journaling added to {what}"),
            format!("{:.2} µs", added * 1e6),
            format!(
                "({n} calls journaled − {n} calls not) / {n}, median of 3; journaled {:.2} µs \
                 per call in all",
                journaled.as_secs_f64() / f64::from(n) * 1e6
            ),
        ]);
    }
    // Replay: record a run of 1 000 `jobs.status` calls, then run it again on that
    // journal: every call is answered from it (read, hash chain checked, matched).
    let mut replays = Vec::new();
    for _ in 0..5 {
        let path = journal();
        time_run_journaled(tokio, &rt, &agent, &["status", "1000"], &ws, Some(&path))?;
        let base = time_run(tokio, &rt, &agent, &["status", "0"], &ws)?;
        let replay = time_run_journaled(tokio, &rt, &agent, &["status", "1000"], &ws, Some(&path))?;
        replays.push(replay.saturating_sub(base));
    }
    rows.push([
        "replay of a journal of 1 000 recorded calls".into(),
        ms(median(replays)),
        "resumed run of `status 1000` on its journal − a run making no call, median of 5".into(),
    ]);
    Ok(())
}

fn pattern_overhead(tokio: &tokio::runtime::Runtime, rows: &mut Vec<[String; 3]>) -> Result<()> {
    let model_arg =
        std::env::var("NRVNA_BENCH_MODEL").unwrap_or_else(|_| DEFAULT_MODEL_FILE.into());
    let Ok(model) = resolve_model(&model_arg) else {
        rows.push([
            "pattern overhead over inference".into(),
            "skipped".into(),
            format!("model {model_arg} not found (NRVNA_BENCH_MODEL)"),
        ]);
        return Ok(());
    };
    let scratch = tempfile::tempdir()?;
    let ws_path = scratch.path().join("ws");
    let serve = Serve {
        workspace: &ws_path,
        model: &model,
        workers: PROMPTS.len(),
    };
    let (rt, daemon) = nrvna_exec(None, Some(serve))?;
    let ws = Workspace::open(&ws_path)?;
    let agent = rt.load(&guest(FX_FANOUT))?;
    // Warm-up: the first decode pays for caches.
    direct(&ws)?;
    let (mut plain, mut pattern) = (Vec::new(), Vec::new());
    // Alternate which goes first, so neither always inherits the other's warm state.
    for round in 0..3 {
        for pattern_turn in [round % 2 == 1, round % 2 == 0] {
            if pattern_turn {
                let before = ws.list(State::Done)?;
                // Journaled, as `nrvna exec --ws` and agent jobs run.
                let journal = scratch.path().join(format!("fanout-{round}.jsonl"));
                let wall =
                    time_run_journaled(tokio, &rt, &agent, &PROMPTS, &ws_path, Some(&journal))?;
                let ids: Vec<JobId> = ws
                    .list(State::Done)?
                    .into_iter()
                    .filter(|id| !before.contains(id))
                    .collect();
                pattern.push(Timing::of(&ws, wall, &ids)?);
            } else {
                let t = Instant::now();
                let ids = direct(&ws)?;
                plain.push(Timing::of(&ws, t.elapsed(), &ids)?);
            }
        }
    }
    // Stops it as a SIGTERM stops nrvnad.
    drop(daemon);
    let model_name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (plain, pattern) = (Timing::median(plain), Timing::median(pattern));
    rows.push([
        "4 jobs submitted and awaited directly: wall / inference / rest".into(),
        format!(
            "{} / {} / {}",
            ms(plain.wall),
            ms(plain.inference),
            ms(plain.rest())
        ),
        format!(
            "{model_name}, in-process daemon, 4 workers, max 8 tokens; inference = first \
             claim to last completion (meta.json); median of 3"
        ),
    ]);
    rows.push([
        "the same 4 jobs by the fan-out component: wall / inference / rest".into(),
        format!(
            "{} / {} / {}",
            ms(pattern.wall),
            ms(pattern.inference),
            ms(pattern.rest())
        ),
        "`Runtime::run`, journaled: submit ×4, wait-any, wait-all; median of 3".into(),
    ]);
    let added = pattern.rest().as_secs_f64() - plain.rest().as_secs_f64();
    rows.push([
        "pattern overhead over the inference it drives".into(),
        format!(
            "{:+.2} ms ({:+.2}% of its inference)",
            added * 1e3,
            100.0 * added / pattern.inference.as_secs_f64().max(1e-9)
        ),
        "rest(component) − rest(direct): what running it as a component adds (negative: \
         the component's waits noticed the ends sooner)"
            .into(),
    ]);
    Ok(())
}

/// One round: its wall time and the part of it the daemon spent on the jobs.
struct Timing {
    wall: Duration,
    inference: Duration,
}

impl Timing {
    fn of(ws: &Workspace, wall: Duration, ids: &[JobId]) -> Result<Timing> {
        let (mut first, mut last) = (None, None);
        for id in ids {
            let meta = ws.read_meta(State::Done, id)?;
            let parse = |t: Option<&String>| {
                t.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .context("meta.json lacks started_at/completed_at")
            };
            let (s, c) = (
                parse(meta.started_at.as_ref())?,
                parse(meta.completed_at.as_ref())?,
            );
            first = Some(first.map_or(s, |f: chrono::DateTime<_>| f.min(s)));
            last = Some(last.map_or(c, |l: chrono::DateTime<_>| l.max(c)));
        }
        let (Some(first), Some(last)) = (first, last) else {
            bail!("no finished jobs to time");
        };
        let inference = (last - first).to_std().unwrap_or_default();
        Ok(Timing { wall, inference })
    }

    /// Wall time outside inference: submitting, queueing, noticing the end, the sandbox.
    fn rest(&self) -> Duration {
        self.wall.saturating_sub(self.inference)
    }

    /// The round with the median overhead.
    fn median(mut v: Vec<Timing>) -> Timing {
        v.sort_by_key(Timing::rest);
        let mid = v.len() / 2;
        v.swap_remove(mid)
    }
}

/// Submits the prompts straight into the workspace and waits for all of them.
fn direct(ws: &Workspace) -> Result<Vec<JobId>> {
    let mut ids = Vec::new();
    for prompt in PROMPTS {
        ids.push(ws.submit(Submission {
            prompt: prompt.into(),
            sampling: Sampling {
                max_tokens: Some(8),
                temperature: Some(0.0),
                ..Sampling::default()
            },
            ..Submission::default()
        })?);
    }
    for id in &ids {
        let state = nrvna_queue::watch::wait_terminal(ws, id, Some(Duration::from_secs(300)))?;
        if !state.is_some_and(|s| s.is_terminal()) {
            bail!("job {id} did not finish");
        }
    }
    Ok(ids)
}
