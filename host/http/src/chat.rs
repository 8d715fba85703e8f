//! `POST /v1/chat/completions`: the messages become a chat job (`messages.json`, the last
//! user message in `prompt.txt`); the answer is the job's result, whole or streamed.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::http::HeaderValue;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use nrvna_queue::messages::{self, Message, Role};
use nrvna_queue::stream::{Followed, TextFollower};
use nrvna_queue::{
    GRAMMAR_FILE, JobId, JobOutcome, MESSAGES_FILE, OutputFormat, SCHEMA_FILE, Sampling, Submission,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::jobs::{self, CancelOnDrop, POLL};
use crate::{AppState, JOB_ID_HEADER, parse_body};

#[derive(Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<InMessage>,
    #[serde(flatten)]
    pub sampling: SamplingParams,
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub response_format: Option<ResponseFormat>,
}

/// The sampling parameters chat and completions share.
#[derive(Deserialize, Default)]
pub struct SamplingParams {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Deserialize)]
pub struct InMessage {
    pub role: String,
    pub content: Content,
}

/// A message's content: a string, or a list of parts of which only text is supported.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Deserialize)]
pub struct JsonSchemaFormat {
    pub name: Option<String>,
    pub schema: Option<Value>,
}

impl SamplingParams {
    /// The queue's sampling settings, checked as the queue checks them.
    pub fn to_sampling(&self) -> Result<Sampling, ApiError> {
        // OpenAI takes any integer; the engine takes 32 bits.
        let seed = self
            .seed
            .map(|seed| u32::try_from(seed.rem_euclid(1 << 32)).unwrap_or(0));
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(list)) => list.clone(),
        };
        Ok(Sampling {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            seed,
            top_k: None,
            top_p: self.top_p,
            stop,
        })
    }
}

fn to_messages(input: Vec<InMessage>) -> Result<Vec<Message>, ApiError> {
    let mut out = Vec::with_capacity(input.len());
    for (i, m) in input.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid(
                    Some("messages"),
                    format!(
                        "messages[{i}].role is {other:?}; supported roles are system, \
                         developer, user and assistant"
                    ),
                ));
            }
        };
        let content = match m.content {
            Content::Text(text) => text,
            Content::Parts(parts) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                Some("messages"),
                                format!(
                                    "messages[{i}] has a content part of type {kind:?}; only \
                                     text parts are supported"
                                ),
                            ));
                        }
                    }
                }
                text
            }
        };
        out.push(Message { role, content });
    }
    messages::check(&out).map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
    Ok(out)
}

/// Payload files (name, bytes) and the output format they make.
pub type Structured = (Vec<(String, Vec<u8>)>, Option<OutputFormat>);

/// The files and output format a `response_format` asks for.
pub fn structured_output(
    state: &AppState,
    format: Option<&ResponseFormat>,
) -> Result<Structured, ApiError> {
    let schema = match format {
        None | Some(ResponseFormat::Text) => return Ok((Vec::new(), None)),
        Some(ResponseFormat::JsonObject) => json!({"type": "object"}),
        Some(ResponseFormat::JsonSchema { json_schema }) => match &json_schema.schema {
            Some(schema) => schema.clone(),
            None => {
                let name = json_schema.name.as_deref().unwrap_or("");
                return Err(ApiError::invalid(
                    Some("response_format"),
                    format!("response_format.json_schema {name:?} has no schema"),
                ));
            }
        },
    };
    let text = schema.to_string();
    let grammar = (state.schema_to_grammar)(&text).map_err(|e| {
        ApiError::invalid(
            Some("response_format"),
            format!("response_format's JSON Schema cannot be used: {e}"),
        )
    })?;
    Ok((
        vec![
            (SCHEMA_FILE.to_owned(), text.into_bytes()),
            (GRAMMAR_FILE.to_owned(), grammar.into_bytes()),
        ],
        Some(OutputFormat::JsonSchema),
    ))
}

pub async fn handle(AxumState(state): AxumState<Arc<AppState>>, body: crate::Body) -> Response {
    match chat(state, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// The job a chat request asks for, and the model name to answer with.
pub fn submission(state: &AppState, req: ChatRequest) -> Result<(Submission, String), ApiError> {
    let model = state.check_model(req.model.as_deref(), false)?;
    if let Some(n) = req.n
        && n != 1
    {
        return Err(ApiError::invalid(
            Some("n"),
            format!("n is {n}; this server answers one choice per request (n = 1)"),
        ));
    }
    let messages = to_messages(req.messages)?;
    let (files, output_format) = structured_output(state, req.response_format.as_ref())?;
    let mut files = files;
    let prompt = messages::last_user(&messages)
        .unwrap_or_default()
        .to_owned();
    let json = serde_json::to_vec(&messages)
        .map_err(|e| ApiError::server(format!("cannot write {MESSAGES_FILE}: {e}")))?;
    files.push((MESSAGES_FILE.to_owned(), json));
    let sub = Submission {
        prompt,
        sampling: req.sampling.to_sampling()?,
        output_format,
        files,
        ..Submission::default()
    };
    Ok((sub, model))
}

/// A done chat job as OpenAI's `chat.completion` object.
pub fn completion_object(id: &JobId, model: &str, text: &str, meta: &nrvna_queue::Meta) -> Value {
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": jobs::now_secs(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": meta.finish_reason.as_deref().unwrap_or("stop"),
            "logprobs": null,
        }],
        "usage": jobs::usage(meta),
    })
}

async fn chat(state: Arc<AppState>, body: crate::Body) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_body(body)?;
    let stream = req.stream;
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let (sub, model) = submission(&state, req)?;
    let stop = sub.sampling.stop.clone();
    jobs::check_backpressure(&state, 1)?;
    let id = jobs::submit(&state, sub, &[]).await?;
    if stream {
        let events = chunks(
            Kind::Chat,
            state.clone(),
            id.clone(),
            model,
            include_usage,
            stop,
        );
        let mut response = Sse::new(events).into_response();
        set_job_header(&mut response, &id);
        return Ok(response);
    }
    let mut guard = CancelOnDrop::new(&state.ws, &id);
    let ended = jobs::wait(&state.ws, &id).await?;
    guard.disarm();
    let JobOutcome::Done(artifact) = &ended.outcome else {
        return Err(jobs::job_error(&id, &ended.outcome));
    };
    let text = String::from_utf8_lossy(&artifact.bytes);
    let body = completion_object(&id, &model, &text, &ended.meta);
    let mut response = axum::Json(body).into_response();
    set_job_header(&mut response, &id);
    Ok(response)
}

pub fn set_job_header(response: &mut Response, id: &JobId) {
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(JOB_ID_HEADER, value);
    }
}

/// Which API a stream answers: their chunks differ.
#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Chat,
    Completion,
}

/// Where a stream stands.
struct Streaming {
    kind: Kind,
    state: Arc<AppState>,
    id: JobId,
    model: String,
    include_usage: bool,
    follower: TextFollower,
    guard: CancelOnDrop,
    /// Text sent so far.
    sent: String,
    /// Text read but held back: it could be the start of a stop string.
    held: String,
    longest_stop: usize,
    stop: Vec<String>,
    /// A stop string was seen: nothing more goes out before the end.
    stopped: bool,
    started: bool,
    /// Events left to send once the job has ended; `None` while it runs.
    closing: Option<Vec<Event>>,
    /// How long to sleep before the next look: [`POLL`] after new text, doubling up to
    /// [`STREAM_POLL_MAX`] while there is none (many idle streams must not busy the CPU
    /// the model decodes on).
    idle: std::time::Duration,
}

/// The longest a stream waits between looks at its job.
const STREAM_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(8);

impl Streaming {
    fn chunk(&self, text: Option<&str>, finish: Option<&str>) -> Event {
        let choice = match self.kind {
            Kind::Chat => {
                let delta = text.map_or(json!({}), |t| json!({"content": t}));
                json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null})
            }
        };
        let mut body = self.envelope();
        body["choices"] = json!([choice]);
        Event::default().data(body.to_string())
    }

    /// A chunk's fields besides its choices.
    fn envelope(&self) -> Value {
        let (prefix, object) = match self.kind {
            Kind::Chat => ("chatcmpl", "chat.completion.chunk"),
            Kind::Completion => ("cmpl", "text_completion"),
        };
        json!({
            "id": format!("{prefix}-{}", self.id),
            "object": object,
            "created": jobs::now_secs(),
            "model": self.model,
        })
    }

    /// Text that can go out now: all but what could still turn into a stop string, and
    /// nothing from a stop string on.
    fn releasable(&mut self, text: String) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(&text);
        if self.longest_stop == 0 {
            return std::mem::take(&mut self.held);
        }
        let first_stop = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.held.truncate(at);
            self.stopped = true;
            return std::mem::take(&mut self.held);
        }
        let keep = self.longest_stop.saturating_sub(1);
        let mut cut = self.held.len().saturating_sub(keep);
        while !self.held.is_char_boundary(cut) {
            cut -= 1;
        }
        let rest = self.held.split_off(cut);
        std::mem::replace(&mut self.held, rest)
    }

    /// The last events: the rest of the result, the finish reason, usage, `[DONE]`.
    fn close(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let ended = match self.state.ws.state_of(&self.id) {
            Ok(Some(s)) if s.is_terminal() => jobs::ended(&self.state.ws, &self.id, s),
            _ => Err(ApiError::server(format!("job {} vanished", self.id))),
        };
        self.guard.disarm();
        match ended {
            Ok(ended) => match &ended.outcome {
                JobOutcome::Done(artifact) => {
                    let result = String::from_utf8_lossy(&artifact.bytes).into_owned();
                    // The result is the truth: what the stream has not shown of it yet.
                    let rest = result
                        .strip_prefix(self.sent.as_str())
                        .unwrap_or_default()
                        .to_owned();
                    if !rest.is_empty() {
                        events.push(self.chunk(Some(&rest), None));
                    }
                    let finish = ended.meta.finish_reason.as_deref().unwrap_or("stop");
                    events.push(self.chunk(None, Some(finish)));
                    if self.include_usage {
                        let mut body = self.envelope();
                        body["choices"] = json!([]);
                        body["usage"] = jobs::usage(&ended.meta);
                        events.push(Event::default().data(body.to_string()));
                    }
                }
                other => {
                    let error = jobs::job_error(&self.id, other);
                    events.push(Event::default().data(error.body().to_string()));
                }
            },
            Err(e) => events.push(Event::default().data(e.body().to_string())),
        }
        events.push(Event::default().data("[DONE]"));
        events.reverse(); // popped from the end
        events
    }
}

pub fn chunks(
    kind: Kind,
    state: Arc<AppState>,
    id: JobId,
    model: String,
    include_usage: bool,
    stop: Vec<String>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let streaming = Streaming {
        kind,
        follower: TextFollower::new(&state.ws, &id),
        guard: CancelOnDrop::new(&state.ws, &id),
        state,
        id,
        model,
        include_usage,
        sent: String::new(),
        held: String::new(),
        longest_stop: stop.iter().map(String::len).max().unwrap_or(0),
        stop,
        stopped: false,
        started: false,
        closing: None,
        idle: POLL,
    };
    stream::unfold(streaming, |mut s| async move {
        if !s.started && s.kind == Kind::Chat {
            s.started = true;
            let mut first = s.envelope();
            first["choices"] = json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                "finish_reason": null, "logprobs": null}]);
            return Some((Ok(Event::default().data(first.to_string())), s));
        }
        loop {
            if let Some(closing) = &mut s.closing {
                let event = closing.pop()?;
                return Some((Ok(event), s));
            }
            match s.follower.poll() {
                Ok(Followed::Running { text }) | Ok(Followed::Ended { text, .. })
                    if !text.is_empty() =>
                {
                    s.idle = POLL;
                    let out = s.releasable(text);
                    if !out.is_empty() {
                        s.sent.push_str(&out);
                        let event = s.chunk(Some(&out), None);
                        return Some((Ok(event), s));
                    }
                }
                Ok(Followed::Ended { .. }) | Ok(Followed::NotFound) | Err(_) => {
                    s.closing = Some(s.close());
                    continue;
                }
                Ok(Followed::Restarted) => {
                    // The daemon restarted the job: its text starts over; so does ours.
                    s.closing = Some(s.close());
                    continue;
                }
                Ok(Followed::Running { .. }) => {
                    tokio::time::sleep(s.idle).await;
                    s.idle = (s.idle * 2).min(STREAM_POLL_MAX);
                }
            }
        }
    })
}
