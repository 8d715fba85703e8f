//! Reading a journal back, for `nrvna trace` and `nrvna verify`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{JournalError, chain};

/// What the header of a journal says.
#[derive(Debug, Clone)]
pub struct Header {
    pub run: String,
    pub component_sha256: String,
    pub agent: String,
    pub args: Vec<String>,
    /// When the run first started, ns since the Unix epoch.
    pub started_ns: u64,
}

/// One recorded host call.
#[derive(Debug, Clone)]
pub struct Entry {
    pub index: u64,
    /// `interface.function`, e.g. `jobs.submit`; `run.end` closes a run.
    pub call: String,
    pub args: Value,
    pub result: Value,
    /// Start and end, µs since the Unix epoch.
    pub t0: u64,
    pub t1: u64,
    /// The journal of a nested `agents.call`, a file name next to this one.
    pub child: Option<String>,
    /// The entry as written (hash and prev included), for `--json`.
    pub raw: Value,
}

/// A journal read back with its chain checked.
#[derive(Debug, Clone)]
pub struct JournalRead {
    pub header: Header,
    pub entries: Vec<Entry>,
    /// The hash of the last whole line.
    pub last_hash: String,
}

/// The journal file of the nested `agents.call` made at call `index` of `parent`.
pub fn child_path(parent: &Path, index: u64) -> PathBuf {
    let name = parent
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    parent.with_file_name(format!("{stem}.{index}.jsonl"))
}

/// Reads and checks the journal at `path` (at most `limit` bytes).
pub fn read_journal(path: &Path, limit: u64) -> Result<JournalRead, JournalError> {
    let chain = chain::read(path, limit)?;
    let head = &chain.lines[0];
    let text = |v: &serde_json::Map<String, Value>, k: &str| {
        v.get(k).and_then(Value::as_str).unwrap_or("").to_owned()
    };
    let header = Header {
        run: text(head, "run"),
        component_sha256: text(head, "component_sha256"),
        agent: text(head, "agent"),
        args: head
            .get("args")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        started_ns: head.get("started_ns").and_then(Value::as_u64).unwrap_or(0),
    };
    let entries = chain.lines[1..]
        .iter()
        .map(|l| Entry {
            index: l.get("i").and_then(Value::as_u64).unwrap_or(0),
            call: text(l, "call"),
            args: l.get("args").cloned().unwrap_or(Value::Null),
            result: l.get("result").cloned().unwrap_or(Value::Null),
            t0: l.get("t0").and_then(Value::as_u64).unwrap_or(0),
            t1: l.get("t1").and_then(Value::as_u64).unwrap_or(0),
            child: l.get("child").and_then(Value::as_str).map(str::to_owned),
            raw: Value::Object(l.clone()),
        })
        .collect();
    Ok(JournalRead {
        header,
        entries,
        last_hash: chain.last_hash,
    })
}

/// Checks a journal and the nested journals it links to: the hash chains, and (when
/// given) that its header names `component`'s sha256. `Ok` says what was checked;
/// `Err` names the first bad journal and entry.
pub fn check_journal(path: &Path, component: Option<&[u8]>, limit: u64) -> Result<String, String> {
    let read = read_journal(path, limit).map_err(|e| e.to_string())?;
    if let Some(bytes) = component {
        let now = crate::cache::sha256_hex(bytes);
        if now != read.header.component_sha256 {
            return Err(format!(
                "journal {}: recorded by component sha256 {}, the job's component is {now}",
                path.display(),
                read.header.component_sha256
            ));
        }
    }
    let mut journals = 1;
    let mut entries = read.entries.len();
    for entry in &read.entries {
        if let Some(child) = &entry.child {
            let child_path = path.with_file_name(child);
            let detail = check_journal(&child_path, None, limit)?;
            journals += detail_count(&detail, "journal");
            entries += detail_count(&detail, "entr");
        }
    }
    Ok(format!(
        "{journals} journal(s), {entries} entr{} chained, component sha256 {}",
        if entries == 1 { "y" } else { "ies" },
        read.header.component_sha256
    ))
}

/// The number before `word` in a detail written by [`check_journal`].
fn detail_count(detail: &str, word: &str) -> usize {
    let words: Vec<&str> = detail.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1].starts_with(word))
        .and_then(|w| w[0].parse().ok())
        .unwrap_or(0)
}
