//! `nrvnad --backend` in front of another nrvnad's OpenAI-compatible HTTP API: a
//! workspace whose inference runs on a second daemon. The server here is our own (the
//! tests against llama.cpp's llama-server are in `remote.rs`); what this shows is the
//! daemon's side: the model taken from `/models` when none is named, jobs retried
//! through the server's crash and restart, and failed after the bound when it stays
//! away, with the daemon serving on.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use nrvna_tests::{Daemon, TestWs, guest, model, stdout, wait_for};

use crate::components::REFINE;
use crate::remote::{a_person_by_json_schema_parses, partial_text_while_running};

/// A local daemon serving the HTTP API on `port`, ready.
fn upstream(ws: &TestWs, port: u16) -> Daemon {
    let addr = format!("127.0.0.1:{port}");
    Daemon::start(&ws.path, &model(), 2, &["--http", &addr], &[])
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn jobs_in_front_of_a_daemon_that_crashes_and_restarts_are_retried_and_done() {
    let port = free_port();
    let up_ws = TestWs::new();
    let up = upstream(&up_ws, port);
    let url = format!("http://127.0.0.1:{port}/v1");
    let ws = TestWs::new();
    let env = [
        ("NRVNA_BACKEND_RETRIES", "30"),
        ("NRVNA_BACKEND_BACKOFF_MS", "200"),
    ];
    let mut d = Daemon::spawn_remote(&url, &ws.path, 2, &[], &env);
    d.wait_ready(&ws.path);
    // No --backend-model: the one model the server lists.
    assert!(
        d.log_text().contains("model SmolLM2-135M-Instruct.Q4_1 at"),
        "{}",
        d.log_text()
    );
    let ids: Vec<String> = (0..6)
        .map(|i| ws.submit(&[&format!("Tell a story about {i}."), "--max-tokens", "40"]))
        .collect();
    let mid = wait_for(Duration::from_secs(300), || {
        !ws.entries("output").is_empty() && !ws.entries("processing").is_empty()
    });
    assert!(mid, "the batch never got going:\n{}", d.log_text());
    let mut up = up;
    up.signal(rustix::process::Signal::KILL);
    up.wait_exit(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let _up = upstream(&up_ws, port);
    for id in &ids {
        let (rc, _, err) = ws.follow(id);
        assert_eq!(rc, 0, "{id}: {err}\n{}", d.log_text());
        let meta = ws.meta("output", id);
        assert_eq!(meta["backend"], url.as_str());
        assert_eq!(meta["attempts"], 1, "{meta}");
    }
    assert!(d.log_text().contains("retry"), "{}", d.log_text());
}

#[test]
fn jobs_fail_after_the_retry_bound_when_the_server_stays_away_and_the_daemon_serves_on() {
    let port = free_port();
    let up_ws = TestWs::new();
    let mut up = upstream(&up_ws, port);
    let url = format!("http://127.0.0.1:{port}/v1");
    let ws = TestWs::new();
    let env = [
        ("NRVNA_BACKEND_RETRIES", "2"),
        ("NRVNA_BACKEND_BACKOFF_MS", "100"),
    ];
    let mut d = Daemon::spawn_remote(&url, &ws.path, 2, &[], &env);
    d.wait_ready(&ws.path);
    up.signal(rustix::process::Signal::KILL);
    up.wait_exit(Duration::from_secs(30));
    let started = Instant::now();
    let id = ws.submit(&["Say hi."]);
    let (rc, _, err) = ws.follow(&id);
    assert_eq!(rc, 1, "{err}");
    assert!(
        err.contains(&format!("{url}/chat/completions"))
            && err.contains("gave up after 3 attempt(s)")
            && err.contains("connection refused"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(d.is_running(), "{}", d.log_text());
    drop(up);
    let _up = upstream(&up_ws, port);
    let next = ws.submit(&["Say hi.", "--max-tokens", "8"]);
    let (rc, _, err) = ws.follow(&next);
    assert_eq!(rc, 0, "{err}");
}

#[test]
fn schema_streaming_embedding_and_an_agent_pattern_pass_through_the_chain() {
    let port = free_port();
    let up_ws = TestWs::new();
    let _up = upstream(&up_ws, port);
    let url = format!("http://127.0.0.1:{port}/v1");
    let ws = TestWs::new();
    let mut d = Daemon::spawn_remote(&url, &ws.path, 2, &[], &[]);
    d.wait_ready(&ws.path);

    // A JSON-schema job goes as response_format; the server's answer parses.
    a_person_by_json_schema_parses(&ws);

    // The streamed answer reaches partial.txt while the job runs.
    let story = ws.submit(&["Write a long story about a dragon.", "--max-tokens", "200"]);
    let seen = partial_text_while_running(&ws, &story);
    let (rc, result, err) = ws.follow(&story);
    assert_eq!(rc, 0, "{err}");
    assert!(result.starts_with(&seen), "{seen:?} / {result:?}");
    let meta = ws.meta("output", &story);
    assert!(meta["generated_tokens"].as_u64().unwrap() > 0, "{meta}");

    // An embedding job goes to /embeddings.
    let id = ws.submit(&["--embed", "a cat sat on the mat"]);
    let (rc, out, err) = ws.follow(&id);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let vector: Vec<f64> = serde_json::from_value(v["vector"].clone()).unwrap();
    let norm: f64 = vector.iter().map(|x| x * x).sum();
    assert!(!vector.is_empty() && (norm - 1.0).abs() < 1e-4);

    // An agent job (the refine pattern) submits its jobs to this workspace, and they run
    // on the server like any other.
    let refine = guest(REFINE);
    let agent = ws.submit(&[
        "--agent",
        refine.to_str().unwrap(),
        "--",
        "--rounds",
        "1",
        "--max-tokens",
        "12",
        "Name a colour",
    ]);
    let (rc, _, err) = ws.follow(&agent);
    assert_eq!(rc, 0, "{err}");
    let children = ws.flw(&["--children", &agent]);
    let kids: Vec<String> = stdout(&children).lines().map(str::to_owned).collect();
    assert_eq!(kids.len(), 3, "children of {agent}: {kids:?}");
    for kid in &kids {
        let meta = ws.meta("output", kid);
        assert_eq!(meta["parent"], agent.as_str(), "{meta}");
        assert_eq!(meta["backend"], url.as_str(), "{meta}");
    }
}
