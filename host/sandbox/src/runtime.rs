//! The runtime: one wasmtime engine and linker per process, components loaded once
//! (and cached on disk compiled), and runs — each in fresh stores with the run's grants
//! and limits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nrvna_queue::{JobId, Workspace};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::bindings::{self, AgentPre};
use crate::cache::{CompileCache, sha256_hex};
use crate::compile::{ChildCompileError, compile_child_program, compile_in_child, engine_config};
use crate::error::{GrantError, LimitHit, LimitKind, SandboxError};
use crate::grants::{Grants, check_name};
use crate::host::HostState;
use crate::journal::Journal;
use crate::kv::Kv;
use crate::limits::{Limits, MemoryLimiter, RunBudget, show_duration};
use crate::log::{LogPipe, LogSink, LogSource};
use crate::run::RunShared;
use crate::watch::Watchers;

/// Largest component file accepted (nrvna's own components are 0.1-0.2 MB; compile
/// time grows with the code a component holds).
pub const MAX_COMPONENT_BYTES: u64 = 16 << 20;
/// Functions all of a component's core modules may define together.
pub const MAX_FUNCTIONS: u64 = 100_000;
/// Locals one function may declare (register allocation grows faster than linearly
/// with them).
pub const MAX_LOCALS: u64 = 10_000;
/// Bytes of one function's body. Compiling one function grows faster than linearly
/// with its size: a 1 MiB body of blocks took over 20 s of CPU, 64 KiB about 0.6 s;
/// the largest function in nrvna's own components is 23 KB.
pub const MAX_FUNCTION_BYTES: usize = 64 << 10;
/// JSON Schema conversions that may run at once (each on a blocking thread).
pub(crate) const SCHEMA_SLOTS: usize = 2;
/// Distinct components kept loaded in memory.
const MAX_LOADED: usize = 64;

/// Converts a JSON Schema to a GBNF grammar (the CLI passes llama.cpp's converter), for
/// `submit-options.json-schema`.
pub type SchemaToGrammar = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// How to build a [`Runtime`].
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` compiles every process start.
    pub cache_dir: Option<PathBuf>,
    /// Enables `json-schema` in submit options; without it such a submit is `invalid`.
    pub schema_to_grammar: Option<SchemaToGrammar>,
    /// Epoch tick: the granularity of the CPU limit and of yielding to other tasks.
    pub epoch_tick: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            schema_to_grammar: None,
            epoch_tick: Duration::from_millis(10),
        }
    }
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("cache_dir", &self.cache_dir)
            .field("schema_to_grammar", &self.schema_to_grammar.is_some())
            .field("epoch_tick", &self.epoch_tick)
            .finish()
    }
}

/// The agent runtime. Cheap to clone; create one per process.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    linker: Linker<HostState>,
    cache: Option<CompileCache>,
    loaded: Mutex<HashMap<String, AgentPre<HostState>>>,
    pub(crate) watchers: Watchers,
    pub(crate) schema_to_grammar: Option<SchemaToGrammar>,
    /// The bounded pool JSON Schema conversions run in ([`SCHEMA_SLOTS`]).
    pub(crate) schema_slots: Arc<tokio::sync::Semaphore>,
    pub(crate) tick: Duration,
    ticker_stop: Arc<AtomicBool>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::SeqCst);
        if let Ok(mut t) = self.ticker.lock()
            && let Some(t) = t.take()
        {
            let _ = t.join();
        }
    }
}

/// Where a loaded component came from (for the start-up cost it had).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Compiled from the `.wasm` now.
    Compiled,
    /// Deserialized from the on-disk cache.
    DiskCache,
    /// Already loaded in this process.
    Memory,
}

/// A loaded component, ready to run any number of times.
#[derive(Clone)]
pub struct Agent {
    name: String,
    digest: String,
    source: LoadSource,
    pub(crate) pre: AgentPre<HostState>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("source", &self.source)
            .finish()
    }
}

impl Agent {
    /// The name it was loaded under (file stem by default): its storage namespace.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// sha256 of the component bytes, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }
    pub fn source(&self) -> LoadSource {
        self.source
    }
}

/// Who runs and what it may touch.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The run's own workspace: where `submit` without a route goes and `kv` lives.
    pub workspace: PathBuf,
    /// The storage namespace (`<ws>/.agents/<agent_name>/kv/`) and log label.
    pub agent_name: String,
    /// The agent job this run is, if it is one: the default `parent` of its jobs.
    pub parent_job: Option<JobId>,
    pub grants: Grants,
    pub log: LogSink,
    /// Leave the run's unfinished jobs queued when it ends (default: cancel them).
    pub keep_jobs: bool,
    /// Record every host call here; an existing journal is replayed (resume).
    pub journal: Option<crate::journal::JournalSpec>,
}

impl RunContext {
    /// A context that grants nothing, with default limits and a `tracing` log.
    pub fn new(workspace: impl Into<PathBuf>, agent_name: impl Into<String>) -> RunContext {
        RunContext {
            workspace: workspace.into(),
            agent_name: agent_name.into(),
            parent_job: None,
            grants: Grants::default(),
            log: LogSink::Tracing,
            keep_jobs: false,
            journal: None,
        }
    }
}

/// What a run that finished (by returning) produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The component's `run` result: `Ok(text)` or its own `Err(text)`.
    pub output: Result<String, String>,
    pub stats: RunStats,
}

#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub elapsed: Duration,
    /// Time spent executing guest code, at epoch-tick granularity.
    pub cpu: Duration,
    pub jobs_submitted: u64,
    pub agent_calls: u64,
    pub peak_memory_bytes: u64,
    /// Unfinished jobs cancelled when the run ended.
    pub jobs_cancelled: usize,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Runtime, SandboxError> {
        let engine = Engine::new(&engine_config()).map_err(runtime_failure("engine"))?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(runtime_failure("linking WASI"))?;
        crate::host::streams::add_to_linker(&mut linker)
            .map_err(runtime_failure("linking WASI streams"))?;
        bindings::Agent::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(runtime_failure("linking nrvna:agent"))?;
        let cache = match &config.cache_dir {
            Some(dir) => match CompileCache::open(dir, &engine) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(
                        "compiled-component cache {} unusable ({e}); compiling every time",
                        dir.display()
                    );
                    None
                }
            },
            None => None,
        };
        let tick = config.epoch_tick.max(Duration::from_millis(1));
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("nrvna-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| runtime_failure("epoch thread")(wasmtime::Error::new(e)))?
        };
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                loaded: Mutex::new(HashMap::new()),
                watchers: Watchers::new(),
                schema_to_grammar: config.schema_to_grammar,
                schema_slots: Arc::new(tokio::sync::Semaphore::new(SCHEMA_SLOTS)),
                tick,
                ticker_stop,
                ticker: Mutex::new(Some(ticker)),
            }),
        })
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Loads a component file; its name (the storage namespace) is the file stem, with
    /// characters outside `A-Z a-z 0-9 _ - .` replaced by `_`. A compile takes at most
    /// the default [`Limits::compile_time`].
    pub fn load(&self, path: &Path) -> Result<Agent, SandboxError> {
        let limits = Limits::DEFAULT;
        self.load_bounded(path, CompileDeadline::new(&limits, limits.wall))
    }

    /// Loads a component file as [`Runtime::load`] does, compiling it for at most
    /// `limits.compile_time` and `limits.wall` (a run's wall clock counts its
    /// compilation). In a program that called
    /// [`serve_compile_child`](crate::serve_compile_child), the compile runs in a child
    /// process that is killed at that deadline; otherwise on a thread that cannot be
    /// stopped and finishes on its own. Returns the agent and how long loading took.
    pub fn load_within(
        &self,
        path: &Path,
        limits: &Limits,
    ) -> Result<(Agent, Duration), SandboxError> {
        let started = Instant::now();
        let agent = self.load_bounded(path, CompileDeadline::new(limits, limits.wall))?;
        Ok((agent, started.elapsed()))
    }

    pub(crate) fn load_bounded(
        &self,
        path: &Path,
        deadline: CompileDeadline,
    ) -> Result<Agent, SandboxError> {
        let read_err = |source| SandboxError::Read {
            path: path.to_owned(),
            source,
        };
        let md = std::fs::metadata(path).map_err(read_err)?;
        if !md.is_file() || md.len() > MAX_COMPONENT_BYTES {
            return Err(read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("not a regular file of at most {MAX_COMPONENT_BYTES} bytes"),
            )));
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        self.load_bytes_bounded(&name_from_path(path), &bytes, deadline)
    }

    /// Loads a component from bytes under `name` (1-64 of `A-Z a-z 0-9 _ - .`), a
    /// compile bounded as [`Runtime::load`]'s.
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<Agent, SandboxError> {
        let limits = Limits::DEFAULT;
        self.load_bytes_bounded(name, bytes, CompileDeadline::new(&limits, limits.wall))
    }

    fn load_bytes_bounded(
        &self,
        name: &str,
        bytes: &[u8],
        deadline: CompileDeadline,
    ) -> Result<Agent, SandboxError> {
        let invalid = |source: wasmtime::Error| SandboxError::InvalidComponent {
            name: name.to_owned(),
            source,
        };
        check_name(name).map_err(|reason| invalid(wasmtime::Error::msg(reason)))?;
        let digest = sha256_hex(bytes);
        let agent = |pre, source| Agent {
            name: name.to_owned(),
            digest: digest.clone(),
            source,
            pre,
        };
        if let Some(pre) = self
            .inner
            .loaded
            .lock()
            .ok()
            .and_then(|m| m.get(&digest).cloned())
        {
            return Ok(agent(pre, LoadSource::Memory));
        }
        if wasmtime::Engine::detect_precompiled(bytes).is_some() {
            return Err(invalid(wasmtime::Error::msg(
                "this is a precompiled artifact; give the .wasm component",
            )));
        }
        check_component_header(bytes).map_err(|reason| invalid(wasmtime::Error::msg(reason)))?;
        check_compile_cost(bytes).map_err(|reason| invalid(wasmtime::Error::msg(reason)))?;
        let engine = &self.inner.engine;
        let cached = self
            .inner
            .cache
            .as_ref()
            .and_then(|c| c.load(engine, &digest));
        let (component, source) = match cached {
            Some(c) => (c, LoadSource::DiskCache),
            None => (
                self.compile(name, &digest, bytes, deadline)?,
                LoadSource::Compiled,
            ),
        };
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(invalid)?;
        let pre = AgentPre::new(pre).map_err(invalid)?;
        if let Ok(mut loaded) = self.inner.loaded.lock() {
            if loaded.len() >= MAX_LOADED {
                loaded.clear();
            }
            loaded.insert(digest.clone(), pre.clone());
        }
        Ok(agent(pre, source))
    }

    /// Compiles a component (and caches it) within `deadline`: in a child process that
    /// is killed at the deadline when this program serves compiles, else on a thread.
    fn compile(
        &self,
        name: &str,
        digest: &str,
        bytes: &[u8],
        deadline: CompileDeadline,
    ) -> Result<Component, SandboxError> {
        let invalid = |source: wasmtime::Error| SandboxError::InvalidComponent {
            name: name.to_owned(),
            source,
        };
        let engine = &self.inner.engine;
        let Some(program) = compile_child_program() else {
            // No child to kill: the compile goes on past the deadline on its own thread.
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let (engine, owned) = (engine.clone(), bytes.to_vec());
            std::thread::Builder::new()
                .name("nrvna-compile".into())
                .spawn(move || {
                    let _ = tx.send(Component::new(&engine, &owned));
                })
                .map_err(|e| runtime_failure("compile thread")(wasmtime::Error::new(e)))?;
            let component = rx
                .recv_timeout(deadline.limit)
                .map_err(|_| SandboxError::Limit(deadline.hit()))?
                .map_err(invalid)?;
            if let Some(cache) = &self.inner.cache {
                cache.store(digest, &component);
            }
            return Ok(component);
        };
        let artifact = match compile_in_child(&program, name, bytes, deadline.limit) {
            Ok(artifact) => artifact,
            Err(ChildCompileError::TimedOut) => return Err(SandboxError::Limit(deadline.hit())),
            Err(ChildCompileError::Failed(message)) => {
                return Err(invalid(wasmtime::Error::msg(message)));
            }
        };
        // SAFETY: the artifact is `Engine::precompile_component`'s output of this
        // program's own compiler, configured as this engine ([`engine_config`]), read
        // from a pipe only this process holds (see the `compile` module); wasmtime still
        // checks its header and its engine configuration.
        let component = unsafe { Component::deserialize(engine, &artifact) }.map_err(invalid)?;
        if let Some(cache) = &self.inner.cache {
            cache.store_artifact(digest, &artifact);
        }
        Ok(component)
    }

    /// Runs `agent` with `args`. Returns when the component returns (`Ok`, with its own
    /// `Ok`/`Err` result), or with the reason it was stopped (a limit, a crash). Unfinished
    /// jobs the run submitted are cancelled at the end unless `ctx.keep_jobs`. Dropping
    /// the future stops the run the same way.
    pub async fn run(
        &self,
        agent: &Agent,
        args: Vec<String>,
        ctx: RunContext,
    ) -> Result<RunOutcome, SandboxError> {
        let started = Instant::now();
        check_name(&ctx.agent_name).map_err(|reason| GrantError::Value {
            what: "agent name",
            value: ctx.agent_name.clone(),
            reason,
        })?;
        let open = |path: &Path| {
            Workspace::create(path).map_err(|source| SandboxError::Workspace {
                path: path.to_owned(),
                source,
            })
        };
        let mut workspaces = vec![open(&ctx.workspace)?];
        let mut route_names = Vec::new();
        for (name, path) in &ctx.grants.routes {
            workspaces.push(open(path)?);
            route_names.push(name.clone());
        }
        let agent_name: Arc<str> = ctx.agent_name.as_str().into();
        let journal_spec = ctx.journal.clone();
        let run = Arc::new(RunShared::new(self.clone(), ctx, workspaces, route_names));
        let journal = match &journal_spec {
            Some(spec) => {
                let header = run.header_fields(agent, &agent_name, &args);
                Some(Arc::new(Journal::open(
                    spec,
                    &header,
                    run.budget.journal_bytes(),
                )?))
            }
            None => None,
        };
        let mut sandbox = run_sandbox(
            run.clone(),
            agent.clone(),
            agent_name,
            args,
            0,
            0,
            journal.clone(),
        );
        // The wall clock stops while the run waits for approvals, which have a limit of
        // their own: re-check both whenever the time left so far runs out.
        let mut sandbox_ended = true;
        let result = loop {
            let left = match run.budget.time_left(started) {
                Ok(left) => left,
                Err(hit) => {
                    sandbox_ended = false;
                    break Err(SandboxError::Limit(hit));
                }
            };
            if let Ok(result) = tokio::time::timeout(left, &mut sandbox).await {
                break result;
            }
        };
        drop(sandbox);
        if let (Some(journal), Err(e), false) = (&journal, &result, sandbox_ended) {
            // Stopped by a limit or the wall clock: the journal says so (a run stopped
            // inside the sandbox recorded it there).
            let _ = journal.finish(serde_json::json!({ "stopped": e.to_string() }));
        }
        let jobs_cancelled = run.finish();
        let output = result?;
        Ok(RunOutcome {
            output,
            stats: RunStats {
                elapsed: started.elapsed(),
                cpu: run.budget.cpu_time(),
                jobs_submitted: run.budget.jobs_submitted(),
                agent_calls: run.budget.agent_calls(),
                peak_memory_bytes: run.budget.peak_memory(),
                jobs_cancelled,
            },
        })
    }
}

/// How long a compile may take, and which limit stops it: the compile-time limit, or
/// the run's wall clock when less of it is left.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CompileDeadline {
    limit: Duration,
    by_wall_clock: bool,
}

impl CompileDeadline {
    /// The deadline under `limits` for a run with `wall_left` of its wall clock left.
    pub(crate) fn new(limits: &Limits, wall_left: Duration) -> CompileDeadline {
        CompileDeadline {
            limit: limits.compile_time.min(wall_left),
            by_wall_clock: wall_left < limits.compile_time,
        }
    }

    fn hit(&self) -> LimitHit {
        let took = show_duration(self.limit);
        if self.by_wall_clock {
            LimitHit::new(
                LimitKind::WallClock,
                format!("compiling the component took longer than {took}, the whole run's limit"),
            )
        } else {
            LimitHit::new(
                LimitKind::CompileTime,
                format!("compiling the component took longer than {took}"),
            )
        }
    }
}

/// Says in words what a file that is not a component is, before wasmtime answers with
/// a dump of the bytes it expected. Both binary formats start with `\0asm`, then a
/// version (2 bytes) and a layer (2 bytes): 0 for a core module, 1 for a component.
fn check_component_header(bytes: &[u8]) -> Result<(), &'static str> {
    const CORE_MODULE_LAYER: [u8; 2] = [0, 0];
    if bytes.len() < 8 || !bytes.starts_with(b"\0asm") {
        return Err(
            "not WebAssembly: the file does not start with \\0asm, as every .wasm file does",
        );
    }
    if bytes[6..8] == CORE_MODULE_LAYER {
        return Err("this is a core WebAssembly module, not a component: \
                    build with --target wasm32-wasip2");
    }
    Ok(())
}

/// Refuses a component whose compilation would cost too much, before compiling it:
/// too many functions, or a function with too many locals or too large a body (in any
/// of its core modules).
pub(crate) fn check_compile_cost(bytes: &[u8]) -> Result<(), String> {
    use wasmparser::{Parser, Payload};
    let mut functions = 0u64;
    for payload in Parser::new(0).parse_all(bytes) {
        let Payload::CodeSectionEntry(body) = payload.map_err(|e| e.to_string())? else {
            continue;
        };
        functions += 1;
        if functions > MAX_FUNCTIONS {
            return Err(format!(
                "compile cost: it defines more than {MAX_FUNCTIONS} functions; the limit is \
                 {MAX_FUNCTIONS}"
            ));
        }
        let size = body.range().len();
        if size > MAX_FUNCTION_BYTES {
            return Err(format!(
                "compile cost: function #{functions} is {size} bytes; the limit is \
                 {MAX_FUNCTION_BYTES} bytes per function"
            ));
        }
        let mut locals = 0u64;
        for group in body.get_locals_reader().map_err(|e| e.to_string())? {
            let (count, _) = group.map_err(|e| e.to_string())?;
            locals += u64::from(count);
        }
        if locals > MAX_LOCALS {
            return Err(format!(
                "compile cost: function #{functions} declares {locals} locals; the limit is \
                 {MAX_LOCALS} per function"
            ));
        }
    }
    Ok(())
}

/// A sandbox's run: the component's own result, or why it was stopped.
pub(crate) type SandboxFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Result<String, String>, SandboxError>> + Send>>;

/// Runs one component in a fresh store: the top-level run (depth 0) or an
/// `agents.call` (depth ≥ 1), whose callers hold `handles_above` handles meanwhile.
/// Boxed so the recursion through `agents.call` has a size.
pub(crate) fn run_sandbox(
    run: Arc<RunShared>,
    agent: Agent,
    agent_name: Arc<str>,
    args: Vec<String>,
    depth: u32,
    handles_above: u64,
    journal: Option<Arc<Journal>>,
) -> SandboxFuture {
    Box::pin(async move {
        let runtime = run.runtime.clone();
        let inner = runtime.inner();
        let stdout = LogPipe::new(run.log.clone(), agent_name.clone(), LogSource::Stdout);
        let stderr = LogPipe::new(run.log.clone(), agent_name.clone(), LogSource::Stderr);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .args(&[agent_name.as_ref()]);
        if let Some(journal) = &journal {
            // What would make a replay differ: clocks are read through the journal, and
            // random numbers come from the seed in its header.
            crate::journal::virtualise(&mut wasi, journal);
        }
        for var in &run.grants.env {
            wasi.env(&var.key, &var.value);
        }
        // Checked before the grants' directories are opened for it.
        let own = preopened_handles(&run);
        run.budget
            .check_handles(handles_above, own)
            .map_err(SandboxError::Limit)?;
        for dir in &run.grants.dirs {
            let perms = if dir.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| {
                    SandboxError::Grant(GrantError::Dir {
                        spec: dir.host.display().to_string(),
                        reason: format!("cannot open it: {e}"),
                    })
                })?;
        }
        let mut table = ResourceTable::new();
        // Handles are counted per run: the callers, suspended in `agents.call`, hold
        // theirs for as long as this sandbox runs. Each `--dir` grant is a directory
        // opened for this sandbox: a descriptor it holds from the start.
        table.set_max_capacity(run.budget.handles_left(handles_above + own));
        let kv = Kv::new(run.workspaces[0].root().to_owned(), agent_name.to_string())
            .with_byte_limit(run.budget.kv_bytes());
        let state = HostState {
            wasi: wasi.build(),
            table,
            limiter: MemoryLimiter::new(run.budget.clone()),
            run: run.clone(),
            agent: agent.clone(),
            agent_name: agent_name.clone(),
            depth,
            handles_above,
            waited_in_call: false,
            kv,
            journal: journal.clone(),
        };
        let mut store = Store::new(&inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(run.budget.hostcall_fuel());
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            // Each callback is one tick of guest execution; a long host call (follow)
            // costs one tick, not its duration, and a return from agents.call (whose
            // child charged its own ticks) none.
            if std::mem::take(&mut ctx.data_mut().waited_in_call) {
                return Ok(UpdateDeadline::Yield(1));
            }
            ctx.data().run.budget.charge_cpu_tick()?;
            Ok(UpdateDeadline::Yield(1))
        });
        let instance = agent
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| classify(e, &run.budget))?;
        let mut result = instance
            .call_run(&mut store, &args)
            .await
            .map_err(|e| classify(e, &run.budget));
        stdout.flush_partial();
        stderr.flush_partial();
        if let Some(journal) = &journal {
            // A clock read that diverged is reported when nothing else was.
            if let Some(diverged) = journal.take_divergence()
                && result.is_ok()
            {
                result = Err(SandboxError::Journal(diverged));
            }
            let outcome = match &result {
                Ok(Ok(text)) => serde_json::json!({ "ok": text }),
                Ok(Err(text)) => serde_json::json!({ "err": text }),
                Err(e) => serde_json::json!({ "stopped": e.to_string() }),
            };
            match journal.finish(outcome) {
                Ok(()) => {}
                Err(crate::journal::JournalHit::Limit(hit)) if result.is_ok() => {
                    result = Err(SandboxError::Limit(hit));
                }
                Err(crate::journal::JournalHit::Error(e)) if result.is_ok() => {
                    result = Err(SandboxError::Journal(e));
                }
                Err(_) => {}
            }
        }
        result
    })
}

/// Descriptors each sandbox of `run` holds from its start: one per `--dir` grant.
pub(crate) fn preopened_handles(run: &RunShared) -> u64 {
    run.grants.dirs.len() as u64
}

/// Wraps the error of a step of setting up the runtime.
fn runtime_failure(what: &'static str) -> impl Fn(wasmtime::Error) -> SandboxError {
    move |source| SandboxError::Runtime { what, source }
}

/// Turns a wasmtime error into the run's verdict: a limit (ours, or wasmtime's
/// hostcall fuel) or a crash.
fn classify(e: wasmtime::Error, budget: &RunBudget) -> SandboxError {
    let e = match e.downcast::<crate::journal::JournalError>() {
        Ok(journal) => return SandboxError::Journal(journal),
        Err(e) => e,
    };
    if let Some(hit) = e.downcast_ref::<LimitHit>() {
        return SandboxError::Limit(hit.clone());
    }
    if let Some(hit) = budget.hostcall_limit_hit(&e) {
        return SandboxError::Limit(hit);
    }
    if let Some(hit) = budget.handles_limit_hit(&e) {
        return SandboxError::Limit(hit);
    }
    SandboxError::Trap(e)
}

fn name_from_path(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.starts_with('.') {
        name.replace_range(..1, "_");
    }
    if name.is_empty() {
        name.push_str("agent");
    }
    name
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_from_paths_are_safe_directory_names() {
        assert_eq!(name_from_path(Path::new("/x/my agent.wasm")), "my_agent");
        assert_eq!(name_from_path(Path::new("/x/.hidden.wasm")), "_hidden");
        assert_eq!(name_from_path(Path::new("/x/loop.wasm")), "loop");
        assert!(check_name(&name_from_path(Path::new("/x/ü.wasm"))).is_ok());
    }
}
