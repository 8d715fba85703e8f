//! The `kv` interface: the agent's own storage (see [`crate::kv::Kv`]).

use std::sync::Arc;

use crate::bindings::nrvna::agent::kv;
use crate::bindings::nrvna::agent::types::JobError;
use crate::host::{Call, HostCallError, HostState};
use crate::journal::codec;
use crate::limits::{RunBudget, measure_cpu};
use serde_json::json;

/// Runs a storage operation on the blocking pool (writes fsync); the CPU it takes
/// there is charged to the run's CPU budget, which stops the run past its limit.
async fn off_async_threads<T: Send + 'static>(
    budget: Arc<RunBudget>,
    f: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, HostCallError> {
    let charged = Arc::clone(&budget);
    let done = tokio::task::spawn_blocking(move || {
        let (out, spent) = measure_cpu(f);
        charged.charge_host_cpu(spent);
        out
    })
    .await
    .unwrap_or_else(|e| Err(JobError::Failed(format!("kv task failed: {e}"))));
    budget.check_cpu()?;
    Ok(done?)
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, HostCallError> {
        let pending = match self.journal_begin(
            "kv.get",
            false,
            || json!({ "key": codec::text_arg(&key) }),
        )? {
            Call::Replayed(out) => return out,
            Call::Live(p) => p,
        };
        let kv = self.kv.clone();
        let out = off_async_threads(Arc::clone(&self.run.budget), move || kv.get(&key)).await;
        self.journal_end(pending, out)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), HostCallError> {
        let pending = match self.journal_begin(
            "kv.set",
            true,
            || json!({ "key": codec::text_arg(&key), "value": codec::bytes_arg(&value) }),
        )? {
            Call::Replayed(out) => return out,
            Call::Live(p) => p,
        };
        let kv = self.kv.clone();
        let out =
            off_async_threads(Arc::clone(&self.run.budget), move || kv.set(&key, &value)).await;
        crate::failpoint!("journal-kv-set");
        self.journal_end(pending, out)
    }

    async fn delete(&mut self, key: String) -> Result<(), HostCallError> {
        let pending = match self.journal_begin(
            "kv.delete",
            true,
            || json!({ "key": codec::text_arg(&key) }),
        )? {
            Call::Replayed(out) => return out,
            Call::Live(p) => p,
        };
        let kv = self.kv.clone();
        let out = off_async_threads(Arc::clone(&self.run.budget), move || kv.delete(&key)).await;
        self.journal_end(pending, out)
    }

    async fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, HostCallError> {
        let pending = match self.journal_begin(
            "kv.list-keys",
            false,
            || json!({ "prefix": codec::text_arg(&prefix) }),
        )? {
            Call::Replayed(out) => return out,
            Call::Live(p) => p,
        };
        let kv = self.kv.clone();
        let out = off_async_threads(Arc::clone(&self.run.budget), move || kv.list(&prefix)).await;
        self.journal_end(pending, out)
    }
}
