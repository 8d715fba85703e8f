//! The `agents` interface: running another component (or this one) in a fresh sandbox of
//! the same run, one level deeper.

use std::sync::Arc;

use crate::bindings::nrvna::agent::agents;
use crate::bindings::nrvna::agent::types::JobError;
use crate::host::HostState;
use crate::runtime::run_sandbox;

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
        let depth = match self
            .run
            .budget
            .check_call_depth(self.depth, &format!("{shown:?}"))
        {
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
