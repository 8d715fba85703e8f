//! `nrvnad --backend URL`: the daemon runs its jobs on a remote OpenAI-compatible server,
//! here llama.cpp's own `llama-server` (built by scripts/setup from the llama.cpp tree in
//! the llama-cpp-python sdist) on loopback with the default model.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nrvna_tests::{Daemon, TestWs, bin, code, embed_model, guest, model, run, stderr, wait_for};

use crate::components::{COMPARE, REFINE};
use crate::patterns::{answer_routes, exec_cmd, run_limited, tagged};

/// The llama-cpp-python release whose vendored llama.cpp scripts/setup builds
/// (`LLAMA_SERVER_SDIST_VERSION` there).
const LLAMA_SERVER_VERSION: &str = "0.3.36";

/// The model name the server is started with (`--alias`), as `GET /v1/models` lists it.
const ALIAS: &str = "smollm2";

fn llama_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NRVNA_LLAMA_SERVER") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = home
        .join(".cache/nrvna/llama-server")
        .join(LLAMA_SERVER_VERSION)
        .join("llama-server");
    assert!(
        path.is_file(),
        "llama-server is not built at {}: run scripts/setup (it builds it from the \
         llama-cpp-python {LLAMA_SERVER_VERSION} sdist), or set NRVNA_LLAMA_SERVER",
        path.display()
    );
    path
}

/// A real `llama-server` on a loopback port, killed on drop.
struct LlamaServer {
    child: Option<Child>,
    port: u16,
    model: PathBuf,
    extra: Vec<String>,
    log: tempfile::NamedTempFile,
}

impl LlamaServer {
    /// Serves `model` (four slots of 1024 tokens, one thread) and waits until healthy.
    fn start(model: &Path, extra: &[&str]) -> LlamaServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut server = LlamaServer {
            child: None,
            port,
            model: model.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: tempfile::NamedTempFile::new().expect("server log"),
        };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Starts it (again) on the same port and waits for `GET /health` to answer 200.
    fn restart(&mut self) {
        let log = self.log.reopen().expect("server log");
        let child = Command::new(llama_server_bin())
            .arg("-m")
            .arg(&self.model)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["-t", "1", "-np", "4", "-c", "4096", "--alias", ALIAS])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn llama-server");
        self.child = Some(child);
        let healthy = wait_for(Duration::from_secs(180), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("llama-server exited ({status}):\n{}", self.log_text());
            }
            http_get(self.port, "/health").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        });
        assert!(healthy, "llama-server not healthy:\n{}", self.log_text());
    }

    /// SIGKILL: the server dies with requests in flight.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- llama-server log ---\n{}", self.log_text());
        }
    }
}

/// A plain HTTP/1.1 GET on loopback: the whole answer, or `None` when nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A daemon on `server`, ready.
fn remote_daemon(ws: &TestWs, url: &str, workers: usize, env: &[(&str, &str)]) -> Daemon {
    let mut d = Daemon::spawn_remote(url, &ws.path, workers, &["--backend-model", ALIAS], env);
    d.wait_ready(&ws.path);
    d
}

#[test]
fn a_batch_runs_on_llama_server_within_the_worker_bound_with_usage_and_meta() {
    let server = LlamaServer::start(&model(), &["--metrics"]);
    let url = server.url();
    let ws = TestWs::new();
    let d = remote_daemon(&ws, &url, 2, &[]);
    assert!(d.log_text().contains(&url), "{}", d.log_text());

    // The server's own gauge of requests it is processing, sampled through the batch.
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, port) = (peak.clone(), done.clone(), server.port);
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let processing = http_get(port, "/metrics").and_then(|m| {
                    m.lines()
                        .find(|l| l.starts_with("llamacpp:requests_processing "))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<f64>().ok())
                });
                if let Some(n) = processing {
                    peak.fetch_max(n as u64, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(ws.submit(&[
            &format!("Say a word about the number {i}."),
            "--max-tokens",
            "24",
        ]));
    }
    let system = ws.submit(&[
        "What are you?",
        "--system",
        "You are a pirate.",
        "--max-tokens",
        "16",
        "--temp",
        "0",
    ]);
    ids.push(system.clone());
    for id in &ids {
        let (rc, out, err) = ws.follow(id);
        assert_eq!(rc, 0, "{id}: {err}");
        assert!(!out.trim().is_empty(), "{id}: empty result");
        let meta = ws.meta("output", id);
        assert_eq!(meta["backend"], url.as_str(), "{meta}");
        assert_eq!(meta["model"], ALIAS, "{meta}");
        assert!(meta["prompt_tokens"].as_u64().unwrap() > 0, "{meta}");
        let generated = meta["generated_tokens"].as_u64().unwrap();
        assert!((1..=24).contains(&generated), "{meta}");
        assert!(
            meta["finish_reason"] == "stop" || meta["finish_reason"] == "length",
            "{meta}"
        );
    }
    // The system message reached the server: the prompt it counted differs from the
    // same question's without one (SmolLM2's template puts in a default system message).
    let plain = ws.submit(&["What are you?", "--max-tokens", "16", "--temp", "0"]);
    assert_eq!(ws.follow(&plain).0, 0);
    assert_ne!(
        ws.meta("output", &system)["prompt_tokens"],
        ws.meta("output", &plain)["prompt_tokens"]
    );
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&peak),
        "llama-server saw {peak} requests at once; the daemon has 2 workers"
    );
}

/// A JSON-schema job ("a person": name and age) on `ws`'s remote backend returns JSON
/// that has both.
pub(crate) fn a_person_by_json_schema_parses(ws: &TestWs) {
    let schema = ws.scratch().join("person.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["name","age"]}"#,
    )
    .unwrap();
    // Greedy: a sampled person can ramble past the token limit before the JSON closes.
    let person = ws.submit(&[
        "Invent a person.",
        "--json-schema",
        schema.to_str().unwrap(),
        "--max-tokens",
        "64",
        "--temp",
        "0",
    ]);
    let (rc, out, err) = ws.follow(&person);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("schema output is JSON");
    assert!(v["name"].is_string() && v["age"].is_i64(), "{v}");
}

/// The text of `story`'s partial.txt once it appears while the job runs (the remote
/// server's stream reaching the workspace).
pub(crate) fn partial_text_while_running(ws: &TestWs, story: &str) -> String {
    let partial = ws.path.join("processing").join(story).join("partial.txt");
    let mut seen = String::new();
    wait_for(Duration::from_secs(120), || {
        seen = std::fs::read_to_string(&partial).unwrap_or_default();
        !seen.is_empty() || ws.path.join("output").join(story).exists()
    });
    assert!(
        !seen.is_empty(),
        "partial.txt never appeared while the job ran"
    );
    seen
}

#[test]
fn structured_output_and_streaming_run_on_llama_server() {
    let server = LlamaServer::start(&model(), &[]);
    let ws = TestWs::new();
    let _d = remote_daemon(&ws, &server.url(), 2, &[]);
    a_person_by_json_schema_parses(&ws);

    // The server's stream reaches partial.txt while the job runs, and `flw --stream`
    // prints the same text the result holds.
    let story = ws.submit(&["Write a long story about a dragon.", "--max-tokens", "200"]);
    let streamer = std::process::Command::new(bin("flw"))
        .arg(&ws.path)
        .arg(&story)
        .arg("--stream")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = partial_text_while_running(&ws, &story);
    let streamed = streamer.wait_with_output().unwrap();
    assert_eq!(streamed.status.code(), Some(0));
    let result = ws.job_file("output", &story, "result.txt");
    assert_eq!(String::from_utf8_lossy(&streamed.stdout), result);
    assert!(result.starts_with(seen.trim_end()) || seen.starts_with(&result));
}

#[test]
fn an_embedding_job_runs_on_llama_server_with_an_embedding_model() {
    let server = LlamaServer::start(&embed_model(), &["--embeddings"]);
    let ws = TestWs::new();
    let _d = remote_daemon(&ws, &server.url(), 1, &[]);
    let embed = |text: &str| -> Vec<f64> {
        let id = ws.submit(&["--embed", text]);
        let (rc, out, err) = ws.follow(&id);
        assert_eq!(rc, 0, "{err}");
        let meta = ws.meta("output", &id);
        assert_eq!(meta["model"], ALIAS, "{meta}");
        assert!(meta["prompt_tokens"].as_u64().unwrap() > 0, "{meta}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let vector: Vec<f64> = serde_json::from_value(v["vector"].clone()).unwrap();
        assert_eq!(v["dim"].as_u64().unwrap() as usize, vector.len());
        vector
    };
    let cat = embed("a cat sat on the mat");
    let kitten = embed("a kitten sat on the rug");
    let stocks = embed("the stock market fell sharply");
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert_eq!(cat.len(), 384, "all-MiniLM-L6-v2 has 384 dimensions");
    assert!((dot(&cat, &cat) - 1.0).abs() < 1e-4, "not L2-normalised");
    assert!(dot(&cat, &kitten) > dot(&cat, &stocks));
}

#[test]
fn a_server_killed_mid_batch_and_restarted_gets_every_job_done() {
    let mut server = LlamaServer::start(&model(), &[]);
    let ws = TestWs::new();
    // Retries enough to outlast a restart; the first waits are short.
    let env = [
        ("NRVNA_BACKEND_RETRIES", "30"),
        ("NRVNA_BACKEND_BACKOFF_MS", "200"),
    ];
    let d = remote_daemon(&ws, &server.url(), 2, &env);
    let ids: Vec<String> = (0..8)
        .map(|i| {
            ws.submit(&[
                &format!("Tell a story about the number {i}."),
                "--max-tokens",
                "48",
            ])
        })
        .collect();
    // Mid-batch: something done, something still to do, something running.
    let mid = wait_for(Duration::from_secs(300), || {
        !ws.entries("output").is_empty() && !ws.entries("processing").is_empty()
    });
    assert!(mid, "the batch never got going:\n{}", d.log_text());
    let running = ws.entries("processing");
    server.kill();
    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    for id in &ids {
        let (rc, _, err) = ws.follow(id);
        assert_eq!(rc, 0, "{id}: {err}\n{}", d.log_text());
    }
    assert_eq!(ws.entries("output").len(), ids.len());
    let log = d.log_text();
    assert!(log.contains("retry"), "no retry logged:\n{log}");
    // The jobs running when the server died were retried in the same attempt.
    for id in running.iter().filter(|id| ids.contains(id)) {
        assert_eq!(ws.meta("output", id)["attempts"], 1);
    }
}

#[test]
fn a_server_that_never_comes_back_fails_the_jobs_after_the_bound_and_the_daemon_serves_on() {
    let mut server = LlamaServer::start(&model(), &[]);
    let url = server.url();
    let ws = TestWs::new();
    let env = [
        ("NRVNA_BACKEND_RETRIES", "2"),
        ("NRVNA_BACKEND_BACKOFF_MS", "100"),
    ];
    let mut d = remote_daemon(&ws, &url, 2, &env);

    // A 4xx no retry can fix (a prompt past the slot's context) fails at once, with the
    // server's message.
    let long = "word ".repeat(3000);
    let too_long = ws.submit(&[&long, "--max-tokens", "4"]);
    let (rc, _, err) = ws.follow(&too_long);
    assert_eq!(rc, 1);
    assert!(err.contains(&url) && err.contains("HTTP 400"), "{err}");
    assert!(!d.log_text().contains("retry"), "{}", d.log_text());

    server.kill();
    let started = Instant::now();
    let ids: Vec<String> = (0..2)
        .map(|i| ws.submit(&[&format!("Count to {i}.")]))
        .collect();
    for id in &ids {
        let (rc, _, err) = ws.follow(id);
        assert_eq!(rc, 1, "{err}");
        assert!(
            err.contains(&format!("{url}/chat/completions"))
                && err.contains("gave up after 3 attempt(s)")
                && err.contains("connection refused")
                && err.contains("NRVNA_BACKEND_RETRIES=2"),
            "{err}"
        );
    }
    // Two retries of at most 0.1 s and 0.2 s: failed quickly, not at some long timeout.
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(d.is_running(), "the daemon stopped:\n{}", d.log_text());

    // It serves on: with the server back, the next job is done.
    server.restart();
    let next = ws.submit(&["Say hi.", "--max-tokens", "8"]);
    let (rc, _, err) = ws.follow(&next);
    assert_eq!(rc, 0, "{err}");
}

#[test]
fn a_wrong_model_or_an_unreachable_server_stops_start_up_with_a_clear_error() {
    let server = LlamaServer::start(&model(), &[]);
    let url = server.url();
    let ws = TestWs::new();
    let start = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(bin("nrvnad"));
        cmd.args(args).arg(&ws.path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    };
    let out = start(
        &["--backend", &url, "--backend-model", "no-such-model"],
        &[],
    );
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{url}/models"))
            && err.contains("no-such-model")
            && err.contains(ALIAS),
        "{err}"
    );
    assert!(!ws.path.join(".nrvnad.ready").exists());

    // Nothing listening: retried as jobs are, then refused naming what failed.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let out = start(
        &["--backend", &format!("http://127.0.0.1:{port}/v1")],
        &[("NRVNA_BACKEND_RETRIES", "0")],
    );
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("connection refused"),
        "{}",
        stderr(&out)
    );

    // https needs TLS this build does not have; --backend-model needs --backend.
    let out = start(&["--backend", "https://example.invalid/v1"], &[]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("https is not supported"),
        "{}",
        stderr(&out)
    );
    let out = start(&[model().to_str().unwrap(), "--backend-model", ALIAS], &[]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

#[test]
fn wrk_flw_and_an_agent_pattern_run_unchanged_on_a_remote_backed_workspace() {
    let server = LlamaServer::start(&model(), &[]);
    let ws = TestWs::new();
    let _d = remote_daemon(&ws, &server.url(), 2, &[]);
    let refine = guest(REFINE);
    let id = ws.submit(&[
        "--agent",
        refine.to_str().unwrap(),
        "--",
        "--rounds",
        "1",
        "--max-tokens",
        "12",
        "Name a colour",
    ]);
    let (rc, out, err) = ws.follow(&id);
    assert_eq!(rc, 0, "{err}");
    let children = ws.flw(&["--children", &id]);
    assert_eq!(code(&children), 0, "{}", stderr(&children));
    let kids: Vec<String> = nrvna_tests::stdout(&children)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(kids.len(), 3, "children of {id}: {kids:?}");
    for kid in &kids {
        let meta = ws.meta("output", kid);
        assert_eq!(meta["parent"], id.as_str(), "{meta}");
        assert_eq!(meta["backend"], server.url().as_str(), "{meta}");
    }
    assert_eq!(ws.meta("output", &id)["mode"], "agent");
    assert!(!out.is_empty() || ws.entries("output").len() == 4);
}

#[test]
fn the_backend_api_key_authenticates_and_a_raw_prompt_goes_to_completions() {
    let server = LlamaServer::start(&model(), &["--api-key", "s3cret"]);
    let url = server.url();
    let ws = TestWs::new();
    // Without the key the server answers 401: start-up stops with its message at once.
    let out = run(std::process::Command::new(bin("nrvnad"))
        .args(["--backend", &url, "--backend-model", ALIAS])
        .arg(&ws.path)
        .env_remove("NRVNA_BACKEND_API_KEY"));
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("HTTP 401"), "{}", stderr(&out));

    let mut d = Daemon::spawn_remote(
        &url,
        &ws.path,
        1,
        &["--backend-model", ALIAS, "--http", "127.0.0.1:0"],
        &[("NRVNA_BACKEND_API_KEY", "s3cret")],
    );
    d.wait_ready(&ws.path);
    // The HTTP API's /v1/completions is a raw-prompt job: the server's /completions.
    let base = crate::http::base_url(&d);
    let body = serde_json::json!({
        "model": ALIAS,
        "prompt": "The capital of France is",
        "max_tokens": 8,
        "temperature": 0,
    });
    let (status, _, reply) =
        crate::http::post_json(&format!("{base}/v1/completions"), &body.to_string(), &[]);
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert!(
        reply["choices"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{reply}"
    );
    let done = ws.entries("output");
    assert_eq!(done.len(), 1);
    let meta = ws.meta("output", &done[0]);
    assert_eq!(meta["raw_prompt"], true, "{meta}");
    assert_eq!(meta["backend"], url.as_str(), "{meta}");
}

/// Multi-model routing across machines: an agent on a workspace served by the local
/// model asks a route whose workspace runs on llama-server, and both answer.
#[test]
fn an_agent_routes_between_a_local_and_a_remote_backed_workspace() {
    let server = LlamaServer::start(&model(), &[]);
    let local = TestWs::new();
    let _dl = local.daemon(1);
    let remote = TestWs::new();
    let _dr = remote_daemon(&remote, &server.url(), 1, &[]);
    let grant = format!("remote={}", remote.path.display());
    let out = run_limited(exec_cmd(
        &local,
        COMPARE,
        &["--route", &grant],
        &[
            "--to",
            "self",
            "--to",
            "remote",
            "--no-judge",
            "--max-tokens",
            "12",
            "--json",
            "Name a bird.",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value =
        serde_json::from_str(nrvna_tests::stdout(&out).trim()).expect("compare's JSON");
    assert_eq!(answer_routes(&v), ["self", "remote"], "{v}");
    let there = tagged(&remote, "compare-answer");
    assert_eq!(there.len(), 1, "{there:?}");
    let meta = remote.meta(&there[0].0, &there[0].1);
    assert_eq!(meta["backend"], server.url().as_str(), "{meta}");
    let here = tagged(&local, "compare-answer");
    assert_eq!(here.len(), 1, "{here:?}");
    let meta = local.meta(&here[0].0, &here[0].1);
    assert_eq!(
        meta["backend"], "llama.cpp",
        "the local job ran on the local model: {meta}"
    );
}
