//! Logging into the run's log: stderr of `nrvna exec`, the daemon's log for agent jobs.
//! Never part of the result, so it is the place for progress and warnings.

use crate::bindings::nrvna::agent::log::{self as wit, Level};

pub fn debug(message: impl AsRef<str>) {
    write(Level::Debug, message.as_ref());
}

pub fn info(message: impl AsRef<str>) {
    write(Level::Info, message.as_ref());
}

pub fn warn(message: impl AsRef<str>) {
    write(Level::Warn, message.as_ref());
}

pub fn error(message: impl AsRef<str>) {
    write(Level::Error, message.as_ref());
}

#[cfg(target_arch = "wasm32")]
fn write(level: Level, message: &str) {
    wit::log(level, message);
}

/// Off wasm (the SDK's own unit tests) there is no host: write to stderr.
#[cfg(not(target_arch = "wasm32"))]
fn write(level: Level, message: &str) {
    let _ = wit::log; // the import exists, but only a host can serve it
    eprintln!("{level:?}: {message}");
}
