//! `POST /v1/embeddings`: one embed job per input string, answered together.

use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::response::{IntoResponse, Response};
use nrvna_queue::{ArtifactKind, JobOutcome, Mode, Submission};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::jobs::{self, CancelOnDrop};
use crate::{AppState, parse_body};

/// Most strings one request may embed.
pub const MAX_INPUTS: usize = 256;

#[derive(Deserialize)]
pub struct EmbeddingsRequest {
    pub model: Option<String>,
    pub input: Input,
    pub encoding_format: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Input {
    One(String),
    Many(Vec<String>),
}

pub async fn handle(AxumState(state): AxumState<Arc<AppState>>, body: crate::Body) -> Response {
    match embeddings(state, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn embeddings(state: Arc<AppState>, body: crate::Body) -> Result<Response, ApiError> {
    let req: EmbeddingsRequest = parse_body(body)?;
    let model = state.check_model(req.model.as_deref(), true)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("encoding_format"),
                format!("encoding_format {other:?} is not supported; use \"float\" or \"base64\""),
            ));
        }
    };
    let inputs = match req.input {
        Input::One(s) => vec![s],
        Input::Many(list) => list,
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            Some("input"),
            format!("input has {} strings; give 1 to {MAX_INPUTS}", inputs.len()),
        ));
    }
    if let Some(i) = inputs.iter().position(String::is_empty) {
        return Err(ApiError::invalid(
            Some("input"),
            format!("input[{i}] is empty"),
        ));
    }
    jobs::check_backpressure(&state, inputs.len())?;
    let mut ids = Vec::new();
    let mut guards = Vec::new();
    for text in inputs {
        let sub = Submission {
            prompt: text,
            mode: Mode::Embed,
            ..Submission::default()
        };
        let id = jobs::submit(&state, sub, &[]).await?;
        guards.push(CancelOnDrop::new(&state.ws, &id));
        ids.push(id);
    }
    let mut data = Vec::new();
    let mut prompt_tokens = 0;
    for (index, id) in ids.iter().enumerate() {
        let ended = jobs::wait(&state, id).await?;
        let JobOutcome::Done(artifact) = &ended.outcome else {
            return Err(jobs::job_error(id, &ended.outcome));
        };
        if artifact.kind != ArtifactKind::Embedding {
            return Err(ApiError::server(format!("job {id} made no embedding")).for_job(id));
        }
        let parsed: Value = serde_json::from_slice(&artifact.bytes)
            .map_err(|e| ApiError::server(format!("job {id}: bad embedding.json: {e}")))?;
        prompt_tokens += ended.meta.prompt_tokens.unwrap_or(0);
        let embedding = if base64 {
            encode_base64(&parsed["vector"])
        } else {
            parsed["vector"].clone()
        };
        data.push(json!({
            "object": "embedding",
            "index": index,
            "embedding": embedding,
        }));
    }
    for guard in &mut guards {
        guard.disarm();
    }
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    let mut response = axum::Json(body).into_response();
    // One job per input: their ids, comma-separated, in input order.
    let joined: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    if let Ok(value) = axum::http::HeaderValue::from_str(&joined.join(",")) {
        response.headers_mut().insert(crate::JOB_ID_HEADER, value);
    }
    Ok(response)
}

/// A batch line's job: one input (a string or a list of one), as floats; a line with
/// more inputs is refused (one line is one job).
pub fn batch_submission(
    state: &AppState,
    req: EmbeddingsRequest,
) -> Result<(Submission, String), ApiError> {
    let model = state.check_model(req.model.as_deref(), true)?;
    if let Some(format) = req.encoding_format.as_deref()
        && format != "float"
    {
        return Err(ApiError::invalid(
            Some("encoding_format"),
            format!("encoding_format {format:?} is not served in batches; use \"float\""),
        ));
    }
    let text = match req.input {
        Input::One(s) => s,
        Input::Many(mut list) if list.len() == 1 => list.remove(0),
        Input::Many(list) => {
            return Err(ApiError::invalid(
                Some("input"),
                format!(
                    "input has {} strings; a batch line embeds one (give one line per string)",
                    list.len()
                ),
            ));
        }
    };
    if text.is_empty() {
        return Err(ApiError::invalid(Some("input"), "input is empty"));
    }
    let sub = Submission {
        prompt: text,
        mode: Mode::Embed,
        ..Submission::default()
    };
    Ok((sub, model))
}

/// A done embed job as a batch line's response body (one embedding, as floats).
pub fn batch_body(model: &str, bytes: &[u8], meta: &nrvna_queue::Meta) -> Value {
    let parsed: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let prompt_tokens = meta.prompt_tokens.unwrap_or(0);
    json!({
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": parsed["vector"]}],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
}

/// OpenAI's `base64` encoding: the vector's little-endian f32 bytes, in base64.
fn encode_base64(vector: &Value) -> Value {
    use base64::Engine as _;
    let bytes: Vec<u8> = vector
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .flat_map(|x| (x as f32).to_le_bytes())
        .collect();
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}
