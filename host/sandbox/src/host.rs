//! The host side of the `nrvna:agent` imports, one [`HostState`] per store.
//!
//! Every import is async: a component blocked in `follow` or `agents.call` suspends its
//! own fiber and frees the thread. Guest mistakes come back as typed `job-error`s; only
//! a limit or a host failure traps.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::nrvna::agent::types::{JobError, JobOutput, JobState, SubmitOptions};
use crate::bindings::nrvna::agent::{agents, jobs, kv, log, types};
use crate::jobs::RunShared;
use crate::kv::Kv;
use crate::limits::MemoryLimiter;
use crate::log::{LogLevel, LogSource};
use crate::runtime::{Agent, run_sandbox};

pub(crate) struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) run: Arc<RunShared>,
    /// The component itself, for `agents.call("self", ..)`.
    pub(crate) agent: Agent,
    pub(crate) agent_name: Arc<str>,
    pub(crate) depth: u32,
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

impl jobs::Host for HostState {
    async fn submit(
        &mut self,
        prompt: String,
        options: SubmitOptions,
    ) -> wasmtime::Result<Result<String, JobError>> {
        let keys = self.kv.submitted_keys();
        Ok(self.run.clone().submit(prompt, options, keys).await)
    }

    async fn follow(
        &mut self,
        id: String,
        timeout_ms: Option<u64>,
    ) -> wasmtime::Result<Result<JobOutput, JobError>> {
        Ok(self.run.clone().follow(&id, timeout_ms).await)
    }

    async fn status(&mut self, id: String) -> wasmtime::Result<Result<JobState, JobError>> {
        Ok(self.run.status(&id))
    }

    async fn cancel(&mut self, id: String) -> wasmtime::Result<Result<(), JobError>> {
        Ok(self.run.clone().cancel(&id).await)
    }

    async fn wait_any(
        &mut self,
        ids: Vec<String>,
        timeout_ms: Option<u64>,
    ) -> wasmtime::Result<Result<u32, JobError>> {
        Ok(self.run.clone().wait_any(&ids, timeout_ms).await)
    }

    async fn wait_all(
        &mut self,
        ids: Vec<String>,
        timeout_ms: Option<u64>,
    ) -> wasmtime::Result<Vec<Result<JobOutput, JobError>>> {
        Ok(self.run.clone().wait_all(&ids, timeout_ms).await)
    }

    async fn routes(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.run.routes())
    }
}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.run
            .log
            .write(&self.agent_name, level, LogSource::Log, &message);
        Ok(())
    }
}

/// Runs a storage operation off the async threads (writes fsync).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(JobError::Failed(format!("kv task failed: {e}"))))
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, JobError>> {
        let kv = self.kv.clone();
        Ok(blocking(move || kv.get(&key)).await)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), JobError>> {
        let kv = self.kv.clone();
        Ok(blocking(move || kv.set(&key, &value)).await)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), JobError>> {
        let kv = self.kv.clone();
        Ok(blocking(move || kv.delete(&key)).await)
    }

    async fn list_keys(
        &mut self,
        prefix: String,
    ) -> wasmtime::Result<Result<Vec<String>, JobError>> {
        let kv = self.kv.clone();
        Ok(blocking(move || kv.list(&prefix)).await)
    }
}

/// Aborts the spawned child run if the caller's future is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl agents::Host for HostState {
    async fn call(
        &mut self,
        name: String,
        args: Vec<String>,
    ) -> wasmtime::Result<Result<String, JobError>> {
        let shown = name
            .escape_debug()
            .to_string()
            .chars()
            .take(100)
            .collect::<String>();
        let depth = match self.run.budget.check_call_depth(self.depth, &format!("{shown:?}")) {
            Ok(depth) => depth,
            Err(e) => return Ok(Err(e)),
        };
        let (agent, agent_name) = if name == "self" {
            (self.agent.clone(), self.agent_name.clone())
        } else {
            let Some(path) = self.run.grants.agents.get(&name).cloned() else {
                return Ok(Err(JobError::Denied(format!(
                    "agent {shown:?} is not granted to this component (grant it with --agent \
                     NAME=PATH; `self` is always allowed)"
                ))));
            };
            let runtime = self.run.runtime.clone();
            let loaded = tokio::task::spawn_blocking(move || runtime.load(&path)).await;
            match loaded {
                Ok(Ok(agent)) => (agent, Arc::<str>::from(name.as_str())),
                Ok(Err(e)) => {
                    return Ok(Err(JobError::Failed(format!(
                        "cannot load agent {shown:?}: {e}"
                    ))));
                }
                Err(e) => return Ok(Err(JobError::Failed(format!("agent load task: {e}")))),
            }
        };
        self.run.budget.count_agent_call();
        // A task of its own: the child's store runs on its own fiber, and aborting the
        // handle (this future dropped) stops it.
        let child = AbortOnDrop(tokio::spawn(run_sandbox(
            self.run.clone(),
            agent,
            agent_name,
            args,
            depth,
        )));
        let result = match child.await {
            Ok(Ok(Ok(text))) => Ok(text),
            Ok(Ok(Err(error))) => Err(JobError::Failed(error)),
            Ok(Err(stopped)) => Err(JobError::Failed(format!("agent {shown:?}: {stopped}"))),
            Err(e) => Err(JobError::Failed(format!(
                "agent {shown:?}: task ended: {e}"
            ))),
        };
        Ok(result)
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}
