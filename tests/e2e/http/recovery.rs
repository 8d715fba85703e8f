//! What the server says while its model loads, and a batch whose daemon is killed while
//! it is still being queued: `nrvnad` of the test build with a failpoint armed
//! (tests/nrvnad_failpoint.rs) stops there, the test looks, then kills it with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nrvna_tests::{Daemon, TestWs, bin, model, wait_for};

use super::{HttpDaemon, base_url, curl, header, post_json, split_status};

/// The `nrvnad` of the test build with a failpoint armed.
fn failpoint_nrvnad() -> PathBuf {
    let path = bin("nrvnad")
        .parent()
        .unwrap()
        .join("examples/nrvnad-failpoint");
    assert!(
        path.is_file(),
        "{} is missing: cargo test builds it (the nrvna-tests example nrvnad-failpoint)",
        path.display()
    );
    path
}

/// Starts the failpoint `nrvnad` serving HTTP, armed at `failpoint`; the marker file it
/// writes when it stops there.
fn spawn_armed(ws: &TestWs, failpoint: &str, workers: usize) -> (Daemon, String, PathBuf) {
    let marker = ws.path.with_extension(format!("{failpoint}.reached"));
    let marker_text = marker.to_str().unwrap().to_owned();
    let daemon = Daemon::spawn_program(
        &failpoint_nrvnad(),
        &ws.path,
        &model(),
        workers,
        &["--http", "127.0.0.1:0"],
        &[
            ("NRVNA_FAILPOINT", failpoint),
            ("NRVNA_FAILPOINT_MARKER", &marker_text),
        ],
    );
    let base = base_url(&daemon);
    (daemon, base, marker)
}

fn kill(mut daemon: Daemon) {
    daemon.signal(rustix::process::Signal::KILL);
    daemon.wait_exit(Duration::from_secs(10));
}

#[test]
fn health_says_loading_with_503_while_the_model_loads_and_nothing_is_queued() {
    let ws = TestWs::new();
    let (daemon, base, marker) = spawn_armed(&ws, "daemon-before-model-load", 1);
    assert!(
        wait_for(Duration::from_secs(60), || marker.exists()),
        "the daemon never reached the model load:\n{}",
        daemon.log_text()
    );
    // The server listens while the model loads (the daemon is held just before it).
    let out = curl(&[&format!("{base}/health")]);
    let (body, status) = split_status(&out);
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "loading", "{body}");
    assert!(v["model"].is_null() && v["workers"].is_null(), "{body}");
    // A request meanwhile is told to come back, and queues nothing.
    let (status, headers, body) = post_json(
        &format!("{base}/v1/chat/completions"),
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    assert_eq!(status, 503, "{body}");
    super::assert_error_object(&body, Some("model_loading"));
    assert_eq!(header(&headers, "retry-after").as_deref(), Some("1"));
    assert!(ws.entries("input/ready").is_empty());
    kill(daemon);
    let _ = std::fs::remove_file(&marker);
}

/// Uploads `lines` as a batch input file; its id.
fn upload(base: &str, dir: &Path, name: &str, lines: &[String]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = curl(&[
        "-F",
        "purpose=batch",
        "-F",
        &format!("file=@{}", path.display()),
        &format!("{base}/v1/files"),
    ]);
    let (body, status) = split_status(&out);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// `POST /v1/batches` in a `curl` of its own (it will not be answered: the daemon stops
/// inside it).
fn create_in_background(base: &str, file: &str, endpoint: &str) -> Child {
    let body = serde_json::json!({
        "input_file_id": file, "endpoint": endpoint, "completion_window": "24h",
    });
    Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-H",
            "content-type: application/json",
        ])
        .args(["--data-binary", &body.to_string()])
        .arg(format!("{base}/v1/batches"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl")
}

fn get_json(url: &str) -> serde_json::Value {
    let out = curl(&[url]);
    let (body, status) = split_status(&out);
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The listed batches by input file id.
fn batch_for(base: &str, file: &str) -> Option<serde_json::Value> {
    let list = get_json(&format!("{base}/v1/batches"));
    list["data"]
        .as_array()?
        .iter()
        .find(|b| b["input_file_id"] == file)
        .cloned()
}

#[test]
fn a_batch_half_queued_when_its_daemon_is_killed_is_finished_or_failed_at_start_up() {
    let ws = TestWs::new();
    let scratch = tempfile::tempdir().unwrap();
    let (mut daemon, base, marker) = spawn_armed(&ws, "batch-request-queued", 2);
    daemon.wait_ready(&ws.path);
    // A completions batch, and an embeddings batch whose input will be lost.
    let completions: Vec<String> = (0..4)
        .map(|i| {
            serde_json::json!({"custom_id": format!("c{i}"), "method": "POST",
                "url": "/v1/completions",
                "body": {"prompt": format!("{i} plus {i} is"), "max_tokens": 6, "temperature": 0}})
            .to_string()
        })
        .collect();
    let embeddings: Vec<String> = (0..3)
        .map(|i| {
            serde_json::json!({"custom_id": format!("e{i}"), "method": "POST",
                "url": "/v1/embeddings", "body": {"input": format!("text {i}")}})
            .to_string()
        })
        .collect();
    let kept = upload(&base, scratch.path(), "c.jsonl", &completions);
    let lost = upload(&base, scratch.path(), "e.jsonl", &embeddings);
    let mut curls = vec![create_in_background(&base, &kept, "/v1/completions")];
    assert!(
        wait_for(Duration::from_secs(60), || marker.exists()),
        "the batch was never queued:\n{}",
        daemon.log_text()
    );
    std::fs::remove_file(&marker).unwrap();
    curls.push(create_in_background(&base, &lost, "/v1/embeddings"));
    assert!(
        wait_for(Duration::from_secs(60), || marker.exists()),
        "the second batch was never queued:\n{}",
        daemon.log_text()
    );
    // Both are part queued (one job each) and say so.
    for file in [&kept, &lost] {
        let b = batch_for(&base, file).expect("the batch is listed");
        assert_eq!(b["status"], "validating", "{b}");
    }
    kill(daemon);
    for mut c in curls {
        let _ = c.kill();
        let _ = c.wait();
    }
    // The embeddings batch's input is gone: it cannot be queued whole.
    std::fs::remove_file(ws.path.join(".batches/files").join(&lost)).unwrap();

    let http = HttpDaemon::start(&ws, 2, &[]);
    let base = http.base.clone();
    let mut finished = serde_json::Value::Null;
    let done = wait_for(Duration::from_secs(180), || {
        finished = batch_for(&base, &kept).unwrap_or_default();
        finished["status"] == "completed"
    });
    assert!(done, "the batch did not complete: {finished}");
    let counts = &finished["request_counts"];
    assert_eq!(counts["total"], 4, "{finished}");
    assert_eq!(counts["completed"], 4, "{finished}");
    let output = finished["output_file_id"].as_str().unwrap();
    let out = curl(&[&format!("{base}/v1/files/{output}/content")]);
    let (text, status) = split_status(&out);
    assert_eq!(status, 200, "{text}");
    let mut ids: Vec<String> = Vec::new();
    for line in text.lines() {
        let l: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(l["error"].is_null(), "{l}");
        assert_eq!(l["response"]["body"]["object"], "text_completion", "{l}");
        ids.push(l["custom_id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    // Each request once: the one queued before the kill was not queued again.
    assert_eq!(ids, ["c0", "c1", "c2", "c3"], "{text}");

    let failed = batch_for(&base, &lost).unwrap();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(
        failed["errors"]["data"][0]["code"], "batch_interrupted",
        "{failed}"
    );
    let settled = wait_for(Duration::from_secs(60), || {
        ws.entries("processing").is_empty() && ws.entries("input/ready").is_empty()
    });
    assert!(settled, "stuck: {:?}", ws.entries("processing"));
    // 4 completions done, the lost batch's one job done or cancelled: nothing else.
    assert_eq!(ws.entries("output").len() + ws.entries("failed").len(), 5);
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn an_embeddings_batch_answers_one_embedding_per_line() {
    let ws = TestWs::new();
    let http = HttpDaemon::start(&ws, 2, &[]);
    let scratch = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..2)
        .map(|i| {
            serde_json::json!({"custom_id": format!("e{i}"), "method": "POST",
                "url": "/v1/embeddings", "body": {"input": [format!("text {i}")]}})
            .to_string()
        })
        .collect();
    let file = upload(&http.base, scratch.path(), "e.jsonl", &lines);
    let body = serde_json::json!({
        "input_file_id": file, "endpoint": "/v1/embeddings", "completion_window": "24h",
    });
    let (status, _, text) = post_json(&http.url("/v1/batches"), &body.to_string(), &[]);
    assert_eq!(status, 200, "{text}");
    let id = serde_json::from_str::<serde_json::Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut b = serde_json::Value::Null;
    let done = wait_for(Duration::from_secs(120), || {
        b = get_json(&http.url(&format!("/v1/batches/{id}")));
        b["status"] == "completed"
    });
    assert!(done, "{b}");
    let output = b["output_file_id"].as_str().unwrap();
    let out = curl(&[&http.url(&format!("/v1/files/{output}/content"))]);
    let (text, _) = split_status(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    for line in text.lines() {
        let l: serde_json::Value = serde_json::from_str(line).unwrap();
        let body = &l["response"]["body"];
        assert_eq!(body["object"], "list", "{l}");
        let vector = body["data"][0]["embedding"].as_array().unwrap();
        assert!(
            vector.len() > 10 && vector.iter().all(|x| x.is_f64()),
            "{l}"
        );
    }
    // A line with two inputs would be two jobs: refused, naming the line.
    let two = vec![
        serde_json::json!({"custom_id": "x", "method": "POST", "url": "/v1/embeddings",
            "body": {"input": ["a", "b"]}})
        .to_string(),
    ];
    let file = upload(&http.base, scratch.path(), "two.jsonl", &two);
    let body = serde_json::json!({
        "input_file_id": file, "endpoint": "/v1/embeddings", "completion_window": "24h",
    });
    let (status, _, text) = post_json(&http.url("/v1/batches"), &body.to_string(), &[]);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("line 1"), "{text}");
}
