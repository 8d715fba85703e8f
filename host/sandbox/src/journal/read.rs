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

/// The nested journal an entry of `parent` links to, if any. The link is a file name
/// written in the journal, so it is not trusted as a path: it must be the name
/// [`child_path`] gives the entry's index, which keeps a reader inside the directory
/// and makes a cycle of links impossible.
pub fn nested_journal(parent: &Path, entry: &Entry) -> Result<Option<PathBuf>, String> {
    let Some(child) = &entry.child else {
        return Ok(None);
    };
    let expected = child_path(parent, entry.index);
    let name = expected
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if *child != name {
        let shown: String = child
            .chars()
            .take(80)
            .flat_map(char::escape_default)
            .collect();
        return Err(format!(
            "journal {}: entry {} links to nested journal \"{shown}\"; an entry {} links only to {name}",
            parent.display(),
            entry.index,
            entry.index
        ));
    }
    Ok(Some(expected))
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
        if let Some(child_path) = nested_journal(path, entry)? {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Writes a sealed journal of `lines` to `path`.
    fn write(path: &Path, lines: &[Value]) {
        let mut prev = String::new();
        let mut out = String::new();
        for l in lines {
            let mut m = l.as_object().unwrap().clone();
            m.insert("prev".into(), json!(prev));
            let (line, hash) = chain::seal(&prev, &m);
            prev = hash;
            out.push_str(&line);
            out.push('\n');
        }
        std::fs::write(path, out).unwrap();
    }

    fn header() -> Value {
        json!({"run": "r1-abc", "component_sha256": "00", "agent": "a", "args": []})
    }

    fn call(i: u64, child: &str) -> Value {
        json!({"i": i, "call": "agents.call", "args": null, "result": "ok", "t0": 1, "t1": 2,
               "child": child})
    }

    #[test]
    fn a_nested_link_is_followed_only_by_the_name_its_index_gives() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("journal.jsonl");
        write(&dir.path().join("journal.3.jsonl"), &[header()]);
        write(&parent, &[header(), call(3, "journal.3.jsonl")]);
        let ok = check_journal(&parent, None, 1 << 20).unwrap();
        assert!(ok.starts_with("2 journal(s)"), "{ok}");

        // A sealed (hash-valid) journal whose link climbs out of its directory, or
        // names itself, is refused before anything is opened.
        for bad in ["../../etc/passwd", "journal.jsonl", "journal.4.jsonl"] {
            write(&parent, &[header(), call(3, bad)]);
            let e = check_journal(&parent, None, 1 << 20).unwrap_err();
            assert!(
                e.contains("entry 3 links to nested journal") && e.contains("journal.3.jsonl"),
                "{e}"
            );
        }
    }
}
