//! A scripted [`Backend`] for fast tests of what drives an engine (the daemon), compiled
//! only with the `scripted` feature.
//!
//! Each request plays the [`Script`] registered for its prompt (else the default one)
//! under the contract [`crate::LlamaEngine`] keeps: the request runs in steps of a fixed
//! duration, its cancel flag is checked before every step (a cancelled request fails with
//! what it had generated), generation stops at the request's token limit, and text comes
//! out with think blocks stripped. Generated text comes one whitespace-ended piece (a
//! "token") per step.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::text::strip_think_blocks;
use crate::{
    Backend, CancelFlag, EngineError, Finish, ModelInfo, Request, RequestKind, Response,
    SamplingDefaults,
};

/// Builds the error a [`Script::failure`] ends with (errors are not `Clone`, and a
/// script may be played more than once).
type MakeError = Arc<dyn Fn() -> EngineError + Send + Sync>;

/// What a request does, step by step.
#[derive(Clone)]
pub struct Script {
    /// Steps before the first generated piece (the prompt's prefill).
    delay_steps: u32,
    ending: Ending,
}

#[derive(Clone)]
enum Ending {
    /// Generates the prompt back (a generation), or [`ECHO_EMBEDDING`] (an embedding).
    Echo,
    Text(String),
    Embedding(Vec<f32>),
    /// Generates the text, then runs out of context.
    ContextFull(String),
    Failure(MakeError),
    /// Generates the text, then goes on without output until cancelled.
    UntilCancelled(String),
}

/// The vector an unscripted embedding request gets.
pub const ECHO_EMBEDDING: [f32; 4] = [1.0, 0.0, 0.0, 0.0];

impl Script {
    fn ending(ending: Ending) -> Script {
        Script {
            delay_steps: 0,
            ending,
        }
    }

    /// Generates the request's prompt back; an embedding request gets [`ECHO_EMBEDDING`].
    pub fn echo() -> Script {
        Script::ending(Ending::Echo)
    }

    /// Generates `text` and ends (end of generation, or the request's token limit).
    pub fn text(text: impl Into<String>) -> Script {
        Script::ending(Ending::Text(text.into()))
    }

    /// Answers an embedding request with `vector` (as given: not normalised).
    pub fn embedding(vector: Vec<f32>) -> Script {
        Script::ending(Ending::Embedding(vector))
    }

    /// Generates `partial`, then fails with [`EngineError::ContextFull`].
    pub fn context_full(partial: impl Into<String>) -> Script {
        Script::ending(Ending::ContextFull(partial.into()))
    }

    /// Fails with the error `make` builds.
    pub fn failure(make: impl Fn() -> EngineError + Send + Sync + 'static) -> Script {
        Script::ending(Ending::Failure(Arc::new(make)))
    }

    /// Generates `partial`, then never finishes: only its cancel flag ends it.
    pub fn until_cancelled(partial: impl Into<String>) -> Script {
        Script::ending(Ending::UntilCancelled(partial.into()))
    }

    /// Waits `steps` steps (cancellable) before generating anything.
    pub fn after_steps(mut self, steps: u32) -> Script {
        self.delay_steps = steps;
        self
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ending = match &self.ending {
            Ending::Echo => "echo".to_owned(),
            Ending::Text(text) => format!("text {text:?}"),
            Ending::Embedding(vector) => format!("embedding of {} dimensions", vector.len()),
            Ending::ContextFull(partial) => format!("context full after {partial:?}"),
            Ending::Failure(_) => "failure".to_owned(),
            Ending::UntilCancelled(partial) => format!("until cancelled after {partial:?}"),
        };
        write!(f, "Script({ending}, after {} steps)", self.delay_steps)
    }
}

/// A [`Backend`] that plays scripts instead of running a model. Callable from many
/// threads at once, like the real engine; each call plays on the caller's thread.
pub struct ScriptedBackend {
    info: ModelInfo,
    step: Duration,
    default_script: Script,
    scripts: HashMap<String, Script>,
    /// Prompts in the order their requests started.
    started: Mutex<Vec<String>>,
}

impl Default for ScriptedBackend {
    fn default() -> Self {
        ScriptedBackend::new()
    }
}

impl ScriptedBackend {
    /// Every prompt echoed, one millisecond a step.
    pub fn new() -> ScriptedBackend {
        ScriptedBackend {
            info: ModelInfo {
                path: "scripted.gguf".into(),
                description: "scripted".into(),
                n_ctx_train: 4096,
                n_embd: ECHO_EMBEDDING.len() as u32,
                size_bytes: 0,
                has_chat_template: false,
                ctx_per_slot: 4096,
                slots: 4,
                kv_bytes: 0,
                embedder: None,
            },
            step: Duration::from_millis(1),
            default_script: Script::echo(),
            scripts: HashMap::new(),
            started: Mutex::new(Vec::new()),
        }
    }

    /// How long one step takes.
    pub fn step(mut self, step: Duration) -> ScriptedBackend {
        self.step = step;
        self
    }

    /// The script for prompts no [`ScriptedBackend::on`] names.
    pub fn by_default(mut self, script: Script) -> ScriptedBackend {
        self.default_script = script;
        self
    }

    /// Requests whose prompt is exactly `prompt` play `script`.
    pub fn on(mut self, prompt: impl Into<String>, script: Script) -> ScriptedBackend {
        self.scripts.insert(prompt.into(), script);
        self
    }

    /// How many requests with this prompt have started.
    pub fn runs_of(&self, prompt: &str) -> usize {
        self.started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|p| *p == prompt)
            .count()
    }

    /// One step: fails with the output so far if the request was cancelled, else waits.
    fn step_once(&self, cancel: &CancelFlag, out: &str) -> Result<(), EngineError> {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled {
                partial: strip_think_blocks(out),
            });
        }
        std::thread::sleep(self.step);
        Ok(())
    }

    fn play(&self, request: &Request, script: &Script) -> Result<Response, EngineError> {
        let prompt_tokens = request.prompt.split_whitespace().count().max(1) as u32;
        for _ in 0..script.delay_steps {
            self.step_once(&request.cancel, "")?;
        }
        let kind = request.kind;
        let text = match (&script.ending, kind) {
            (Ending::Echo, RequestKind::Embed) => {
                return self.embedding(request, ECHO_EMBEDDING.to_vec(), prompt_tokens);
            }
            (Ending::Embedding(vector), RequestKind::Embed) => {
                return self.embedding(request, vector.clone(), prompt_tokens);
            }
            (Ending::Failure(make), _) => {
                self.step_once(&request.cancel, "")?;
                return Err(make());
            }
            (Ending::Echo, RequestKind::Generate) => &request.prompt,
            (
                Ending::Text(text) | Ending::ContextFull(text) | Ending::UntilCancelled(text),
                RequestKind::Generate,
            ) => text,
            (_, RequestKind::Embed) | (Ending::Embedding(_), RequestKind::Generate) => {
                return Err(EngineError::Unsupported(format!(
                    "scripted: {:?} has no answer to a {kind:?} request",
                    script
                )));
            }
        };
        let max_tokens = request
            .max_tokens
            .unwrap_or(SamplingDefaults::default().max_tokens)
            .max(1);
        let mut out = String::new();
        let mut generated = 0u32;
        for piece in text.split_inclusive(char::is_whitespace) {
            self.step_once(&request.cancel, &out)?;
            out.push_str(piece);
            request.progress.push_text(piece.as_bytes());
            generated += 1;
            request.progress.set(generated);
            if generated >= max_tokens {
                return Ok(Response::Text {
                    text: strip_think_blocks(&out),
                    prompt_tokens,
                    cached_tokens: 0,
                    generated_tokens: generated,
                    finish: Finish::TokenLimit,
                });
            }
        }
        match &script.ending {
            Ending::ContextFull(_) => Err(EngineError::ContextFull {
                generated,
                limit: self.info.ctx_per_slot as usize,
                partial: strip_think_blocks(&out),
            }),
            Ending::UntilCancelled(_) => loop {
                self.step_once(&request.cancel, &out)?;
            },
            _ => {
                // The end-of-generation token takes a step of its own.
                self.step_once(&request.cancel, &out)?;
                Ok(Response::Text {
                    text: strip_think_blocks(&out),
                    prompt_tokens,
                    cached_tokens: 0,
                    generated_tokens: generated,
                    finish: Finish::EndOfGeneration,
                })
            }
        }
    }

    fn embedding(
        &self,
        request: &Request,
        vector: Vec<f32>,
        prompt_tokens: u32,
    ) -> Result<Response, EngineError> {
        self.step_once(&request.cancel, "")?;
        Ok(Response::Embedding {
            vector,
            prompt_tokens,
        })
    }
}

impl Backend for ScriptedBackend {
    fn run(&self, request: Request) -> Result<Response, EngineError> {
        self.started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request.prompt.clone());
        let script = self
            .scripts
            .get(&request.prompt)
            .unwrap_or(&self.default_script);
        self.play(&request, script)
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instant() -> ScriptedBackend {
        ScriptedBackend::new().step(Duration::ZERO)
    }

    #[test]
    fn unscripted_prompts_are_echoed_one_piece_a_step() {
        let reply = instant().run(Request::generate("say it back")).unwrap();
        assert_eq!(
            reply,
            Response::Text {
                text: "say it back".into(),
                prompt_tokens: 3,
                cached_tokens: 0,
                generated_tokens: 3,
                finish: Finish::EndOfGeneration,
            }
        );
        let embedding = instant().run(Request::embed("x")).unwrap();
        assert!(
            matches!(embedding, Response::Embedding { vector, .. } if vector == ECHO_EMBEDDING)
        );
    }

    #[test]
    fn scripts_are_chosen_by_prompt_and_counted() {
        let engine = instant()
            .on("a", Script::text("alpha"))
            .by_default(Script::text("other"));
        let text = |r: Response| match r {
            Response::Text { text, .. } => text,
            other => panic!("{other:?}"),
        };
        assert_eq!(text(engine.run(Request::generate("a")).unwrap()), "alpha");
        assert_eq!(text(engine.run(Request::generate("b")).unwrap()), "other");
        assert_eq!(engine.runs_of("a"), 1);
        assert_eq!(engine.runs_of("c"), 0);
    }

    #[test]
    fn the_token_limit_ends_generation() {
        let engine = instant().by_default(Script::text("one two three four"));
        let mut request = Request::generate("p");
        request.max_tokens = Some(2);
        let reply = engine.run(request).unwrap();
        assert!(matches!(
            reply,
            Response::Text { text, generated_tokens: 2, finish: Finish::TokenLimit, .. }
                if text == "one two "
        ));
    }

    #[test]
    fn a_cancelled_request_fails_with_its_output_so_far() {
        let engine = instant().by_default(Script::until_cancelled("so far"));
        let request = Request::generate("p");
        let cancel = request.cancel.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            cancel.cancel();
        });
        let err = engine.run(request).unwrap_err();
        canceller.join().unwrap();
        assert!(matches!(err, EngineError::Cancelled { partial } if partial == "so far"));

        // Cancelled before it starts: not one step is played.
        let engine = instant().by_default(Script::text("late").after_steps(u32::MAX));
        let request = Request::generate("p");
        request.cancel.cancel();
        assert!(matches!(
            engine.run(request),
            Err(EngineError::Cancelled { partial }) if partial.is_empty()
        ));
    }

    #[test]
    fn failures_and_a_full_context_end_as_engine_errors() {
        let engine = instant().on("full", Script::context_full("some text")).on(
            "bad",
            Script::failure(|| EngineError::Decode("boom".into())),
        );
        assert!(matches!(
            engine.run(Request::generate("full")),
            Err(EngineError::ContextFull { generated: 2, partial, .. }) if partial == "some text"
        ));
        assert!(matches!(
            engine.run(Request::generate("bad")),
            Err(EngineError::Decode(reason)) if reason == "boom"
        ));
        assert!(matches!(
            engine.run(Request::embed("full")),
            Err(EngineError::Unsupported(_))
        ));
    }
}
