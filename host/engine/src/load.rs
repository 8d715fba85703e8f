//! Loading a GGUF model and creating llama.cpp contexts on it: one piece of code for the
//! engine, its embedders and the bench, so all of them run a model the same way.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llama_cpp_2::LlamaContextLoadError;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;

use crate::{EngineConfig, EngineError, check_model_file};

/// What a model is loaded for; it decides which error names a model that fails to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModelRole {
    /// The chat model (`EngineConfig::model`).
    Chat,
    /// The dedicated embedding model (`EngineConfig::embed_model`).
    Embedding,
}

/// A model in memory, with the path it came from and what it was loaded for.
pub(crate) struct LoadedModel {
    backend: &'static LlamaBackend,
    model: LlamaModel,
    path: PathBuf,
    role: ModelRole,
}

impl LoadedModel {
    /// Checks `path` is a GGUF file and loads it, `gpu_layers` layers offloaded.
    pub(crate) fn load(
        path: &Path,
        gpu_layers: u32,
        role: ModelRole,
    ) -> Result<LoadedModel, EngineError> {
        check_model_file(path)?;
        let backend = backend()?;
        let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|e| load_error(role, path, e.to_string()))?;
        Ok(LoadedModel {
            backend,
            model,
            path: path.to_owned(),
            role,
        })
    }

    pub(crate) fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// The error saying this model cannot be used, for `reason`.
    pub(crate) fn error(&self, reason: String) -> EngineError {
        load_error(self.role, &self.path, reason)
    }

    /// `general.name`, else the file name without `.gguf`.
    pub(crate) fn name(&self) -> String {
        self.model
            .meta_val_str("general.name")
            .ok()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| {
                self.path
                    .file_name()
                    .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_owned())
                    .unwrap_or_else(|| "unknown".into())
            })
    }

    /// The generation context: `slots` sequences of `ctx_per_slot` tokens each, decoded
    /// together in batches of up to `batch` tokens.
    pub(crate) fn generation_context(
        &self,
        slots: u32,
        ctx_per_slot: u32,
        batch: u32,
        threads: i32,
    ) -> Result<LlamaContext<'_>, EngineError> {
        let total = ctx_per_slot * slots;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(total))
            .with_n_batch(batch)
            .with_n_seq_max(slots)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            // Separate KV per sequence: faster for parallel decoding on CPU, and no job can
            // crowd another out of the cache.
            .with_kv_unified(false);
        self.model.new_context(self.backend, params).map_err(|e| {
            self.error(format!(
                "cannot create a context of {total} tokens ({slots} slots × {ctx_per_slot}): {e}"
            ))
        })
    }

    /// A context that returns one pooled embedding per text of up to `n_ctx` tokens.
    pub(crate) fn embedding_context(
        &self,
        n_ctx: u32,
        threads: i32,
        pooling: LlamaPoolingType,
    ) -> Result<LlamaContext<'_>, LlamaContextLoadError> {
        // The whole text is decoded at once: one batch, one micro-batch (encoder models
        // need that).
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx)
            .with_n_ubatch(n_ctx)
            .with_n_seq_max(1)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_embeddings(true)
            .with_pooling_type(pooling);
        self.model.new_context(self.backend, params)
    }
}

fn load_error(role: ModelRole, path: &Path, reason: String) -> EngineError {
    let path = path.display().to_string();
    match role {
        ModelRole::Chat => EngineError::Load { path, reason },
        ModelRole::Embedding => EngineError::LoadEmbedding { path, reason },
    }
}

/// llama.cpp, initialised once per process (its logs silenced unless `NRVNA_LLAMA_LOG=1`;
/// the daemon refuses any value but 0 or 1 at start-up).
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            let show_logs = std::env::var("NRVNA_LLAMA_LOG").is_ok_and(|v| v.trim() == "1");
            if !show_logs {
                backend.void_logs();
            }
            Ok(backend)
        })
        .as_ref()
        .map_err(|e| EngineError::Config(format!("cannot initialise llama.cpp: {e}")))
}

/// `NRVNA_THREADS`, else every available core.
pub(crate) fn decode_threads(config: &EngineConfig) -> i32 {
    config.threads.map(|t| t as i32).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as i32)
            .unwrap_or(2)
    })
}
