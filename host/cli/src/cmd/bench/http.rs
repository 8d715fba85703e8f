//! `nrvna bench --only http`: what the HTTP API costs over the queue it sits on.
//!
//! - overhead: a non-streamed chat completion against the same job through `wrk` + `flw`,
//!   each measured as the client's wall time minus the job's own time in the workspace
//!   (`submitted_at → completed_at`);
//! - time to the first streamed token against a one-token job's own time;
//! - 32 streaming clients on 8 workers against 32 jobs submitted with `wrk`: aggregate
//!   tokens per second (`--http-rounds`, `--http-clients` size it).
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
    body: Vec<u8>,
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
        body: out,
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

pub(super) fn section(model: &Path, rounds: usize, clients: usize) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut out = String::from("HTTP API (`nrvnad --http`), against the same jobs without it:\n\n");
    out.push_str("| measure | HTTP | queue | difference |\n|---|---:|---:|---:|\n");

    // Overhead and time to first token: one worker, one request at a time.
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let listen = addr.to_string();
    let d = BenchDaemon::start_with_args(model, 1, 8, &["--http", &listen])?;
    let ws = Workspace::open(&d.ws)?;
    let (mut http_over, mut cli_over) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let prompt = format!("Say {i}.");
        let a = runtime.block_on(request(addr, chat_body(&prompt, 8, false)))?;
        http_over.push(a.total.as_secs_f64() - job_seconds(&ws, &a.job)?);
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
    let (h, c) = (
        percentile(&mut http_over, 0.5) * 1e3,
        percentile(&mut cli_over, 0.5) * 1e3,
    );
    out.push_str(&format!(
        "| overhead over the job's own time, p50 ms ({rounds} chat completions vs `wrk` + `flw`) | {h:.2} | {c:.2} | {:+.2} |\n",
        h - c
    ));
    let (mut ttft, mut one_token) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let prompt = format!("Count to {i}.");
        let a = runtime.block_on(request(addr, chat_body(&prompt, 16, true)))?;
        let first = a.first_content.context("a stream without content")?;
        ttft.push(first.as_secs_f64());
        let b = runtime.block_on(request(addr, chat_body(&prompt, 1, false)))?;
        one_token.push(job_seconds(&ws, &b.job)?);
        let _ = a.body;
    }
    let (t, o) = (
        percentile(&mut ttft, 0.5) * 1e3,
        percentile(&mut one_token, 0.5) * 1e3,
    );
    out.push_str(&format!(
        "| first streamed token, p50 ms (vs a 1-token job's submitted → completed) | {t:.2} | {o:.2} | {:+.2} |\n",
        t - o
    ));
    drop(d);

    // Throughput: 32 streaming clients on 8 workers, then 32 wrk jobs on a fresh daemon.
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let listen = addr.to_string();
    let d = BenchDaemon::start_with_args(model, 8, 64, &["--http", &listen])?;
    let ws = Workspace::open(&d.ws)?;
    let started = Instant::now();
    let answers = runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                tokio::spawn(request(
                    addr,
                    chat_body(&format!("{PROMPT} ({i})"), 64, true),
                ))
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await??);
        }
        anyhow::Ok(answers)
    })?;
    let makespan = started.elapsed().as_secs_f64();
    let mut generated = 0u64;
    for a in &answers {
        let meta = ws.read_meta(State::Done, &JobId::parse(&a.job)?)?;
        generated += u64::from(meta.generated_tokens.unwrap_or(0));
    }
    let http_tps = generated as f64 / makespan;
    drop(d);
    let d = BenchDaemon::start_with_args(model, 8, 64, &[])?;
    let started = Instant::now();
    for i in 0..clients {
        d.submit(&[
            &format!("{PROMPT} ({i})"),
            "--max-tokens",
            "64",
            "--temp",
            "0",
        ])?;
    }
    let ws = d.wait_all(clients)?;
    let makespan = started.elapsed().as_secs_f64();
    let mut generated = 0u64;
    for id in ws.list(State::Done)? {
        generated += u64::from(
            ws.read_meta(State::Done, &id)?
                .generated_tokens
                .unwrap_or(0),
        );
    }
    let wrk_tps = generated as f64 / makespan;
    out.push_str(&format!(
        "| {clients} streaming clients vs {clients} `wrk` jobs, 8 workers, 64 tokens: tok/s | {http_tps:.1} | {wrk_tps:.1} | {:.2}× |\n",
        http_tps / wrk_tps
    ));
    out.push_str(
        "\noverhead: the client's wall time minus the job's own submitted_at → completed_at \
         (one worker, one request at a time, 8 tokens, greedy); the queue column spawns `wrk` \
         and `flw`. First token: from sending the request to the first content chunk, against \
         a 1-token job's own time (pickup + prefill + one token). Throughput: wall time from \
         the first request to the last answer.\n\n",
    );
    Ok(out)
}
