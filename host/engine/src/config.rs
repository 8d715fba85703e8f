//! Engine configuration (the daemon fills it from flags and `NRVNA_*` variables).

use std::path::PathBuf;

/// Sampling used when a job does not override it.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingDefaults {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    /// `None`: each job draws its own random seed.
    pub seed: Option<u32>,
}

impl Default for SamplingDefaults {
    fn default() -> Self {
        SamplingDefaults {
            max_tokens: 768,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            seed: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model: PathBuf,
    /// Sequence slots decoded together (the daemon's worker count).
    pub slots: usize,
    /// Context per job, in tokens (NRVNA_CTX). Capped at the model's training context.
    pub ctx_per_slot: u32,
    /// Most tokens decoded in one step (NRVNA_BATCH).
    pub batch: u32,
    /// Most prompt tokens prefilled per step while other jobs are decoding, so a long
    /// prompt does not stall them.
    pub prefill_chunk: u32,
    pub gpu_layers: u32,
    /// CPU threads for decoding; `None`: all available cores.
    pub threads: Option<u32>,
    pub sampling: SamplingDefaults,
    /// Keep an ended job's KV cells for the next job whose prompt starts the same way
    /// (NRVNA_PREFIX_CACHE; off: every job prefills its whole prompt).
    pub prefix_cache: bool,
    /// A dedicated embedding model (GGUF) that serves every embedding request on its own
    /// thread and context; `None`: the chat model serves them, mean-pooled.
    pub embed_model: Option<PathBuf>,
}

impl EngineConfig {
    pub fn new(model: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            model: model.into(),
            slots: 4,
            ctx_per_slot: 8192,
            batch: 2048,
            prefill_chunk: 256,
            gpu_layers: 0,
            threads: None,
            sampling: SamplingDefaults::default(),
            prefix_cache: true,
            embed_model: None,
        }
    }
}
