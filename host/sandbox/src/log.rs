//! The run's log: the `log` interface and the component's stdout/stderr, sanitised,
//! cut to a line length and counted against the run's log budget before they reach
//! the embedder's sink.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Longest line passed on; the rest is cut (a component cannot flood one record).
pub const MAX_LINE: usize = 8 << 10;
/// What each line costs the log budget on top of its message and agent name: about what
/// a sink writes around it (the daemon's log prefixes each line with ~110 bytes of
/// time, level, agent and source), so that 10^6 empty lines cannot write 100 MiB
/// against a budget of 1 MiB.
const LINE_COST: u64 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// The `log` interface.
    Log,
    Stdout,
    Stderr,
    /// The host, about the run (limits reached, lines dropped).
    Host,
}

/// One line for the sink. The message is already sanitised (no control characters).
#[derive(Debug, Clone, Copy)]
pub struct LogRecord<'a> {
    /// The agent that wrote it (nested agents log under their own name).
    pub agent: &'a str,
    pub level: LogLevel,
    pub source: LogSource,
    pub message: &'a str,
}

/// A callback sink, for embedders that store logs themselves (e.g. per job).
pub type LogFn = Arc<dyn Fn(&LogRecord<'_>) + Send + Sync>;

/// Where a run's log goes.
#[derive(Clone, Default)]
pub enum LogSink {
    /// `[agent] level: message` on stderr, records below the level dropped (`nrvna exec`).
    Stderr(LogLevel),
    /// `tracing` events with `agent` and `source` fields (the daemon).
    #[default]
    Tracing,
    Discard,
    Custom(LogFn),
}

impl fmt::Debug for LogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogSink::Stderr(level) => write!(f, "Stderr({level:?})"),
            LogSink::Tracing => f.write_str("Tracing"),
            LogSink::Discard => f.write_str("Discard"),
            LogSink::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl LogSink {
    fn emit(&self, record: &LogRecord<'_>) {
        match self {
            LogSink::Stderr(min) => {
                if record.level >= *min {
                    let source = match record.source {
                        LogSource::Log => "",
                        LogSource::Stdout => " stdout",
                        LogSource::Stderr => " stderr",
                        LogSource::Host => " host",
                    };
                    eprintln!(
                        "[{}{source}] {}: {}",
                        record.agent,
                        record.level.as_str(),
                        record.message
                    );
                }
            }
            LogSink::Tracing => {
                let (agent, source, msg) = (record.agent, record.source, record.message);
                match record.level {
                    LogLevel::Debug => tracing::debug!(agent, ?source, "{msg}"),
                    LogLevel::Info => tracing::info!(agent, ?source, "{msg}"),
                    LogLevel::Warn => tracing::warn!(agent, ?source, "{msg}"),
                    LogLevel::Error => tracing::error!(agent, ?source, "{msg}"),
                }
            }
            LogSink::Discard => {}
            LogSink::Custom(f) => f(record),
        }
    }
}

/// The run's sink with its byte budget, shared by every sandbox of the run.
#[derive(Debug)]
pub(crate) struct RunLog {
    sink: LogSink,
    budget: u64,
    used: AtomicU64,
    dropped: AtomicBool,
}

impl RunLog {
    pub(crate) fn new(sink: LogSink, budget: u64) -> RunLog {
        RunLog {
            sink,
            budget,
            used: AtomicU64::new(0),
            dropped: AtomicBool::new(false),
        }
    }

    /// Sanitises and passes on one record, unless the budget is spent.
    pub(crate) fn write(&self, agent: &str, level: LogLevel, source: LogSource, raw: &str) {
        let message = sanitize(raw);
        let cost = message.len() as u64 + agent.len() as u64 + LINE_COST;
        let used = self.used.fetch_add(cost, Ordering::Relaxed);
        if used.saturating_add(cost) > self.budget {
            if !self.dropped.swap(true, Ordering::Relaxed) {
                self.host(
                    agent,
                    LogLevel::Warn,
                    &format!(
                        "log limit of {} bytes reached; further lines of this run are dropped",
                        self.budget
                    ),
                );
            }
            return;
        }
        self.sink.emit(&LogRecord {
            agent,
            level,
            source,
            message: &message,
        });
    }

    /// A line from the host itself; never counted or dropped.
    pub(crate) fn host(&self, agent: &str, level: LogLevel, message: &str) {
        self.sink.emit(&LogRecord {
            agent,
            level,
            source: LogSource::Host,
            message,
        });
    }
}

/// Control characters (terminal escapes, NUL, CR), line and paragraph separators and
/// bidirectional overrides (which reorder what a terminal shows) are escaped, and the
/// line is cut at [`MAX_LINE`] bytes on a character boundary.
pub(crate) fn sanitize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_LINE));
    for c in raw.chars() {
        if out.len() >= MAX_LINE {
            out.push_str(" [cut]");
            break;
        }
        if (c.is_control() && c != '\t') || reorders_or_breaks_lines(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that break a line or change the order text is shown in: U+2028/U+2029,
/// the bidi marks, embeddings, overrides and isolates (U+202E turns text around).
fn reorders_or_breaks_lines(c: char) -> bool {
    matches!(
        c,
        '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'
            ..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// The component's stdout or stderr: split into lines, each a log record.
#[derive(Clone)]
pub(crate) struct LogPipe {
    log: Arc<RunLog>,
    agent: Arc<str>,
    source: LogSource,
    partial: Arc<Mutex<Vec<u8>>>,
}

impl LogPipe {
    pub(crate) fn new(log: Arc<RunLog>, agent: Arc<str>, source: LogSource) -> LogPipe {
        LogPipe {
            log,
            agent,
            source,
            partial: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn level(&self) -> LogLevel {
        match self.source {
            LogSource::Stderr => LogLevel::Warn,
            _ => LogLevel::Info,
        }
    }

    fn accept(&self, buf: &[u8]) {
        let Ok(mut partial) = self.partial.lock() else {
            return;
        };
        for &b in buf {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&partial).into_owned();
                partial.clear();
                if !line.trim().is_empty() {
                    self.log
                        .write(&self.agent, self.level(), self.source, &line);
                }
            } else if partial.len() < MAX_LINE + 1 {
                partial.push(b);
            }
        }
    }

    /// Passes on a last line that had no newline.
    pub(crate) fn flush_partial(&self) {
        let line = match self.partial.lock() {
            Ok(mut partial) if !partial.is_empty() => {
                let line = String::from_utf8_lossy(&partial).into_owned();
                partial.clear();
                line
            }
            _ => return,
        };
        self.log
            .write(&self.agent, self.level(), self.source, &line);
    }
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.accept(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::cli::IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_sanitised_cut_and_budgeted() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = {
            let seen = seen.clone();
            LogSink::Custom(Arc::new(move |r: &LogRecord<'_>| {
                seen.lock()
                    .unwrap()
                    .push(format!("{:?} {}", r.source, r.message));
            }))
        };
        let log = Arc::new(RunLog::new(sink, 3 * (LINE_COST + 1) + 40));
        log.write("a", LogLevel::Info, LogSource::Log, "hi\x1b[2J\0");
        let pipe = LogPipe::new(log.clone(), "a".into(), LogSource::Stdout);
        pipe.accept(b"one\ntw");
        pipe.flush_partial();
        log.write("a", LogLevel::Info, LogSource::Log, &"x".repeat(100));
        log.write("a", LogLevel::Info, LogSource::Log, "more");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0], "Log hi\\u{1b}[2J\\u{0}");
        assert_eq!(seen[1], "Stdout one");
        assert_eq!(seen[2], "Stdout tw");
        assert!(
            seen[3].starts_with(&format!(
                "Host log limit of {} bytes",
                3 * (LINE_COST + 1) + 40
            )),
            "{seen:?}"
        );
        assert_eq!(seen.len(), 4);
        // Empty lines cost what writing them does, not nothing.
        let empty = RunLog::new(LogSink::Discard, 1 << 20);
        for _ in 0..1_000_000 {
            empty.write("a", LogLevel::Info, LogSource::Log, "");
        }
        assert!(empty.used.load(Ordering::Relaxed) > 100 << 20);
        assert_eq!(
            sanitize("a\u{2028}b\u{202E}c\u{2066}"),
            "a\\u{2028}b\\u{202e}c\\u{2066}"
        );
        assert!(sanitize(&"é".repeat(MAX_LINE)).len() <= MAX_LINE + 8);
    }
}
