//! `POST /v1/completions`: a raw prompt, given to the model as it is (no chat template).

use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::response::{IntoResponse, Response};
use nrvna_queue::Submission;
use serde::Deserialize;

use crate::chat::{SamplingParams, StreamOptions, check_n};
use crate::error::ApiError;
use crate::respond::{Answer, Kind, respond};
use crate::{AppState, parse_body};

#[derive(Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: SamplingParams,
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub echo: bool,
}

/// A string, or a list holding one string (more would be more jobs: refused, as `n`).
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

pub async fn handle(AxumState(state): AxumState<Arc<AppState>>, body: crate::Body) -> Response {
    match completions(state, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn completions(state: Arc<AppState>, body: crate::Body) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse_body(body)?;
    let stream = req.stream;
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let (sub, model) = submission(&state, req)?;
    let answer = Answer {
        kind: Kind::Completion,
        model,
        stream,
        include_usage,
    };
    respond(state, sub, answer).await
}

/// The job a completion request asks for, and the model name to answer with.
pub fn submission(
    state: &AppState,
    req: CompletionRequest,
) -> Result<(Submission, String), ApiError> {
    let model = state.check_model(req.model.as_deref(), false)?;
    check_n(req.n)?;
    if req.echo {
        return Err(ApiError::invalid(Some("echo"), "echo is not supported"));
    }
    let prompt = match req.prompt {
        Prompt::One(p) => p,
        Prompt::Many(mut list) if list.len() == 1 => list.remove(0),
        Prompt::Many(list) => {
            return Err(ApiError::invalid(
                Some("prompt"),
                format!(
                    "prompt is a list of {} strings; give one string per request",
                    list.len()
                ),
            ));
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid(Some("prompt"), "prompt is empty"));
    }
    let sub = Submission {
        prompt,
        sampling: req.sampling.to_sampling()?,
        raw_prompt: true,
        ..Submission::default()
    };
    Ok((sub, model))
}
