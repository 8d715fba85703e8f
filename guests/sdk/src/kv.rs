//! Storage that outlives a run: per-agent key/value pairs kept under the workspace.
//!
//! Keys are 1-128 characters from `A-Z a-z 0-9 _ - . /` (no `..`), values at most 1 MiB,
//! at most 10 000 keys per agent. Use it for state a rerun should find: the rounds a
//! loop has finished, the job ids it is waiting for.

use crate::bindings::nrvna::agent::kv as wit;
use crate::error::Result;

pub fn get(key: &str) -> Result<Option<Vec<u8>>> {
    Ok(wit::get(key)?)
}

/// The value as text (invalid UTF-8 replaced).
pub fn get_string(key: &str) -> Result<Option<String>> {
    Ok(get(key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<()> {
    Ok(wit::set(key, value.as_ref())?)
}

/// Deleting a key that does not exist is not an error.
pub fn delete(key: &str) -> Result<()> {
    match wit::delete(key) {
        Ok(()) | Err(crate::bindings::nrvna::agent::types::JobError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Keys starting with `prefix`, sorted.
pub fn keys(prefix: &str) -> Result<Vec<String>> {
    Ok(wit::list_keys(prefix)?)
}

/// Deletes every key starting with `prefix`; returns how many there were.
pub fn delete_prefix(prefix: &str) -> Result<usize> {
    let keys = keys(prefix)?;
    for k in &keys {
        delete(k)?;
    }
    Ok(keys.len())
}
