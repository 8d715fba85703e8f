//! nrvna's inference engine.
//!
//! The daemon talks to an engine only through [`Backend`]: hand it a [`Request`], block
//! until the [`Response`]. [`LlamaEngine`] implements it with llama.cpp: one context with
//! one sequence slot per worker, every running job decoded together in one shared batch
//! each step (continuous batching), long prompts prefilled in chunks, each job with its
//! own sampler chain and limits. [`RemoteBackend`] implements it with a remote
//! OpenAI-compatible server (llama-server, vLLM, ollama) over HTTP.

pub mod bench;
mod config;
mod cpu_share;
mod embed;
mod gbnf;
mod llama;
mod load;
mod model_file;
mod model_thread;
mod prefix;
mod remote;
mod schema;
#[cfg(any(test, feature = "scripted"))]
pub mod scripted;
mod text;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub use config::{EngineConfig, SamplingDefaults};
pub use gbnf::{GbnfError, MAX_NESTING, check_grammar};
pub use llama::LlamaEngine;
pub use model_file::{ModelFileError, check_model_file};
pub use remote::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, RemoteBackend, RemoteConfig, RemoteError,
    RetryPolicy,
};
pub use schema::check_schema;
pub use text::strip_think_blocks;

/// Set from another thread to stop a request; the engine drops it at its next step.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> CancelFlag {
        CancelFlag::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a running request has generated so far: the token count (the daemon shows it in
/// `nrvna ps`) and the raw text, before think blocks are stripped (the daemon publishes it
/// as the job's partial output while it runs).
#[derive(Debug, Clone, Default)]
pub struct TokenCount(Arc<Generated>);

#[derive(Debug, Default)]
struct Generated {
    tokens: AtomicU32,
    text: Mutex<Vec<u8>>,
    grew: Condvar,
}

impl TokenCount {
    pub fn new() -> TokenCount {
        TokenCount::default()
    }
    pub fn set(&self, tokens: u32) {
        self.0.tokens.store(tokens, Ordering::Relaxed);
    }
    pub fn get(&self) -> u32 {
        self.0.tokens.load(Ordering::Relaxed)
    }
    /// Appends a generated piece (raw bytes: a piece may end inside a UTF-8 character).
    pub fn push_text(&self, piece: &[u8]) {
        if piece.is_empty() {
            return;
        }
        if let Ok(mut text) = self.0.text.lock() {
            text.extend_from_slice(piece);
        }
        self.0.grew.notify_all();
    }
    /// The text past byte `from`, waiting up to `timeout` for some if there is none yet.
    pub fn text_since(&self, from: usize, timeout: Duration) -> Vec<u8> {
        let Ok(text) = self.0.text.lock() else {
            return Vec::new();
        };
        let text = if text.len() > from {
            text
        } else {
            match self.0.grew.wait_timeout(text, timeout) {
                Ok((text, _)) => text,
                Err(_) => return Vec::new(),
            }
        };
        text.get(from..).map(<[u8]>::to_vec).unwrap_or_default()
    }
    /// Wakes whoever waits in [`TokenCount::text_since`] (the request has ended).
    pub fn wake(&self) {
        self.0.grew.notify_all();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Chat-templated generation.
    Generate,
    /// L2-normalised sentence embedding of the raw prompt: by the dedicated embedding
    /// model if one is configured (pooled as its metadata says), else by the chat model
    /// mean-pooled.
    Embed,
}

/// One unit of work for the engine. `None` fields take the engine's defaults.
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: RequestKind,
    pub prompt: String,
    pub system: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub seed: Option<u32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    /// GBNF grammar constraining generation (root rule `root`).
    pub grammar: Option<String>,
    /// The JSON Schema `grammar` was made from, for a JSON-schema job: what a remote
    /// backend sends (as `response_format`) instead of the grammar.
    pub schema: Option<String>,
    /// A conversation to template instead of `system` + `prompt` (a chat job).
    pub messages: Vec<ChatTurn>,
    /// Generation stops before the first of these strings, which is left out of the text.
    pub stop: Vec<String>,
    /// Give the prompt to the model as it is, without the chat template.
    pub raw_prompt: bool,
    pub cancel: CancelFlag,
    /// Tokens and text generated so far, updated every step.
    pub progress: TokenCount,
}

impl Request {
    pub fn generate(prompt: impl Into<String>) -> Request {
        Request {
            kind: RequestKind::Generate,
            prompt: prompt.into(),
            system: None,
            max_tokens: None,
            temperature: None,
            seed: None,
            top_k: None,
            top_p: None,
            grammar: None,
            schema: None,
            messages: Vec::new(),
            stop: Vec::new(),
            raw_prompt: false,
            cancel: CancelFlag::new(),
            progress: TokenCount::new(),
        }
    }

    pub fn embed(prompt: impl Into<String>) -> Request {
        Request {
            kind: RequestKind::Embed,
            ..Request::generate(prompt)
        }
    }
}

/// One message of a conversation: `role` is `system`, `user` or `assistant`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatTurn {
    pub role: String,
    pub content: String,
}

/// Why a generation stopped. Anything else is an [`EngineError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    EndOfGeneration,
    TokenLimit,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Text {
        /// Output with think blocks stripped.
        text: String,
        prompt_tokens: u32,
        /// Prompt tokens whose KV cells were reused from an earlier job (prefix reuse)
        /// instead of being computed.
        cached_tokens: u32,
        generated_tokens: u32,
        finish: Finish,
    },
    Embedding {
        vector: Vec<f32>,
        prompt_tokens: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    ModelFile(#[from] ModelFileError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("cannot load model {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("cannot load embedding model {path}: {reason}")]
    LoadEmbedding { path: String, reason: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("prompt is {tokens} tokens; the per-job context (NRVNA_CTX) holds {limit}")]
    PromptTooLong { tokens: usize, limit: usize },
    #[error("text is {tokens} tokens; the embedding model {model} takes at most {limit} tokens")]
    EmbeddingTooLong {
        tokens: usize,
        limit: usize,
        model: String,
    },
    #[error(
        "generation truncated: the per-job context of {limit} tokens filled after {generated} \
         generated tokens (raise NRVNA_CTX or lower max tokens)"
    )]
    ContextFull {
        generated: u32,
        limit: usize,
        partial: String,
    },
    #[error("cancelled")]
    Cancelled { partial: String },
    #[error("decode failed: {0}")]
    Decode(String),
    #[error("invalid grammar: {0}")]
    Grammar(String),
    /// A JSON Schema that cannot become a grammar.
    #[error("{0}")]
    Schema(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("the engine has stopped")]
    Stopped,
}

impl EngineError {
    /// Output produced before the failure, if any (kept as `response.txt`).
    pub fn partial(&self) -> Option<&str> {
        match self {
            EngineError::ContextFull { partial, .. } | EngineError::Cancelled { partial } => {
                Some(partial)
            }
            _ => None,
        }
    }
}

/// Facts about the loaded model, for banners and `.nrvnad.info`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub path: String,
    /// `general.name`, else the file name.
    pub description: String,
    pub n_ctx_train: u32,
    pub n_embd: u32,
    pub size_bytes: u64,
    pub has_chat_template: bool,
    /// Per-job context actually used (NRVNA_CTX, capped at the training context).
    pub ctx_per_slot: u32,
    pub slots: usize,
    /// Bytes of KV cache reserved for all slots.
    pub kv_bytes: u64,
    /// The dedicated embedding model serving embedding jobs; `None`: the chat model does.
    pub embedder: Option<EmbedderInfo>,
}

impl ModelInfo {
    /// Name of the model that serves requests of this kind.
    pub fn model_for(&self, kind: RequestKind) -> &str {
        match (kind, &self.embedder) {
            (RequestKind::Embed, Some(embedder)) => &embedder.name,
            _ => &self.description,
        }
    }
}

/// Facts about a dedicated embedding model (`EngineConfig::embed_model`).
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedderInfo {
    pub path: String,
    /// `general.name`, else the file name.
    pub name: String,
    /// Dimensions of its vectors.
    pub dim: u32,
    /// Most tokens one text may have, special tokens included.
    pub max_tokens: u32,
    /// `mean`, `cls` or `last`, from the model's metadata (`mean` when it names none).
    pub pooling: &'static str,
    pub size_bytes: u64,
}

/// The engine interface the daemon uses: blocking, callable from many threads at once.
/// Concurrent calls are what the engine batches together.
pub trait Backend: Send + Sync {
    fn run(&self, request: Request) -> Result<Response, EngineError>;
    fn info(&self) -> &ModelInfo;
    /// What serves the requests, as `meta.json`'s `backend` names it: `llama.cpp` for the
    /// engine in this process, the base URL for a remote server.
    fn backend(&self) -> String {
        "llama.cpp".into()
    }
}

/// Converts a JSON Schema into a GBNF grammar (llama.cpp's converter), first refusing
/// what the converter cannot convert ([`check_schema`]) with what and where.
pub fn schema_to_grammar(schema: &str) -> Result<String, EngineError> {
    let value: serde_json::Value = serde_json::from_str(schema)
        .map_err(|e| EngineError::Schema(format!("not valid JSON: {e}")))?;
    check_schema(&value).map_err(EngineError::Schema)?;
    llama_cpp_2::json_schema_to_grammar(schema).map_err(|_| {
        EngineError::Schema(
            "llama.cpp could not convert this JSON Schema (a keyword or construct its \
             converter does not support)"
                .into(),
        )
    })
}

/// Why llama.cpp refused `grammar` when the job ran: the checker's message, or, for a
/// grammar the checker passes, what else llama.cpp checks that needs the model.
pub fn grammar_failure(grammar: &str) -> String {
    match check_grammar(grammar) {
        Err(e) => e.to_string(),
        Ok(()) => "llama.cpp refused it (a <token> that is not one token of this model, or \
                   left recursion); the daemon's log has llama.cpp's message"
            .into(),
    }
}
