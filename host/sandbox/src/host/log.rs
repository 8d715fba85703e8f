//! The `log` interface: lines into the run's log, under the agent's name.

use crate::bindings::nrvna::agent::log;
use crate::host::HostState;
use crate::log::{LogLevel, LogSource};

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
