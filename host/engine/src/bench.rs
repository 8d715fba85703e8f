//! The raw ceiling for `nrvna bench`: the same llama.cpp work the daemon does for N jobs
//! (chat-templated prompt prefill, then sampling and decoding every sequence in one
//! batch per step), in a tight loop with no queue, files or threads around it.

use std::time::Instant;

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;

use crate::llama::chat_prompt;
use crate::load::{LoadedModel, ModelRole, decode_threads};
use crate::{EngineConfig, EngineError};

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
    let loaded = LoadedModel::load(&config.model, config.gpu_layers, ModelRole::Chat)?;
    let model = loaded.model();
    let mut ctx = loaded.generation_context(
        sequences as u32,
        config.ctx_per_slot,
        config.batch,
        decode_threads(config),
    )?;
    let text = chat_prompt(model, None, prompt)?;
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
