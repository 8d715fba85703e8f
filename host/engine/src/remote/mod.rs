//! A remote OpenAI-compatible inference server as a [`Backend`]: llama.cpp's
//! `llama-server`, vLLM, ollama. Each job becomes one HTTP request: `POST
//! /chat/completions` (streamed, so its text reaches the job's `partial.txt` as it comes),
//! `/completions` for raw-prompt jobs, `/embeddings` for embedding jobs. The daemon's
//! workers bound the requests in flight, and so does the backend itself (`workers`).
//!
//! Failures the server may get over (connection refused, a dropped stream, 5xx, 429) are
//! retried with exponential backoff and jitter, honouring `Retry-After`, up to
//! [`RetryPolicy::max_retries`]; anything else (an unknown model, a 4xx) fails at once
//! with the server's message.

mod client;
mod wire;

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::{
    Backend, EngineError, ModelInfo, Request, RequestKind, Response, SamplingDefaults,
    strip_think_blocks,
};
use client::Client;
pub use client::RetryPolicy;
use wire::StreamEnd;

/// Where the server is and how to talk to it.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// The OpenAI-compatible base, such as `http://host:8080/v1`: requests go to
    /// `{base}/chat/completions` and so on.
    pub base_url: String,
    /// The model to ask for; `None`: the one model the server lists (an error when it
    /// lists several).
    pub model: Option<String>,
    /// Sent as `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Requests in flight at most.
    pub workers: usize,
    /// Values sent for what a job leaves unset (the same defaults as the local engine).
    pub sampling: SamplingDefaults,
    pub retry: RetryPolicy,
    /// Longest one request may take, streaming included.
    pub request_timeout: Duration,
    /// Longest a connection may take to open.
    pub connect_timeout: Duration,
}

/// Request timeout when none is configured: a long generation on a busy server fits.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Connect timeout when none is configured.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl RemoteConfig {
    pub fn new(base_url: impl Into<String>) -> RemoteConfig {
        RemoteConfig {
            base_url: base_url.into(),
            model: None,
            api_key: None,
            workers: 4,
            sampling: SamplingDefaults::default(),
            retry: RetryPolicy::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// Why a remote request failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("backend URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "{url}: gave up after {attempts} attempt(s) over {secs:.1}s ({last}); the retry bound \
         is NRVNA_BACKEND_RETRIES={retries}"
    )]
    GaveUp {
        url: String,
        attempts: u32,
        secs: f64,
        retries: u32,
        /// The last failure: `connection refused`, or `HTTP 503: <body excerpt>`.
        last: String,
    },
    #[error("{url}: the server reported an error mid-answer: {message}")]
    StreamFailed { url: String, message: String },
    #[error("{url}: HTTP {status}: {message}")]
    Rejected {
        url: String,
        status: u16,
        message: String,
    },
    #[error(
        "{url}: no complete answer within {secs}s (the request timeout, NRVNA_BACKEND_TIMEOUT)"
    )]
    Timeout { url: String, secs: u64 },
    #[error("{url}: an answer nrvna cannot read: {reason}")]
    BadReply { url: String, reason: String },
    #[error(
        "{url} serves no model named {model:?}; it lists: {listed} (pick one with --backend-model)"
    )]
    UnknownModel {
        url: String,
        model: String,
        listed: String,
    },
    #[error("{url} lists several models ({listed}); pick one with --backend-model")]
    WhichModel { url: String, listed: String },
    #[error("{url} lists no models")]
    NoModels { url: String },
}

/// A remote OpenAI-compatible server behind the [`Backend`] interface.
pub struct RemoteBackend {
    client: Client,
    model: String,
    sampling: SamplingDefaults,
    info: ModelInfo,
    in_flight: Slots,
}

impl RemoteBackend {
    /// Checks that the server answers `GET {base}/models` and serves the model (retrying
    /// as a request would, so a server still starting is waited for), then is ready.
    pub fn connect(config: RemoteConfig) -> Result<RemoteBackend, EngineError> {
        let client = Client::new(&config)?;
        let listed = client.models()?;
        let url = client.url("models");
        let model = match &config.model {
            Some(model) if listed.iter().any(|m| m == model) => model.clone(),
            Some(model) => {
                return Err(RemoteError::UnknownModel {
                    url,
                    model: model.clone(),
                    listed: list(&listed),
                }
                .into());
            }
            None => match listed.as_slice() {
                [] => return Err(RemoteError::NoModels { url }.into()),
                [one] => one.clone(),
                _ => {
                    return Err(RemoteError::WhichModel {
                        url,
                        listed: list(&listed),
                    }
                    .into());
                }
            },
        };
        let workers = config.workers.max(1);
        let info = ModelInfo {
            path: model.clone(),
            description: model.clone(),
            n_ctx_train: 0,
            n_embd: 0,
            size_bytes: 0,
            has_chat_template: true,
            ctx_per_slot: 0,
            slots: workers,
            kv_bytes: 0,
            embedder: None,
        };
        Ok(RemoteBackend {
            client,
            model,
            sampling: config.sampling,
            info,
            in_flight: Slots::new(workers),
        })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        self.client.base()
    }

    fn generate(&self, request: &Request) -> Result<Response, EngineError> {
        let (path, body) = if request.raw_prompt {
            (
                "completions",
                wire::completion_body(&self.model, request, &self.sampling)?,
            )
        } else {
            (
                "chat/completions",
                wire::chat_body(&self.model, request, &self.sampling)?,
            )
        };
        let end: StreamEnd = self.client.stream(path, &body, request)?;
        let text = strip_think_blocks(&end.text);
        Ok(Response::Text {
            text,
            prompt_tokens: end.prompt_tokens,
            cached_tokens: end.cached_tokens,
            generated_tokens: end.generated_tokens,
            finish: end.finish,
        })
    }

    fn embed(&self, request: &Request) -> Result<Response, EngineError> {
        let body = wire::embedding_body(&self.model, &request.prompt);
        let reply = self
            .client
            .post_json("embeddings", &body, &request.cancel)?;
        let url = self.client.url("embeddings");
        let (vector, prompt_tokens) = wire::parse_embedding(&reply)
            .map_err(|reason| RemoteError::BadReply { url, reason })?;
        Ok(Response::Embedding {
            vector,
            prompt_tokens,
        })
    }
}

impl Backend for RemoteBackend {
    fn run(&self, request: Request) -> Result<Response, EngineError> {
        let _slot = self.in_flight.acquire();
        let result = match request.kind {
            RequestKind::Generate => self.generate(&request),
            RequestKind::Embed => self.embed(&request),
        };
        request.progress.wake();
        result
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn backend(&self) -> String {
        self.client.base().to_owned()
    }
}

fn list(models: &[String]) -> String {
    if models.is_empty() {
        "nothing".into()
    } else {
        models.join(", ")
    }
}

/// A counting semaphore: at most `n` requests in flight.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

struct SlotGuard<'a>(&'a Slots);

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn slots_bound_what_runs_at_once() {
        let slots = Arc::new(Slots::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (slots, running, peak) = (slots.clone(), running.clone(), peak.clone());
                std::thread::spawn(move || {
                    let _g = slots.acquire();
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }
}
