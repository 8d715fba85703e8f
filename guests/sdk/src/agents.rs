//! Calling other components, so work can nest (`decompose` calls itself).

use crate::bindings::nrvna::agent::agents as wit;
use crate::error::Result;

/// Runs agent `name` (`self`, or a name granted with `--agent NAME=PATH`) with `args` in
/// a fresh sandbox with this run's grants, and returns its result text. Its `Err` comes
/// back as [`crate::Error::Failed`]; nesting past the host's depth limit is
/// [`crate::Error::Quota`].
pub fn call(name: &str, args: &[String]) -> Result<String> {
    Ok(wit::call(name, args)?)
}
