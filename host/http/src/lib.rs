//! nrvna's OpenAI-compatible HTTP API. Every request becomes a job in the workspace,
//! tagged `http`, and every answer names it in an `x-nrvna-job-id` header: the queue stays
//! the one place work happens, so a request survives a daemon crash and `flw` sees it.
//!
//! axum on the daemon's own tokio runtime (a thread of its own); no HTTP parsing here.
//! The daemon starts [`HttpServer`] before its model loads (`/health` says `loading`),
//! calls [`HttpServer::ready`] once it serves, and [`HttpServer::draining`] when it stops.

mod batches;
mod chat;
mod completions;
mod embeddings;
pub mod error;
mod jobs;
pub mod live;
mod metrics;
mod respond;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State as AxumState};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use nrvna_queue::Workspace;
use serde::de::DeserializeOwned;
use serde_json::json;

pub use error::ApiError;
pub use jobs::HTTP_TAG;
pub use live::{LiveJob, LiveJobs};
pub use metrics::{JobTokens, Metrics};

/// The header every answer about a job carries.
pub const JOB_ID_HEADER: &str = "x-nrvna-job-id";
/// The port `--http` listens on when given none.
pub const DEFAULT_PORT: u16 = 8480;
/// The body limit when none is configured.
pub const DEFAULT_MAX_BODY: usize = 8 << 20;
/// How long a connection may take to send a request's whole header, when not configured.
pub const DEFAULT_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How the server listens and what it accepts.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// Required as `Authorization: Bearer KEY` on every request but `/health`.
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// Refuse new jobs (429) past this many queued ones.
    pub max_queue: Option<usize>,
    /// Close a connection that has not sent a request's whole header in this time (a
    /// slow-loris client must not hold connections forever).
    pub header_read_timeout: std::time::Duration,
}

impl HttpConfig {
    /// Refuses a non-loopback address without a key.
    pub fn check(&self) -> Result<(), String> {
        if !self.addr.ip().is_loopback() && self.api_key.is_none() {
            return Err(format!(
                "--http {} is reachable from other machines, but no API key is set; give \
                 --api-key KEY (or NRVNA_API_KEY), or listen on loopback (127.0.0.1)",
                self.addr
            ));
        }
        if self.api_key.as_deref().is_some_and(str::is_empty) {
            return Err("--api-key is empty; give a key, or none".into());
        }
        Ok(())
    }
}

/// What the daemon serves, known once its model has loaded.
#[derive(Debug, Clone)]
pub struct Served {
    /// Stable name of the chat model (its file name without `.gguf`).
    pub chat_model: String,
    /// Stable name of the dedicated embedding model; `None`: the chat model embeds.
    pub embed_model: Option<String>,
    pub workers: usize,
}

/// Converts a JSON Schema to a GBNF grammar (the engine's converter).
pub type SchemaToGrammar = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

const LOADING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

pub(crate) struct AppState {
    ws: Workspace,
    config: HttpConfig,
    served: RwLock<Option<Served>>,
    health: AtomicU8,
    metrics: Metrics,
    /// What the hosting daemon pushes about its running jobs.
    live: LiveJobs,
    schema_to_grammar: SchemaToGrammar,
}

impl AppState {
    /// The name to answer with, after checking the one the request gave (`embed`: an
    /// embeddings request, which the embedding model serves when there is one).
    fn check_model(&self, asked: Option<&str>, embed: bool) -> Result<String, ApiError> {
        let served = self
            .served
            .read()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| {
                ApiError {
                    retry_after: Some(1),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "the model is still loading; retry shortly",
                    )
                }
                .with_code("model_loading")
            })?;
        let names = served_names(&served);
        let default = match (&served.embed_model, embed) {
            (Some(name), true) => name.clone(),
            _ => served.chat_model.clone(),
        };
        match asked {
            None => Ok(default),
            Some(name) if names.iter().any(|n| n == name) => {
                if embed || Some(name) != served.embed_model.as_deref() {
                    Ok(name.to_owned())
                } else {
                    Err(ApiError::invalid(
                        Some("model"),
                        format!(
                            "{name} is an embedding model; chat with {}",
                            served.chat_model
                        ),
                    ))
                }
            }
            Some(name) => Err(ApiError {
                param: Some("model"),
                ..ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    format!(
                        "The model `{name}` does not exist; this server serves: {}",
                        names.join(", ")
                    ),
                )
                .with_code("model_not_found")
            }),
        }
    }
}

fn served_names(served: &Served) -> Vec<String> {
    let mut names = vec![served.chat_model.clone()];
    names.extend(served.embed_model.clone());
    names
}

/// A request body, or why axum refused it (too large, unreadable).
pub(crate) type Body = Result<Bytes, BytesRejection>;

/// Parses a JSON body into `T`; every failure is a 400 (413 over the limit) in OpenAI's
/// error format.
pub(crate) fn parse_body<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "invalid_request_error",
                "the request body is over the server's limit (nrvnad --http-max-body)",
            )
            .with_code("request_too_large")
        } else {
            ApiError::invalid(None, rejection.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid(None, format!("the body is not a valid request: {e}"))
            .with_code("invalid_json")
    })
}

/// A running server. Dropping it stops it.
pub struct HttpServer {
    state: Arc<AppState>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `config.addr` now (so a taken port fails start-up) and serves on a thread.
    pub fn start(
        config: HttpConfig,
        ws: Workspace,
        metrics: Metrics,
        schema_to_grammar: SchemaToGrammar,
    ) -> Result<HttpServer> {
        config.check().map_err(anyhow::Error::msg)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nrvna-http")
            .enable_all()
            .build()
            .context("cannot start the HTTP runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(config.addr))
            .with_context(|| format!("cannot listen on {} (--http)", config.addr))?;
        let addr = listener.local_addr().context("no local address")?;
        let state = Arc::new(AppState {
            ws,
            config,
            served: RwLock::new(None),
            health: AtomicU8::new(LOADING),
            metrics,
            live: LiveJobs::new(),
            schema_to_grammar,
        });
        let app = router(state.clone());
        let header_timeout = state.config.header_read_timeout;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("nrvna-http".into())
            .spawn(move || {
                runtime.block_on(serve(listener, app, header_timeout, rx));
                // Streams still open are dropped here (their jobs are cancelled).
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            })
            .context("cannot start the HTTP thread")?;
        Ok(HttpServer {
            state,
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Where the hosting daemon pushes its jobs' starts, text and ends, so requests wake
    /// on them instead of polling the workspace.
    pub fn live(&self) -> LiveJobs {
        self.state.live.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The model has loaded: finish queueing any batch a killed daemon left half
    /// queued, then serve requests.
    pub fn ready(&self, served: Served) {
        self.state.metrics.set_slots(served.workers);
        if let Ok(mut slot) = self.state.served.write() {
            *slot = Some(served);
        }
        batches::recover(&self.state);
        self.state.health.store(READY, Ordering::SeqCst);
    }

    /// The daemon is stopping: `/health` says so.
    pub fn draining(&self) {
        self.state.health.store(DRAINING, Ordering::SeqCst);
    }
}

/// Accepts connections until `shutdown`, each served by hyper's HTTP/1 connection with a
/// header-read timeout (which `axum::serve` does not offer).
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: std::time::Duration,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, typically: wait for some to close.
                    tracing::warn!("cannot accept an HTTP connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        // Small SSE chunks must go out as they are written.
        let _ = stream.set_nodelay(true);
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("HTTP connection ended: {e}");
            }
        });
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Graceful shutdown waits for open connections; a stream to a job the stopping
        // daemon will not finish must not hold it, so the thread is left to end alone.
        let _detached = self.thread.take();
    }
}

fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/completions", post(completions::handle))
        .route("/v1/embeddings", post(embeddings::handle))
        .route("/v1/models", get(models))
        .route("/v1/files", post(batches::upload))
        .route("/v1/files/{id}", get(batches::file_object))
        .route("/v1/files/{id}/content", get(batches::file_content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::get_batch))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/v1/models/{model}", get(model))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Counts every answer by endpoint (the route, not the raw path) and status.
async fn count(AxumState(state): AxumState<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "other".into());
    let response = next.run(req).await;
    state.metrics.request(&endpoint, response.status().as_u16());
    response
}

async fn auth(AxumState(state): AxumState<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            let message = if given.is_some() {
                "Incorrect API key provided"
            } else {
                "Missing API key: send it as `Authorization: Bearer KEY`"
            };
            return ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
                .with_code("invalid_api_key")
                .into_response();
        }
    }
    next.run(req).await
}

/// Compares without an early exit, so timing does not tell how much of a key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(req: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "no endpoint {} {}; see docs/http.md for the endpoints",
            req.method(),
            req.uri().path()
        ),
    )
    .with_code("unknown_url")
    .into_response()
}

async fn health(AxumState(state): AxumState<Arc<AppState>>) -> Response {
    let served = state.served.read().ok().and_then(|s| s.clone());
    let status = match state.health.load(Ordering::SeqCst) {
        LOADING => "loading",
        READY => "ready",
        _ => "draining",
    };
    let body = json!({
        "status": status,
        "model": served.as_ref().map(|s| s.chat_model.clone()),
        "embedding_model": served.as_ref().and_then(|s| s.embed_model.clone()),
        "workers": served.as_ref().map(|s| s.workers),
    });
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

fn model_object(name: &str) -> serde_json::Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "nrvna"})
}

async fn models(AxumState(state): AxumState<Arc<AppState>>) -> Response {
    let served = state.served.read().ok().and_then(|s| s.clone());
    let data: Vec<_> = served
        .map(|s| served_names(&s).iter().map(|n| model_object(n)).collect())
        .unwrap_or_default();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn model(
    AxumState(state): AxumState<Arc<AppState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    match state.check_model(Some(&name), true) {
        Ok(name) => axum::Json(model_object(&name)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics(AxumState(state): AxumState<Arc<AppState>>) -> Response {
    let ws = state.ws.clone();
    let metrics = state.metrics.clone();
    match tokio::task::spawn_blocking(move || metrics.render(&ws)).await {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::server(format!("cannot render metrics: {e}")).into_response(),
    }
}
