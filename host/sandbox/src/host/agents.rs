//! The `agents` interface: running another component (or this one) in a fresh sandbox of
//! the same run, one level deeper.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::bindings::nrvna::agent::agents;
use crate::bindings::nrvna::agent::types::JobError;
use crate::error::SandboxError;
use crate::host::{HostCallError, HostState};
use crate::runtime::{Agent, CompileDeadline, preopened_handles, run_sandbox};
use crate::text::quoted;

impl agents::Host for HostState {
    async fn call(&mut self, name: String, args: Vec<String>) -> Result<String, HostCallError> {
        let shown = quoted(&name, 100);
        let depth = self.run.budget.check_call_depth(self.depth, &shown)?;
        let (agent, agent_name) = self.callee(name, &shown).await?;
        self.run.budget.count_agent_call();
        // This sandbox is suspended in this call while the child runs: its handles stay
        // as they are now, and count against the child's share of the run's.
        // Its `--dir` grants' descriptors are held too, whether or not it looked at them.
        let handles_above = self.handles_above
            + self.table.iter_mut().count() as u64
            + preopened_handles(&self.run);
        // A task of its own: the child's store runs on its own fiber, and aborting the
        // handle (this future dropped) stops it.
        let child = AbortOnDrop(tokio::spawn(run_sandbox(
            self.run.clone(),
            agent,
            agent_name,
            args,
            depth,
            handles_above,
        )));
        let ended = child.await;
        self.waited_in_call = true;
        let failed = match ended {
            Ok(Ok(Ok(text))) => return Ok(text),
            Ok(Ok(Err(error))) => error,
            // The limits are the run's: one reached in a nested agent stops the whole
            // run, which its callers must not be able to swallow.
            Ok(Err(SandboxError::Limit(hit))) => return Err(hit.into()),
            Ok(Err(stopped)) => format!("agent {shown}: {stopped}"),
            Err(e) => format!("agent {shown}: task ended: {e}"),
        };
        Err(JobError::Failed(failed).into())
    }
}

impl HostState {
    /// The component `name` stands for, and the name it runs (and keeps its storage)
    /// under: this one for `self`, else a granted one, loaded off the async threads.
    /// (`&mut` because `HostState` is not `Sync`: a shared borrow held across the load
    /// would make the call's future not `Send`.)
    /// Compiling it is bounded by `--max-compile-time` and the run's wall clock; either
    /// stops the run.
    async fn callee(
        &mut self,
        name: String,
        shown: &str,
    ) -> Result<(Agent, Arc<str>), HostCallError> {
        if name == "self" {
            return Ok((self.agent.clone(), self.agent_name.clone()));
        }
        let Some(path) = self.run.grants.agents.get(&name).cloned() else {
            return Err(JobError::Denied(format!(
                "agent {shown} is not granted to this component (grant it with --agent \
                 NAME=PATH; `self` is always allowed)"
            ))
            .into());
        };
        let wall_left = self.run.budget.time_left(self.run.started)?;
        let deadline = CompileDeadline::new(&self.run.grants.limits, wall_left);
        let runtime = self.run.runtime.clone();
        match tokio::task::spawn_blocking(move || runtime.load_bounded(&path, deadline)).await {
            Ok(Ok(agent)) => Ok((agent, Arc::from(name))),
            Ok(Err(SandboxError::Limit(hit))) => Err(hit.into()),
            Ok(Err(e)) => Err(JobError::Failed(format!("cannot load agent {shown}: {e}")).into()),
            Err(e) => Err(JobError::Failed(format!("agent load task: {e}")).into()),
        }
    }
}

/// Aborts the spawned child run if the caller's future is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}
