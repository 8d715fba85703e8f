//! The OpenAI-compatible wire format: request bodies from a [`Request`], and the
//! server's answers (streamed chunks, embeddings) read back. Pure functions, so the
//! format is tested without a server.

use serde_json::{Value, json};

use crate::{EngineError, Finish, Request, SamplingDefaults};

/// A chat job: `POST /chat/completions`, streamed.
pub fn chat_body(
    model: &str,
    request: &Request,
    defaults: &SamplingDefaults,
) -> Result<Value, EngineError> {
    let messages: Vec<Value> = if request.messages.is_empty() {
        let mut m = Vec::new();
        if let Some(system) = &request.system {
            m.push(json!({ "role": "system", "content": system }));
        }
        m.push(json!({ "role": "user", "content": request.prompt }));
        m
    } else {
        request
            .messages
            .iter()
            .map(|t| json!({ "role": t.role, "content": t.content }))
            .collect()
    };
    let mut body = sampled(model, request, defaults)?;
    body["messages"] = Value::Array(messages);
    Ok(body)
}

/// A raw-prompt job: `POST /completions`, the prompt as it is, streamed.
pub fn completion_body(
    model: &str,
    request: &Request,
    defaults: &SamplingDefaults,
) -> Result<Value, EngineError> {
    let mut body = sampled(model, request, defaults)?;
    body["prompt"] = Value::String(request.prompt.clone());
    Ok(body)
}

/// An embedding job: `POST /embeddings`.
pub fn embedding_body(model: &str, text: &str) -> Value {
    json!({ "model": model, "input": text, "encoding_format": "float" })
}

/// What generation requests share: the model, the sampling options (the daemon's
/// defaults for what the job leaves unset, as the local engine does), stop strings, the
/// output constraint, and streaming with the usage in the last chunk.
fn sampled(
    model: &str,
    request: &Request,
    defaults: &SamplingDefaults,
) -> Result<Value, EngineError> {
    let mut body = json!({
        "model": model,
        "stream": true,
        "stream_options": { "include_usage": true },
        "max_tokens": request.max_tokens.unwrap_or(defaults.max_tokens),
        "temperature": request.temperature.unwrap_or(defaults.temperature),
        "top_p": request.top_p.unwrap_or(defaults.top_p),
        "top_k": request.top_k.unwrap_or(defaults.top_k),
    });
    if let Some(seed) = request.seed.or(defaults.seed) {
        body["seed"] = json!(seed);
    }
    if !request.stop.is_empty() {
        body["stop"] = json!(request.stop);
    }
    if let Some(schema) = &request.schema {
        let schema: Value = serde_json::from_str(schema)
            .map_err(|e| EngineError::Schema(format!("schema.json is not valid JSON: {e}")))?;
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": { "name": "output", "strict": true, "schema": schema },
        });
    } else if let Some(grammar) = &request.grammar {
        // llama-server's extension; a server without it refuses or ignores the field.
        body["grammar"] = Value::String(grammar.clone());
    }
    Ok(body)
}

/// One streamed chunk, read.
#[derive(Debug, Default, PartialEq)]
pub struct Chunk {
    /// Text this chunk adds (`delta.content` of a chat chunk, `text` of a completion).
    pub text: String,
    pub finish: Option<String>,
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// `prompt_tokens_details.cached_tokens`, else llama-server's `timings.cache_n`.
    pub cached_tokens: u32,
}

/// Reads one `data:` payload of the stream. `Err` carries the server's message when the
/// payload is an error object.
pub fn parse_chunk(payload: &str) -> Result<Chunk, ChunkError> {
    let value: Value = serde_json::from_str(payload)
        .map_err(|e| ChunkError::Unreadable(format!("a stream chunk is not JSON ({e})")))?;
    if let Some(error) = value.get("error") {
        return Err(ChunkError::Server(error_message(error)));
    }
    let mut chunk = Chunk::default();
    if let Some(choice) = value
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    {
        let text = choice
            .pointer("/delta/content")
            .or_else(|| choice.get("text"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        chunk.text = text.to_owned();
        chunk.finish = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
        let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0) as u32;
        chunk.usage = Some(Usage {
            prompt_tokens: n(usage.get("prompt_tokens")),
            completion_tokens: n(usage.get("completion_tokens")),
            cached_tokens: n(usage
                .pointer("/prompt_tokens_details/cached_tokens")
                .or_else(|| value.pointer("/timings/cache_n"))),
        });
    }
    Ok(chunk)
}

#[derive(Debug, PartialEq)]
pub enum ChunkError {
    /// The server reported an error in the stream.
    Server(String),
    Unreadable(String),
}

/// `finish_reason` as the queue records it: `length` is the token limit, anything else
/// (`stop`, a stop string, a tool call) the model ending.
pub fn finish_of(reason: Option<&str>) -> Finish {
    match reason {
        Some("length") => Finish::TokenLimit,
        _ => Finish::EndOfGeneration,
    }
}

/// What a generation stream added up to.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEnd {
    pub text: String,
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
    pub generated_tokens: u32,
    pub finish: Finish,
}

/// The vector (L2-normalised, as local embeddings are) and the prompt tokens of an
/// `/embeddings` answer.
pub fn parse_embedding(reply: &Value) -> Result<(Vec<f32>, u32), String> {
    let data = reply
        .pointer("/data/0/embedding")
        .and_then(Value::as_array)
        .ok_or("no data[0].embedding array")?;
    let mut vector = Vec::with_capacity(data.len());
    for x in data {
        let x = x.as_f64().ok_or("an embedding value is not a number")?;
        vector.push(x as f32);
    }
    if vector.is_empty() {
        return Err("an empty embedding".into());
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut vector {
            *x /= norm;
        }
    }
    let tokens = reply
        .pointer("/usage/prompt_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32;
    Ok((vector, tokens))
}

/// The message of an OpenAI-style error object (`{"message": ...}`) or string.
pub fn error_message(error: &Value) -> String {
    match error {
        Value::String(s) => s.clone(),
        other => other
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| other.to_string()),
    }
}

/// The model ids of a `GET /models` answer (`data[].id`; ollama's `models[].name` too).
pub fn parse_models(reply: &Value) -> Option<Vec<String>> {
    let data = reply
        .get("data")
        .or_else(|| reply.get("models"))?
        .as_array()?;
    Some(
        data.iter()
            .filter_map(|m| {
                m.get("id")
                    .or_else(|| m.get("name"))
                    .and_then(Value::as_str)
            })
            .map(str::to_owned)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatTurn;

    #[test]
    fn a_chat_body_carries_the_job_and_the_defaults() {
        let mut r = Request::generate("hi");
        r.system = Some("be brief".into());
        r.temperature = Some(0.0);
        r.stop = vec!["\n".into()];
        r.seed = Some(7);
        let d = SamplingDefaults::default();
        let b = chat_body("m", &r, &d).unwrap();
        assert_eq!(b["model"], "m");
        assert_eq!(b["stream"], true);
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["messages"][1]["content"], "hi");
        assert_eq!(b["temperature"], 0.0);
        assert_eq!(b["max_tokens"], d.max_tokens);
        assert_eq!(b["stop"][0], "\n");
        assert_eq!(b["seed"], 7);
        assert!(b.get("response_format").is_none());
    }

    #[test]
    fn a_conversation_goes_as_it_is_and_a_schema_as_response_format() {
        let mut r = Request::generate("ignored");
        r.messages = vec![
            ChatTurn {
                role: "user".into(),
                content: "a".into(),
            },
            ChatTurn {
                role: "assistant".into(),
                content: "b".into(),
            },
        ];
        r.schema = Some(r#"{"type":"object"}"#.into());
        r.grammar = Some("root ::= \"x\"".into());
        let b = chat_body("m", &r, &SamplingDefaults::default()).unwrap();
        assert_eq!(b["messages"].as_array().unwrap().len(), 2);
        assert_eq!(b["messages"][1]["role"], "assistant");
        assert_eq!(
            b["response_format"]["json_schema"]["schema"]["type"],
            "object"
        );
        assert!(b.get("grammar").is_none());
    }

    #[test]
    fn chunks_of_both_endpoints_and_the_usage_are_read() {
        let c = parse_chunk(r#"{"choices":[{"delta":{"content":"He"},"finish_reason":null}]}"#)
            .unwrap();
        assert_eq!(c.text, "He");
        assert_eq!(c.finish, None);
        let c = parse_chunk(r#"{"choices":[{"text":"x","finish_reason":"length"}]}"#).unwrap();
        assert_eq!(
            (c.text.as_str(), c.finish.as_deref()),
            ("x", Some("length"))
        );
        let c = parse_chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3},"timings":{"cache_n":2}}"#,
        )
        .unwrap();
        assert_eq!(
            c.usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 3,
                cached_tokens: 2
            })
        );
        assert_eq!(
            parse_chunk(r#"{"error":{"message":"context full"}}"#),
            Err(ChunkError::Server("context full".into()))
        );
    }

    #[test]
    fn embeddings_are_normalised_and_models_listed() {
        let reply =
            serde_json::json!({"data":[{"embedding":[3.0,4.0]}],"usage":{"prompt_tokens":2}});
        let (v, n) = parse_embedding(&reply).unwrap();
        assert_eq!((v, n), (vec![0.6, 0.8], 2));
        assert!(parse_embedding(&serde_json::json!({"data":[]})).is_err());
        let models = serde_json::json!({"object":"list","data":[{"id":"a"},{"id":"b"}]});
        assert_eq!(parse_models(&models).unwrap(), vec!["a", "b"]);
    }
}
