//! The `log` interface: lines into the run's log, under the agent's name.

use crate::bindings::nrvna::agent::log;
use crate::host::HostState;
use crate::limits::measure_cpu;
use crate::log::{LogLevel, LogSource};

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        // Sanitising and writing the line is host work on this thread: charged to --cpu.
        let ((), spent) = measure_cpu(|| {
            self.run
                .log
                .write(&self.agent_name, level, LogSource::Log, &message)
        });
        self.run.budget.charge_host_cpu_in_call(spent);
        self.run.budget.check_cpu()?;
        Ok(())
    }
}
