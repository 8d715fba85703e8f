//! Sentence embeddings, by one of two embedders: a dedicated embedding model
//! (`EngineConfig::embed_model`, [`Embedder`]) loaded once on its own thread with its own
//! context, so embedding jobs neither wait for the generation batch nor stall it; else the
//! chat model itself, mean-pooled ([`ChatModelEmbedder`], run by the engine thread).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaPoolingType;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;

use crate::load::{LoadedModel, ModelRole, decode_threads};
use crate::model_thread::{ModelThread, Msg};
use crate::{EmbedderInfo, EngineConfig, EngineError, Request, Response};

/// A loaded embedding model answering requests one at a time on its own thread.
pub(crate) struct Embedder {
    thread: ModelThread,
    info: EmbedderInfo,
}

impl Embedder {
    /// Loads `path` and creates its context; returns once it can serve.
    pub(crate) fn start(path: PathBuf, config: &EngineConfig) -> Result<Embedder, EngineError> {
        let gpu_layers = config.gpu_layers;
        let threads = decode_threads(config);
        let batch = config.batch;
        let (thread, info) = ModelThread::start("embedding", move |rx, ready| {
            embedder_main(&path, gpu_layers, threads, batch, rx, ready)
        })?;
        Ok(Embedder { thread, info })
    }

    pub(crate) fn run(&self, request: Request) -> Result<Response, EngineError> {
        self.thread.run(request)
    }

    pub(crate) fn info(&self) -> &EmbedderInfo {
        &self.info
    }
}

fn embedder_main(
    path: &Path,
    gpu_layers: u32,
    threads: i32,
    batch: u32,
    rx: Receiver<Msg>,
    ready: SyncSender<Result<EmbedderInfo, EngineError>>,
) {
    let loaded = match LoadedModel::load(path, gpu_layers, ModelRole::Embedding) {
        Ok(loaded) => loaded,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let model = loaded.model();
    let (pooling_type, pooling) = match pooling_of(model) {
        Ok(p) => p,
        Err(reason) => {
            let _ = ready.send(Err(loaded.error(reason)));
            return;
        }
    };
    let max_tokens = embed_context(model.n_ctx_train(), batch);
    let mut ctx = match loaded.embedding_context(max_tokens, threads, pooling_type) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(loaded.error(format!(
                "cannot create an embedding context of {max_tokens} tokens: {e}"
            ))));
            return;
        }
    };
    let info = EmbedderInfo {
        path: path.display().to_string(),
        name: loaded.name(),
        dim: model.n_embd_out().max(0) as u32,
        max_tokens,
        pooling,
        size_bytes: model.size(),
    };
    let _ = ready.send(Ok(info.clone()));
    while let Ok(Msg::Run(request, reply)) = rx.recv() {
        let result = if request.cancel.is_cancelled() {
            Err(EngineError::Cancelled {
                partial: String::new(),
            })
        } else {
            embed_text(
                &mut ctx,
                model,
                &request.prompt,
                max_tokens as usize,
                |tokens| EngineError::EmbeddingTooLong {
                    tokens,
                    limit: max_tokens as usize,
                    model: info.name.clone(),
                },
            )
        };
        let _ = reply.send(result);
    }
}

/// Embeddings by the chat model itself, mean-pooled, for when no dedicated embedding model
/// is configured. Its context is created on first use: most daemons never embed.
pub(crate) struct ChatModelEmbedder<'m> {
    chat_model: &'m LoadedModel,
    /// Most tokens one text may have (and the context's size).
    limit: u32,
    threads: i32,
    ctx: Option<LlamaContext<'m>>,
}

impl<'m> ChatModelEmbedder<'m> {
    /// `ctx_per_slot` and `batch` are the generation context's; a text must fit both.
    pub(crate) fn new(
        chat_model: &'m LoadedModel,
        ctx_per_slot: u32,
        batch: u32,
        threads: i32,
    ) -> ChatModelEmbedder<'m> {
        ChatModelEmbedder {
            chat_model,
            limit: ctx_per_slot.min(embed_context(0, batch)),
            threads,
            ctx: None,
        }
    }

    pub(crate) fn run(&mut self, request: &Request) -> Result<Response, EngineError> {
        let ctx = match &mut self.ctx {
            Some(ctx) => ctx,
            None => {
                let ctx = self
                    .chat_model
                    .embedding_context(self.limit, self.threads, LlamaPoolingType::Mean)
                    .map_err(|e| {
                        EngineError::Unsupported(format!("cannot create embedding context: {e}"))
                    })?;
                self.ctx.insert(ctx)
            }
        };
        let limit = self.limit as usize;
        embed_text(
            ctx,
            self.chat_model.model(),
            &request.prompt,
            limit,
            |tokens| EngineError::PromptTooLong { tokens, limit },
        )
    }
}

/// Tokens one embedding may have: the model's training context, bounded by the decode
/// batch (NRVNA_BATCH, at least 512) since the whole text is decoded in one step.
fn embed_context(n_ctx_train: u32, batch: u32) -> u32 {
    let cap = batch.max(512);
    if n_ctx_train == 0 {
        cap
    } else {
        n_ctx_train.min(cap)
    }
}

/// The pooling the model's metadata asks for (`{arch}.pooling_type`); a model that names
/// none, or "none", is mean-pooled.
fn pooling_of(model: &LlamaModel) -> Result<(LlamaPoolingType, &'static str), String> {
    let arch = model
        .meta_val_str("general.architecture")
        .unwrap_or_default();
    let raw = model.meta_val_str(&format!("{arch}.pooling_type")).ok();
    pooling_from_metadata(raw.as_deref())
}

fn pooling_from_metadata(raw: Option<&str>) -> Result<(LlamaPoolingType, &'static str), String> {
    match raw.map(str::trim) {
        None | Some("0") | Some("1") => Ok((LlamaPoolingType::Mean, "mean")),
        Some("2") => Ok((LlamaPoolingType::Cls, "cls")),
        Some("3") => Ok((LlamaPoolingType::Last, "last")),
        Some("4") => Err("it is a reranker (rank pooling), not an embedding model".into()),
        Some(other) => Err(format!("unknown pooling type {other:?} in its metadata")),
    }
}

/// Tokenises `text` with the model's special tokens, decodes it in one batch on `ctx` (a
/// context with embeddings and pooling on), and returns the pooled vector, L2-normalised,
/// with the token count. A text of no tokens or more than `limit` fails with
/// `too_long(tokens)`.
fn embed_text(
    ctx: &mut LlamaContext,
    model: &LlamaModel,
    text: &str,
    limit: usize,
    too_long: impl FnOnce(usize) -> EngineError,
) -> Result<Response, EngineError> {
    let tokens = model.vocab().tokenize(text.as_bytes(), true, false);
    if tokens.is_empty() || tokens.len() > limit {
        return Err(too_long(tokens.len()));
    }
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    batch
        .add_sequence(&tokens, 0, true)
        .map_err(|e| EngineError::Decode(e.to_string()))?;
    ctx.decode(&mut batch)
        .map_err(|e| EngineError::Decode(e.to_string()))?;
    let raw = ctx
        .embeddings_seq_ith(0)
        .map_err(|e| EngineError::Decode(e.to_string()))?;
    Ok(Response::Embedding {
        vector: normalise(raw),
        prompt_tokens: tokens.len() as u32,
    })
}

/// `v / |v|` (a zero vector stays as it is).
fn normalise(raw: &[f32]) -> Vec<f32> {
    let norm = raw
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        raw.iter().map(|x| (*x as f64 / norm) as f32).collect()
    } else {
        raw.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_comes_from_the_metadata_and_rerankers_are_refused() {
        assert_eq!(pooling_from_metadata(None).unwrap().1, "mean");
        assert_eq!(pooling_from_metadata(Some("0")).unwrap().1, "mean");
        assert_eq!(pooling_from_metadata(Some("1")).unwrap().1, "mean");
        assert_eq!(pooling_from_metadata(Some("2")).unwrap().1, "cls");
        assert_eq!(pooling_from_metadata(Some("3")).unwrap().1, "last");
        assert!(
            pooling_from_metadata(Some("4"))
                .unwrap_err()
                .contains("reranker")
        );
        assert!(pooling_from_metadata(Some("9")).is_err());
    }

    #[test]
    fn the_embedding_context_is_the_training_context_within_the_batch() {
        assert_eq!(embed_context(512, 2048), 512);
        assert_eq!(embed_context(8192, 2048), 2048);
        assert_eq!(embed_context(8192, 100), 512);
        assert_eq!(embed_context(0, 2048), 2048);
    }

    #[test]
    fn vectors_are_unit_length() {
        let v = normalise(&[3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(normalise(&[0.0, 0.0]), vec![0.0, 0.0]);
    }
}
