//! Chat completions, streaming, structured output, embeddings, models, health and metrics
//! through `curl`, and what each request leaves in the workspace.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use nrvna_tests::{TestWs, bin, model, wait_for};
use serde_json::Value;

use super::{HttpDaemon, assert_error_object, curl, header, post_json, split_status};

#[test]
fn a_chat_completion_is_a_job_tagged_http_with_its_messages_and_flw_sees_it() {
    let ws = TestWs::new();
    let http = HttpDaemon::start(&ws, 2, &[]);
    let body = r#"{"model":"SmolLM2-135M-Instruct.Q4_1","messages":[
        {"role":"system","content":"You answer in one word."},
        {"role":"user","content":"Name a colour."},
        {"role":"assistant","content":"Blue."},
        {"role":"user","content":"Name another colour."}],
        "max_tokens":12,"temperature":0,"seed":7}"#;
    let (status, headers, text) = post_json(&http.url("/v1/chat/completions"), body, &[]);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let id = header(&headers, "x-nrvna-job-id").expect("x-nrvna-job-id");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.is_empty());
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || finish == "length", "{finish}");
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 10, "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    // The job: tagged http, the messages beside the last user message, same text for flw.
    let meta = ws.meta("output", &id);
    assert_eq!(meta["tags"], serde_json::json!(["http"]));
    assert_eq!(meta["finish_reason"], finish);
    assert_eq!(
        ws.job_file("output", &id, "prompt.txt"),
        "Name another colour."
    );
    let messages: Value =
        serde_json::from_str(&ws.job_file("output", &id, "messages.json")).unwrap();
    assert_eq!(messages.as_array().unwrap().len(), 4);
    assert_eq!(messages[2]["role"], "assistant");
    let (code, out, _) = ws.follow(&id);
    assert_eq!((code, out.as_str()), (0, content));
    // The same conversation through wrk --messages is the same kind of job: with greedy
    // sampling and the same seed, the same answer.
    let file = ws.scratch().join("chat.json");
    std::fs::write(&file, serde_json::to_string(&messages).unwrap()).unwrap();
    let wrk_id = ws.submit(&[
        "--messages",
        file.to_str().unwrap(),
        "--max-tokens",
        "12",
        "--temp",
        "0",
        "--seed",
        "7",
    ]);
    let (code, wrk_out, _) = ws.follow(&wrk_id);
    assert_eq!(code, 0);
    assert_eq!(wrk_out, content, "wrk --messages and HTTP differ");
    // A stop string ends the text before it, and says stop.
    let stop_body = r#"{"messages":[{"role":"user","content":"Count from 1 to 20, separated by commas."}],
        "max_tokens":60,"temperature":0,"stop":["5"]}"#;
    let (status, _, text) = post_json(&http.url("/v1/chat/completions"), stop_body, &[]);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.contains('5'), "{content}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{text}");
    // max_tokens reached: length.
    let short = r#"{"messages":[{"role":"user","content":"Write a long poem."}],"max_tokens":3}"#;
    let (_, _, text) = post_json(&http.url("/v1/chat/completions"), short, &[]);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{text}");
    assert_eq!(v["usage"]["completion_tokens"], 3, "{text}");
}

/// Reads SSE events from `curl -N`: every event is `data: ...` and a blank line.
fn sse_events(raw: &str) -> Vec<String> {
    assert!(
        raw.ends_with("\n\n"),
        "the stream does not end an event: {raw:?}"
    );
    raw.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|event| {
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data line: {event:?}"));
            assert!(!data.contains('\n'), "one line per event: {event:?}");
            data.to_owned()
        })
        .collect()
}

#[test]
fn a_streamed_chat_completion_is_sse_chunks_that_add_up_to_the_result() {
    let ws = TestWs::new();
    let http = HttpDaemon::start(&ws, 2, &[]);
    let body = r#"{"messages":[{"role":"user","content":"Tell me about the sea."}],
        "max_tokens":40,"stream":true,"stream_options":{"include_usage":true}}"#;
    let headers = ws.scratch().join("headers.txt");
    let out = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "120", "-D"])
        .arg(&headers)
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ])
        .arg(http.url("/v1/chat/completions"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let headers = std::fs::read_to_string(&headers).unwrap();
    assert!(
        header(&headers, "content-type").is_some_and(|v| v.starts_with("text/event-stream")),
        "{headers}"
    );
    let id = header(&headers, "x-nrvna-job-id").expect("job id header");
    let raw = String::from_utf8(out.stdout).unwrap();
    let events = sse_events(&raw);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{raw}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut finish = None;
    let mut content_chunks = 0;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        if let Some(choice) = c["choices"].get(0) {
            if let Some(piece) = choice["delta"]["content"].as_str() {
                text.push_str(piece);
                content_chunks += usize::from(!piece.is_empty());
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_owned());
            }
        }
    }
    assert!(
        content_chunks > 3,
        "tokens came in {content_chunks} chunks: {raw}"
    );
    assert_eq!(text, ws.job_file("output", &id, "result.txt"));
    assert!(finish.is_some(), "{raw}");
    // include_usage: a last chunk with no choices and the usage.
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert!(
        usage["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{usage}"
    );
    // A stop string never shows in the stream either, and the stream says stop.
    let body = r#"{"messages":[{"role":"user","content":"Count from 1 to 20, separated by commas."}],
        "max_tokens":60,"temperature":0,"stop":["7"],"stream":true}"#;
    let out = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ])
        .arg(http.url("/v1/chat/completions"))
        .output()
        .unwrap();
    let raw = String::from_utf8(out.stdout).unwrap();
    let events = sse_events(&raw);
    let mut text = String::new();
    let mut finish = None;
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        if let Some(piece) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(piece);
        }
        if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    assert!(text.contains('6') && !text.contains('7'), "{text:?}");
    assert_eq!(finish.as_deref(), Some("stop"), "{raw}");
}

#[test]
fn structured_output_embeddings_models_health_and_metrics() {
    let ws = TestWs::new();
    let http = HttpDaemon::start(&ws, 2, &[]);
    // Bounded strings, so the small model closes the JSON well within the token limit.
    let schema = r#"{"type":"object","properties":{"name":{"type":"string","maxLength":20},
        "age":{"type":"integer"}},"required":["name","age"]}"#;
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"Invent a person."}}],"max_tokens":200,"temperature":0,
        "response_format":{{"type":"json_schema","json_schema":{{"name":"person","schema":{schema}}}}}}}"#
    );
    let (status, headers, text) = post_json(&http.url("/v1/chat/completions"), &body, &[]);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let person: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    // (llama.cpp's integer rule lets the small model write `-0.0`: a number all the same)
    assert!(
        person["name"].is_string() && person["age"].is_number(),
        "{person}"
    );
    let id = header(&headers, "x-nrvna-job-id").unwrap();
    assert_eq!(ws.meta("output", &id)["output_format"], "json_schema");
    // A free-form object has no bound: ask for a short one, greedily.
    let body = r#"{"messages":[{"role":"user","content":"Reply with exactly this JSON: {\"cat\": \"meow\"}"}],
        "max_tokens":300,"temperature":0,"response_format":{"type":"json_object"}}"#;
    let (status, _, text) = post_json(&http.url("/v1/chat/completions"), body, &[]);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let cat: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(cat.is_object(), "{cat}");

    // Embeddings: a string or a list of strings, one job each.
    let (status, headers, text) = post_json(
        &http.url("/v1/embeddings"),
        r#"{"input":["a cat","a dog"]}"#,
        &[],
    );
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 576);
    let ids = header(&headers, "x-nrvna-job-id").unwrap();
    assert_eq!(ids.split(',').count(), 2);

    // Models: the served name; another name is a 404 that lists them.
    let (body, status) = split_status(&curl(&[&http.url("/v1/models")]));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    let (status, _, text) = post_json(
        &http.url("/v1/chat/completions"),
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    assert_eq!(status, 404);
    let v = assert_error_object(&text, Some("model_not_found"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SmolLM2-135M-Instruct.Q4_1"),
        "{text}"
    );

    // Health: ready, with the model and the workers.
    let (body, status) = split_status(&curl(&[&http.url("/health")]));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["workers"], 2);
    assert_eq!(v["model"], "SmolLM2-135M-Instruct.Q4_1");

    // Metrics, in Prometheus text format.
    let (text, status) = split_status(&curl(&[&http.url("/metrics")]));
    assert_eq!(status, 200);
    for needle in [
        "nrvna_jobs{state=\"done\"} 4",
        "nrvna_generated_tokens_total ",
        "nrvna_prompt_tokens_total ",
        "nrvna_cached_tokens_total ",
        "nrvna_jobs{state=\"held\"} 0",
        "nrvna_busy_slots 0",
        "nrvna_queue_wait_seconds_bucket",
        "nrvna_job_duration_seconds_count 4",
        "nrvna_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2",
        "nrvna_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"404\"} 1",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
    let generated: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("nrvna_generated_tokens_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(generated > 0);
}

#[test]
fn keys_limits_and_malformed_requests_get_openai_errors_and_queue_nothing() {
    let ws = TestWs::new();
    let http = HttpDaemon::start(&ws, 1, &["--api-key", "sekrit", "--http-max-body", "4096"]);
    let url = http.url("/v1/chat/completions");
    let ok = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;
    let auth = ["-H", "authorization: Bearer sekrit"];
    // No key, a wrong key: 401, nothing queued.
    let (status, _, text) = post_json(&url, ok, &[]);
    assert_eq!(status, 401, "{text}");
    assert_error_object(&text, Some("invalid_api_key"));
    let (status, _, _) = post_json(&url, ok, &["-H", "authorization: Bearer wrong"]);
    assert_eq!(status, 401);
    assert!(ws.entries("input/ready").is_empty() && ws.entries("output").is_empty());
    // The right key works.
    let (status, _, text) = post_json(&url, ok, &auth);
    assert_eq!(status, 200, "{text}");
    // Over the body limit: 413.
    let big = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(10_000)
    );
    let (status, _, text) = post_json(&url, &big, &auth);
    assert_eq!(status, 413, "{text}");
    assert_error_object(&text, Some("request_too_large"));
    // Malformed JSON, wrong types, an empty list, n > 1, a deep nest, bad UTF-8: 400.
    // Past serde_json's 128 levels, within the body limit.
    let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
    for (body, param) in [
        ("{not json", None),
        (r#"{"messages":"hello"}"#, None),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":"ten"}"#,
            None,
        ),
        (r#"{"messages":[]}"#, Some("messages")),
        (
            r#"{"messages":[{"role":"tool","content":"x"}]}"#,
            Some("messages"),
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"n":3}"#,
            Some("n"),
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":9}"#,
            None,
        ),
        (deep.as_str(), None),
    ] {
        let (status, _, text) = post_json(&url, body, &auth);
        assert_eq!(status, 400, "{body:.80}: {text}");
        let v = assert_error_object(&text, None);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        if let Some(param) = param {
            assert_eq!(v["error"]["param"], param, "{text}");
        }
    }
    // Invalid UTF-8 bytes in the body, sent raw.
    let file = ws.scratch().join("bad.json");
    let mut bytes = br#"{"messages":[{"role":"user","content":""#.to_vec();
    bytes.extend([0xff, 0xfe]);
    bytes.extend(br#""}]}"#);
    std::fs::write(&file, bytes).unwrap();
    let (status, _, text) = post_json(&url, &format!("@{}", file.display()), &auth);
    assert_eq!(status, 400, "{text}");
    // Only the one good request became a job.
    assert_eq!(ws.entries("output").len(), 1);
    assert!(ws.entries("failed").is_empty() && ws.entries("input/ready").is_empty());
}

#[test]
fn a_non_loopback_address_without_a_key_is_refused_at_start() {
    let ws = TestWs::new();
    let out = Command::new(bin("nrvnad"))
        .arg(model())
        .arg(&ws.path)
        .args(["--http", "0.0.0.0:0"])
        .env_remove("NRVNA_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--api-key") && err.contains("0.0.0.0"),
        "{err}"
    );
}

#[test]
fn past_max_queue_requests_get_429_with_retry_after() {
    let ws = TestWs::new();
    // Jobs queued before the daemon starts keep its one worker busy.
    for _ in 0..4 {
        ws.submit(&["Write a very long story.", "--max-tokens", "400"]);
    }
    let http = HttpDaemon::start(&ws, 1, &["--max-queue", "1"]);
    let (status, headers, text) = post_json(
        &http.url("/v1/chat/completions"),
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    assert_eq!(status, 429, "{text}");
    assert_eq!(header(&headers, "retry-after").as_deref(), Some("1"));
    assert_error_object(&text, Some("queue_full"));
}

#[test]
fn a_client_that_disconnects_cancels_its_job() {
    let ws = TestWs::new();
    let http = HttpDaemon::start(&ws, 1, &[]);
    let url = http.url("/v1/chat/completions");
    // Streamed: the client reads the first chunks and goes away. Greedy, on a prompt whose
    // answer runs long: a sampled answer may end after the chunks the client waits for.
    let body = r#"{"messages":[{"role":"user","content":"Write a long story about a dragon who learns to bake bread."}],
        "max_tokens":2000,"stream":true,"temperature":0}"#;
    let headers = ws.scratch().join("h1.txt");
    let mut child = Command::new("curl")
        .args(["-sS", "-N", "-D"])
        .arg(&headers)
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ])
        .arg(&url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut content_seen = 0;
    while content_seen < 3 {
        let line = lines.next().unwrap().unwrap();
        content_seen +=
            usize::from(line.contains("\"content\":\"") && !line.contains("\"content\":\"\""));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let id = header(
        &std::fs::read_to_string(&headers).unwrap(),
        "x-nrvna-job-id",
    )
    .unwrap();
    let cancelled = wait_for(Duration::from_secs(30), || {
        ws.path.join("failed").join(&id).exists()
    });
    assert!(
        cancelled,
        "job {id} not cancelled: {:?}",
        ws.entries("processing")
    );
    assert_eq!(ws.meta("failed", &id)["status"], "cancelled");
    // Not streamed: the client gives up while its job waits behind a long one.
    let long = ws.submit(&[
        "Write a long story about a dragon who learns to bake bread.",
        "--max-tokens",
        "300",
        "--temp",
        "0",
    ]);
    ws.wait_started(&long, 1);
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "2",
            "-H",
            "content-type: application/json",
        ])
        .args([
            "--data-binary",
            r#"{"messages":[{"role":"user","content":"hi"}]}"#,
        ])
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(28), "curl should time out: {out:?}");
    let all_ended = wait_for(Duration::from_secs(120), || {
        ws.entries("processing").is_empty() && ws.entries("input/ready").is_empty()
    });
    assert!(
        all_ended,
        "a job runs on for nobody: {:?}",
        ws.entries("processing")
    );
    // Both HTTP jobs were cancelled; the wrk job ran to its end.
    let failed = ws.entries("failed");
    assert_eq!(failed.len(), 2, "{failed:?}");
    for id in failed {
        let meta = ws.meta("failed", &id);
        assert_eq!(meta["status"], "cancelled", "{meta}");
        assert_eq!(meta["tags"], serde_json::json!(["http"]));
    }
    assert_eq!(ws.entries("output"), vec![long]);
}

#[test]
fn kill_9_during_a_streamed_request_loses_nothing() {
    let ws = TestWs::new();
    let mut http = HttpDaemon::start(&ws, 1, &[]);
    let body = r#"{"messages":[{"role":"user","content":"Write a story about a lighthouse."}],
        "max_tokens":200,"stream":true}"#;
    let headers = ws.scratch().join("h.txt");
    let mut child = Command::new("curl")
        .args(["-sS", "-N", "-D"])
        .arg(&headers)
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ])
        .arg(http.url("/v1/chat/completions"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The first chunk carries only the role (empty content); wait for generated text.
    loop {
        let line = lines.next().unwrap().unwrap();
        if line.contains("\"content\":\"") && !line.contains("\"content\":\"\"") {
            break;
        }
    }
    let id = header(
        &std::fs::read_to_string(&headers).unwrap(),
        "x-nrvna-job-id",
    )
    .unwrap();
    http.daemon.signal(rustix::process::Signal::KILL);
    http.daemon.wait_exit(Duration::from_secs(10));
    // The client's stream breaks: curl says so.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(!rest.iter().any(|l| l.contains("[DONE]")), "{rest:?}");
    let status = child.wait().unwrap();
    assert!(!status.success(), "curl should report the broken stream");
    assert!(ws.path.join("processing").join(&id).exists());
    // A new daemon requeues it; it finishes once and can be fetched by its id.
    let _daemon = ws.daemon(1);
    let (code, out, _) = ws.follow(&id);
    assert_eq!(code, 0);
    assert!(!out.is_empty());
    assert_eq!(ws.meta("output", &id)["attempts"], 2);
    assert_eq!(ws.entries("output"), vec![id]);
    assert!(ws.entries("failed").is_empty());
}

#[test]
fn a_completion_is_the_raw_prompt_with_no_template_streamed_or_not() {
    let ws = TestWs::new();
    let http = HttpDaemon::start(&ws, 1, &[]);
    let body = r#"{"prompt":"The capital of France is","max_tokens":6,"temperature":0}"#;
    let (status, headers, text) = post_json(&http.url("/v1/completions"), body, &[]);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "text_completion");
    let id = header(&headers, "x-nrvna-job-id").unwrap();
    assert_eq!(
        v["choices"][0]["text"],
        ws.job_file("output", &id, "result.txt")
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{text}");
    let meta = ws.meta("output", &id);
    assert_eq!(meta["raw_prompt"], true);
    // No template: the prompt is a handful of tokens, where the chat template adds dozens.
    assert!(meta["prompt_tokens"].as_u64().unwrap() < 10, "{meta}");
    let stream = r#"{"prompt":"Once upon a time","max_tokens":12,"stream":true}"#;
    let out = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "-H",
            "content-type: application/json",
            "--data-binary",
            stream,
        ])
        .arg(http.url("/v1/completions"))
        .output()
        .unwrap();
    let raw = String::from_utf8(out.stdout).unwrap();
    let events = sse_events(&raw);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        assert_eq!(c["object"], "text_completion");
        text.push_str(c["choices"][0]["text"].as_str().unwrap());
    }
    assert!(!text.is_empty());
}

#[test]
fn health_says_draining_while_a_stopping_daemon_finishes_its_jobs() {
    let ws = TestWs::new();
    let http = HttpDaemon::start(&ws, 1, &[]);
    let id = ws.submit(&["Write a long story about a ship.", "--max-tokens", "400"]);
    ws.wait_started(&id, 1);
    http.daemon.signal(rustix::process::Signal::TERM);
    let mut seen = String::new();
    let draining = wait_for(Duration::from_secs(10), || {
        let (body, status) = split_status(&curl(&[&http.url("/health")]));
        seen = format!("{status} {body}");
        status == 503 && body.contains("\"draining\"")
    });
    assert!(draining, "{seen}");
}

#[test]
fn max_completion_tokens_top_p_base64_embeddings_and_one_model_by_name() {
    let ws = TestWs::new();
    let http = HttpDaemon::start(&ws, 1, &[]);
    // max_completion_tokens wins over max_tokens; top_p and seed reach the job (its
    // meta.json holds the sampling fields at its top level).
    let (status, headers, text) = post_json(
        &http.url("/v1/chat/completions"),
        r#"{"messages":[{"role":"user","content":"Write a long story about a ship."}],
            "max_tokens":50,"max_completion_tokens":3,"top_p":0.5,"seed":7}"#,
        &[],
    );
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{text}");
    assert_eq!(v["usage"]["completion_tokens"], 3, "{text}");
    let id = header(&headers, "x-nrvna-job-id").unwrap();
    let meta = ws.meta("output", &id);
    assert_eq!(meta["max_tokens"], 3, "{meta}");
    assert_eq!(meta["top_p"], 0.5, "{meta}");
    assert_eq!(meta["seed"], 7, "{meta}");

    // base64: the vector's little-endian f32 bytes; the same vector as floats.
    let embed = |format: &str| {
        let body = format!(r#"{{"input":"a cat","encoding_format":"{format}"}}"#);
        let (status, _, text) = post_json(&http.url("/v1/embeddings"), &body, &[]);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["data"][0]["embedding"].clone()
    };
    let floats = embed("float");
    let encoded = embed("base64");
    let decoded = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(encoded.as_str().unwrap().as_bytes())?;
            child.wait_with_output()
        })
        .unwrap()
        .stdout;
    let floats = floats.as_array().unwrap();
    assert_eq!(decoded.len(), floats.len() * 4);
    for (bytes, f) in decoded.chunks(4).zip(floats) {
        let x = f32::from_le_bytes(bytes.try_into().unwrap());
        assert!(
            (f64::from(x) - f.as_f64().unwrap()).abs() < 1e-6,
            "{x} vs {f}"
        );
    }

    // One model by name; another is a 404 model_not_found.
    let (body, status) = split_status(&curl(&[&http.url("/v1/models/SmolLM2-135M-Instruct.Q4_1")]));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["object"],
        "model"
    );
    let (body, status) = split_status(&curl(&[&http.url("/v1/models/gpt-4o")]));
    assert_eq!(status, 404, "{body}");
    assert_error_object(&body, Some("model_not_found"));
}
