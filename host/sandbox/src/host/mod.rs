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
use crate::journal::codec::Recorded;
use crate::journal::{Begun, Journal, JournalError, JournalHit, Pending};
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
    /// Where its host calls are recorded (and answered from, when resuming).
    pub(crate) journal: Option<Arc<Journal>>,
}

/// A host call begun through the journal.
pub(crate) enum Call<T> {
    /// Answered from the journal: no effect, no wait.
    Replayed(Result<T, HostCallError>),
    /// To be made; `Some` when it is to be recorded.
    Live(Option<Pending>),
}

impl HostState {
    /// Every host call starts here: with a journal, the next recorded entry answers it
    /// (or, if it is another call, stops the run); else it is made live. `effect`: the
    /// call changes something outside the run (the journal is made durable first).
    pub(crate) fn journal_begin<T: Recorded>(
        &self,
        call: &'static str,
        effect: bool,
        args: impl FnOnce() -> serde_json::Value,
    ) -> Result<Call<T>, HostCallError> {
        let Some(journal) = &self.journal else {
            return Ok(Call::Live(None));
        };
        match journal.begin(call, args())? {
            Begun::Replayed(index, value) => Ok(Call::Replayed(
                match Result::<T, JobError>::from_json(&value) {
                    Some(Ok(v)) => Ok(v),
                    Some(Err(e)) => Err(HostCallError::Job(e)),
                    None => Err(JournalError::Broken {
                        path: journal.path().to_owned(),
                        line: index as usize + 2,
                        reason: format!("the result of {call} is not one {call} returns"),
                    }
                    .into()),
                },
            )),
            Begun::Live(pending) => {
                if effect {
                    journal.sync_before_effect()?;
                }
                Ok(Call::Live(Some(pending)))
            }
        }
    }

    /// Every host call ends here: its result (what the component gets) is recorded. A
    /// trap is not: the run stops, and a resumed run makes the call again.
    pub(crate) fn journal_end<T: Recorded>(
        &self,
        pending: Option<Pending>,
        out: Result<T, HostCallError>,
    ) -> Result<T, HostCallError> {
        self.journal_end_with(pending, out, None)
    }

    pub(crate) fn journal_end_with<T: Recorded>(
        &self,
        pending: Option<Pending>,
        out: Result<T, HostCallError>,
        child: Option<&str>,
    ) -> Result<T, HostCallError> {
        let (Some(journal), Some(pending)) = (&self.journal, pending) else {
            return out;
        };
        let recorded = match &out {
            Ok(v) => serde_json::json!({ "ok": v.to_json() }),
            Err(HostCallError::Job(e)) => serde_json::json!({ "err": e.to_json() }),
            Err(HostCallError::Trap(_)) => return out,
        };
        journal.end_with(pending, recorded, child)?;
        out
    }
}

impl From<JournalError> for HostCallError {
    fn from(e: JournalError) -> HostCallError {
        HostCallError::Trap(wasmtime::Error::new(e))
    }
}

impl From<JournalHit> for HostCallError {
    fn from(e: JournalHit) -> HostCallError {
        match e {
            JournalHit::Limit(hit) => hit.into(),
            JournalHit::Error(e) => e.into(),
        }
    }
}

/// A host call that cannot fail for the component (`log`, `routes`, `wait-all`): a
/// `job-error` cannot come from it, so anything but a value is a trap.
pub(crate) fn trap_only<T>(out: Result<T, HostCallError>) -> wasmtime::Result<T> {
    out.map_err(|e| match e {
        HostCallError::Trap(t) => t,
        HostCallError::Job(e) => wasmtime::Error::msg(format!("{e:?}")),
    })
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
