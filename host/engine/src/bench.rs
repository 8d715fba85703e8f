//! The raw ceiling for `nrvna bench`: the same llama.cpp work the daemon does for N jobs
//! (chat-templated prompt prefill, then sampling and decoding every sequence in one
//! batch per step), in a tight loop with no queue, files or threads around it.

use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;

use crate::{EngineConfig, EngineError, check_model_file};

/// What one raw run measured.
#[derive(Debug, Clone, Copy)]
pub struct RawRun {
    pub sequences: usize,
    pub generated_tokens: u64,
    pub seconds: f64,
}

impl RawRun {
    pub fn tokens_per_second(&self) -> f64 {
        self.generated_tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Runs `waves` rounds of `sequences` jobs decoded together: each round prefills the
/// prompt into every sequence, then generates exactly `tokens` tokens in each
/// (end-of-generation is ignored so every run does the same work), sampling with the
/// config's default chain. `waves × sequences` jobs in all, like the daemon's run.
pub fn raw_decode(
    config: &EngineConfig,
    sequences: usize,
    waves: usize,
    prompt: &str,
    tokens: u32,
) -> Result<RawRun, EngineError> {
    check_model_file(&config.model)?;
    let backend = crate::llama::backend()?;
    let params = LlamaModelParams::default().with_n_gpu_layers(config.gpu_layers);
    let model = LlamaModel::load_from_file(backend, &config.model, &params).map_err(|e| {
        EngineError::Load {
            path: config.model.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    let threads = crate::llama::decode_threads(config);
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(config.ctx_per_slot * sequences as u32))
        .with_n_batch(config.batch)
        .with_n_seq_max(sequences as u32)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_kv_unified(false);
    let mut ctx = model
        .new_context(backend, ctx_params)
        .map_err(|e| EngineError::Config(format!("cannot create the context: {e}")))?;
    let text = match model.chat_template(None) {
        Ok(t) => {
            let msg = LlamaChatMessage::new("user".into(), prompt.into())
                .map_err(|e| EngineError::Unsupported(e.to_string()))?;
            model
                .apply_chat_template(&t, &[msg], true)
                .map_err(|e| EngineError::Unsupported(e.to_string()))?
        }
        Err(_) => prompt.to_owned(),
    };
    let prompt_tokens = model.vocab().tokenize(text.as_bytes(), true, true);
    let d = &config.sampling;
    let mut samplers: Vec<LlamaSampler> = (0..sequences)
        .map(|i| {
            LlamaSampler::chain_simple([
                LlamaSampler::top_k(d.top_k as i32),
                LlamaSampler::top_p(d.top_p, 1),
                LlamaSampler::min_p(d.min_p, 1),
                LlamaSampler::temp(d.temperature),
                LlamaSampler::dist(1234 + i as u32),
            ])
        })
        .collect();
    let capacity = (prompt_tokens.len() * sequences).max(config.batch as usize);
    let mut batch = LlamaBatch::new(capacity, sequences as i32);
    let started = Instant::now();
    let mut generated = 0u64;
    for _ in 0..waves.max(1) {
        ctx.clear_kv_cache();
        // Prefill every sequence in one batch.
        let mut logits_at = vec![0i32; sequences];
        batch.clear();
        for (seq, at) in logits_at.iter_mut().enumerate() {
            for (pos, token) in prompt_tokens.iter().enumerate() {
                let last = pos + 1 == prompt_tokens.len();
                batch
                    .add(*token, pos as i32, &[seq as i32], last)
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
            }
            *at = batch.n_tokens() - 1;
        }
        ctx.decode(&mut batch)
            .map_err(|e| EngineError::Decode(e.to_string()))?;
        for step in 0..tokens {
            let next: Vec<_> = samplers
                .iter_mut()
                .zip(&logits_at)
                .map(|(s, at)| s.sample(&ctx, *at))
                .collect();
            generated += sequences as u64;
            if step + 1 == tokens {
                break;
            }
            batch.clear();
            let pos = (prompt_tokens.len() as u32 + step) as i32;
            for (seq, token) in next.into_iter().enumerate() {
                batch
                    .add(token, pos, &[seq as i32], true)
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
                logits_at[seq] = seq as i32;
            }
            ctx.decode(&mut batch)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
        }
    }
    Ok(RawRun {
        sequences,
        generated_tokens: generated,
        seconds: started.elapsed().as_secs_f64(),
    })
}
