//! The run's journal: every host call a component makes, in call order, so a run that
//! was killed can be run again from the start and answered from the record until it
//! catches up (replay), and so `nrvna trace` can show what it did.
//!
//! A journal is a file of JSON lines ([`chain`]): a header (run id, the component's
//! sha256, its args, grants and limits, the random seed), then one entry per host call
//! (`i`, `call`, `args`, `result`, `t0`/`t1` in µs since the Unix epoch), each
//! hash-chained to the one before. WASI clock reads are entries too, and random numbers
//! come from a generator seeded from the header, so a replayed run sees the clock and
//! the randomness the first saw.
//!
//! Durability: every entry is written to the file at once (a killed process loses
//! none), and the file is fsynced before every call with an effect outside the run
//! (submit, cancel, kv writes, a nested agent), so after a power loss the journal is
//! never behind what those effects depended on. Every effect is idempotent when run
//! again (submits carry a key from the run id and call index), so an entry lost
//! between an effect and its record costs nothing but the call being made again.

pub(crate) mod chain;
pub(crate) mod codec;
mod read;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::error::{LimitHit, LimitKind};
pub use read::{
    Entry, Header, JournalRead, check_journal, child_path, nested_journal, read_journal,
};

/// The journal of an agent job, in its job directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// Where `nrvna exec --ws` keeps its runs' journals: `<ws>/.runs/<RUN>/journal.jsonl`.
pub const RUNS_DIR: &str = ".runs";

/// The journal of `nrvna exec --ws` run `run` on the workspace at `ws`.
pub fn run_journal_path(ws: &Path, run: &str) -> PathBuf {
    ws.join(RUNS_DIR).join(run).join(JOURNAL_FILE)
}
/// Largest journal entry (a line). A result is recorded whole (a replay hands it back):
/// a `wait-all` may return up to half the run's memory in job outputs, so one entry may
/// be as large as a journal may be; the journal's own limit bounds it.
pub const MAX_ENTRY_BYTES: usize = 64 << 20;
/// The format version in the header.
const FORMAT: u64 = 1;
/// The call name of the entry that closes a run.
pub(crate) const RUN_END: &str = "run.end";

/// Why a journal could not be used, or a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path}: line {line} is bad: {reason}; the journal is kept as evidence")]
    Broken {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "journal {path}: it was recorded by component sha256 {recorded}, this one is {now}: \
         a changed component cannot resume the run (the journal is kept as evidence)"
    )]
    Component {
        path: PathBuf,
        recorded: String,
        now: String,
    },
    #[error(
        "journal {path}: replay diverged at call #{index}: recorded {recorded}, came {came}; \
         the component does not do what it did when the journal was recorded (the journal is \
         kept as evidence)"
    )]
    Diverged {
        path: PathBuf,
        index: u64,
        recorded: String,
        came: String,
    },
}

/// Where a run's journal is and the run's id (part of its submit keys).
#[derive(Debug, Clone)]
pub struct JournalSpec {
    pub path: PathBuf,
    pub run_id: String,
}

/// What the header records about the run.
pub(crate) struct HeaderFields<'a> {
    pub(crate) component_sha256: &'a str,
    pub(crate) agent: &'a str,
    pub(crate) args: &'a [String],
    pub(crate) grants: Value,
    pub(crate) limits: Value,
}

/// An entry's fields as written: in the order serde_json's map sorts its keys, so the
/// line is what a reader gets back by parsing it and writing it again (see
/// [`chain::seal_body`]), written without building a map per call.
#[derive(serde::Serialize)]
struct EntryFields<'a> {
    args: &'a Value,
    call: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    child: Option<&'a str>,
    i: u64,
    prev: &'a str,
    result: &'a Value,
    t0: u64,
    t1: u64,
}

/// A call begun: answered from the journal, or to be made and then recorded.
pub(crate) enum Begun {
    /// The entry's index and recorded result.
    Replayed(u64, Value),
    Live(Pending),
}

/// A live call's place in the journal.
pub(crate) struct Pending {
    pub(crate) index: u64,
    call: &'static str,
    args: Value,
    t0: u64,
}

/// One run's (or one nested agent's) journal.
pub(crate) struct Journal {
    path: PathBuf,
    id: String,
    limit: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    bytes: u64,
    prev: String,
    /// Entries of an earlier attempt still to be replayed, in order.
    recorded: Vec<(String, Value, Value)>,
    cursor: usize,
    next_index: u64,
    /// Entries written since the last fsync.
    dirty: bool,
    /// A clock read that did not match its entry: the next call reports it.
    diverged: Option<(u64, String, String)>,
    /// When the run first started (header), for the monotonic clock.
    started_ns: u64,
    last_monotonic: u64,
    seed: [u8; 32],
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn describe(call: &str, args: &Value) -> String {
    let mut s = format!("{call}({args})");
    if s.len() > 300 {
        s = format!("{}...", crate::text::prefix(&s, 300).0);
    }
    s
}

impl Journal {
    /// Opens `spec.path`: an existing journal is checked (hash chain, component) and
    /// replayed; a missing one is created with its header.
    pub(crate) fn open(
        spec: &JournalSpec,
        header: &HeaderFields<'_>,
        limit: u64,
    ) -> Result<Journal, JournalError> {
        let path = spec.path.clone();
        let io_path = spec.path.clone();
        let io = &move |source| JournalError::Io {
            path: io_path.clone(),
            source,
        };
        let exists = std::fs::metadata(&path)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        if exists {
            let chain = chain::read(&path, limit)?;
            let head = &chain.lines[0];
            let recorded_sha = head
                .get("component_sha256")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if recorded_sha != header.component_sha256 {
                return Err(JournalError::Component {
                    path,
                    recorded: recorded_sha,
                    now: header.component_sha256.to_owned(),
                });
            }
            let mut seed = [0u8; 32];
            if let Some(hex) = head.get("random_seed").and_then(Value::as_str) {
                for (i, b) in seed.iter_mut().enumerate() {
                    *b = hex
                        .get(i * 2..i * 2 + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .unwrap_or(0);
                }
            }
            let started_ns = head.get("started_ns").and_then(Value::as_u64).unwrap_or(0);
            let mut recorded = Vec::new();
            let mut last_monotonic = 0;
            for line in &chain.lines[1..] {
                let call = line.get("call").and_then(Value::as_str).unwrap_or("");
                if call == RUN_END {
                    continue;
                }
                let result = line.get("result").cloned().unwrap_or(Value::Null);
                if call == "wasi.monotonic-clock" {
                    last_monotonic = result.as_u64().unwrap_or(last_monotonic);
                }
                recorded.push((
                    call.to_owned(),
                    line.get("args").cloned().unwrap_or(Value::Null),
                    result,
                ));
            }
            let file = OpenOptions::new().write(true).open(&path).map_err(io)?;
            // A torn last line (a crash mid-append) is cut off before appending.
            file.set_len(chain.good_bytes).map_err(io)?;
            let mut file = file;
            use std::io::Seek;
            file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
            // Indexes go on from the last recorded one: the call in flight at the crash
            // gets its index (and its submit key) again.
            let next_index = chain.lines[1..]
                .iter()
                .filter_map(|l| l.get("i").and_then(Value::as_u64))
                .max()
                .map_or(0, |i| i + 1);
            return Ok(Journal {
                path,
                id: spec.run_id.clone(),
                limit,
                inner: Mutex::new(Inner {
                    file,
                    bytes: chain.good_bytes,
                    prev: chain.last_hash,
                    recorded,
                    cursor: 0,
                    next_index,
                    dirty: false,
                    diverged: None,
                    started_ns,
                    last_monotonic,
                    seed,
                }),
            });
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(io)?;
        let mut seed = [0u8; 32];
        {
            use rand::Rng;
            rand::rng().fill_bytes(&mut seed);
        }
        let started_ns = now_ns();
        let mut fields = Map::new();
        fields.insert("nrvna_journal".into(), json!(FORMAT));
        fields.insert("run".into(), json!(spec.run_id));
        fields.insert("component_sha256".into(), json!(header.component_sha256));
        fields.insert("agent".into(), json!(header.agent));
        fields.insert("args".into(), json!(header.args));
        fields.insert("grants".into(), header.grants.clone());
        fields.insert("limits".into(), header.limits.clone());
        fields.insert("random_seed".into(), json!(crate::cache::hex(&seed)));
        fields.insert("started_ns".into(), json!(started_ns));
        fields.insert("prev".into(), json!(""));
        let (line, hash) = chain::seal("", &fields);
        let journal = Journal {
            path,
            id: spec.run_id.clone(),
            limit,
            inner: Mutex::new(Inner {
                file,
                bytes: 0,
                prev: String::new(),
                recorded: Vec::new(),
                cursor: 0,
                next_index: 0,
                dirty: false,
                diverged: None,
                started_ns,
                last_monotonic: 0,
                seed,
            }),
        };
        {
            let mut inner = journal.lock();
            journal
                .append_line(&mut inner, line, hash)
                .map_err(|e| match e {
                    JournalHit::Error(e) => e,
                    JournalHit::Limit(hit) => JournalError::Io {
                        path: journal.path.clone(),
                        source: std::io::Error::other(hit.to_string()),
                    },
                })?;
            // The header is what a resume checks first: on disk before any effect.
            inner.file.sync_data().map_err(io)?;
        }
        Ok(journal)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it leaves nothing half-written that matters more than
        // the run going on: the chain is checked when read.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The seed of the run's random numbers (recorded in the header).
    pub(crate) fn seed(&self) -> [u8; 32] {
        self.lock().seed
    }

    /// The idempotency key of the submit at call `index`.
    pub(crate) fn submit_key(&self, index: u64) -> String {
        format!("run/{}/{index}", self.id)
    }

    /// The journal a nested `agents.call` at call `index` keeps.
    pub(crate) fn child(&self, index: u64) -> JournalSpec {
        JournalSpec {
            path: child_path(&self.path, index),
            run_id: format!("{}.{index}", self.id),
        }
    }

    /// Starts call `call`: answered from the journal if it is the next recorded entry,
    /// a divergence if another entry is, else live.
    pub(crate) fn begin(&self, call: &'static str, args: Value) -> Result<Begun, JournalError> {
        let mut inner = self.lock();
        if let Some((index, recorded, came)) = inner.diverged.take() {
            return Err(self.diverged(index, recorded, came));
        }
        let cursor = inner.cursor;
        if let Some((rcall, rargs, result)) = inner.recorded.get(cursor) {
            if rcall == call && *rargs == args {
                let result = result.clone();
                inner.cursor += 1;
                return Ok(Begun::Replayed(cursor as u64, result));
            }
            return Err(self.diverged(
                cursor as u64,
                describe(rcall, rargs),
                describe(call, &args),
            ));
        }
        let index = inner.next_index;
        inner.next_index += 1;
        Ok(Begun::Live(Pending {
            index,
            call,
            args,
            t0: now_us(),
        }))
    }

    /// Records a live call's result, with extra fields (`child` for `agents.call`).
    pub(crate) fn end_with(
        &self,
        pending: Pending,
        result: Value,
        child: Option<&str>,
    ) -> Result<(), JournalHit> {
        self.append(EntryFields {
            args: &pending.args,
            call: pending.call,
            child,
            i: pending.index,
            prev: "",
            result: &result,
            t0: pending.t0,
            t1: now_us(),
        })
    }

    /// Closes the run with its outcome (not replayed; `nrvna trace` shows it).
    pub(crate) fn finish(&self, outcome: Value) -> Result<(), JournalHit> {
        let t = now_us();
        let index = self.lock().next_index;
        self.append(EntryFields {
            args: &Value::Null,
            call: RUN_END,
            child: None,
            i: index,
            prev: "",
            result: &outcome,
            t0: t,
            t1: t,
        })?;
        let inner = self.lock();
        inner.file.sync_data().map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Appends an entry, chained to the last (`fields.prev` is filled in here).
    fn append(&self, fields: EntryFields<'_>) -> Result<(), JournalHit> {
        let mut inner = self.lock();
        let prev = inner.prev.clone();
        let fields = EntryFields {
            prev: &prev,
            ..fields
        };
        let body = serde_json::to_string(&fields).map_err(|e| self.io(e.into()))?;
        let (line, hash) = chain::seal_body(&prev, body);
        let call = fields.call;
        if line.len() + 1 > MAX_ENTRY_BYTES {
            return Err(JournalHit::Limit(LimitHit::new(
                LimitKind::JournalBytes,
                format!(
                    "journal entry for call {call} is {} bytes; the limit is {MAX_ENTRY_BYTES} \
                     bytes per entry",
                    line.len() + 1
                ),
            )));
        }
        self.append_line(&mut inner, line, hash)
    }

    fn append_line(&self, inner: &mut Inner, line: String, hash: String) -> Result<(), JournalHit> {
        let len = line.len() as u64 + 1;
        if inner.bytes + len > self.limit {
            return Err(JournalHit::Limit(LimitHit::new(
                LimitKind::JournalBytes,
                format!(
                    "the run's journal would pass {} bytes, the limit; it records every host call, so a run that makes \
                     this many calls needs a larger limit",
                    self.limit
                ),
            )));
        }
        // One write per line: a killed process leaves whole lines, or one torn last line.
        let mut buf = line.into_bytes();
        buf.push(b'\n');
        #[cfg(feature = "failpoints")]
        {
            // The crash test stops here with half a line written.
            let half = buf.len() / 2;
            inner.file.write_all(&buf[..half]).map_err(|e| self.io(e))?;
            crate::failpoint!("journal-append");
            inner.file.write_all(&buf[half..]).map_err(|e| self.io(e))?;
        }
        #[cfg(not(feature = "failpoints"))]
        inner.file.write_all(&buf).map_err(|e| self.io(e))?;
        inner.bytes += len;
        inner.prev = hash;
        inner.dirty = true;
        Ok(())
    }

    /// Makes the entries so far durable before a call with an effect outside the run.
    pub(crate) fn sync_before_effect(&self) -> Result<(), JournalHit> {
        let mut inner = self.lock();
        if inner.dirty {
            inner.file.sync_data().map_err(|e| self.io(e))?;
            inner.dirty = false;
        }
        Ok(())
    }

    /// A clock read: the recorded value while replaying, else `live` (recorded).
    pub(crate) fn clock(&self, call: &'static str, live: u64) -> u64 {
        let mut inner = self.lock();
        let cursor = inner.cursor;
        if let Some((rcall, rargs, result)) = inner.recorded.get(cursor) {
            if rcall == call {
                let value = result.as_u64().unwrap_or(live);
                inner.cursor += 1;
                if call == "wasi.monotonic-clock" {
                    inner.last_monotonic = value;
                }
                return value;
            }
            if inner.diverged.is_none() {
                inner.diverged = Some((
                    cursor as u64,
                    describe(rcall, rargs),
                    describe(call, &Value::Null),
                ));
            }
            return live;
        }
        let value = if call == "wasi.monotonic-clock" {
            // Nanoseconds since the run first started: it never goes back across a
            // resume, as an Instant of another process would.
            let v = live
                .saturating_sub(inner.started_ns)
                .max(inner.last_monotonic);
            inner.last_monotonic = v;
            v
        } else {
            live
        };
        let index = inner.next_index;
        inner.next_index += 1;
        drop(inner);
        let t = now_us();
        let fields = EntryFields {
            args: &Value::Null,
            call,
            child: None,
            i: index,
            prev: "",
            result: &Value::from(value),
            t0: t,
            t1: t,
        };
        if let Err(e) = self.append(fields) {
            // A clock read cannot fail: the run goes on unrecorded, and the next host
            // call meets the same limit or error and stops it.
            tracing::warn!(
                "journal {}: clock read not recorded: {e:?}",
                self.path.display()
            );
        }
        value
    }

    /// A clock read that diverged, for the end of the run to report.
    pub(crate) fn take_divergence(&self) -> Option<JournalError> {
        let taken = self.lock().diverged.take();
        taken.map(|(i, r, c)| self.diverged(i, r, c))
    }

    fn diverged(&self, index: u64, recorded: String, came: String) -> JournalError {
        JournalError::Diverged {
            path: self.path.clone(),
            index,
            recorded,
            came,
        }
    }

    fn io(&self, source: std::io::Error) -> JournalHit {
        JournalHit::Error(JournalError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Why recording stopped: the journal's size limit, or the journal itself failed.
#[derive(Debug)]
pub(crate) enum JournalHit {
    Limit(LimitHit),
    Error(JournalError),
}

impl From<JournalError> for JournalHit {
    fn from(e: JournalError) -> JournalHit {
        JournalHit::Error(e)
    }
}

/// A fresh run id: the time and a few random digits (`20261201T023512-3fa2c1`).
pub fn new_run_id() -> String {
    use rand::Rng;
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut r = [0u8; 3];
    rand::rng().fill_bytes(&mut r);
    format!("r{secs}-{}", crate::cache::hex(&r))
}

/// Checks that a run id is one `nrvna exec` would make (a path component, no `..`).
pub fn check_run_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "run id {id:?}: 1-64 of A-Z a-z 0-9 - _ . not starting with a dot"
        ));
    }
    Ok(())
}

/// A WASI clock read through the journal.
struct JournalClock {
    journal: Arc<Journal>,
}

impl wasmtime_wasi::HostWallClock for JournalClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.journal.clock("wasi.wall-clock", now_ns()))
    }
}

impl wasmtime_wasi::HostMonotonicClock for JournalClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.journal.clock("wasi.monotonic-clock", now_ns())
    }
}

/// Gives a sandbox the journal's clocks and random numbers from its seed, so a replay
/// sees what the recorded run saw.
pub(crate) fn virtualise(wasi: &mut wasmtime_wasi::WasiCtxBuilder, journal: &Arc<Journal>) {
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    let seed = journal.seed();
    let mut insecure = seed;
    insecure[0] ^= 0x5a;
    let mut insecure_seed = [0u8; 16];
    insecure_seed.copy_from_slice(&seed[16..]);
    wasi.wall_clock(JournalClock {
        journal: journal.clone(),
    })
    .monotonic_clock(JournalClock {
        journal: journal.clone(),
    })
    .secure_random(StdRng::from_seed(seed))
    .insecure_random(StdRng::from_seed(insecure))
    .insecure_random_seed(u128::from_le_bytes(insecure_seed));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header() -> HeaderFields<'static> {
        HeaderFields {
            component_sha256: "abc",
            agent: "t",
            args: &[],
            grants: Value::Null,
            limits: Value::Null,
        }
    }

    fn live(j: &Journal, call: &'static str, args: Value) -> Pending {
        match j.begin(call, args).unwrap() {
            Begun::Live(p) => p,
            Begun::Replayed(..) => panic!("{call} replayed"),
        }
    }

    #[test]
    fn a_reopened_journal_answers_its_calls_then_names_a_divergence() {
        let dir = tempfile::tempdir().unwrap();
        let spec = JournalSpec {
            path: dir.path().join("j.jsonl"),
            run_id: "r1".into(),
        };
        let j = Journal::open(&spec, &header(), 1 << 20).unwrap();
        let p = live(&j, "kv.get", json!({"key": "a"}));
        assert_eq!(p.index, 0);
        j.end_with(p, json!({"ok": null}), None).unwrap();
        let p = live(&j, "jobs.submit", json!({"prompt": "x"}));
        assert_eq!(j.submit_key(p.index), "run/r1/1");
        j.end_with(p, json!({"ok": "1_2"}), None).unwrap();
        drop(j);

        let j = Journal::open(&spec, &header(), 1 << 20).unwrap();
        match j.begin("kv.get", json!({"key": "a"})).unwrap() {
            Begun::Replayed(0, v) => assert_eq!(v, json!({"ok": null})),
            _ => panic!("not replayed"),
        }
        let e = j
            .begin("jobs.submit", json!({"prompt": "y"}))
            .err()
            .unwrap();
        let shown = e.to_string();
        assert!(
            shown.contains("call #1")
                && shown.contains(r#"recorded jobs.submit({"prompt":"x"})"#)
                && shown.contains(r#"came jobs.submit({"prompt":"y"})"#),
            "{shown}"
        );

        // Another component cannot resume it.
        let other = HeaderFields {
            component_sha256: "def",
            ..header()
        };
        let e = Journal::open(&spec, &other, 1 << 20).err().unwrap();
        assert!(e.to_string().contains("changed component"), "{e}");
    }

    #[test]
    fn a_journal_stops_at_its_size_limit_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let spec = JournalSpec {
            path: dir.path().join("j.jsonl"),
            run_id: "r1".into(),
        };
        let j = Journal::open(&spec, &header(), 4096).unwrap();
        let mut hit = None;
        for _ in 0..100 {
            let p = live(&j, "log.log", json!({"message": "tick"}));
            if let Err(JournalHit::Limit(l)) = j.end_with(p, Value::Null, None) {
                hit = Some(l);
                break;
            }
        }
        let hit = hit.unwrap();
        assert_eq!(hit.kind, LimitKind::JournalBytes);
        assert!(hit.message.contains("--max-journal-bytes"), "{hit}");
        assert!(std::fs::metadata(&spec.path).unwrap().len() <= 4096);
    }
}
