//! The `log` interface: lines into the run's log, under the agent's name.

use serde_json::json;

use crate::bindings::nrvna::agent::log;
use crate::host::{Call, HostState, trap_only};
use crate::journal::codec;
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
        let pending = match self.journal_begin(
            "log.log",
            false,
            || json!({ "level": level.as_str(), "message": codec::text_arg(&message) }),
        ) {
            // A replayed line was written by the run that recorded it.
            Ok(Call::Replayed(out)) => return trap_only(out),
            Ok(Call::Live(p)) => p,
            Err(e) => return trap_only(Err(e)),
        };
        // Sanitising and writing the line is host work on this thread: charged to --cpu.
        let ((), spent) = measure_cpu(|| {
            self.run
                .log
                .write(&self.agent_name, level, LogSource::Log, &message)
        });
        self.run.budget.charge_host_cpu_in_call(spent);
        self.run.budget.check_cpu()?;
        trap_only(self.journal_end(pending, Ok(())))
    }
}
