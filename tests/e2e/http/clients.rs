//! The official `openai` Python package against nrvnad: what every OpenAI client does.

use std::process::Command;

use nrvna_tests::TestWs;

use super::{HttpDaemon, openai_python};

/// Runs `script` with the venv's Python; `NRVNA_BASE` is the API's base URL.
fn python(http: &HttpDaemon, script: &str) -> String {
    let out = Command::new(openai_python())
        .args(["-c", script])
        .env("NRVNA_BASE", http.url("/v1"))
        .env("OPENAI_API_KEY", "sk-local")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_openai_package_chats_streams_structures_embeds_and_lists_models() {
    let ws = TestWs::new();
    let http = HttpDaemon::start(&ws, 2, &["--api-key", "sk-local"]);
    let out = python(
        &http,
        r#"
import json, os, openai
client = openai.OpenAI(base_url=os.environ["NRVNA_BASE"])
models = [m.id for m in client.models.list()]
assert models == ["SmolLM2-135M-Instruct.Q4_1"], models
model = models[0]

raw = client.chat.completions.with_raw_response.create(
    model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16)
job = raw.headers["x-nrvna-job-id"]
chat = raw.parse()
assert chat.choices[0].message.content, chat
assert chat.choices[0].finish_reason in ("stop", "length"), chat
assert chat.usage.completion_tokens > 0, chat
print("chat", job, json.dumps(chat.choices[0].message.content))

stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Tell me about rivers."}],
    max_tokens=24, stream=True, stream_options={"include_usage": True})
pieces, finish, usage = [], None, None
for chunk in stream:
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
assert len([p for p in pieces if p]) > 3, pieces
assert finish in ("stop", "length") and usage.completion_tokens > 0, (finish, usage)
print("stream", len(pieces))

schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
          "population": {"type": "integer"}}, "required": ["city", "population"],
          "additionalProperties": False}
structured = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Name a city and its population."}],
    max_tokens=200, temperature=0,
    response_format={"type": "json_schema",
                     "json_schema": {"name": "city", "schema": schema, "strict": True}})
city = json.loads(structured.choices[0].message.content)
assert isinstance(city["city"], str) and isinstance(city["population"], int), city
print("structured", json.dumps(city))

comp = client.completions.create(model=model, prompt="The capital of France is",
    max_tokens=6, temperature=0)
assert comp.choices[0].text and comp.choices[0].finish_reason == "length", comp
print("completion", json.dumps(comp.choices[0].text))

emb = client.embeddings.create(model=model, input=["one", "two", "three"])
assert [d.index for d in emb.data] == [0, 1, 2], emb
assert len(emb.data[0].embedding) == 576
print("embeddings", len(emb.data))

try:
    client.chat.completions.create(model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}])
    raise SystemExit("no error for an unknown model")
except openai.NotFoundError as e:
    assert e.code == "model_not_found" and model in e.message, e
try:
    openai.OpenAI(base_url=os.environ["NRVNA_BASE"], api_key="wrong").models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    pass
print("errors ok")
"#,
    );
    let chat_line = out.lines().find(|l| l.starts_with("chat ")).unwrap();
    let mut parts = chat_line.splitn(3, ' ').skip(1);
    let job = parts.next().unwrap();
    let content: String = serde_json::from_str(parts.next().unwrap()).unwrap();
    // The client's answer is the job's result.
    assert_eq!(ws.job_file("output", job, "result.txt"), content);
    assert!(out.contains("errors ok"), "{out}");
}

#[test]
fn a_batch_through_the_openai_package_survives_a_daemon_restart() {
    let ws = TestWs::new();
    let mut http = HttpDaemon::start(&ws, 2, &[]);
    let created = python(
        &http,
        r#"
import io, json, os, openai
client = openai.OpenAI(base_url=os.environ["NRVNA_BASE"])
lines = [json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": f"Say the number {i}."}],
                  "max_tokens": 40}}) for i in range(6)]
f = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
assert f.purpose == "batch" and f.bytes > 0, f
b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                          completion_window="24h")
assert b.request_counts.total == 6, b
assert b.status in ("in_progress", "completed"), b
print(b.id)
"#,
    );
    let batch = out_last_line(&created);
    // The daemon dies with the batch under way; a new one finishes it.
    http.daemon.signal(rustix::process::Signal::KILL);
    http.daemon.wait_exit(std::time::Duration::from_secs(10));
    drop(http);
    let http = HttpDaemon::start(&ws, 2, &[]);
    let script = format!(
        r#"
import json, os, time, openai
client = openai.OpenAI(base_url=os.environ["NRVNA_BASE"])
for _ in range(600):
    b = client.batches.retrieve("{batch}")
    if b.status == "completed":
        break
    time.sleep(0.2)
assert b.status == "completed", b
assert b.request_counts.total == 6 and b.request_counts.completed == 6, b
assert b.request_counts.failed == 0 and b.error_file_id is None, b
assert any(x.id == b.id for x in client.batches.list()), "not listed"
text = client.files.content(b.output_file_id).text
lines = [json.loads(l) for l in text.splitlines()]
assert sorted(l["custom_id"] for l in lines) == [f"req-{{i}}" for i in range(6)], lines
for l in lines:
    assert l["error"] is None, l
    r = l["response"]
    assert r["status_code"] == 200, l
    assert r["body"]["object"] == "chat.completion", l
    assert r["body"]["choices"][0]["message"]["content"], l
    print(r["request_id"])
"#
    );
    let out = python(&http, &script);
    let jobs: Vec<&str> = out.lines().collect();
    assert_eq!(jobs.len(), 6);
    // Each line's request id is its job: done once, tagged with the batch.
    for job in jobs {
        let meta = ws.meta("output", job);
        let tags = meta["tags"].as_array().unwrap();
        assert!(tags.iter().any(|t| t == batch.as_str()), "{meta}");
    }
    assert_eq!(ws.entries("output").len(), 6);
    assert!(ws.entries("failed").is_empty());
}

fn out_last_line(out: &str) -> String {
    out.lines().last().unwrap_or_default().trim().to_owned()
}

#[test]
fn a_cancelled_batch_counts_its_requests_and_lists_them_in_its_error_file() {
    let ws = TestWs::new();
    let http = HttpDaemon::start(&ws, 1, &[]);
    python(
        &http,
        r#"
import io, json, os, time, openai
client = openai.OpenAI(base_url=os.environ["NRVNA_BASE"])
lines = [json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": "Write a long story."}],
                  "max_tokens": 300}}) for i in range(4)]
f = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                          completion_window="24h")
b = client.batches.cancel(b.id)
assert b.status in ("cancelling", "cancelled"), b
for _ in range(300):
    b = client.batches.retrieve(b.id)
    if b.status == "cancelled":
        break
    time.sleep(0.2)
assert b.status == "cancelled", b
c = b.request_counts
assert c.total == 4 and c.completed + c.failed == 4 and c.failed >= 3, c
errors = [json.loads(l) for l in client.files.content(b.error_file_id).text.splitlines()]
assert len(errors) == c.failed, errors
assert all(e["response"] is None and e["error"]["code"] == "batch_cancelled" for e in errors), errors
# A bad input file queues nothing.
bad = client.files.create(file=("bad.jsonl", io.BytesIO(b'{"custom_id": "x"}\n')), purpose="batch")
try:
    client.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions",
                          completion_window="24h")
    raise SystemExit("a bad input file was accepted")
except openai.BadRequestError as e:
    assert "line 1" in e.message, e
print("ok")
"#,
    );
    assert!(ws.entries("processing").is_empty() && ws.entries("input/ready").is_empty());
    assert_eq!(ws.entries("output").len() + ws.entries("failed").len(), 4);
}
