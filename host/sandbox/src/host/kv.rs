//! The `kv` interface: the agent's own storage (see [`crate::kv::Kv`]).

use crate::bindings::nrvna::agent::kv;
use crate::bindings::nrvna::agent::types::JobError;
use crate::host::HostState;

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
