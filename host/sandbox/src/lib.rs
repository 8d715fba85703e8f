//! nrvna's WebAssembly agent runtime: the wasmtime host for `nrvna:agent` components
//! (`wit/agent.wit`).
//!
//! A component exports `run(args) -> result<string, string>` and imports `jobs`
//! (submit prompts to a workspace and follow them), `log`, `kv` and `agents`. It runs
//! in a sandbox that grants nothing by default: no files, network or environment
//! unless granted ([`Grants`]), and limits ([`Limits`]) on memory, CPU and wall-clock
//! time, jobs, prompt size, call depth and bytes per host call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nrvna_sandbox::SandboxError> {
//! use nrvna_sandbox::{RunContext, Runtime, RuntimeConfig};
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let agent = runtime.load(std::path::Path::new("loop.wasm"))?;
//! let ctx = RunContext::new("./ws", agent.name());
//! let outcome = runtime.run(&agent, vec!["topic".into()], ctx).await?;
//! println!("{:?}", outcome.output);
//! # Ok(()) }
//! ```

/// A point where a test can stop the process (`fail::cfg`): compiled in only with the
/// `failpoints` feature, which no release build has.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}
pub(crate) use failpoint;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "agent",
        imports: { default: async | trappable },
        exports: { default: async },
        // Host functions return `Result<T, HostCallError>`: a `job-error` for the
        // component or a trap, both through `?`.
        trappable_error_type: {
            "nrvna:agent/types.job-error" => crate::host::HostCallError,
        },
    });
}

/// Costs of the hardening checks, for `nrvna bench --only sandbox`.
pub mod bench;
mod cache;
mod compile;
mod error;
mod grants;
mod host;
pub mod journal;
mod kv;
mod limits;
mod log;
mod run;
mod runtime;
mod text;
mod watch;

pub use compile::{
    COMPILE_CHILD_ARG, COMPILE_MEMORY_BYTES, COMPILE_MEMORY_PER_THREAD, serve_compile_child,
};
pub use error::{GrantError, LimitHit, LimitKind, SandboxError};
pub use grants::{
    AgentGrant, DirGrant, EnvVar, Grants, RouteGrant, check_name, parse_bytes, parse_duration,
};
pub use host::jobs::MAX_WAIT_IDS;
pub use journal::{JOURNAL_FILE, JournalError, JournalSpec, RUNS_DIR};
pub use kv::{AGENTS_DIR, MAX_KEY_LEN, MAX_KEYS, MAX_VALUE_BYTES};
pub use limits::Limits;
pub use log::{LogFn, LogLevel, LogRecord, LogSink, LogSource};
pub use runtime::{
    Agent, LoadSource, MAX_COMPONENT_BYTES, MAX_FUNCTION_BYTES, MAX_FUNCTIONS, MAX_LOCALS,
    RunContext, RunOutcome, RunStats, Runtime, RuntimeConfig, SchemaToGrammar,
};
