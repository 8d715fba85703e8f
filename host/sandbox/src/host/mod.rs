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

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::nrvna::agent::types;
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

impl types::Host for HostState {}
