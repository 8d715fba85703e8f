//! Running one claimed job through the engine and settling it in the workspace.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nrvna_engine::{
    Backend, CancelFlag, ChatTurn, EngineError, Finish, Request, RequestKind, Response, TokenCount,
};
use nrvna_http::LiveJob;
use nrvna_queue::stream::{self, PartialWriter};
use nrvna_queue::{
    ClaimedJob, EMBEDDING_FILE, GRAMMAR_FILE, JobId, MESSAGES_FILE, Mode, Outcome, OutputFormat,
    QueueError, RESPONSE_FILE, RESULT_FILE, SCHEMA_FILE, State, Workspace, messages,
};

/// How a job left the worker.
#[derive(Debug)]
pub enum JobEnd {
    Done,
    Failed(String),
    Cancelled,
    /// Put back in the queue (shutdown interrupted it, or it could not be settled).
    Requeued,
    /// Its directory vanished or could not be written at all.
    Lost(String),
}

pub fn run_job(
    ws: &Workspace,
    engine: &dyn Backend,
    job: &ClaimedJob,
    cancel: CancelFlag,
    progress: TokenCount,
    interrupted: &AtomicBool,
    live: Option<&LiveJob>,
) -> JobEnd {
    let request = match build_request(ws, job, cancel, progress) {
        Ok(r) => r,
        Err(reason) => return settle(ws, job, Err((reason, Outcome::default()))),
    };
    let model = Some(engine.info().model_for(request.kind).to_owned());
    let backend = Some(engine.backend());
    let result = if request.kind == RequestKind::Generate {
        run_streaming(ws, engine, job, request, live)
    } else {
        engine.run(request)
    };
    if let Err(EngineError::Cancelled { .. }) = &result
        && interrupted.load(Ordering::SeqCst)
    {
        // Shutdown, not the job's fault: back to the queue with the attempt uncounted.
        return match ws.requeue_claimed(job, true) {
            Ok(()) => JobEnd::Requeued,
            Err(e) => JobEnd::Lost(e.to_string()),
        };
    }
    let settled = match result {
        Ok(Response::Text {
            text,
            prompt_tokens,
            cached_tokens,
            generated_tokens,
            finish,
        }) => {
            let finish_reason = match finish {
                Finish::EndOfGeneration => "stop",
                Finish::TokenLimit => "length",
            };
            let outcome = |artifact: &str| Outcome {
                artifacts: vec![(artifact.to_owned(), text.clone().into_bytes())],
                prompt_tokens: Some(prompt_tokens),
                cached_tokens: Some(cached_tokens),
                generated_tokens: Some(generated_tokens),
                model: model.clone(),
                backend: backend.clone(),
                finish_reason: Some(finish_reason.to_owned()),
            };
            if job.meta.output_format == Some(OutputFormat::JsonSchema)
                && let Err(e) = serde_json::from_str::<serde_json::Value>(&text)
            {
                Err((
                    json_failure(&e, finish, generated_tokens),
                    outcome(RESPONSE_FILE),
                ))
            } else {
                Ok(outcome(RESULT_FILE))
            }
        }
        Ok(Response::Embedding {
            vector,
            prompt_tokens,
        }) => {
            let json = serde_json::json!({ "dim": vector.len(), "vector": vector });
            Ok(Outcome {
                artifacts: vec![(EMBEDDING_FILE.to_owned(), json.to_string().into_bytes())],
                prompt_tokens: Some(prompt_tokens),
                generated_tokens: None,
                model,
                backend,
                ..Outcome::default()
            })
        }
        Err(EngineError::Cancelled { partial }) => {
            let outcome = Outcome {
                model,
                backend,
                ..partial_outcome(&partial)
            };
            return match ws.cancel_claimed(job, outcome) {
                Ok(()) => JobEnd::Cancelled,
                Err(e) => JobEnd::Lost(e.to_string()),
            };
        }
        Err(e) => {
            let outcome = Outcome {
                model,
                backend,
                ..partial_outcome(e.partial().unwrap_or(""))
            };
            Err((e.to_string(), outcome))
        }
    };
    settle(ws, job, settled)
}

/// Runs a generation while a second thread appends its text to the job's `partial.txt`
/// as it comes (nrvna_queue::stream), and to its `live` view when an HTTP server in this
/// process follows jobs; every byte is written, and the file removed, before this
/// returns, so the text is complete once the job leaves `processing/`.
fn run_streaming(
    ws: &Workspace,
    engine: &dyn Backend,
    job: &ClaimedJob,
    request: Request,
    live: Option<&LiveJob>,
) -> Result<Response, EngineError> {
    let generated = request.progress.clone();
    let ended = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        let publisher = std::thread::Builder::new()
            .name("nrvna-partial".into())
            .spawn_scoped(scope, || {
                publish_partial(ws, &job.id, &generated, &ended, live)
            });
        let result = engine.run(request);
        ended.store(true, Ordering::SeqCst);
        generated.wake();
        if let Ok(publisher) = publisher {
            let _ = publisher.join();
        }
        result
    });
    stream::remove_partial(ws, &job.id);
    result
}

/// Appends what the engine generates to `partial.txt` (and `live`) until the generation has ended and
/// everything is written. A live view only: a write failure stops it, not the job.
fn publish_partial(
    ws: &Workspace,
    id: &JobId,
    generated: &TokenCount,
    ended: &AtomicBool,
    live: Option<&LiveJob>,
) {
    let mut writer = None;
    // A file that cannot be written stops the file, not the live view.
    let mut file_failed = false;
    let mut written = 0;
    loop {
        // Read the flag first: if it says ended, the text read after it is all there is.
        let last = ended.load(Ordering::SeqCst);
        let new = generated.text_since(written, PARTIAL_WAIT);
        if !new.is_empty() {
            // The in-process readers first: they are the ones waiting on this token.
            if let Some(live) = live {
                live.append(&new);
            }
            if writer.is_none() && !file_failed {
                match PartialWriter::create(ws, id) {
                    Ok(w) => writer = Some(w),
                    Err(e) => {
                        tracing::warn!("job {id}: cannot publish partial output: {e}");
                        file_failed = true;
                    }
                }
            }
            if let Some(w) = &mut writer
                && let Err(e) = w.append(&new)
            {
                tracing::warn!("job {id}: cannot publish partial output: {e}");
                writer = None;
                file_failed = true;
            }
            written += new.len();
        }
        if last && new.is_empty() {
            return;
        }
        if file_failed && live.is_none() {
            return;
        }
    }
}

/// How long the publisher waits for new text before it looks at the end flag again.
const PARTIAL_WAIT: Duration = Duration::from_millis(20);

/// Why a JSON-schema job's output does not parse: cut off by the token limit (the
/// grammar never got to close the JSON), or something else the parser names.
fn json_failure(error: &serde_json::Error, finish: Finish, generated_tokens: u32) -> String {
    if finish == Finish::TokenLimit {
        format!(
            "output is not valid JSON: stopped at the token limit ({generated_tokens}) before \
             the JSON closed; raise --max-tokens (the raw output is in {RESPONSE_FILE})"
        )
    } else {
        format!("output is not valid JSON ({error}); the raw output is in {RESPONSE_FILE}")
    }
}

fn partial_outcome(partial: &str) -> Outcome {
    if partial.is_empty() {
        Outcome::default()
    } else {
        Outcome {
            artifacts: vec![(RESPONSE_FILE.to_owned(), partial.as_bytes().to_vec())],
            ..Outcome::default()
        }
    }
}

fn build_request(
    ws: &Workspace,
    job: &ClaimedJob,
    cancel: CancelFlag,
    progress: TokenCount,
) -> Result<Request, String> {
    let kind = match job.meta.mode {
        Mode::Text => RequestKind::Generate,
        Mode::Embed => RequestKind::Embed,
        Mode::Vision => {
            return Err("vision jobs are not supported by this nrvnad yet".into());
        }
        Mode::Agent => return Err("agent jobs are run by the agent runtime, not the engine".into()),
    };
    // A remote backend sends the schema itself (`response_format`), not its grammar.
    let schema = match job.meta.output_format {
        Some(OutputFormat::JsonSchema) => {
            let bytes = ws
                .read_file(State::Running, &job.id, SCHEMA_FILE)
                .map_err(|e| format!("JSON-schema job without a usable {SCHEMA_FILE}: {e}"))?;
            Some(String::from_utf8(bytes).map_err(|_| format!("{SCHEMA_FILE} is not UTF-8"))?)
        }
        _ => None,
    };
    let grammar = match job.meta.output_format {
        Some(_) => {
            let bytes = ws
                .read_file(State::Running, &job.id, GRAMMAR_FILE)
                .map_err(|e| {
                    format!("structured-output job without a usable {GRAMMAR_FILE}: {e}")
                })?;
            Some(String::from_utf8(bytes).map_err(|_| format!("{GRAMMAR_FILE} is not UTF-8"))?)
        }
        None => None,
    };
    let messages = match ws.read_file(State::Running, &job.id, MESSAGES_FILE) {
        Ok(bytes) => messages::parse(&bytes)
            .map_err(|e| format!("{MESSAGES_FILE}: {e}"))?
            .into_iter()
            .map(|m| ChatTurn {
                role: m.role.as_str().to_owned(),
                content: m.content,
            })
            .collect(),
        Err(QueueError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(format!("cannot read {MESSAGES_FILE}: {e}")),
    };
    let s = &job.meta.sampling;
    Ok(Request {
        kind,
        prompt: job.prompt.clone(),
        system: job.meta.system.clone(),
        max_tokens: s.max_tokens,
        temperature: s.temperature,
        seed: s.seed,
        top_k: s.top_k,
        top_p: s.top_p,
        grammar,
        schema,
        messages,
        stop: s.stop.clone(),
        raw_prompt: job.meta.raw_prompt,
        cancel,
        progress,
    })
}

/// Moves the job to `output/` or `failed/`. If even that cannot be written (full disk,
/// directory gone), falls back to failing, then to requeueing (its attempt stays counted,
/// so the ceiling still bounds it), and reports a lost job only when nothing works.
pub fn settle(
    ws: &Workspace,
    job: &ClaimedJob,
    result: Result<Outcome, (String, Outcome)>,
) -> JobEnd {
    let first = match result {
        Ok(outcome) => match ws.complete(job, outcome) {
            Ok(()) => return JobEnd::Done,
            // Another daemon runs it now (this one's lease lapsed): leave it alone.
            Err(e @ QueueError::ClaimLost { .. }) => return JobEnd::Lost(e.to_string()),
            Err(e) => format!("cannot write the result: {e}"),
        },
        Err((reason, outcome)) => match ws.fail(job, &reason, outcome) {
            Ok(()) => return JobEnd::Failed(reason),
            Err(e @ QueueError::ClaimLost { .. }) => return JobEnd::Lost(e.to_string()),
            Err(e) => format!("{reason}; and cannot record the failure: {e}"),
        },
    };
    if ws.fail(job, &first, Outcome::default()).is_ok() {
        return JobEnd::Failed(first);
    }
    match ws.requeue_claimed(job, false) {
        Ok(()) => {
            tracing::warn!("job {}: {first}; requeued", job.id);
            JobEnd::Requeued
        }
        Err(e) => JobEnd::Lost(format!("{first}; requeue failed too: {e}")),
    }
}
