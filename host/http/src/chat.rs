//! `POST /v1/chat/completions`: the messages become a chat job (`messages.json`, the last
//! user message in `prompt.txt`); the answer is the job's result, whole or streamed.

use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::response::{IntoResponse, Response};
use nrvna_queue::messages::{self, Message, Role};
use nrvna_queue::{GRAMMAR_FILE, MESSAGES_FILE, OutputFormat, SCHEMA_FILE, Sampling, Submission};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::respond::{Answer, Kind, respond};
use crate::{AppState, parse_body};

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

/// Refuses `n` other than 1: one request is one job.
pub fn check_n(n: Option<u32>) -> Result<(), ApiError> {
    match n {
        Some(n) if n != 1 => Err(ApiError::invalid(
            Some("n"),
            format!(
                "n is {n}; this server answers one choice per request (n = 1): send {n} \
                 requests, each its own job"
            ),
        )),
        _ => Ok(()),
    }
}

/// The job a chat request asks for, and the model name to answer with.
pub fn submission(state: &AppState, req: ChatRequest) -> Result<(Submission, String), ApiError> {
    let model = state.check_model(req.model.as_deref(), false)?;
    check_n(req.n)?;
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

async fn chat(state: Arc<AppState>, body: crate::Body) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_body(body)?;
    let stream = req.stream;
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let (sub, model) = submission(&state, req)?;
    let answer = Answer {
        kind: Kind::Chat,
        model,
        stream,
        include_usage,
    };
    respond(state, sub, answer).await
}
