//! The host side of the `nrvna:agent` imports: one [`HostState`] per store, one module
//! per imported interface.
//!
//! Every import is async: a component blocked in `follow` or `agents.call` suspends its
//! own fiber and frees the thread. Guest mistakes come back as typed `job-error`s; only
//! a limit or a host failure traps.

mod agents;
pub(crate) mod jobs;
mod kv;
mod log;
pub(crate) mod streams;

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::nrvna::agent::types::{self, JobError};
use crate::error::LimitHit;
use crate::kv::Kv;
use crate::limits::MemoryLimiter;
use crate::run::RunShared;
use crate::runtime::Agent;

/// What a store holds: the WASI context and this sandbox's view of its run.
pub(crate) struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) run: Arc<RunShared>,
    /// The component itself, for `agents.call("self", ..)`.
    pub(crate) agent: Agent,
    /// Its storage namespace and log label.
    pub(crate) agent_name: Arc<str>,
    /// `agents.call` nesting: 0 for the run's own component.
    pub(crate) depth: u32,
    /// Handles the sandboxes calling this one hold (see [`crate::Limits::max_handles`]).
    pub(crate) handles_above: u64,
    /// Set when an `agents.call` returns: the epoch passed while this sandbox waited for
    /// its child, and the tick that comes due at once is not this guest's CPU time.
    pub(crate) waited_in_call: bool,
    /// Its storage (`kv`).
    pub(crate) kv: Kv,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// How a host call fails: with a `job-error` handed back to the component, or with a
/// trap that stops the run. The bindings turn it into one or the other
/// (`convert_job_error`), so host functions use `?` on both.
#[derive(Debug)]
pub(crate) enum HostCallError {
    /// The component gets it back from the call.
    Job(JobError),
    /// The run stops (a limit reached inside the call).
    Trap(wasmtime::Error),
}

impl From<JobError> for HostCallError {
    fn from(error: JobError) -> HostCallError {
        HostCallError::Job(error)
    }
}

impl From<LimitHit> for HostCallError {
    fn from(hit: LimitHit) -> HostCallError {
        HostCallError::Trap(hit.into())
    }
}

impl types::Host for HostState {
    fn convert_job_error(&mut self, error: HostCallError) -> wasmtime::Result<JobError> {
        match error {
            HostCallError::Job(error) => Ok(error),
            HostCallError::Trap(trap) => Err(trap),
        }
    }
}
