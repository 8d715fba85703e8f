//! `nrvna bench --only http`: what the HTTP API costs over the queue it sits on.
//!
//! - overhead: a non-streamed chat completion against the same job through `wrk` + `flw`,
//!   and against one submitted and awaited in-process, each measured as the client's
//!   wall time minus the job's own time in the workspace (`submitted_at →
//!   completed_at`); goal: ≤ 2 ms more than `wrk` + `flw` at p50 (the issue's), and
//!   HTTP's own (over the in-process path) ≤ 2 ms too;
//! - time to the first streamed token against a job's own first token (an in-process
//!   submission to its first byte in `partial.txt`); goal: within 10 ms;
//! - 32 streaming clients on 8 workers against 32 jobs submitted with `wrk` at once, on
//!   the same daemon: aggregate tokens per second; goal: ≥ 0.9× (`--http-rounds`,
//!   `--http-clients` size it).
//!
//! Each pair alternates which side goes first, and each row says whether its goal is met.
//!
//! The client is hyper's, on a tokio runtime of its own.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use nrvna_queue::{JobId, State, Workspace};

use super::{BenchDaemon, PROMPT, percentile, seconds, sibling};

/// What one request saw: its job and when the first content and the end arrived.
struct Answer {
    job: String,
    first_content: Option<Duration>,
    total: Duration,
}

async fn request(addr: SocketAddr, body: String) -> Result<Answer> {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::post("/v1/chat/completions")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(req).await?;
    if !response.status().is_success() {
        bail!("HTTP {}", response.status());
    }
    let job = response
        .headers()
        .get("x-nrvna-job-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut body = response.into_body();
    let mut out = Vec::new();
    let mut first_content = None;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            out.extend_from_slice(&data);
            // The first chunk holds only the role; the first content chunk comes after.
            if first_content.is_none() && has_content(&out) {
                first_content = Some(started.elapsed());
            }
        }
    }
    Ok(Answer {
        job,
        first_content,
        total: started.elapsed(),
    })
}

/// Whether an SSE body so far has a chunk with non-empty content (the first chunk's
/// content is empty: it carries the role).
fn has_content(body: &[u8]) -> bool {
    const KEY: &[u8] = b"\"content\":\"";
    body.windows(KEY.len() + 1)
        .any(|w| w.starts_with(KEY) && w[KEY.len()] != b'"')
}

fn chat_body(prompt: &str, max_tokens: u32, stream: bool) -> String {
    serde_json::json!({
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
    .to_string()
}

/// The job's own time in the workspace, from its meta.json.
fn job_seconds(ws: &Workspace, id: &str) -> Result<f64> {
    let id = JobId::parse(id)?;
    let meta = ws.read_meta(State::Done, &id)?;
    Ok(seconds(meta.completed_at.as_deref().unwrap_or_default())? - seconds(&meta.submitted_at)?)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Submits a greedy job in-process, as `wrk PROMPT --max-tokens N --temp 0` would.
fn submit_greedy(ws: &Workspace, prompt: &str, max_tokens: u32) -> Result<JobId> {
    Ok(ws.submit(nrvna_queue::Submission {
        prompt: prompt.to_owned(),
        sampling: nrvna_queue::Sampling {
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            ..Default::default()
        },
        ..Default::default()
    })?)
}

/// A job submitted in-process (what `wrk` does, without its process start); the time
/// from its submission to the first byte of its `partial.txt`, followed every 0.5 ms.
fn direct_first_token(ws: &Workspace, prompt: &str, max_tokens: u32) -> Result<Duration> {
    use nrvna_queue::stream::{Followed, TextFollower};
    let started = Instant::now();
    let id = submit_greedy(ws, prompt, max_tokens)?;
    let mut follower = TextFollower::new(ws, &id);
    loop {
        match follower.poll()? {
            Followed::Running { text } if !text.is_empty() => return Ok(started.elapsed()),
            Followed::Running { .. } => std::thread::sleep(Duration::from_micros(500)),
            Followed::Ended { streamed: true, .. } => return Ok(started.elapsed()),
            other => bail!("direct job {id} ended without streaming: {other:?}"),
        }
    }
}

/// A job submitted in-process and awaited through the workspace (what `wrk` + `flw` do,
/// without starting processes): the time from submission until it is in `output/`,
/// less its own submitted_at → completed_at.
fn direct_roundtrip(ws: &Workspace, prompt: &str, max_tokens: u32) -> Result<f64> {
    let started = Instant::now();
    let id = submit_greedy(ws, prompt, max_tokens)?;
    nrvna_queue::watch::wait_until(ws, None, |ws| {
        Ok(ws.state_of(&id)?.is_some_and(|s| s.is_terminal()))
    })?;
    let total = started.elapsed().as_secs_f64();
    Ok(total - job_seconds(ws, &id.to_string())?)
}

/// Generated tokens of `ids`, from their meta.json.
fn generated(ws: &Workspace, ids: &[String]) -> Result<u64> {
    let mut total = 0u64;
    for id in ids {
        let meta = ws.read_meta(State::Done, &JobId::parse(id)?)?;
        total += u64::from(meta.generated_tokens.unwrap_or(0));
    }
    Ok(total)
}

/// `clients` streaming chat completions at once; aggregate generated tok/s.
fn http_throughput(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    ws: &Workspace,
    clients: usize,
    round: usize,
) -> Result<f64> {
    let started = Instant::now();
    let answers = runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let prompt = format!("{PROMPT} (http {round}.{i})");
                tokio::spawn(request(addr, chat_body(&prompt, 64, true)))
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await??);
        }
        anyhow::Ok(answers)
    })?;
    let makespan = started.elapsed().as_secs_f64();
    let ids: Vec<String> = answers.into_iter().map(|a| a.job).collect();
    Ok(generated(ws, &ids)? as f64 / makespan)
}

/// `clients` jobs submitted by as many `wrk` processes at once, waited for through the
/// workspace; aggregate generated tok/s.
fn wrk_throughput(d: &BenchDaemon, ws: &Workspace, clients: usize, round: usize) -> Result<f64> {
    let before = ws.counts()?;
    let started = Instant::now();
    let children = (0..clients)
        .map(|i| {
            Command::new(sibling("wrk")?)
                .arg(&d.ws)
                .arg(format!("{PROMPT} (wrk {round}.{i})"))
                .args(["--max-tokens", "64", "--temp", "0"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .context("cannot start wrk")
        })
        .collect::<Result<Vec<_>>>()?;
    let mut ids = Vec::new();
    for child in children {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("wrk failed");
        }
        ids.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let target = before.done + before.failed + clients;
    nrvna_queue::watch::wait_until(ws, None, |ws| {
        let c = ws.counts()?;
        Ok(c.done + c.failed >= target)
    })?;
    let makespan = started.elapsed().as_secs_f64();
    Ok(generated(ws, &ids)? as f64 / makespan)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

pub(super) fn section(model: &Path, rounds: usize, clients: usize) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut out = String::from(
        "HTTP API (`nrvnad --http`) against the same jobs without it, measured side by side \
         (the two alternate, each going first in every other round):\n\n",
    );
    out.push_str(
        "| measure | HTTP | without | HTTP − without (or ÷) | goal |\n|---|---:|---:|---:|---|\n",
    );

    // Overhead and time to first token: one worker, one request at a time.
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let listen = addr.to_string();
    let d = BenchDaemon::start_with_args(model, 1, 8, &["--http", &listen])?;
    let ws = Workspace::open(&d.ws)?;
    let (mut http_over, mut cli_over, mut direct_over) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        // The three take turns going first.
        for k in 0..3 {
            let side = (i + k) % 3;
            if side == 0 {
                let prompt = format!("Say {}.", 3 * i);
                let a = runtime.block_on(request(addr, chat_body(&prompt, 8, false)))?;
                http_over.push(a.total.as_secs_f64() - job_seconds(&ws, &a.job)?);
            } else if side == 2 {
                let prompt = format!("Say {}.", 3 * i + 2);
                direct_over.push(direct_roundtrip(&ws, &prompt, 8)?);
            } else {
                let prompt = format!("Say {}.", 3 * i + 1);
                let started = Instant::now();
                let id = d.submit(&[&prompt, "--max-tokens", "8", "--temp", "0"])?;
                let flw = Command::new(sibling("flw")?)
                    .arg(&d.ws)
                    .arg(&id)
                    .stdout(Stdio::null())
                    .status()?;
                if !flw.success() {
                    bail!("flw {id} failed");
                }
                cli_over.push(started.elapsed().as_secs_f64() - job_seconds(&ws, &id)?);
            }
        }
    }
    let (h, c, inproc) = (
        percentile(&mut http_over, 0.5) * 1e3,
        percentile(&mut cli_over, 0.5) * 1e3,
        percentile(&mut direct_over, 0.5) * 1e3,
    );
    out.push_str(&format!(
        "| overhead over the job's own submitted → completed, p50 ms ({rounds} non-streamed chat completions vs `wrk` + `flw`, 8 tokens) | {h:.2} | {c:.2} | {:+.2} | ≤ 2 ms over `wrk` + `flw`: {} |\n",
        h - c,
        met(h - c <= 2.0)
    ));
    out.push_str(&format!(
        "| the same, vs jobs submitted and awaited in-process (no HTTP, no process start; the job's durable finish is in both) | {h:.2} | {inproc:.2} | {:+.2} | HTTP's own ≤ 2 ms: {} |\n",
        h - inproc,
        met(h - inproc <= 2.0)
    ));
    let (mut ttft, mut direct) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let http_first = i % 2 == 0;
        for http in [http_first, !http_first] {
            if http {
                let prompt = format!("Count to {}.", 2 * i);
                let a = runtime.block_on(request(addr, chat_body(&prompt, 16, true)))?;
                let first = a.first_content.context("a stream without content")?;
                ttft.push(first.as_secs_f64());
            } else {
                let prompt = format!("Count to {}.", 2 * i + 1);
                direct.push(direct_first_token(&ws, &prompt, 16)?.as_secs_f64());
                // Let it end before the next request (one worker).
                nrvna_queue::watch::wait_until(&ws, None, |ws| {
                    let c = ws.counts()?;
                    Ok(c.queued + c.running == 0)
                })?;
            }
        }
    }
    let (t, o) = (
        percentile(&mut ttft, 0.5) * 1e3,
        percentile(&mut direct, 0.5) * 1e3,
    );
    out.push_str(&format!(
        "| first token, p50 ms ({rounds} streamed requests: to the first content chunk; vs jobs submitted in-process: to their first byte in partial.txt) | {t:.2} | {o:.2} | {:+.2} | within 10 ms: {} |\n",
        t - o,
        met(t - o <= 10.0)
    ));
    drop(d);

    // Throughput: streaming clients and `wrk` jobs on one 8-worker daemon, alternating.
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let listen = addr.to_string();
    let d = BenchDaemon::start_with_args(model, 8, 64, &["--http", &listen])?;
    let ws = Workspace::open(&d.ws)?;
    let throughput_rounds = (rounds / 5).clamp(1, 4);
    let (mut http_tps, mut wrk_tps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..throughput_rounds {
        let (h, w) = if round % 2 == 0 {
            let h = http_throughput(&runtime, addr, &ws, clients, round)?;
            (h, wrk_throughput(&d, &ws, clients, round)?)
        } else {
            let w = wrk_throughput(&d, &ws, clients, round)?;
            (http_throughput(&runtime, addr, &ws, clients, round)?, w)
        };
        http_tps.push(h);
        wrk_tps.push(w);
        ratios.push(h / w);
    }
    let (h, w, r) = (
        percentile(&mut http_tps, 0.5),
        percentile(&mut wrk_tps, 0.5),
        percentile(&mut ratios, 0.5),
    );
    out.push_str(&format!(
        "| aggregate tok/s, median of {throughput_rounds} rounds ({clients} streaming clients vs {clients} `wrk` jobs at once, 8 workers, 64 tokens) | {h:.1} | {w:.1} | {r:.2}× | ≥ 0.9×: {} |\n",
        met(r >= 0.9)
    ));
    out.push_str(
        "\nOverhead: the client's wall time minus the job's own submitted_at → completed_at \
         (one worker, one request at a time, 8 tokens, greedy); the without column spawns \
         `wrk` and `flw`, or (second row) submits in-process and waits for the job in \
         `output/`; what is left after the job's own time is mostly its durable finish \
         (fsyncs after completed_at), paid on every path. First token: HTTP from sending \
         the request to the first content chunk; without, from an in-process submission \
         (what `wrk` does) to the job's first byte in partial.txt, looked at every 0.5 ms. \
         Throughput: per round, wall time from the first request (or `wrk` start) to the \
         last answer (or job end), on the same daemon; the ratio is the median of the \
         rounds' ratios.\n\n",
    );
    Ok(out)
}
