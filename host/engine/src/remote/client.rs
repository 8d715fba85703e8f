//! HTTP to the remote server with retries: what a failure means (retry, or fail now),
//! the backoff between attempts, and the streamed answer read into the job's progress.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::Value;
use ureq::Agent;
use ureq::http::Response;

use super::wire::{self, ChunkError, StreamEnd};
use super::{RemoteConfig, RemoteError};
use crate::{CancelFlag, EngineError, Request};

/// How long failures the server may get over are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; then the request fails.
    pub max_retries: u32,
    /// The first backoff; each next one doubles, up to `max_delay`. Each is jittered
    /// down to half its value at random, so many workers do not retry in step.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 8 retries from 0.5 s doubling to 30 s: about 1.5 minutes at most before a job
    /// fails, enough for a server to restart.
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 8,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// The longest `Retry-After` honoured; a server asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Bytes of an error body kept in a message.
const EXCERPT_CHARS: usize = 300;

/// Largest JSON answer read (an embedding of a few thousand dimensions is ~100 KB).
const MAX_REPLY_BYTES: u64 = 64 << 20;

/// One attempt's failure.
enum Failure {
    /// The server may get over it: try again after the backoff (or its `Retry-After`).
    Retry {
        what: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help.
    Fatal(EngineError),
}

pub struct Client {
    agent: Agent,
    base: String,
    api_key: Option<String>,
    retry: RetryPolicy,
    timeout: Duration,
}

impl Client {
    pub fn new(config: &RemoteConfig) -> Result<Client, RemoteError> {
        let base = config.base_url.trim().trim_end_matches('/').to_owned();
        let bad = |reason: &str| RemoteError::BadUrl {
            url: config.base_url.clone(),
            reason: reason.to_owned(),
        };
        if base.starts_with("https://") {
            return Err(bad(
                "https is not supported by this build (no TLS); use http:// on a trusted \
                 network, or a local TLS-terminating proxy",
            ));
        }
        let Some(rest) = base.strip_prefix("http://") else {
            return Err(bad(
                "expected http://HOST:PORT/v1 (an OpenAI-compatible base)",
            ));
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err(bad("no host: expected http://HOST:PORT/v1"));
        }
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.request_timeout))
            .timeout_connect(Some(config.connect_timeout))
            .user_agent(concat!("nrvna/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Client {
            agent,
            base,
            api_key: config.api_key.clone(),
            retry: config.retry,
            timeout: config.request_timeout,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// The model ids `GET /models` lists.
    pub fn models(&self) -> Result<Vec<String>, EngineError> {
        let url = self.url("models");
        self.with_retries(&url, &CancelFlag::new(), || {
            let mut get = self.agent.get(&url);
            if let Some(key) = &self.api_key {
                get = get.header("Authorization", format!("Bearer {key}"));
            }
            let response = get.call().map_err(|e| self.send_failure(&url, e))?;
            let reply = self.json_reply(&url, response)?;
            wire::parse_models(&reply).ok_or_else(|| {
                Failure::Fatal(
                    RemoteError::BadReply {
                        url: url.clone(),
                        reason: "no `data` list of models (is this an OpenAI-compatible \
                                 base such as http://host:8080/v1?)"
                            .into(),
                    }
                    .into(),
                )
            })
        })
    }

    /// `POST {base}/{path}` with a JSON body; the JSON answer.
    pub fn post_json(
        &self,
        path: &str,
        body: &Value,
        cancel: &CancelFlag,
    ) -> Result<Value, EngineError> {
        let url = self.url(path);
        let body = body.to_string();
        self.with_retries(&url, cancel, || {
            let response = self.post(&url, &body)?;
            self.json_reply(&url, response)
        })
    }

    /// `POST {base}/{path}` with a streaming body; its text goes into the request's
    /// progress as it comes. A retry after some text arrived publishes only what goes
    /// past the text already published (the final text is the last attempt's alone).
    pub fn stream(
        &self,
        path: &str,
        body: &Value,
        request: &Request,
    ) -> Result<StreamEnd, EngineError> {
        let url = self.url(path);
        let body = body.to_string();
        let mut published = 0usize;
        self.with_retries(&url, &request.cancel, || {
            let response = self.post(&url, &body)?;
            if !response.status().is_success() {
                return Err(self.status_failure(&url, response));
            }
            self.read_stream(&url, response, request, &mut published)
        })
    }

    fn post(&self, url: &str, body: &str) -> Result<Response<ureq::Body>, Failure> {
        let mut post = self
            .agent
            .post(url)
            .header("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            post = post.header("Authorization", format!("Bearer {key}"));
        }
        post.send(body).map_err(|e| self.send_failure(url, e))
    }

    fn read_stream(
        &self,
        url: &str,
        response: Response<ureq::Body>,
        request: &Request,
        published: &mut usize,
    ) -> Result<StreamEnd, Failure> {
        let mut reader = BufReader::new(response.into_body().into_reader());
        let mut text = String::new();
        let mut chunks = 0u32;
        let mut finish = None;
        let mut usage = None;
        let mut line = String::new();
        loop {
            if request.cancel.is_cancelled() {
                return Err(Failure::Fatal(EngineError::Cancelled { partial: text }));
            }
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| match ureq::Error::from(e) {
                    ureq::Error::Timeout(_) => self.timed_out(url),
                    e => Failure::Retry {
                        what: format!("the answer broke off: {e}"),
                        retry_after: None,
                    },
                })?;
            if n == 0 {
                if finish.is_some() {
                    break;
                }
                return Err(Failure::Retry {
                    what: "the connection closed before the answer ended".into(),
                    retry_after: None,
                });
            }
            // Server-sent events: only `data:` lines carry chunks (`error:` is
            // llama-server's way to report a failure mid-stream).
            let line = line.trim_end();
            let (field, payload) = match line.split_once(':') {
                Some((field, payload)) => (field, payload.trim_start()),
                None => continue,
            };
            if field == "error" {
                return Err(self.stream_error(url, payload));
            }
            if field != "data" {
                continue;
            }
            if payload == "[DONE]" {
                break;
            }
            let chunk = match wire::parse_chunk(payload) {
                Ok(chunk) => chunk,
                Err(ChunkError::Server(message)) => {
                    return Err(Failure::Fatal(
                        RemoteError::StreamFailed {
                            url: url.to_owned(),
                            message,
                        }
                        .into(),
                    ));
                }
                Err(ChunkError::Unreadable(reason)) => {
                    return Err(Failure::Fatal(
                        RemoteError::BadReply {
                            url: url.to_owned(),
                            reason,
                        }
                        .into(),
                    ));
                }
            };
            if !chunk.text.is_empty() {
                text.push_str(&chunk.text);
                chunks += 1;
                if text.len() > *published {
                    request.progress.push_text(&text.as_bytes()[*published..]);
                    *published = text.len();
                }
                request.progress.set(chunks);
            }
            if chunk.finish.is_some() {
                finish = chunk.finish;
            }
            if chunk.usage.is_some() {
                usage = chunk.usage;
            }
        }
        // A server that leaves the usage out: one streamed chunk is one token on the
        // servers this is built for (llama-server, vLLM), and the prompt is uncounted.
        let usage = usage.unwrap_or_else(|| {
            tracing::debug!("{url}: no usage in the stream; counting chunks as tokens");
            wire::Usage {
                completion_tokens: chunks,
                ..wire::Usage::default()
            }
        });
        Ok(StreamEnd {
            text,
            prompt_tokens: usage.prompt_tokens,
            cached_tokens: usage.cached_tokens,
            generated_tokens: usage.completion_tokens,
            finish: wire::finish_of(finish.as_deref()),
        })
    }

    fn stream_error(&self, url: &str, payload: &str) -> Failure {
        let message = serde_json::from_str::<Value>(payload)
            .map(|v| wire::error_message(v.get("error").unwrap_or(&v)))
            .unwrap_or_else(|_| excerpt(payload));
        Failure::Fatal(
            RemoteError::StreamFailed {
                url: url.to_owned(),
                message,
            }
            .into(),
        )
    }

    /// The JSON of a successful answer; a failing status as a [`Failure`].
    fn json_reply(&self, url: &str, response: Response<ureq::Body>) -> Result<Value, Failure> {
        if !response.status().is_success() {
            return Err(self.status_failure(url, response));
        }
        let text = response
            .into_body()
            .into_with_config()
            .limit(MAX_REPLY_BYTES)
            .read_to_string()
            .map_err(|e| match e {
                ureq::Error::Timeout(_) => self.timed_out(url),
                e => Failure::Retry {
                    what: format!("the answer broke off: {e}"),
                    retry_after: None,
                },
            })?;
        serde_json::from_str(&text).map_err(|e| {
            Failure::Fatal(
                RemoteError::BadReply {
                    url: url.to_owned(),
                    reason: format!("not JSON ({e}): {}", excerpt(&text)),
                }
                .into(),
            )
        })
    }

    /// A non-2xx answer: 429 and 5xx are worth retrying, the rest is final.
    fn status_failure(&self, url: &str, response: Response<ureq::Body>) -> Failure {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response
            .into_body()
            .into_with_config()
            .limit(1 << 20)
            .read_to_string()
            .unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").map(wire::error_message))
            .unwrap_or_else(|| excerpt(&body));
        if status == 429 || status >= 500 {
            Failure::Retry {
                what: format!("HTTP {status}: {}", excerpt(&message)),
                retry_after,
            }
        } else {
            Failure::Fatal(
                RemoteError::Rejected {
                    url: url.to_owned(),
                    status,
                    message,
                }
                .into(),
            )
        }
    }

    /// A request that never got an answer: no connection, a dropped one, a connect
    /// timeout are retried; a bad URL or the request timeout are final.
    fn send_failure(&self, url: &str, error: ureq::Error) -> Failure {
        use ureq::Timeout;
        match error {
            ureq::Error::Timeout(Timeout::Connect | Timeout::Resolve) => Failure::Retry {
                what: "connection timed out".into(),
                retry_after: None,
            },
            ureq::Error::Timeout(_) => self.timed_out(url),
            ureq::Error::Io(e) => Failure::Retry {
                what: match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                    _ => e.to_string(),
                },
                retry_after: None,
            },
            e @ (ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_)) => Failure::Retry {
                what: e.to_string(),
                retry_after: None,
            },
            e => Failure::Fatal(
                RemoteError::BadReply {
                    url: url.to_owned(),
                    reason: e.to_string(),
                }
                .into(),
            ),
        }
    }

    fn timed_out(&self, url: &str) -> Failure {
        Failure::Fatal(
            RemoteError::Timeout {
                url: url.to_owned(),
                secs: self.timeout.as_secs(),
            }
            .into(),
        )
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are spent.
    fn with_retries<T>(
        &self,
        url: &str,
        cancel: &CancelFlag,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, EngineError> {
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (what, retry_after) = match attempt() {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry { what, retry_after }) => (what, retry_after),
            };
            if attempts > self.retry.max_retries {
                return Err(RemoteError::GaveUp {
                    url: url.to_owned(),
                    attempts,
                    secs: started.elapsed().as_secs_f64(),
                    retries: self.retry.max_retries,
                    last: what,
                }
                .into());
            }
            let wait = retry_wait(&self.retry, attempts - 1, retry_after, random_unit());
            tracing::warn!(
                "{url}: {what}; retry {attempts} of {} in {:.1}s",
                self.retry.max_retries,
                wait.as_secs_f64()
            );
            if sleep_unless_cancelled(wait, cancel) {
                return Err(EngineError::Cancelled {
                    partial: String::new(),
                });
            }
        }
    }
}

/// The wait before retry `n` (0-based): `base * 2^n` capped at `max_delay`, then
/// jittered into its upper half by `unit` (in [0, 1)).
pub fn backoff(policy: &RetryPolicy, n: u32, unit: f64) -> Duration {
    let full = policy
        .base_delay
        .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
        .min(policy.max_delay);
    full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// The wait before retry `n`: the server's `Retry-After` (at most [`MAX_RETRY_AFTER`]),
/// else the jittered [`backoff`].
pub fn retry_wait(
    policy: &RetryPolicy,
    n: u32,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    match retry_after {
        Some(asked) => asked.min(MAX_RETRY_AFTER),
        None => backoff(policy, n, unit),
    }
}

/// A random number in [0, 1): the standard library's per-process random hash keys.
fn random_unit() -> f64 {
    let mut h = RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    h.write_u128(now.map(|d| d.as_nanos()).unwrap_or_default());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Sleeps `wait`, waking early when `cancel` is set; true when cancelled.
fn sleep_unless_cancelled(wait: Duration, cancel: &CancelFlag) -> bool {
    let until = Instant::now() + wait;
    loop {
        if cancel.is_cancelled() {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// The start of a body, on one line, for a message.
fn excerpt(body: &str) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(EXCERPT_CHARS) {
        Some((i, _)) => format!("{}...", &flat[..i]),
        None if flat.is_empty() => "(empty body)".into(),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_jitters_within_its_upper_half() {
        let p = RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(backoff(&p, 0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&p, 3, 1.0), Duration::from_millis(800));
        assert_eq!(backoff(&p, 10, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&p, 40, 0.0), Duration::from_millis(500));
        let r = random_unit();
        assert!((0.0..1.0).contains(&r));
    }

    #[test]
    fn retry_after_wins_over_the_backoff_up_to_its_cap() {
        let p = RetryPolicy::default();
        let asked = Some(Duration::from_secs(3));
        assert_eq!(retry_wait(&p, 0, asked, 0.5), Duration::from_secs(3));
        let greedy = Some(Duration::from_secs(3600));
        assert_eq!(retry_wait(&p, 0, greedy, 0.5), MAX_RETRY_AFTER);
        assert_eq!(retry_wait(&p, 1, None, 1.0), Duration::from_secs(1));
    }

    fn client(retries: u32) -> Client {
        let mut config = RemoteConfig::new("http://127.0.0.1:9/v1");
        config.retry = RetryPolicy {
            max_retries: retries,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        };
        Client::new(&config).unwrap()
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Response<ureq::Body> {
        let mut r = Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(ureq::Body::builder().data(body.to_owned())).unwrap()
    }

    #[test]
    fn status_429_and_5xx_are_retried_with_retry_after_and_4xx_fail_with_the_message() {
        let c = client(3);
        let url = "http://h/v1/chat/completions";
        match c.status_failure(url, answer(429, &[("retry-after", "7")], "slow down")) {
            Failure::Retry { what, retry_after } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
                assert_eq!(what, "HTTP 429: slow down");
            }
            Failure::Fatal(e) => panic!("429 is final: {e}"),
        }
        let body = r#"{"error":{"code":503,"message":"Loading model"}}"#;
        match c.status_failure(url, answer(503, &[], body)) {
            Failure::Retry { what, retry_after } => {
                assert_eq!(
                    (what.as_str(), retry_after),
                    ("HTTP 503: Loading model", None)
                );
            }
            Failure::Fatal(e) => panic!("503 is final: {e}"),
        }
        let body = r#"{"error":{"message":"model 'x' not found"}}"#;
        match c.status_failure(url, answer(404, &[], body)) {
            Failure::Fatal(e) => assert_eq!(
                e.to_string(),
                format!("{url}: HTTP 404: model 'x' not found")
            ),
            Failure::Retry { .. } => panic!("404 is retried"),
        }
    }

    #[test]
    fn retries_stop_at_the_bound_naming_the_last_failure_and_a_success_ends_them() {
        let c = client(2);
        let mut calls = 0;
        let result: Result<(), _> = c.with_retries("http://h/v1/x", &CancelFlag::new(), || {
            calls += 1;
            Err(Failure::Retry {
                what: format!("HTTP 502: try {calls}"),
                retry_after: None,
            })
        });
        assert_eq!(calls, 3);
        let e = result.unwrap_err().to_string();
        assert!(
            e.contains("gave up after 3 attempt(s)") && e.contains("HTTP 502: try 3"),
            "{e}"
        );

        let mut calls = 0;
        let ok = c.with_retries("http://h/v1/x", &CancelFlag::new(), || {
            calls += 1;
            if calls < 3 {
                Err(Failure::Retry {
                    what: "connection refused".into(),
                    retry_after: None,
                })
            } else {
                Ok(calls)
            }
        });
        assert_eq!(ok.unwrap(), 3);
    }

    #[test]
    fn an_excerpt_is_one_short_line() {
        assert_eq!(excerpt("a\n  b"), "a b");
        assert_eq!(excerpt(""), "(empty body)");
        assert!(excerpt(&"x".repeat(1000)).len() < 400);
    }

    #[test]
    fn https_and_hostless_urls_are_refused_before_any_request() {
        for url in ["https://h/v1", "ftp://h", "http://", "h:80"] {
            assert!(Client::new(&RemoteConfig::new(url)).is_err(), "{url}");
        }
        assert_eq!(
            Client::new(&RemoteConfig::new("http://h:1/v1/"))
                .unwrap()
                .url("models"),
            "http://h:1/v1/models"
        );
    }
}
