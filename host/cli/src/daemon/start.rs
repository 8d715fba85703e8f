//! The one start-up path of a daemon, for `nrvnad` and for `nrvna exec --model`: take the
//! workspace, recover what a previous daemon left, load the model (or connect to the
//! remote server), build the agent runtime, and only then say it is running.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use nrvna_engine::{Backend, EngineConfig, LlamaEngine, RemoteBackend, RemoteConfig};
use nrvna_http::{HttpServer, Metrics, Served};
use nrvna_queue::Workspace;
use nrvna_queue::lifecycle::DaemonLock;
use nrvna_sandbox::{Runtime, RuntimeConfig};

use super::config::DaemonConfig;
use super::scale::{SharedDuties, polling};
use super::{AgentHost, DaemonOptions, Ended, STALE_STAGING, SignalCounter};

/// What the daemon prints while it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Banner {
    /// `nrvnad`: the model, the KV reservation, and how to submit.
    Nrvnad,
    /// A daemon inside another command: one line, prefixed with that command's name.
    InProcess(&'static str),
}

/// A daemon that holds its workspace, has recovered it and loaded its model: ready to
/// [`serve`](Daemon::serve).
pub struct Daemon {
    ws: Workspace,
    lock: DaemonLock,
    engine: Arc<dyn Backend>,
    options: DaemonOptions,
}

impl Daemon {
    /// A daemon over any backend: `lock` must hold `ws`. [`start`] is the way with the
    /// llama.cpp engine; this one is for other backends and for tests.
    pub fn new(
        ws: Workspace,
        lock: DaemonLock,
        engine: Arc<dyn Backend>,
        options: DaemonOptions,
    ) -> Daemon {
        Daemon {
            ws,
            lock,
            engine,
            options,
        }
    }

    /// Serves until a signal (or, with `drain`, an empty queue).
    pub fn serve(self, signals: &SignalCounter) -> Result<Ended> {
        super::run(self.options, self.lock, self.ws, self.engine, signals)
    }

    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// Serves the HTTP API `server` (started before the model loaded) from now on:
    /// it is told the model's names, and the daemon reports its jobs to its metrics.
    pub fn with_http(mut self, server: HttpServer, metrics: Metrics) -> Daemon {
        let info = self.engine.info();
        server.ready(Served {
            chat_model: model_name(&info.path),
            embed_model: info.embedder.as_ref().map(|e| model_name(&e.path)),
            workers: self.options.workers,
        });
        self.options.http = Some((server, metrics));
        self
    }
}

/// A model's stable name for API clients: its file name without `.gguf`.
pub fn model_name(path: &str) -> String {
    let file = std::path::Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_owned());
    file.strip_suffix(".gguf").unwrap_or(&file).to_owned()
}

/// Starts a daemon on `config.workspace`: creates and locks it, cleans abandoned staging,
/// recovers jobs a crashed daemon left running, loads the model and builds the agent
/// runtime. Every step that can fail comes before the RUNNING banner.
pub fn start(config: DaemonConfig, banner: Banner) -> Result<Daemon> {
    let ws = Workspace::create(&config.workspace)
        .with_context(|| format!("cannot create workspace {}", config.workspace.display()))?;
    let (lock, ws) = match &config.scale.shared {
        Some((node, lease)) => {
            let lock = DaemonLock::acquire_shared(ws.root(), node.clone(), *lease)?;
            let claimer = lock.node().map(|n| n.claimer().clone());
            (lock, ws.with_claimer_opt(claimer))
        }
        None => (DaemonLock::acquire(ws.root())?, ws),
    };
    raise_open_file_limit();
    let shared_duties = match (lock.node(), &config.scale.shared) {
        (Some(node), Some((_, lease))) => {
            // Others may be running jobs: nothing here is this daemon's to recover at
            // once; the duties requeue what a dead node left, once its lease lapses.
            recover_decisions(&ws)?;
            Some(SharedDuties::new(
                node.claimer().clone(),
                *lease,
                config.max_attempts,
            ))
        }
        _ => {
            recover(&ws, config.max_attempts)?;
            None
        }
    };
    let poll = polling(&config.scale, ws.root());

    let workers = config.workers();
    let engine: Arc<dyn Backend> = match config.remote {
        Some(remote) => Arc::new(connect_remote(remote, banner)?),
        None => Arc::new(load_model(config.engine, banner)?),
    };
    let agents = match config.agents {
        Some(settings) => Some(
            AgentHost::new(
                agent_runtime(settings.cache_dir)?,
                settings.grants,
                settings.max_running,
            )
            .context("cannot start the agent runtime")?,
        ),
        None => None,
    };
    if banner == Banner::Nrvnad {
        if let Some((node, lease)) = &config.scale.shared {
            eprintln!(
                "nrvnad: sharing the workspace as node {node} (lease {:.1}s)",
                lease.as_secs_f64()
            );
        }
        if let Some((every, why)) = &poll {
            eprintln!(
                "nrvnad: {why}: listing input/ready every {:.2}s (±25%) instead of \
                 notifications",
                every.as_secs_f64()
            );
        }
        let root = ws.root().display();
        eprintln!(
            "nrvnad: RUNNING on {root}\n  Submit:  wrk {root} \"prompt\"\n  Results: flw {root} <job-id>"
        );
    }
    let options = DaemonOptions {
        workers,
        drain: config.drain,
        grace: config.grace,
        agents,
        http: None,
        poll: poll.map(|(every, _)| every),
        shared: shared_duties,
    };
    Ok(Daemon::new(ws, lock, engine, options))
}

/// Loads the local model, saying so as `banner` asks.
fn load_model(config: EngineConfig, banner: Banner) -> Result<LlamaEngine> {
    match banner {
        Banner::Nrvnad => eprintln!(
            "nrvnad {}  ·  loading {}",
            env!("CARGO_PKG_VERSION"),
            config.model.display()
        ),
        Banner::InProcess(program) => eprintln!(
            "{program}: loading {} for an in-process daemon",
            config.model.display()
        ),
    }
    let started = Instant::now();
    // Tests stop here to see the HTTP server answer while the model loads.
    nrvna_queue::failpoint_at("daemon-before-model-load");
    let engine = LlamaEngine::start(config).context("cannot load the model")?;
    if banner == Banner::Nrvnad {
        print_model(&engine, started);
    }
    Ok(engine)
}

/// Connects to the remote server (`--backend`): it must answer `/models` and list the
/// model, before the daemon says it is running.
fn connect_remote(config: RemoteConfig, banner: Banner) -> Result<RemoteBackend> {
    let url = config.base_url.clone();
    if banner == Banner::Nrvnad {
        eprintln!(
            "nrvnad {}  ·  remote backend {url}",
            env!("CARGO_PKG_VERSION")
        );
    }
    let workers = config.workers;
    let retries = config.retry.max_retries;
    let timeout = config.request_timeout.as_secs();
    let backend = RemoteBackend::connect(config)
        .with_context(|| format!("cannot use the remote backend {url}"))?;
    if banner == Banner::Nrvnad {
        eprintln!(
            "nrvnad: model {} at {}; at most {workers} requests in flight, {retries} retries, \
             {timeout}s per request",
            backend.info().description,
            backend.base_url()
        );
    }
    Ok(backend)
}

/// Raises the soft limit on open files to the hard one: agent runs hold handles (each
/// run tree at most `--max-handles`), and a daemon that ran out of descriptors could
/// not claim or settle anyone's jobs.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    // (`None` is unlimited: a hard limit that large is left alone.)
    if limit.maximum.is_some() && limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise the open-file limit to its hard limit: {e}");
        }
    }
}

/// Start-up housekeeping of a daemon that holds the lock.
fn recover(ws: &Workspace, max_attempts: u32) -> Result<()> {
    // Progress a dead daemon left describes jobs nobody runs now.
    ws.clear_progress(None);
    let removed = ws.clean_stale_staging(STALE_STAGING)?;
    if removed > 0 {
        tracing::info!("removed {removed} abandoned submission(s) from input/writing");
    }
    let recovery = ws.recover(max_attempts)?;
    for id in &recovery.requeued {
        tracing::warn!("recovered job {id} left running by a previous daemon: requeued");
    }
    for id in &recovery.failed {
        tracing::warn!("job {id} reached the attempt ceiling ({max_attempts}): failed");
    }
    recover_decisions(ws)
}

/// Finishes or undoes approvals a crash interrupted (each decision holds a lock of its
/// own, so this is safe beside other daemons).
fn recover_decisions(ws: &Workspace) -> Result<()> {
    let (decided, restored) = ws.recover_decisions()?;
    for id in &decided {
        tracing::warn!("finished the approval or denial of job {id} a crash interrupted");
    }
    for id in &restored {
        tracing::warn!("job {id}: an approval a crash interrupted was not recorded; held again");
    }
    Ok(())
}

fn print_model(engine: &LlamaEngine, started: Instant) {
    let info = engine.info();
    eprintln!(
        "nrvnad: model {} ({:.0} MB, trained ctx {}, template {}) loaded in {:.1}s",
        info.description,
        info.size_bytes as f64 / 1e6,
        info.n_ctx_train,
        if info.has_chat_template { "yes" } else { "no" },
        started.elapsed().as_secs_f64()
    );
    if let Some(e) = &info.embedder {
        eprintln!(
            "nrvnad: embeddings by {} ({:.0} MB, {} dimensions, at most {} tokens, {} \
             pooling)",
            e.name,
            e.size_bytes as f64 / 1e6,
            e.dim,
            e.max_tokens,
            e.pooling
        );
    }
    eprintln!(
        "nrvnad: {} workers decoded together, {} tokens of context each; {:.0} MB of KV \
         cache reserved",
        info.slots,
        info.ctx_per_slot,
        info.kv_bytes as f64 / 1e6
    );
}

/// The agent runtime `nrvnad` and `nrvna exec` use: the compile cache in `cache_dir`
/// (`None`: compile every time) and the engine's JSON-Schema converter.
pub fn agent_runtime(cache_dir: Option<PathBuf>) -> Result<Runtime> {
    let config = RuntimeConfig {
        cache_dir,
        schema_to_grammar: Some(Arc::new(|schema: &str| {
            nrvna_engine::schema_to_grammar(schema).map_err(|e| e.to_string())
        })),
        ..RuntimeConfig::default()
    };
    Ok(Runtime::new(config)?)
}

/// A daemon on a thread of this process (`nrvna exec --model`, the agent bench).
pub struct InProcessDaemon {
    /// The command it runs in, for its messages.
    program: &'static str,
    signals: SignalCounter,
    thread: Option<JoinHandle<Result<Ended>>>,
}

impl InProcessDaemon {
    /// Starts it as [`start`] does, on this thread (so a bad model fails here), then
    /// serves on a thread of its own.
    pub fn start(config: DaemonConfig, program: &'static str) -> Result<InProcessDaemon> {
        let daemon = start(config, Banner::InProcess(program))?;
        let signals = SignalCounter::manual();
        let thread = {
            let signals = signals.clone();
            std::thread::Builder::new()
                .name("nrvna-daemon".into())
                .spawn(move || daemon.serve(&signals))
                .map_err(|e| anyhow!("cannot start the daemon thread: {e}"))?
        };
        Ok(InProcessDaemon {
            program,
            signals,
            thread: Some(thread),
        })
    }

    /// Stops it as a SIGTERM stops nrvnad: running jobs get the grace period.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.signals.request_stop();
            match thread.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!(
                    "{}: the in-process daemon failed: {}",
                    self.program,
                    crate::cli::error_chain(&e)
                ),
                Err(_) => eprintln!("{}: the in-process daemon panicked", self.program),
            }
        }
    }
}

impl Drop for InProcessDaemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}
