//! The `agents` interface: running another component (or this one) in a fresh sandbox of
//! the same run, one level deeper.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::bindings::nrvna::agent::agents;
use crate::bindings::nrvna::agent::types::JobError;
use crate::error::SandboxError;
use crate::host::{Call, HostCallError, HostState};
use crate::journal::{Journal, codec};
use crate::runtime::{Agent, CompileDeadline, preopened_handles, run_sandbox};
use crate::text::quoted;
use serde_json::json;

impl agents::Host for HostState {
    async fn call(&mut self, name: String, args: Vec<String>) -> Result<String, HostCallError> {
        let pending = match self.journal_begin(
            "agents.call",
            true,
            || json!({ "name": codec::text_arg(&name), "args": codec::text_args(&args) }),
        )? {
            Call::Replayed(out) => return out,
            Call::Live(p) => p,
        };
        let shown = quoted(&name, 100);
        let depth = match self.run.budget.check_call_depth(self.depth, &shown) {
            Ok(depth) => depth,
            Err(e) => return self.journal_end(pending, Err(e.into())),
        };
        let (agent, agent_name) = match self.callee(name, &shown).await {
            Ok(found) => found,
            Err(e) => return self.journal_end(pending, Err(e)),
        };
        self.run.budget.count_agent_call();
        // The child keeps a journal of its own, next to this one and named by this
        // call's index: a resumed run replays it if the crash fell inside the child.
        let child_journal = match (&self.journal, &pending) {
            (Some(journal), Some(p)) => {
                let spec = journal.child(p.index);
                let header = self.run.header_fields(&agent, &agent_name, &args);
                Some(Arc::new(Journal::open(
                    &spec,
                    &header,
                    self.run.budget.journal_bytes(),
                )?))
            }
            _ => None,
        };
        let child_file = child_journal.as_ref().and_then(|j| {
            j.path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        });
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
            child_journal,
        )));
        let ended = child.await;
        self.waited_in_call = true;
        crate::failpoint!("journal-agents-call-returned");
        let out = match ended {
            Ok(Ok(Ok(text))) => Ok(text),
            Ok(Ok(Err(error))) => Err(JobError::Failed(error).into()),
            // The limits are the run's: one reached in a nested agent stops the whole
            // run, which its callers must not be able to swallow.
            Ok(Err(SandboxError::Limit(hit))) => Err(hit.into()),
            // So is a journal that cannot be replayed.
            Ok(Err(SandboxError::Journal(e))) => Err(e.into()),
            Ok(Err(stopped)) => Err(JobError::Failed(format!("agent {shown}: {stopped}")).into()),
            Err(e) => Err(JobError::Failed(format!("agent {shown}: task ended: {e}")).into()),
        };
        self.journal_end_with(pending, out, child_file.as_deref())
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
