//! The `kv` interface: the agent's own storage (see [`crate::kv::Kv`]).

use crate::bindings::nrvna::agent::kv;
use crate::bindings::nrvna::agent::types::JobError;
use crate::host::{HostCallError, HostState};

/// Runs a storage operation on the blocking pool (writes fsync).
async fn off_async_threads<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(JobError::Failed(format!("kv task failed: {e}"))))
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, HostCallError> {
        let kv = self.kv.clone();
        Ok(off_async_threads(move || kv.get(&key)).await?)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), HostCallError> {
        let kv = self.kv.clone();
        Ok(off_async_threads(move || kv.set(&key, &value)).await?)
    }

    async fn delete(&mut self, key: String) -> Result<(), HostCallError> {
        let kv = self.kv.clone();
        Ok(off_async_threads(move || kv.delete(&key)).await?)
    }

    async fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, HostCallError> {
        let kv = self.kv.clone();
        Ok(off_async_threads(move || kv.list(&prefix)).await?)
    }
}
