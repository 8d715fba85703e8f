//! `nrvna bench`: one markdown table of what nrvna does on this machine.
//!
//! - raw ceiling: N sequences decoded together in a tight loop through llama.cpp;
//! - the daemon end to end at the same N: 64 jobs × 64 tokens submitted with `wrk`;
//! - efficiency = end to end ÷ raw ceiling;
//! - pickup latency of an idle daemon; the queue alone (no model);
//! - the sandbox hardening's checks next to the work they guard (`--only sandbox`).
//!
//! Numbers, not assertions: docs/benchmarks.md keeps the results. The agent runtime's
//! costs need the test fixtures, so their bench is in the test crate
//! (`cargo run --release -p nrvna-tests --example bench-sandbox`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nrvna_engine::EngineConfig;
use nrvna_engine::bench::raw_decode;
use nrvna_queue::{Claim, Outcome, State, Submission, Workspace};

use crate::cli::{DEFAULT_MODEL_FILE, resolve_model};

mod http;
mod load;
mod prefix;

pub(super) const PROMPT: &str = "Write a long story about a dragon who learns to bake bread.";
/// Per-job context for the benchmark: the prompt plus 64 tokens fit with room to spare.
const BENCH_CTX: u32 = 512;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Model to measure [default: the default model]
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// Sequence counts (workers) to measure, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    slots: Vec<usize>,
    /// Jobs per daemon run
    #[arg(long, default_value_t = 64)]
    jobs: usize,
    /// Tokens generated per job
    #[arg(long, default_value_t = 64)]
    tokens: u32,
    /// Runs of the raw loop and of the daemon per N, taken in turn; the table keeps each
    /// one's fastest run, so a noisy moment on a shared machine skews neither side
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    repeat: u32,
    /// Jobs for the queue-alone measurement
    #[arg(long, default_value_t = 10_000)]
    queue_jobs: usize,
    /// Threads submitting and completing at once in the queue-alone measurement
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    queue_threads: Vec<usize>,
    /// Directory for the queue-alone workspaces [default: the system temp dir]
    #[arg(long, value_name = "DIR")]
    queue_dir: Option<PathBuf>,
    /// Sequential requests per measure of the http section
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    http_rounds: u32,
    /// Concurrent streaming clients (and `wrk` jobs) of the http section, on 8 workers
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    http_clients: u32,
    /// Sections to run: engine, pickup, queue, prefix (prompt-prefix reuse on and off),
    /// load (throughput with and without two `nice -n 19` busy loops beside it),
    /// sandbox (the hardening checks' costs), http (the HTTP API's overhead, first token
    /// and streaming throughput)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "engine,pickup,queue",
        value_parser = ["engine", "pickup", "queue", "prefix", "load", "sandbox", "http"]
    )]
    only: Vec<String>,
    /// Components (.wasm) whose compile-cost check and compile in a child process the
    /// sandbox section measures: a file
    /// or a directory of them (e.g. the patterns the tests build, in
    /// $CARGO_TARGET_DIR/wasm-guests/wasm32-wasip2/release)
    #[arg(long, value_name = "PATH")]
    components: Option<PathBuf>,
    /// Rounds of each side of a sandbox-section pair, taken in turn
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    sandbox_rounds: u32,
}

pub fn run(args: BenchArgs) -> Result<String> {
    let model = resolve_model(args.model.as_deref().unwrap_or(DEFAULT_MODEL_FILE))?;
    let mut out = String::new();
    out.push_str(&format!(
        "machine: {}, {} cores; model: {}\n\n",
        cpu_model(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let wants = |s: &str| args.only.iter().any(|o| o == s);
    if wants("engine") {
        out.push_str(&engine_table(&model, &args)?);
    }
    if wants("pickup") {
        out.push_str(&idle_pickup(&model)?);
    }
    if wants("prefix") {
        out.push_str(&prefix::section(&model, args.repeat)?);
    }
    if wants("load") {
        out.push_str(&load::section(&model, args.repeat)?);
    }
    if wants("http") {
        out.push_str(&http::section(
            &model,
            args.http_rounds as usize,
            args.http_clients as usize,
        )?);
    }
    if wants("queue") {
        out.push_str(&queue_alone(
            args.queue_jobs,
            &args.queue_threads,
            args.queue_dir.as_deref(),
        )?);
    }
    if wants("sandbox") {
        out.push_str(&sandbox_costs(
            args.components.as_deref(),
            args.sandbox_rounds,
        )?);
    }
    Ok(out)
}

/// What the sandbox hardening's checks cost friendly components next to the work they
/// guard: the compile-cost check against compiling, the kv byte budget against a plain
/// `kv.set`, the JSON Schema complexity check against converting a friendly schema.
fn sandbox_costs(components: Option<&Path>, rounds: u32) -> Result<String> {
    use nrvna_sandbox::bench;
    let mut out = format!(
        "sandbox hardening (fastest of {rounds} rounds each, taken in turn):\n\n\
         | check | guards | check | guarded work | check ÷ work |\n\
         |---|---|---:|---:|---:|\n"
    );
    let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
    // `first` is the check, `second` the work it guards.
    let mut row = |check: &str, guards: &str, pair: bench::Pair| {
        out.push_str(&format!(
            "| {check} | {guards} | {} | {} | {:.4} |\n",
            ms(pair.first),
            ms(pair.second),
            1.0 / pair.ratio()
        ));
    };
    for path in wasm_files(components)? {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let pair = bench::compile_check(&bytes, rounds.min(5))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        row(
            "compile cost (functions, locals, body size)",
            &format!("compiling {name} ({} KiB)", bytes.len() >> 10),
            pair,
        );
        // Measured as an in-process compile and one in a compile child: the check
        // (a compile that can be stopped) is the difference.
        if let Some(pair) = bench::compile_in_child_process(&bytes, rounds.min(5)) {
            let pair = pair.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            row(
                "compile in a child process, killed at --max-compile-time",
                &format!("compiling {name} in the process"),
                bench::Pair {
                    first: pair.second.saturating_sub(pair.first),
                    second: pair.first,
                },
            );
        }
    }
    let schema = r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"}},"address":{"type":"object","properties":{"city":{"type":"string"},"zip":{"type":"string"}},"required":["city"]}},"required":["name","age"]}"#;
    let value: serde_json::Value = serde_json::from_str(schema)?;
    let pair = bench::interleaved(
        rounds,
        || nrvna_engine::check_schema(&value),
        || {
            nrvna_engine::schema_to_grammar(schema)
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .map_err(anyhow::Error::msg)?;
    row(
        "JSON Schema complexity",
        "converting a 7-property schema",
        pair,
    );
    let dir = tempfile::tempdir()?;
    let pair = bench::host_cpu_charge(dir.path(), rounds).map_err(anyhow::Error::msg)?;
    row(
        "host CPU charged to --cpu (thread CPU clock)",
        "kv.get of 1 KiB",
        bench::Pair {
            first: pair.second.saturating_sub(pair.first),
            second: pair.first,
        },
    );
    for keys in [10, 100, 1000] {
        let dir = tempfile::tempdir()?;
        let pair = bench::kv_set(dir.path(), keys, rounds).map_err(anyhow::Error::msg)?;
        // Measured as a plain set and a set with the budget's scan: the check is the
        // difference.
        row(
            &format!("kv byte budget ({keys} keys stored)"),
            "kv.set of 1 KiB (fsync)",
            bench::Pair {
                first: pair.second.saturating_sub(pair.first),
                second: pair.first,
            },
        );
    }
    out.push('\n');
    Ok(out)
}

/// The `.wasm` files `path` names: itself, or those in the directory.
fn wasm_files(path: Option<&Path>) -> Result<Vec<PathBuf>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("--components {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    files.sort();
    Ok(files)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn engine_table(model: &Path, args: &BenchArgs) -> Result<String> {
    let mut out = String::from(
        "| N | raw tok/s | daemon tok/s | efficiency | makespan s | jobs/s | pickup p50 ms | pickup p95 ms | job latency p50 s | peak RSS MB |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut single = None;
    for &n in &args.slots {
        let mut config = EngineConfig::new(model);
        config.ctx_per_slot = BENCH_CTX;
        let waves = args.jobs.div_ceil(n);
        // In turn (raw, daemon, raw, ...), so both sides sample the same stretch of time.
        let mut raw_tps = 0f64;
        let mut e2e: Option<DaemonRun> = None;
        for _ in 0..args.repeat {
            let raw = raw_decode(&config, n, waves, PROMPT, args.tokens)?;
            raw_tps = raw_tps.max(raw.tokens_per_second());
            let run = daemon_run(model, n, args.jobs, args.tokens)?;
            if e2e
                .as_ref()
                .is_none_or(|best| run.tokens_per_second > best.tokens_per_second)
            {
                e2e = Some(run);
            }
        }
        let Some(e2e) = e2e else {
            bail!("--repeat must be at least 1");
        };
        single.get_or_insert(raw_tps);
        out.push_str(&format!(
            "| {n} | {raw_tps:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} | {:.0} |\n",
            e2e.tokens_per_second,
            e2e.tokens_per_second / raw_tps,
            e2e.makespan,
            e2e.jobs as f64 / e2e.makespan,
            e2e.pickup_p50 * 1e3,
            e2e.pickup_p95 * 1e3,
            e2e.latency_p50,
            e2e.peak_rss_mb,
        ));
        eprintln!("bench: N={n} done");
    }
    out.push_str(&format!(
        "\nbest of {} runs each, raw and daemon in turn; raw: the same {} jobs as ⌈jobs/N⌉ \
         waves of N sequences, each wave prefilling the same chat-templated prompt and generating exactly {} tokens per sequence, all N in one batch \
         per step; daemon: {} jobs × {} max tokens submitted with `wrk` \
         to `nrvnad MODEL WS N` (NRVNA_CTX={BENCH_CTX}), tokens counted from meta.json; \
         pickup = submitted_at → started_at (includes waiting for a free slot).\n\n",
        args.repeat, args.jobs, args.tokens, args.jobs, args.tokens
    ));
    Ok(out)
}

struct DaemonRun {
    jobs: usize,
    makespan: f64,
    tokens_per_second: f64,
    pickup_p50: f64,
    pickup_p95: f64,
    latency_p50: f64,
    peak_rss_mb: f64,
}

/// A daemon process on a fresh workspace, stopped on drop.
pub(super) struct BenchDaemon {
    child: Child,
    _dir: tempfile::TempDir,
    pub(super) ws: PathBuf,
}

impl BenchDaemon {
    fn start(model: &Path, workers: usize, predict: u32) -> Result<BenchDaemon> {
        BenchDaemon::start_with_args(model, workers, predict, &[])
    }

    /// [`BenchDaemon::start`] with more `nrvnad` arguments.
    pub(super) fn start_with_args(
        model: &Path,
        workers: usize,
        predict: u32,
        args: &[&str],
    ) -> Result<BenchDaemon> {
        BenchDaemon::spawn(
            model,
            workers,
            &[
                ("NRVNA_CTX", BENCH_CTX.to_string()),
                ("NRVNA_PREDICT", predict.to_string()),
            ],
            args,
        )
    }

    /// A daemon with `env` set (on top of the caller's environment, less its OpenMP wait
    /// policy: the daemon picks its own unless `env` names one).
    fn start_with(model: &Path, workers: usize, env: &[(&str, String)]) -> Result<BenchDaemon> {
        BenchDaemon::spawn(model, workers, env, &[])
    }

    fn spawn(
        model: &Path,
        workers: usize,
        env: &[(&str, String)],
        args: &[&str],
    ) -> Result<BenchDaemon> {
        let dir = tempfile::tempdir()?;
        let ws = dir.path().join("ws");
        let child = Command::new(sibling("nrvnad")?)
            .arg(model)
            .arg(&ws)
            .arg(workers.to_string())
            .args(args)
            .env_remove("OMP_WAIT_POLICY")
            .env_remove("GOMP_SPINCOUNT")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("NRVNA_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nrvnad")?;
        let mut d = BenchDaemon {
            child,
            _dir: dir,
            ws,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !d.ws.join(".nrvnad.ready").exists() {
            if let Some(status) = d.child.try_wait()? {
                bail!("nrvnad exited during start-up ({status})");
            }
            if Instant::now() > deadline {
                bail!("nrvnad did not become ready");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    pub(super) fn submit(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(sibling("wrk")?)
            .arg(&self.ws)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Waits for `n` ended jobs, woken by file-system events rather than polling, so
    /// the measuring process takes no CPU from the daemon it measures.
    pub(super) fn wait_all(&self, n: usize) -> Result<Workspace> {
        let ws = Workspace::open(&self.ws)?;
        nrvna_queue::watch::wait_until(&ws, None, |ws| {
            let c = ws.counts()?;
            Ok(c.done + c.failed >= n)
        })?;
        Ok(ws)
    }

    /// Peak resident memory (VmHWM) in MB.
    fn peak_rss_mb(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

/// One of our binaries, next to this one.
pub(super) fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!("{} not found next to {}", name, exe.display());
    }
    Ok(path)
}

fn daemon_run(model: &Path, workers: usize, jobs: usize, tokens: u32) -> Result<DaemonRun> {
    let d = BenchDaemon::start(model, workers, tokens)?;
    let max = tokens.to_string();
    for i in 0..jobs {
        d.submit(&[&format!("{PROMPT} (version {i})"), "--max-tokens", &max])?;
    }
    let ws = d.wait_all(jobs)?;
    let peak = d.peak_rss_mb();
    let mut first_submit = f64::MAX;
    let mut last_done = f64::MIN;
    let mut generated = 0u64;
    let mut pickups = Vec::new();
    let mut latencies = Vec::new();
    for id in ws.list(State::Done)? {
        let meta = ws.read_meta(State::Done, &id)?;
        let sub = seconds(&meta.submitted_at)?;
        let start = seconds(meta.started_at.as_deref().unwrap_or_default())?;
        let end = seconds(meta.completed_at.as_deref().unwrap_or_default())?;
        first_submit = first_submit.min(sub);
        last_done = last_done.max(end);
        generated += meta.generated_tokens.unwrap_or(0) as u64;
        pickups.push(start - sub);
        latencies.push(end - sub);
    }
    let failed = ws.counts()?.failed;
    if failed > 0 {
        bail!("{failed} benchmark jobs failed");
    }
    let makespan = last_done - first_submit;
    Ok(DaemonRun {
        jobs,
        makespan,
        tokens_per_second: generated as f64 / makespan,
        pickup_p50: percentile(&mut pickups, 0.5),
        pickup_p95: percentile(&mut pickups, 0.95),
        latency_p50: percentile(&mut latencies, 0.5),
        peak_rss_mb: peak,
    })
}

/// Pickup latency of an idle daemon: one job at a time, each waited for.
fn idle_pickup(model: &Path) -> Result<String> {
    let d = BenchDaemon::start(model, 1, 1)?;
    let ws = Workspace::open(&d.ws)?;
    let mut pickups = Vec::new();
    for i in 0..30 {
        let id = d.submit(&[&format!("Say {i}."), "--max-tokens", "1"])?;
        let id = nrvna_queue::JobId::parse(&id)?;
        let state = nrvna_queue::watch::wait_terminal(&ws, &id, Some(Duration::from_secs(60)))?;
        if state != Some(State::Done) {
            bail!("pickup job {id} ended {state:?}");
        }
        let meta = ws.read_meta(State::Done, &id)?;
        pickups.push(
            seconds(meta.started_at.as_deref().unwrap_or_default())? - seconds(&meta.submitted_at)?,
        );
        // An idle daemon: let it settle back into waiting.
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(format!(
        "idle daemon pickup (submitted_at → started_at, 30 jobs one at a time): p50 {:.2} ms, \
         p95 {:.2} ms, max {:.2} ms\n\n",
        percentile(&mut pickups.clone(), 0.5) * 1e3,
        percentile(&mut pickups.clone(), 0.95) * 1e3,
        pickups.iter().cloned().fold(0.0, f64::max) * 1e3,
    ))
}

/// The queue with no model: submit → claim → complete, fsyncs included, by one thread
/// and by several at once (as several `wrk`s and daemon workers would).
fn queue_alone(n: usize, threads: &[usize], dir: Option<&Path>) -> Result<String> {
    let base = dir.map(Path::to_owned).unwrap_or_else(std::env::temp_dir);
    let mut out = format!(
        "queue alone ({n} jobs, no model, workspace under {}, fsync {}):\n\n\
         | threads | jobs/s (submit → claim → complete) | submit/s | claim+complete/s |\n\
         |---:|---:|---:|---:|\n",
        base.display(),
        if nrvna_queue::fsync_enabled() {
            "on"
        } else {
            "off (NRVNA_FSYNC=0)"
        }
    );
    // Workspaces are removed only after every row: deleting one row's jobs right before
    // the next row would slow its inode allocation (ext4 without a journal skips inodes
    // freed in the last seconds) and charge the cleanup to the queue.
    let mut dirs = Vec::new();
    for &t in threads {
        let dir = tempfile::tempdir_in(&base)?;
        let ws = Workspace::create(dir.path().join("ws"))?;
        dirs.push(dir);
        let per = n / t.max(1);
        let started = Instant::now();
        let ids: Vec<Vec<nrvna_queue::JobId>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..t)
                .map(|k| {
                    let ws = ws.clone();
                    s.spawn(move || -> Result<Vec<nrvna_queue::JobId>> {
                        (0..per)
                            .map(|i| {
                                Ok(ws.submit(Submission {
                                    prompt: format!("job {k}/{i}"),
                                    ..Submission::default()
                                })?)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("submit thread panicked"))?
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let submitted = started.elapsed().as_secs_f64();
        std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .map(|chunk| {
                    let ws = ws.clone();
                    s.spawn(move || -> Result<()> {
                        for id in chunk {
                            match ws.claim(id)? {
                                Claim::Claimed(job) => ws.complete(
                                    &job,
                                    Outcome {
                                        artifacts: vec![("result.txt".into(), b"ok".to_vec())],
                                        ..Outcome::default()
                                    },
                                )?,
                                other => bail!("claim {id}: {other:?}"),
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("worker thread panicked"))?
            })
        })?;
        let total = started.elapsed().as_secs_f64();
        let jobs = (per * t) as f64;
        out.push_str(&format!(
            "| {t} | {:.0} | {:.0} | {:.0} |\n",
            jobs / total,
            jobs / submitted,
            jobs / (total - submitted)
        ));
    }
    out.push('\n');
    Ok(out)
}

pub(super) fn seconds(ts: &str) -> Result<f64> {
    let t = chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%S%.fZ")
        .with_context(|| format!("bad timestamp {ts:?}"))?;
    Ok(t.and_utc().timestamp_micros() as f64 / 1e6)
}

pub(super) fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let idx = ((values.len() - 1) as f64 * q).round() as usize;
    values[idx]
}
