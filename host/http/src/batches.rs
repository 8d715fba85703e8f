//! The Files and Batches API. A batch is a set of jobs under one tag (`batch_<id>`), each
//! job holding its request's `custom_id` and line in `batch_request.json`; the batch's
//! record in `<ws>/.batches/` says what was asked. Its state and counts are read from its
//! jobs, so it survives daemon restarts exactly as they do, and its output and error
//! files are made from them when asked for.
//!
//! ```text
//! <ws>/.batches/files/<file-id>        an uploaded JSONL file
//! <ws>/.batches/files/<file-id>.json   its object (name, purpose, size, time)
//! <ws>/.batches/<batch-id>.json        a batch's record
//! ```

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Multipart, Path as UrlPath, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nrvna_queue::{JobId, JobOutcome, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::chat::{self, ChatRequest};
use crate::completions::{self, CompletionRequest};
use crate::embeddings::{self, EmbeddingsRequest};
use crate::error::ApiError;
use crate::jobs;
use crate::respond::Kind;
use crate::{AppState, parse_body};

/// Where the Files and Batches API keeps its records, in the workspace.
pub const BATCHES_DIR: &str = ".batches";
/// The file in each batch job naming its request.
pub const BATCH_REQUEST_FILE: &str = "batch_request.json";
/// Most requests one batch may hold.
pub const MAX_REQUESTS: usize = 50_000;

#[derive(Serialize, Deserialize, Clone)]
struct FileObject {
    id: String,
    object: String,
    bytes: u64,
    created_at: u64,
    filename: String,
    purpose: String,
}

#[derive(Serialize, Deserialize, Clone)]
struct BatchRecord {
    id: String,
    endpoint: String,
    input_file_id: String,
    completion_window: String,
    created_at: u64,
    total: usize,
    /// Every request has its job (set once the last one is queued).
    #[serde(default)]
    submitted: bool,
    #[serde(default)]
    cancelled_at: Option<u64>,
    #[serde(default)]
    metadata: Option<Value>,
    /// Why the batch could not be queued whole (its daemon died while queueing it, and
    /// the input could not be read again): status `failed`.
    #[serde(default)]
    failed: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct BatchRequest {
    custom_id: String,
    line: usize,
}

/// One line of an input file.
#[derive(Deserialize)]
struct InputLine {
    custom_id: String,
    method: String,
    url: String,
    body: Value,
}

fn dir(state: &AppState) -> PathBuf {
    state.ws.root().join(BATCHES_DIR)
}

fn files_dir(state: &AppState) -> PathBuf {
    dir(state).join("files")
}

/// Ids are `file-…`/`batch_…` and a job id: digits and `_` only after the prefix.
fn checked_id<'a>(id: &'a str, prefix: &str) -> Result<&'a str, ApiError> {
    let rest = id.strip_prefix(prefix).unwrap_or("");
    if JobId::parse(rest).is_ok() {
        Ok(id)
    } else {
        Err(not_found(id))
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("no such object: {id}"),
    )
    .with_code("not_found")
}

/// Writes `bytes` to `path` durably: a temporary file, fsync, rename.
fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), ApiError> {
    let io = |e: std::io::Error| ApiError::server(format!("cannot write {}: {e}", path.display()));
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, id: &str) -> Result<T, ApiError> {
    let bytes = fs::read(path).map_err(|_| not_found(id))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::server(format!("{} is corrupt: {e}", path.display())))
}

// ----- files ----------------------------------------------------------------------------

pub async fn upload(AxumState(state): AxumState<Arc<AppState>>, mut form: Multipart) -> Response {
    let mut purpose = None;
    let mut file = None;
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or("").to_owned();
                let filename = field.file_name().unwrap_or("upload.jsonl").to_owned();
                match field.bytes().await {
                    Ok(bytes) if name == "purpose" => {
                        purpose = Some(String::from_utf8_lossy(&bytes).into_owned());
                    }
                    Ok(bytes) if name == "file" => file = Some((filename, bytes)),
                    Ok(_) => {}
                    Err(e) => return multipart_error(e),
                }
            }
            Ok(None) => break,
            Err(e) => return multipart_error(e),
        }
    }
    let Some((filename, bytes)) = file else {
        return ApiError::invalid(Some("file"), "the form has no `file` field").into_response();
    };
    let purpose = purpose.unwrap_or_default();
    if purpose != "batch" {
        return ApiError::invalid(
            Some("purpose"),
            format!("purpose is {purpose:?}; this server takes files for \"batch\" only"),
        )
        .into_response();
    }
    let object = FileObject {
        id: format!("file-{}", JobId::generate()),
        object: "file".into(),
        bytes: bytes.len() as u64,
        created_at: jobs::now_secs(),
        filename,
        purpose,
    };
    let dir = files_dir(&state);
    let stored = write_durable(&dir.join(&object.id), &bytes).and_then(|()| {
        let meta = serde_json::to_vec(&object).map_err(|e| ApiError::server(e.to_string()))?;
        write_durable(&dir.join(format!("{}.json", object.id)), &meta)
    });
    match stored {
        Ok(()) => axum::Json(object).into_response(),
        Err(e) => e.into_response(),
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> Response {
    ApiError::new(e.status(), "invalid_request_error", e.body_text()).into_response()
}

pub async fn file_object(
    AxumState(state): AxumState<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let found = output_file_batch(&id)
        .map(|(batch, kind)| {
            let record: BatchRecord = read_json(&dir(&state).join(format!("{batch}.json")), &id)?;
            let lines = batch_lines(&state, &record)?;
            let size = lines.get(kind).map(|l| l.len()).unwrap_or(0);
            Ok(FileObject {
                id: id.clone(),
                object: "file".into(),
                bytes: size as u64,
                created_at: record.created_at,
                filename: format!("{batch}_{kind}.jsonl"),
                purpose: "batch_output".into(),
            })
        })
        .unwrap_or_else(|| {
            checked_id(&id, "file-")?;
            read_json::<FileObject>(&files_dir(&state).join(format!("{id}.json")), &id)
        });
    match found {
        Ok(object) => axum::Json(object).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn file_content(
    AxumState(state): AxumState<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let found = match output_file_batch(&id) {
        Some((batch, kind)) => {
            read_json::<BatchRecord>(&dir(&state).join(format!("{batch}.json")), &id)
                .and_then(|record| batch_lines(&state, &record))
                .map(|mut lines| lines.remove(kind).unwrap_or_default().into_bytes())
        }
        None => checked_id(&id, "file-")
            .and_then(|id| fs::read(files_dir(&state).join(id)).map_err(|_| not_found(id))),
    };
    match found {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/jsonl")],
            bytes,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `file-<batch id>-output` / `-errors`: the batch and which file.
fn output_file_batch(id: &str) -> Option<(&str, &'static str)> {
    let rest = id.strip_prefix("file-")?;
    let (batch, kind) = if let Some(b) = rest.strip_suffix("-output") {
        (b, "output")
    } else {
        (rest.strip_suffix("-errors")?, "errors")
    };
    checked_id(batch, "batch_").ok().map(|b| (b, kind))
}

// ----- batches --------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    metadata: Option<Value>,
}

pub async fn create(AxumState(state): AxumState<Arc<AppState>>, body: crate::Body) -> Response {
    match create_batch(state, body).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The endpoints a batch may name.
const BATCH_ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

async fn create_batch(state: Arc<AppState>, body: crate::Body) -> Result<Value, ApiError> {
    let req: CreateBatch = parse_body(body)?;
    if !BATCH_ENDPOINTS.contains(&req.endpoint.as_str()) {
        return Err(ApiError::invalid(
            Some("endpoint"),
            format!(
                "endpoint {:?} is not served in batches; use one of {}",
                req.endpoint,
                BATCH_ENDPOINTS.join(", ")
            ),
        ));
    }
    if req.completion_window != "24h" {
        return Err(ApiError::invalid(
            Some("completion_window"),
            "completion_window must be \"24h\"",
        ));
    }
    let input_id = checked_id(&req.input_file_id, "file-")
        .map_err(|_| ApiError::invalid(Some("input_file_id"), "no such file"))?
        .to_owned();
    // Every line is checked before anything is queued: a bad file queues nothing.
    let requests = read_requests(&state, &req.endpoint, &input_id)?;
    jobs::check_backpressure(&state, requests.len())?;
    let record = BatchRecord {
        id: format!("batch_{}", JobId::generate()),
        endpoint: req.endpoint,
        input_file_id: input_id,
        completion_window: req.completion_window,
        created_at: jobs::now_secs(),
        total: requests.len(),
        submitted: false,
        cancelled_at: None,
        metadata: req.metadata,
        failed: None,
    };
    save(&state, &record)?;
    tokio::task::spawn_blocking(move || {
        let record = queue_requests(&state, record, requests)?;
        batch_object(&state, &record)
    })
    .await
    .map_err(|e| ApiError::server(format!("batch task failed: {e}")))?
}

/// A batch's requests as jobs to queue: (custom_id, line, job), every line checked.
fn read_requests(
    state: &AppState,
    endpoint: &str,
    input_id: &str,
) -> Result<Vec<(String, usize, nrvna_queue::Submission)>, ApiError> {
    let input = fs::read(files_dir(state).join(input_id))
        .map_err(|_| ApiError::invalid(Some("input_file_id"), format!("no file {input_id}")))?;
    let mut requests = Vec::new();
    let mut seen = HashMap::new();
    for (i, line) in input.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |m: String| {
            ApiError::invalid(
                Some("input_file_id"),
                format!("line {} of {input_id}: {m}", i + 1),
            )
        };
        let parsed: InputLine = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
        if parsed.method != "POST" || parsed.url != endpoint {
            return Err(bad(format!(
                "{} {} does not match the batch's endpoint POST {endpoint}",
                parsed.method, parsed.url
            )));
        }
        if seen.insert(parsed.custom_id.clone(), i).is_some() {
            return Err(bad(format!(
                "custom_id {:?} is used twice",
                parsed.custom_id
            )));
        }
        if parsed.body.get("stream").and_then(Value::as_bool) == Some(true) {
            return Err(bad("a batch request cannot stream".into()));
        }
        let built = match endpoint {
            "/v1/chat/completions" => serde_json::from_value::<ChatRequest>(parsed.body)
                .map_err(|e| bad(e.to_string()))
                .and_then(|r| chat::submission(state, r).map_err(|e| bad(e.message))),
            "/v1/completions" => serde_json::from_value::<CompletionRequest>(parsed.body)
                .map_err(|e| bad(e.to_string()))
                .and_then(|r| completions::submission(state, r).map_err(|e| bad(e.message))),
            _ => serde_json::from_value::<EmbeddingsRequest>(parsed.body)
                .map_err(|e| bad(e.to_string()))
                .and_then(|r| embeddings::batch_submission(state, r).map_err(|e| bad(e.message))),
        };
        let (sub, _) = built?;
        requests.push((parsed.custom_id, i + 1, sub));
    }
    if requests.is_empty() || requests.len() > MAX_REQUESTS {
        return Err(ApiError::invalid(
            Some("input_file_id"),
            format!(
                "{input_id} holds {} requests; give 1 to {MAX_REQUESTS}",
                requests.len()
            ),
        ));
    }
    Ok(requests)
}

fn save(state: &AppState, record: &BatchRecord) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(record).map_err(|e| ApiError::server(e.to_string()))?;
    write_durable(&dir(state).join(format!("{}.json", record.id)), &bytes)
}

/// Queues the requests that have no job yet (all of them for a new batch; the rest for
/// one whose daemon died while queueing it), then marks the batch submitted.
fn queue_requests(
    state: &AppState,
    mut record: BatchRecord,
    requests: Vec<(String, usize, nrvna_queue::Submission)>,
) -> Result<BatchRecord, ApiError> {
    let queued: std::collections::HashSet<usize> = batch_jobs(state, &record)?
        .into_iter()
        .map(|(_, line, _, _)| line)
        .collect();
    let tag = record.id.clone();
    for (custom_id, line, mut sub) in requests {
        if queued.contains(&line) {
            continue;
        }
        let named = serde_json::to_vec(&BatchRequest { custom_id, line })
            .map_err(|e| ApiError::server(e.to_string()))?;
        sub.files.push((BATCH_REQUEST_FILE.to_owned(), named));
        jobs::submit_blocking(state, sub, std::slice::from_ref(&tag))?;
        // Tests kill the daemon here, with the batch part queued.
        nrvna_queue::failpoint_at("batch-request-queued");
    }
    record.submitted = true;
    save(state, &record)?;
    Ok(record)
}

/// Finishes what a daemon that died while queueing a batch left: each batch record not
/// marked submitted gets the rest of its jobs, or, when its input cannot be read again,
/// is failed and its queued jobs cancelled. Run once the model is known (the requests
/// are checked against it), before the server says ready.
pub fn recover(state: &AppState) {
    let Ok(entries) = fs::read_dir(dir(state)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if !id.starts_with("batch_") {
            continue;
        }
        let Ok(record) = load(state, id) else {
            continue;
        };
        if record.submitted || record.failed.is_some() {
            continue;
        }
        if record.cancelled_at.is_some() {
            // Cancelled while queueing: what was queued is cancelled; nothing more comes.
            let mut record = record;
            record.total = batch_jobs(state, &record).map_or(0, |j| j.len());
            record.submitted = true;
            if let Err(e) = save(state, &record) {
                tracing::warn!("batch {id}: cannot record its end: {}", e.message);
            }
            continue;
        }
        let queued = match read_requests(state, &record.endpoint, &record.input_file_id) {
            Ok(requests) if requests.len() == record.total => {
                queue_requests(state, record.clone(), requests).map(|_| ())
            }
            Ok(requests) => Err(ApiError::server(format!(
                "its input now holds {} requests, not {}",
                requests.len(),
                record.total
            ))),
            Err(e) => Err(e),
        };
        match queued {
            Ok(()) => tracing::info!("batch {id}: queued the rest of its requests"),
            Err(e) => fail_batch(state, record, &e.message),
        }
    }
}

/// Fails a batch that could not be queued whole; cancels what it queued.
fn fail_batch(state: &AppState, mut record: BatchRecord, why: &str) {
    let id = record.id.clone();
    tracing::warn!("batch {id}: cannot finish queueing it: {why}; failed");
    for (_, _, job, job_state) in batch_jobs(state, &record).unwrap_or_default() {
        if !job_state.is_terminal() {
            let _ = state.ws.cancel(&job);
        }
    }
    record.failed = Some(format!(
        "the daemon stopped while queueing this batch and cannot queue the rest: {why}"
    ));
    if let Err(e) = save(state, &record) {
        tracing::warn!("batch {id}: cannot record its failure: {}", e.message);
    }
}

/// A batch's jobs: (custom_id, line, id, state), in input order.
fn batch_jobs(
    state: &AppState,
    record: &BatchRecord,
) -> Result<Vec<(String, usize, JobId, State)>, ApiError> {
    let mut out = Vec::new();
    for (id, job_state) in state.ws.all_jobs()? {
        // Staged but never published (its submitter died): not queued.
        if job_state == State::Writing {
            continue;
        }
        let Ok(meta) = state.ws.read_meta(job_state, &id) else {
            continue;
        };
        if !meta.tags.iter().any(|t| t == &record.id) {
            continue;
        }
        let Ok(bytes) = state.ws.read_file(job_state, &id, BATCH_REQUEST_FILE) else {
            continue;
        };
        if let Ok(req) = serde_json::from_slice::<BatchRequest>(&bytes) {
            out.push((req.custom_id, req.line, id, job_state));
        }
    }
    out.sort_by_key(|(_, line, _, _)| *line);
    Ok(out)
}

fn batch_object(state: &AppState, record: &BatchRecord) -> Result<Value, ApiError> {
    let jobs = batch_jobs(state, record)?;
    let done = jobs.iter().filter(|j| j.3 == State::Done).count();
    let failed = jobs.iter().filter(|j| j.3 == State::Failed).count();
    let ended = done + failed == record.total && record.submitted;
    let status = match (record.submitted, record.cancelled_at, ended) {
        _ if record.failed.is_some() => "failed",
        (false, None, _) => "validating",
        (_, Some(_), false) => "cancelling",
        (_, Some(_), true) => "cancelled",
        (true, None, true) => "completed",
        (true, None, false) => "in_progress",
    };
    let finished = matches!(status, "completed" | "cancelled" | "failed");
    let output = (finished && done > 0).then(|| format!("file-{}-output", record.id));
    let errors = (finished && failed > 0).then(|| format!("file-{}-errors", record.id));
    Ok(json!({
        "id": record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        "errors": record.failed.as_ref().map(|why| json!({
            "object": "list",
            "data": [{"code": "batch_interrupted", "message": why, "param": null, "line": null}],
        })),
        "input_file_id": record.input_file_id,
        "completion_window": record.completion_window,
        "status": status,
        "output_file_id": output,
        "error_file_id": errors,
        "created_at": record.created_at,
        "in_progress_at": record.submitted.then_some(record.created_at),
        "completed_at": (status == "completed").then(jobs::now_secs),
        "failed_at": (status == "failed").then_some(record.created_at),
        "cancelling_at": record.cancelled_at,
        "cancelled_at": (status == "cancelled").then_some(record.cancelled_at).flatten(),
        "expires_at": record.created_at + 24 * 3600,
        "request_counts": {"total": record.total, "completed": done, "failed": failed},
        "metadata": record.metadata,
    }))
}

/// The output and error files' lines, in OpenAI's format, by `output` / `errors`.
fn batch_lines(
    state: &AppState,
    record: &BatchRecord,
) -> Result<HashMap<&'static str, String>, ApiError> {
    let embed = record.endpoint == "/v1/embeddings";
    let model = state.check_model(None, embed).unwrap_or_default();
    let mut output = String::new();
    let mut errors = String::new();
    for (custom_id, _, id, job_state) in batch_jobs(state, record)? {
        let Some(ended) = state.ws.outcome(job_state, &id)? else {
            continue;
        };
        let meta = state.ws.read_meta(job_state, &id)?;
        let line = match &ended {
            JobOutcome::Done(artifact) => {
                let text = String::from_utf8_lossy(&artifact.bytes);
                let body = match record.endpoint.as_str() {
                    "/v1/embeddings" => embeddings::batch_body(&model, &artifact.bytes, &meta),
                    "/v1/completions" => Kind::Completion.object(&id, &model, &text, &meta),
                    _ => Kind::Chat.object(&id, &model, &text, &meta),
                };
                json!({
                    "id": format!("batch_req_{id}"),
                    "custom_id": custom_id,
                    "response": {"status_code": 200, "request_id": id.as_str(), "body": body},
                    "error": null,
                })
            }
            JobOutcome::Cancelled => json!({
                "id": format!("batch_req_{id}"),
                "custom_id": custom_id,
                "response": null,
                "error": {"code": "batch_cancelled", "message": "the batch was cancelled before this request ran"},
            }),
            JobOutcome::Failed { reason, .. } => json!({
                "id": format!("batch_req_{id}"),
                "custom_id": custom_id,
                "response": null,
                "error": {"code": "job_failed", "message": format!("job {id} failed: {reason}")},
            }),
            JobOutcome::Denied { reason } => json!({
                "id": format!("batch_req_{id}"),
                "custom_id": custom_id,
                "response": null,
                "error": {"code": "job_denied", "message": format!("job {id} was denied: {reason}")},
            }),
        };
        let target = if matches!(ended, JobOutcome::Done(_)) {
            &mut output
        } else {
            &mut errors
        };
        target.push_str(&line.to_string());
        target.push('\n');
    }
    Ok(HashMap::from([("output", output), ("errors", errors)]))
}

fn load(state: &AppState, id: &str) -> Result<BatchRecord, ApiError> {
    checked_id(id, "batch_")?;
    read_json(&dir(state).join(format!("{id}.json")), id)
}

pub async fn get_batch(
    AxumState(state): AxumState<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let found = tokio::task::spawn_blocking(move || {
        let record = load(&state, &id)?;
        batch_object(&state, &record)
    })
    .await;
    match found {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::server(e.to_string()).into_response(),
    }
}

pub async fn cancel(
    AxumState(state): AxumState<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let done = tokio::task::spawn_blocking(move || {
        let mut record = load(&state, &id)?;
        if record.cancelled_at.is_none() {
            record.cancelled_at = Some(jobs::now_secs());
            let bytes = serde_json::to_vec(&record).map_err(|e| ApiError::server(e.to_string()))?;
            write_durable(&dir(&state).join(format!("{id}.json")), &bytes)?;
        }
        for (_, _, job, job_state) in batch_jobs(&state, &record)? {
            if !job_state.is_terminal() {
                state.ws.cancel(&job)?;
            }
        }
        batch_object(&state, &record)
    })
    .await;
    match done {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::server(e.to_string()).into_response(),
    }
}

pub async fn list(AxumState(state): AxumState<Arc<AppState>>) -> Response {
    let listed = tokio::task::spawn_blocking(move || {
        let mut ids: Vec<String> = fs::read_dir(dir(&state))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(str::to_owned)
            })
            .filter(|n| n.starts_with("batch_"))
            .collect();
        ids.sort_by(|a, b| b.cmp(a));
        let mut data = Vec::new();
        for id in ids {
            data.push(batch_object(&state, &load(&state, &id)?)?);
        }
        Ok::<_, ApiError>(json!({
            "object": "list",
            "data": data,
            "first_id": data.first().map(|b| b["id"].clone()),
            "last_id": data.last().map(|b| b["id"].clone()),
            "has_more": false,
        }))
    })
    .await;
    match listed {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::server(e.to_string()).into_response(),
    }
}
