//! `nrvna bench --only prefix`: prompt-prefix reuse on and off, side by side.
//!
//! - (a) an agent loop: six rounds of the `loop` pattern's prompt (`Goal: … Previous
//!   work: MEMORY Continue. …`), each round's reply appended to a memory that starts
//!   from about 1 150 tokens of notes and grows past 1 500, one job at a time;
//! - (b) sixteen questions behind the same ~1 500-token preamble on four workers.
//!
//! Greedy decoding, so both variants compute the same texts; the figures are wall time
//! and prefill tokens computed (`prompt_tokens − cached_tokens` from meta.json) against
//! those submitted.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nrvna_queue::{JobId, State, Workspace};

use super::BenchDaemon;

const ROUNDS: usize = 6;
const ROUND_TOKENS: u32 = 96;
const QUESTIONS: usize = 16;
const QUESTION_WORKERS: usize = 4;
const ANSWER_TOKENS: u32 = 16;
/// Holds the longest prompt here (~1 700 tokens) and its reply.
const CTX: u32 = 2048;
const GOAL: &str = "Write a field guide to the birds of a small coastal town";

/// What one variant of one case measured.
#[derive(Debug, Clone, Copy, Default)]
struct PrefixRun {
    seconds: f64,
    submitted: u64,
    computed: u64,
    /// The longest prompt, in tokens.
    longest: u64,
}

pub(super) fn section(model: &Path, repeat: u32) -> Result<String> {
    let mut loops = [None::<PrefixRun>; 2];
    let mut shared = [None::<PrefixRun>; 2];
    // In turn (on, off, on, off…), so both variants sample the same stretch of time;
    // each keeps its fastest run.
    for _ in 0..repeat {
        for (i, reuse) in [true, false].into_iter().enumerate() {
            keep_fastest(&mut loops[i], agent_loop(model, reuse)?);
            eprintln!("bench: prefix (a) reuse {} done", on_off(reuse));
        }
        for (i, reuse) in [true, false].into_iter().enumerate() {
            keep_fastest(&mut shared[i], shared_preamble(model, reuse)?);
            eprintln!("bench: prefix (b) reuse {} done", on_off(reuse));
        }
    }
    let (Some(loop_on), Some(loop_off), Some(shared_on), Some(shared_off)) =
        (loops[0], loops[1], shared[0], shared[1])
    else {
        bail!("--repeat must be at least 1");
    };
    let mut out = String::from(
        "prefix reuse (NRVNA_PREFIX_CACHE on and off, greedy):\n\n\
         | case | reuse | wall s | prefill tokens computed | submitted | computed ÷ submitted |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    let looped = format!("(a) loop, {ROUNDS} rounds");
    let preamble = format!("(b) {QUESTIONS} jobs, shared preamble");
    for (case, run, reuse) in [
        (&looped, loop_on, true),
        (&looped, loop_off, false),
        (&preamble, shared_on, true),
        (&preamble, shared_off, false),
    ] {
        out.push_str(&format!(
            "| {case} | {} | {:.2} | {} | {} | {:.2} |\n",
            on_off(reuse),
            run.seconds,
            run.computed,
            run.submitted,
            run.computed as f64 / run.submitted.max(1) as f64,
        ));
    }
    out.push_str(&format!(
        "\n(a) end to end, reuse off ÷ on: **{:.2}×** (goal ≥ 2×); prefill computed off ÷ on: \
         {:.2}×; longest prompt {} tokens.\n\
         (b) prefill submitted ÷ computed with reuse: **{:.2}×** (goal ≥ 3×); wall time off ÷ \
         on: {:.2}×; longest prompt {} tokens.\n\
         best of {repeat} runs each, on and off in turn. (a): one worker, {ROUNDS} rounds of \
         the loop pattern's prompt, {ROUND_TOKENS} tokens each, memory = ~1 150 tokens of \
         notes + every earlier reply; (b): {QUESTIONS} jobs × {ANSWER_TOKENS} tokens on \
         {QUESTION_WORKERS} workers, submitted one by one with `wrk` to a running daemon; \
         NRVNA_CTX={CTX}.\n\n",
        loop_off.seconds / loop_on.seconds,
        loop_off.computed as f64 / loop_on.computed.max(1) as f64,
        loop_on.longest,
        shared_on.submitted as f64 / shared_on.computed.max(1) as f64,
        shared_off.seconds / shared_on.seconds,
        shared_on.longest,
    ));
    Ok(out)
}

fn keep_fastest(best: &mut Option<PrefixRun>, run: PrefixRun) {
    if best.is_none_or(|b| run.seconds < b.seconds) {
        *best = Some(run);
    }
}

fn on_off(reuse: bool) -> &'static str {
    if reuse { "on" } else { "off" }
}

fn daemon(model: &Path, workers: usize, reuse: bool, predict: u32) -> Result<BenchDaemon> {
    BenchDaemon::start_with(
        model,
        workers,
        &[
            ("NRVNA_CTX", CTX.to_string()),
            ("NRVNA_PREDICT", predict.to_string()),
            ("NRVNA_PREFIX_CACHE", u8::from(reuse).to_string()),
        ],
    )
}

/// Deterministic notes, about `lines × 32` tokens.
fn notes(lines: usize) -> String {
    const BIRDS: [&str; 8] = [
        "gull",
        "tern",
        "heron",
        "plover",
        "cormorant",
        "sandpiper",
        "curlew",
        "oystercatcher",
    ];
    const PLACES: [&str; 6] = [
        "the harbour wall",
        "the salt marsh",
        "the north dunes",
        "the fish market roof",
        "the estuary mud",
        "the old lighthouse",
    ];
    const HABITS: [&str; 5] = [
        "feeds at low tide",
        "nests in loose colonies",
        "calls loudly before rain",
        "follows the fishing boats home",
        "roosts in the same spot every evening",
    ];
    (0..lines)
        .map(|i| {
            format!(
                "Note {}: the {} seen near {} {} and was counted {} times in week {}.\n",
                i + 1,
                BIRDS[i % BIRDS.len()],
                PLACES[i % PLACES.len()],
                HABITS[i % HABITS.len()],
                (i * 7) % 23 + 2,
                i % 52 + 1,
            )
        })
        .collect()
}

/// One job's prompt and cached token counts, and its text, once it is done.
fn finished(ws: &Workspace, id: &str) -> Result<(u64, u64, String)> {
    let id = JobId::parse(id)?;
    let state = nrvna_queue::watch::wait_terminal(ws, &id, Some(Duration::from_secs(600)))?;
    if state != Some(State::Done) {
        bail!("prefix bench job {id} ended {state:?}");
    }
    let meta = ws.read_meta(State::Done, &id)?;
    let text = String::from_utf8_lossy(&ws.read_file(State::Done, &id, "result.txt")?).into();
    Ok((
        meta.prompt_tokens.unwrap_or(0).into(),
        meta.cached_tokens.unwrap_or(0).into(),
        text,
    ))
}

/// (a): the `loop` pattern's rounds, each waiting for the one before.
fn agent_loop(model: &Path, reuse: bool) -> Result<PrefixRun> {
    let d = daemon(model, 1, reuse, ROUND_TOKENS)?;
    let ws = Workspace::open(&d.ws)?;
    let mut memory = notes(36);
    let mut run = PrefixRun::default();
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let prompt = format!(
            "Goal: {GOAL}\nPrevious work: {memory}\nContinue. Write the next section. Say DONE \
             if complete."
        );
        let id = d.submit(&[&prompt, "--temp", "0"])?;
        let (prompt_tokens, cached, reply) = finished(&ws, &id)?;
        run.submitted += prompt_tokens;
        run.computed += prompt_tokens - cached.min(prompt_tokens);
        run.longest = run.longest.max(prompt_tokens);
        memory.push_str("\n---\n");
        memory.push_str(reply.trim());
    }
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}

/// (b): questions behind one preamble, submitted to a running daemon.
fn shared_preamble(model: &Path, reuse: bool) -> Result<PrefixRun> {
    let d = daemon(model, QUESTION_WORKERS, reuse, ANSWER_TOKENS)?;
    let ws = Workspace::open(&d.ws)?;
    let preamble = notes(47);
    let started = Instant::now();
    let ids = (0..QUESTIONS)
        .map(|i| {
            d.submit(&[
                &format!(
                    "{preamble}\nFrom these notes: how often was note {} counted, and where?",
                    i * 4 + 1
                ),
                "--temp",
                "0",
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    let mut run = PrefixRun::default();
    for id in &ids {
        let (prompt_tokens, cached, _) = finished(&ws, id)?;
        run.submitted += prompt_tokens;
        run.computed += prompt_tokens - cached.min(prompt_tokens);
        run.longest = run.longest.max(prompt_tokens);
    }
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}
