//! `nrvna bench --only load`: the same batch (16 jobs × 32 tokens on 4 workers) on a
//! quiet machine and beside two `nice -n 19` busy loops that the bench starts and stops
//! itself, for today's default (a thread count that follows the load, threads spinning
//! briefly at barriers), the same count with threads that sleep at once (passive), and
//! every fixed `NRVNA_THREADS` from 1 to the core count with libgomp's default ~3 ms spin
//! (the core count is the old default; the others are what one could choose before); and
//! how long a `wrk` submit takes while the batch decodes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::{BENCH_CTX, BenchDaemon, PROMPT, percentile};
use crate::thread_wait::DEFAULT_WAIT;

const JOBS: usize = 16;
const TOKENS: u32 = 32;
const WORKERS: usize = 4;
const BUSY_LOOPS: usize = 2;

/// Busy loops at the lowest priority, stopped on drop. Each runs in a session of its own,
/// as a build started from another terminal does: with the kernel's autogroup scheduling
/// (the default on desktop Linux) niceness only ranks processes within one session, and
/// sessions share the CPU between them.
struct BusyLoops(Vec<Child>);

impl BusyLoops {
    fn start(n: usize) -> Result<BusyLoops> {
        let mut loops = BusyLoops(Vec::new());
        for _ in 0..n {
            // `setsid` and `nice` exec in place: the child's pid is the loop's.
            let child = Command::new("setsid")
                .args(["nice", "-n", "19", "sh", "-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start `setsid nice -n 19` busy loops (util-linux, coreutils)")?;
            loops.0.push(child);
        }
        Ok(loops)
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One batch: its wall time and each `wrk` submit's.
struct LoadRun {
    seconds: f64,
    /// Submits 2..: made while earlier jobs decode.
    submits_busy: Vec<f64>,
}

/// How the daemon runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    /// As shipped: a thread per core not busy elsewhere (`cpu_share`), a short spin
    /// (`thread_wait`).
    Default,
    /// The same count, threads sleeping at once (`OMP_WAIT_POLICY=passive`).
    Passive,
    /// `NRVNA_THREADS=n`, libgomp's default spin.
    Fixed(usize),
}

impl Variant {
    fn name(self) -> String {
        match self {
            Variant::Default => format!(
                "default (adaptive count, {}={})",
                DEFAULT_WAIT.0, DEFAULT_WAIT.1
            ),
            Variant::Passive => "adaptive count, passive wait".into(),
            Variant::Fixed(n) => format!("{n}, spinning"),
        }
    }

    /// Environment for its daemon.
    fn env(self) -> Vec<(&'static str, String)> {
        let spin = ("GOMP_SPINCOUNT", LIBGOMP_DEFAULT_SPIN.to_string());
        match self {
            Variant::Default => vec![(DEFAULT_WAIT.0, DEFAULT_WAIT.1.into())],
            Variant::Passive => vec![("OMP_WAIT_POLICY", "passive".into())],
            Variant::Fixed(n) => vec![spin, ("NRVNA_THREADS", n.to_string())],
        }
    }
}

/// libgomp's spin count when no policy is set (about 3 ms).
const LIBGOMP_DEFAULT_SPIN: u64 = 300_000;

/// Submits the batch to a fresh daemon and waits for all of it.
fn batch(model: &Path, variant: Variant) -> Result<LoadRun> {
    let mut env = vec![
        ("NRVNA_CTX", BENCH_CTX.to_string()),
        ("NRVNA_PREDICT", TOKENS.to_string()),
    ];
    env.extend(variant.env());
    let d = BenchDaemon::start_with(model, WORKERS, &env)?;
    let max = TOKENS.to_string();
    let started = Instant::now();
    let mut submits = Vec::new();
    for i in 0..JOBS {
        let t = Instant::now();
        d.submit(&[&format!("{PROMPT} (version {i})"), "--max-tokens", &max])?;
        submits.push(t.elapsed().as_secs_f64());
    }
    let ws = d.wait_all(JOBS)?;
    let seconds = started.elapsed().as_secs_f64();
    let failed = ws.counts()?.failed;
    if failed > 0 {
        bail!("{failed} load benchmark jobs failed");
    }
    submits.remove(0);
    Ok(LoadRun {
        seconds,
        submits_busy: submits,
    })
}

/// `wrk` submit time with the daemon idle: a one-token job at a time, each waited for.
fn idle_submits(model: &Path) -> Result<Vec<f64>> {
    let d = BenchDaemon::start(model, WORKERS, 1)?;
    let mut times = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        d.submit(&[&format!("Say {i}."), "--max-tokens", "1"])?;
        times.push(t.elapsed().as_secs_f64());
        d.wait_all(i + 1)?;
    }
    Ok(times)
}

pub(super) fn section(model: &Path, repeat: u32) -> Result<String> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let variants: Vec<Variant> = [Variant::Default, Variant::Passive]
        .into_iter()
        .chain((1..=cores).map(Variant::Fixed))
        .collect();
    let mut quiet = vec![f64::INFINITY; variants.len()];
    let mut loaded = vec![f64::INFINITY; variants.len()];
    let mut busy_submits = Vec::new();
    let idle = idle_submits(model)?;
    // Quiet and loaded in turn, every variant in each, so all sample the same stretch.
    for _ in 0..repeat {
        for (i, &variant) in variants.iter().enumerate() {
            let run = batch(model, variant)?;
            quiet[i] = quiet[i].min(run.seconds);
            if variant == Variant::Default {
                busy_submits.extend(run.submits_busy);
            }
        }
        let _load = BusyLoops::start(BUSY_LOOPS)?;
        for (i, &variant) in variants.iter().enumerate() {
            loaded[i] = loaded[i].min(batch(model, variant)?.seconds);
        }
        eprintln!("bench: load round done");
    }
    let mut out = format!(
        "CPU sharing: {JOBS} jobs × {TOKENS} tokens on {WORKERS} workers, quiet and beside \
         {BUSY_LOOPS} `nice -n 19` busy loops, each in a session of its own:\n\n\
         | threads | quiet s | loaded s | loaded ÷ quiet |\n|---|---:|---:|---:|\n"
    );
    for (i, &variant) in variants.iter().enumerate() {
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} |\n",
            variant.name(),
            quiet[i],
            loaded[i],
            loaded[i] / quiet[i]
        ));
    }
    // Fixed counts are the rows after the two adaptive ones; the last is every core.
    let best_loaded = (2..variants.len())
        .min_by(|&a, &b| loaded[a].total_cmp(&loaded[b]))
        .unwrap_or(1);
    out.push_str(&format!(
        "\nunder load, the default keeps **{:.2}×** the throughput of the best fixed count \
         (NRVNA_THREADS={}; goal ≥ 0.8×); quiet, the default takes **{:.2}×** the time of \
         the old default (NRVNA_THREADS={cores}, spinning; goal ≤ 1.05×).\n\
         `wrk` submit while the default batch decodes: p50 {:.1} ms, p95 {:.1} ms; with the \
         daemon idle: p50 {:.1} ms.\n\
         best of {repeat} runs each; quiet and loaded in turn; wall time from the first \
         submit to the last job done.\n\n",
        loaded[best_loaded] / loaded[0],
        variants[best_loaded].name(),
        quiet[0] / quiet[variants.len() - 1],
        percentile(&mut busy_submits.clone(), 0.5) * 1e3,
        percentile(&mut busy_submits, 0.95) * 1e3,
        percentile(&mut idle.clone(), 0.5) * 1e3,
    ));
    Ok(out)
}
