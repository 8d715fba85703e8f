//! The llama.cpp engine: one thread owns the model and one context with a sequence slot
//! per worker; every step decodes one batch holding each running job's next token plus
//! a bounded chunk of prompt prefill (continuous batching, as llama.cpp's server does).

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::cpu_share::{ThreadGovernor, runnable_others};
use crate::embed::{ChatModelEmbedder, Embedder};
use crate::load::{LoadedModel, ModelRole, decode_threads};
use crate::model_thread::{ModelThread, Msg, Reply};
use crate::prefix::{Held, Placement, place};
use crate::text::strip_think_blocks;
use crate::{
    Backend, CancelFlag, ChatTurn, EngineConfig, EngineError, Finish, ModelInfo, Request,
    RequestKind, Response, TokenCount, check_model_file,
};

/// A running llama.cpp engine. Cheap to share (`Arc`); dropping it stops the thread and
/// fails whatever is still pending with [`EngineError::Stopped`].
pub struct LlamaEngine {
    info: ModelInfo,
    thread: ModelThread,
    /// Serves embedding requests when a dedicated embedding model is configured.
    embedder: Option<Embedder>,
}

impl LlamaEngine {
    /// Loads the model (and the embedding model, if any) and starts the engine thread;
    /// returns once both are loaded.
    pub fn start(config: EngineConfig) -> Result<LlamaEngine, EngineError> {
        check_model_file(&config.model)?;
        if let Some(path) = &config.embed_model {
            check_model_file(path)?;
        }
        validate(&config)?;
        let embedder = match &config.embed_model {
            Some(path) => Some(Embedder::start(path.clone(), &config)?),
            None => None,
        };
        let (thread, mut info) =
            ModelThread::start("engine", move |rx, ready| engine_main(config, rx, ready))?;
        info.embedder = embedder.as_ref().map(|e| e.info().clone());
        Ok(LlamaEngine {
            info,
            thread,
            embedder,
        })
    }
}

impl Backend for LlamaEngine {
    fn run(&self, request: Request) -> Result<Response, EngineError> {
        match &self.embedder {
            Some(embedder) if request.kind == RequestKind::Embed => embedder.run(request),
            _ => self.thread.run(request),
        }
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}

fn validate(c: &EngineConfig) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::Config(m));
    if !(1..=64).contains(&c.slots) {
        return bad(format!("workers must be between 1 and 64, got {}", c.slots));
    }
    if c.ctx_per_slot < 64 {
        return bad(format!(
            "NRVNA_CTX must be at least 64, got {}",
            c.ctx_per_slot
        ));
    }
    if c.batch < 1 || c.prefill_chunk < 1 {
        return bad("NRVNA_BATCH must be at least 1".into());
    }
    Ok(())
}

fn engine_main(
    config: EngineConfig,
    rx: Receiver<Msg>,
    ready: SyncSender<Result<ModelInfo, EngineError>>,
) {
    let loaded =
        LoadedModel::load(&config.model, config.gpu_layers, ModelRole::Chat).and_then(|loaded| {
            let info = model_info(&loaded, &config);
            check_memory(&info)?;
            Ok((loaded, info))
        });
    let (loaded, info) = match loaded {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let threads = decode_threads(&config);
    let ctx = match loaded.generation_context(
        info.slots as u32,
        info.ctx_per_slot,
        config.batch,
        threads,
    ) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(info.clone()));
    let governor = adapts_threads(&config).then(|| {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        ThreadGovernor::new(cores, threads)
    });
    let mut scheduler = Scheduler {
        loaded: &loaded,
        model: loaded.model(),
        ctx,
        governor,
        fallback_embedder: ChatModelEmbedder::new(
            &loaded,
            info.ctx_per_slot,
            config.batch,
            threads,
        ),
        cached: vec![CachedSeq::default(); info.slots],
        clock: 0,
        config,
        info,
        slots: Vec::new(),
        waiting: VecDeque::new(),
    };
    scheduler.run(rx);
}

/// Whether the decode thread count follows the load on the machine (`cpu_share`): when
/// the user fixed no count (`NRVNA_THREADS`) and decoding runs on the CPU.
fn adapts_threads(config: &EngineConfig) -> bool {
    config.threads.is_none() && config.gpu_layers == 0
}

fn model_info(loaded: &LoadedModel, config: &EngineConfig) -> ModelInfo {
    let model = loaded.model();
    let n_ctx_train = model.n_ctx_train();
    let ctx_per_slot = if n_ctx_train > 0 {
        config.ctx_per_slot.min(n_ctx_train)
    } else {
        config.ctx_per_slot
    };
    let n_head = model.n_head().max(1) as u64;
    let kv_dim = model.n_embd() as u64 / n_head * model.n_head_kv() as u64;
    // K and V, f16 (2 bytes), every layer, every cell of every slot.
    let kv_bytes =
        2 * 2 * model.n_layer() as u64 * kv_dim * ctx_per_slot as u64 * config.slots as u64;
    ModelInfo {
        path: config.model.display().to_string(),
        description: loaded.name(),
        n_ctx_train,
        n_embd: model.n_embd() as u32,
        size_bytes: model.size(),
        has_chat_template: model.chat_template(None).is_ok(),
        ctx_per_slot,
        slots: config.slots,
        kv_bytes,
        embedder: None,
    }
}

/// Refuses a configuration whose KV cache cannot fit in available memory.
fn check_memory(info: &ModelInfo) -> Result<(), EngineError> {
    let Some(available) = mem_available() else {
        return Ok(());
    };
    let needed = info.kv_bytes + info.size_bytes;
    if needed > available {
        return Err(EngineError::Config(format!(
            "{} slots × {} tokens (workers × NRVNA_CTX) need {:.1} GiB of KV cache plus \
             {:.1} GiB of weights, but only {:.1} GiB of memory is available; lower \
             NRVNA_CTX or the worker count",
            info.slots,
            info.ctx_per_slot,
            gib(info.kv_bytes),
            gib(info.size_bytes),
            gib(available)
        )));
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn random_seed() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Where a slot's job stands. Each step moves it along
/// `Prefilling → Sampling → (Decoding → Sampling)… → Finished`; a sequence that no slot
/// holds is idle and goes to the next waiting request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// The prompt is going into the KV cache, a bounded chunk per step.
    Prefilling,
    /// Its latest token is in the batch being decoded; the logits at this batch index are
    /// sampled once the decode is done.
    Sampling { logits_at: i32 },
    /// `token` was sampled and goes into the next batch (it waits a step if that is full).
    Decoding { token: LlamaToken },
    /// Generation is over; the slot is answered and freed at the end of the step.
    Finished(Ending),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Generated(Finish),
    /// The sequence's context is full before the job's token limit.
    ContextFull,
}

/// What a free sequence's KV cells hold, kept for the next job's prefix reuse.
#[derive(Debug, Clone, Default)]
struct CachedSeq {
    /// The tokens at positions `0..len` of the sequence (empty: no cells).
    tokens: Vec<LlamaToken>,
    /// When its last job ended, on the scheduler's clock.
    last_used: u64,
}

/// One running job in a sequence slot.
struct Slot {
    seq: i32,
    reply: Reply,
    cancel: CancelFlag,
    progress: TokenCount,
    /// The prompt, then each generated token as it is sampled. Between steps the first
    /// `pos` of them are exactly the sequence's KV cells.
    tokens: Vec<LlamaToken>,
    prompt_len: usize,
    /// Prompt tokens whose cells came from the cache instead of prefill.
    cached: usize,
    phase: Phase,
    /// Cells of the sequence in the KV cache: the position of the next token. While
    /// prefilling, the prompt tokens already in.
    pos: i32,
    sampler: LlamaSampler,
    out: Vec<u8>,
    generated: u32,
    max_tokens: u32,
    stop: Vec<String>,
}

impl Slot {
    fn partial(&self) -> String {
        strip_think_blocks(&String::from_utf8_lossy(&self.out))
    }

    /// What this slot's job gets for `ending`.
    fn result(&self, ending: Ending, ctx_per_slot: u32) -> Result<Response, EngineError> {
        match ending {
            Ending::Generated(finish) => Ok(Response::Text {
                text: self.partial(),
                prompt_tokens: self.prompt_len as u32,
                cached_tokens: self.cached as u32,
                generated_tokens: self.generated,
                finish,
            }),
            Ending::ContextFull => Err(EngineError::ContextFull {
                generated: self.generated,
                limit: ctx_per_slot as usize,
                partial: self.partial(),
            }),
        }
    }
}

/// The model's chat template over an optional system message and one user message; the
/// raw prompt for models without a template.
pub(crate) fn chat_prompt(
    model: &LlamaModel,
    system: Option<&str>,
    user: &str,
) -> Result<String, EngineError> {
    let mut turns = Vec::new();
    if let Some(system) = system {
        turns.push(ChatTurn {
            role: "system".into(),
            content: system.into(),
        });
    }
    turns.push(ChatTurn {
        role: "user".into(),
        content: user.into(),
    });
    template_turns(model, &turns)
}

/// The model's chat template over a conversation; without a template, the messages'
/// contents one per line.
fn template_turns(model: &LlamaModel, turns: &[ChatTurn]) -> Result<String, EngineError> {
    let Ok(template) = model.chat_template(None) else {
        let contents: Vec<&str> = turns.iter().map(|t| t.content.as_str()).collect();
        return Ok(contents.join("\n"));
    };
    let chat = turns
        .iter()
        .map(|t| {
            LlamaChatMessage::new(t.role.clone(), t.content.clone())
                .map_err(|e| EngineError::Unsupported(format!("prompt contains a NUL byte: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    model
        .apply_chat_template(&template, &chat, true)
        .map_err(|e| EngineError::Unsupported(format!("cannot apply chat template: {e}")))
}

/// Where the first stop string starts in `out`, looking only where `piece_len` new bytes
/// could have completed one.
fn stop_at(out: &[u8], piece_len: usize, stop: &[String]) -> Option<usize> {
    stop.iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let from = out.len().saturating_sub(piece_len + s.len() - 1);
            out[from..]
                .windows(s.len())
                .position(|w| w == s.as_bytes())
                .map(|at| from + at)
        })
        .min()
}

struct Scheduler<'m> {
    loaded: &'m LoadedModel,
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    /// Picks the decode thread count from the machine's load; `None`: it stays fixed.
    governor: Option<ThreadGovernor>,
    fallback_embedder: ChatModelEmbedder<'m>,
    config: EngineConfig,
    info: ModelInfo,
    slots: Vec<Slot>,
    waiting: VecDeque<(Box<Request>, Reply)>,
    /// Per sequence: the cells a free sequence still holds (running ones: empty).
    cached: Vec<CachedSeq>,
    /// Counts released jobs, to find the least recently used sequence.
    clock: u64,
}

impl<'m> Scheduler<'m> {
    fn run(&mut self, rx: Receiver<Msg>) {
        let mut batch = LlamaBatch::new(self.config.batch as usize, self.info.slots as i32);
        let mut stopping = false;
        loop {
            // Intake: block only when there is nothing to do.
            if self.slots.is_empty() && self.waiting.is_empty() {
                if stopping {
                    break;
                }
                match rx.recv() {
                    Ok(Msg::Run(req, reply)) => self.waiting.push_back((req, reply)),
                    Ok(Msg::Shutdown) | Err(_) => break,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(Msg::Run(req, reply)) => self.waiting.push_back((req, reply)),
                    Ok(Msg::Shutdown) | Err(TryRecvError::Disconnected) => {
                        stopping = true;
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            if stopping {
                self.fail_all(|| EngineError::Stopped);
                for (_, reply) in self.waiting.drain(..) {
                    let _ = reply.send(Err(EngineError::Stopped));
                }
                break;
            }
            self.admit();
            self.drop_cancelled();
            if !self.slots.is_empty() {
                self.adapt_threads();
                self.step(&mut batch);
            }
        }
    }

    /// Moves waiting requests into free slots (embeddings are served right away).
    fn admit(&mut self) {
        while let Some((req, reply)) = self.waiting.pop_front() {
            if req.cancel.is_cancelled() {
                let _ = reply.send(Err(EngineError::Cancelled {
                    partial: String::new(),
                }));
                continue;
            }
            if req.kind == RequestKind::Embed {
                let _ = reply.send(self.fallback_embedder.run(&req));
                continue;
            }
            if self.slots.len() >= self.info.slots {
                self.waiting.push_front((req, reply));
                return;
            }
            // A job refused here never touches the KV cache.
            match self.prepare(&req, reply.clone()) {
                Ok(mut slot) => {
                    if self.seat(&mut slot) {
                        self.slots.push(slot);
                    } else {
                        let _ = reply.send(Err(EngineError::Decode(
                            "no free sequence for an admitted job (an engine bug)".into(),
                        )));
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    /// Gives `slot` a free sequence, keeping (or copying in) the cells of the longest
    /// prefix of its prompt the cache holds and dropping every cell past it. `false`
    /// when no sequence is free (admit checks that one is).
    fn seat(&mut self, slot: &mut Slot) -> bool {
        let free: Vec<Held<'_, LlamaToken>> = (0..self.info.slots as i32)
            .filter(|s| self.slots.iter().all(|x| x.seq != *s))
            .map(|seq| {
                let c = &self.cached[seq as usize];
                Held {
                    seq,
                    tokens: &c.tokens,
                    last_used: c.last_used,
                }
            })
            .collect();
        let busy: Vec<Held<'_, LlamaToken>> = self
            .slots
            .iter()
            .map(|s| Held {
                seq: s.seq,
                tokens: &s.tokens[..s.pos as usize],
                last_used: 0,
            })
            .collect();
        let prompt = &slot.tokens[..slot.prompt_len];
        let Some(Placement {
            seq,
            copy_from,
            mut reuse,
        }) = place(prompt, &free, &busy, self.config.prefix_cache)
        else {
            return false;
        };
        drop((free, busy));
        if let Some(source) = copy_from {
            // One KV buffer per sequence: llama.cpp copies the whole buffer (at the next
            // decode, before the batch runs), then the cells past the prefix go.
            let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
            let _ = self.ctx.copy_kv_cache_seq(source, seq, None, None);
            tracing::debug!(
                "prefix: sequence {seq} copied {reuse} prompt tokens from sequence {source}"
            );
        }
        // Every cell past the shared prefix goes; if llama.cpp cannot cut the sequence
        // there, nothing of it is kept.
        let cut = self
            .ctx
            .clear_kv_cache_seq(Some(seq as u32), Some(reuse as u32), None);
        if !matches!(cut, Ok(true)) {
            let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
            reuse = 0;
        }
        self.cached[seq as usize].tokens.clear();
        slot.seq = seq;
        slot.pos = reuse as i32;
        slot.cached = reuse;
        true
    }

    fn prepare(&self, req: &Request, reply: Reply) -> Result<Slot, EngineError> {
        let prompt_text = if req.raw_prompt {
            req.prompt.clone()
        } else if req.messages.is_empty() {
            chat_prompt(self.model, req.system.as_deref(), &req.prompt)?
        } else {
            template_turns(self.model, &req.messages)?
        };
        let prompt = self
            .model
            .vocab()
            .tokenize(prompt_text.as_bytes(), true, true);
        let limit = self.info.ctx_per_slot as usize;
        // At least one cell must stay free for the first generated token.
        if prompt.is_empty() || prompt.len() >= limit {
            return Err(EngineError::PromptTooLong {
                tokens: prompt.len(),
                limit,
            });
        }
        let sampler = self.sampler(req)?;
        let defaults = &self.config.sampling;
        Ok(Slot {
            seq: -1,
            reply,
            cancel: req.cancel.clone(),
            progress: req.progress.clone(),
            prompt_len: prompt.len(),
            tokens: prompt,
            cached: 0,
            phase: Phase::Prefilling,
            pos: 0,
            sampler,
            out: Vec::new(),
            generated: 0,
            max_tokens: req.max_tokens.unwrap_or(defaults.max_tokens).max(1),
            stop: req.stop.clone(),
        })
    }

    fn sampler(&self, req: &Request) -> Result<LlamaSampler, EngineError> {
        let d = &self.config.sampling;
        let mut chain = Vec::new();
        if let Some(grammar) = &req.grammar {
            chain.push(
                LlamaSampler::grammar(self.model, grammar, "root")
                    .map_err(|_| EngineError::Grammar(crate::grammar_failure(grammar)))?,
            );
        }
        let temperature = req.temperature.unwrap_or(d.temperature);
        if temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            let top_k = req.top_k.unwrap_or(d.top_k);
            if top_k > 0 {
                chain.push(LlamaSampler::top_k(top_k as i32));
            }
            chain.push(LlamaSampler::top_p(req.top_p.unwrap_or(d.top_p), 1));
            chain.push(LlamaSampler::min_p(d.min_p, 1));
            chain.push(LlamaSampler::temp(temperature));
            let seed = req.seed.or(d.seed).unwrap_or_else(random_seed);
            chain.push(LlamaSampler::dist(seed));
        }
        Ok(LlamaSampler::chain_simple(chain))
    }

    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].cancel.is_cancelled() {
                let slot = self.slots.swap_remove(i);
                let partial = slot.partial();
                // Between steps: every cell it has is decoded and matches its tokens.
                self.release(slot, Err(EngineError::Cancelled { partial }), Cells::Keep);
            } else {
                i += 1;
            }
        }
    }

    /// Follows other programs' load on the CPU (`cpu_share`), between two steps, when
    /// the helper threads sleep and every sequence's cells are settled.
    fn adapt_threads(&mut self) {
        let Some(governor) = self.governor.as_mut() else {
            return;
        };
        let now = Instant::now();
        if !governor.due(now) {
            return;
        }
        let Some(others) = runnable_others() else {
            tracing::debug!("no /proc/stat: the decode thread count stays fixed");
            self.governor = None;
            return;
        };
        let from = governor.current();
        let Some(threads) = governor.observe(now, others) else {
            return;
        };
        let load = governor.load();
        match self.rebuild_context(threads) {
            Ok(()) => tracing::info!(
                "decode threads {from} → {threads}: {load:.1} runnable tasks elsewhere on the \
                 machine"
            ),
            Err(e) => {
                tracing::warn!("decode threads stay at {from}: {e}");
                if let Some(governor) = self.governor.as_mut() {
                    governor.revert(from, now);
                }
            }
        }
    }

    /// Replaces the context with one of `threads` threads, carrying every sequence's
    /// cells over (llama-cpp-2 keeps `llama_set_n_threads` out of reach). When the
    /// saved state does not load, the new context starts empty and the running jobs
    /// fail with a decode error.
    fn rebuild_context(&mut self, threads: i32) -> Result<(), String> {
        // Both caches exist for a moment.
        if let Some(available) = mem_available() {
            let needed = self.info.kv_bytes + self.info.kv_bytes / 4;
            if available < needed {
                return Err(format!(
                    "rebuilding the context needs {:.2} GiB free for a second KV cache, \
                     {:.2} GiB is",
                    gib(needed),
                    gib(available)
                ));
            }
        }
        let size = self.ctx.get_state_size();
        let mut state = vec![0u8; size];
        // SAFETY: `state` holds `get_state_size()` bytes, the most llama.cpp writes.
        let written = unsafe { self.ctx.copy_state_data(state.as_mut_ptr()) }.min(size);
        let fresh = self
            .loaded
            .generation_context(
                self.info.slots as u32,
                self.info.ctx_per_slot,
                self.config.batch,
                threads,
            )
            .map_err(|e| e.to_string())?;
        drop(std::mem::replace(&mut self.ctx, fresh));
        // SAFETY: the bytes are what a context of the same model and shape wrote.
        let read = unsafe { self.ctx.set_state_data(&state[..written]) };
        if read != written {
            self.fail_all(|| {
                EngineError::Decode(
                    "the KV cache could not be carried into a context rebuilt for a new \
                     thread count"
                        .into(),
                )
            });
            self.ctx.clear_kv_cache();
            for c in &mut self.cached {
                c.tokens.clear();
            }
        }
        Ok(())
    }

    /// One decode of the shared batch, then sampling for every slot in it.
    fn step(&mut self, batch: &mut LlamaBatch) {
        batch.clear();
        let mut budget = self.config.batch as usize;
        let mut decoding = false;
        for slot in self.slots.iter_mut() {
            let Phase::Decoding { token } = slot.phase else {
                continue;
            };
            decoding = true;
            if batch.add(token, slot.pos, &[slot.seq], true).is_err() {
                continue; // batch full: it stays Decoding until the next step
            }
            slot.phase = Phase::Sampling {
                logits_at: batch.n_tokens() - 1,
            };
            slot.pos += 1;
            budget = budget.saturating_sub(1);
        }
        // Prefill gets what is left, bounded while others decode so they are not stalled.
        let mut prefill = if decoding {
            budget.min(self.config.prefill_chunk as usize)
        } else {
            budget
        };
        for slot in self.slots.iter_mut() {
            if prefill == 0 {
                break;
            }
            if slot.phase != Phase::Prefilling {
                continue;
            }
            let done = slot.pos as usize;
            let take = (slot.prompt_len - done).min(prefill);
            for &token in &slot.tokens[done..done + take] {
                let last = slot.pos as usize + 1 == slot.prompt_len;
                if batch.add(token, slot.pos, &[slot.seq], last).is_err() {
                    break;
                }
                slot.pos += 1;
                prefill -= 1;
                if last {
                    slot.phase = Phase::Sampling {
                        logits_at: batch.n_tokens() - 1,
                    };
                }
            }
        }
        if batch.n_tokens() == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(batch) {
            // Which sequence broke is not reported: fail every job in this batch.
            // What the failed decode left in the cache is unknown: no cell is kept.
            let msg = e.to_string();
            self.fail_all(|| EngineError::Decode(msg.clone()));
            self.ctx.clear_kv_cache();
            for c in &mut self.cached {
                c.tokens.clear();
            }
            return;
        }
        let vocab = self.model.vocab();
        let limit = self.info.ctx_per_slot as i32;
        for slot in self.slots.iter_mut() {
            let Phase::Sampling { logits_at } = slot.phase else {
                continue;
            };
            let token = slot.sampler.sample(&self.ctx, logits_at);
            slot.phase = if vocab.is_eog(token) {
                Phase::Finished(Ending::Generated(Finish::EndOfGeneration))
            } else {
                let piece = vocab.token_to_piece(token, false, None);
                let piece_len = piece.len();
                slot.out.extend(piece);
                slot.tokens.push(token);
                let stop = stop_at(&slot.out, piece_len, &slot.stop);
                // Published text stops where a stop string starts.
                let new_from = slot.out.len() - piece_len;
                let keep = stop.unwrap_or(slot.out.len());
                if keep > new_from {
                    slot.progress.push_text(&slot.out[new_from..keep]);
                }
                slot.generated += 1;
                slot.progress.set(slot.generated);
                if let Some(at) = stop {
                    slot.out.truncate(at);
                    Phase::Finished(Ending::Generated(Finish::EndOfGeneration))
                } else if slot.generated >= slot.max_tokens {
                    Phase::Finished(Ending::Generated(Finish::TokenLimit))
                } else if slot.pos >= limit {
                    Phase::Finished(Ending::ContextFull)
                } else {
                    Phase::Decoding { token }
                }
            };
        }
        self.release_finished();
    }

    fn release_finished(&mut self) {
        let mut i = 0;
        while i < self.slots.len() {
            let Phase::Finished(ending) = self.slots[i].phase else {
                i += 1;
                continue;
            };
            let slot = self.slots.swap_remove(i);
            let result = slot.result(ending, self.info.ctx_per_slot);
            self.release(slot, result, Cells::Keep);
        }
    }

    fn fail_all(&mut self, err: impl Fn() -> EngineError) {
        for slot in std::mem::take(&mut self.slots) {
            self.release(slot, Err(err()), Cells::Drop);
        }
    }

    /// Answers the slot's caller and frees its sequence: its cells stay for the next job
    /// when prefix reuse is on and they are known to match its tokens, else they go.
    fn release(&mut self, slot: Slot, result: Result<Response, EngineError>, cells: Cells) {
        let cached = &mut self.cached[slot.seq as usize];
        self.clock += 1;
        cached.last_used = self.clock;
        cached.tokens.clear();
        if cells == Cells::Keep && self.config.prefix_cache {
            cached
                .tokens
                .extend_from_slice(&slot.tokens[..slot.pos as usize]);
        } else {
            let _ = self
                .ctx
                .clear_kv_cache_seq(Some(slot.seq as u32), None, None);
        }
        let _ = slot.reply.send(result);
    }
}

/// What happens to a released job's KV cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cells {
    /// They hold exactly the job's decoded tokens: kept for prefix reuse.
    Keep,
    /// Their content is unknown (a failed decode): cleared.
    Drop,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kv_bytes: u64) -> ModelInfo {
        ModelInfo {
            path: "m.gguf".into(),
            description: "test".into(),
            n_ctx_train: 8192,
            n_embd: 576,
            size_bytes: 100 << 20,
            has_chat_template: true,
            ctx_per_slot: 8192,
            slots: 64,
            kv_bytes,
            embedder: None,
        }
    }

    #[test]
    fn a_kv_cache_larger_than_memory_is_refused_with_the_numbers() {
        let err = check_memory(&info(u64::MAX / 4)).unwrap_err().to_string();
        assert!(err.contains("64 slots × 8192 tokens"), "{err}");
        assert!(err.contains("lower NRVNA_CTX or the worker count"), "{err}");
        assert!(check_memory(&info(1 << 20)).is_ok());
    }

    #[test]
    fn configuration_limits_are_checked() {
        let mut c = EngineConfig::new("m.gguf");
        c.slots = 0;
        assert!(validate(&c).is_err());
        c.slots = 65;
        assert!(validate(&c).is_err());
        c.slots = 4;
        c.ctx_per_slot = 10;
        assert!(validate(&c).unwrap_err().to_string().contains("NRVNA_CTX"));
    }
}
