//! The journal's file format: JSON lines, each sealed with the sha256 of the line
//! before it and of itself, so an edited, reordered or cut-in-the-middle journal is
//! found when it is read.
//!
//! A line is a JSON object with sorted keys (serde_json's map) whose `hash` field is
//! `sha256(prev_hash + "\n" + the line without its hash)`. The first line is the
//! header, whose `prev` is empty.

use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::JournalError;

/// The field that seals a line.
const HASH: &str = "hash";

/// A line's hash given the previous line's and the line's own fields (without `hash`).
pub(crate) fn seal(prev: &str, fields: &Map<String, Value>) -> (String, String) {
    seal_body(prev, Value::Object(fields.clone()).to_string())
}

/// Seals a line from its body: the fields (without `hash`) as serde_json writes a map,
/// keys sorted, which is what the reader gets back by parsing the line and writing it
/// again without its hash. The hash goes last in the written line; a reader parses
/// the line into a map, so where it stands does not matter.
pub(crate) fn seal_body(prev: &str, mut body: String) -> (String, String) {
    let hash = line_hash(prev, &body);
    if body.ends_with('}') {
        body.pop();
        if !body.ends_with('{') {
            body.push(',');
        }
        body.push_str("\"hash\":\"");
        body.push_str(&hash);
        body.push_str("\"}");
    }
    (body, hash)
}

fn line_hash(prev: &str, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(body.as_bytes());
    crate::cache::hex(&h.finalize())
}

/// A journal read back and checked: its lines (hash removed), the last line's hash and
/// the bytes that end with the last whole line.
pub(crate) struct Chain {
    pub(crate) lines: Vec<Map<String, Value>>,
    pub(crate) last_hash: String,
    pub(crate) good_bytes: u64,
}

/// Reads and checks a journal. A last line without its newline is a write torn by a
/// crash and is left out (the writer truncates it); any other bad line is an error that
/// names it.
pub(crate) fn read(path: &Path, limit: u64) -> Result<Chain, JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut text)
        .map_err(io)?;
    if text.len() as u64 > limit {
        return Err(JournalError::Broken {
            path: path.to_owned(),
            line: 0,
            reason: format!("it is larger than {limit} bytes, the journal limit"),
        });
    }
    let mut lines = Vec::new();
    let mut prev = String::new();
    let mut good_bytes = 0u64;
    let mut rest = &text[..];
    let mut number = 0usize;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        number += 1;
        let raw = &rest[..end];
        let broken = |reason: String| JournalError::Broken {
            path: path.to_owned(),
            line: number,
            reason,
        };
        let mut fields: Map<String, Value> = match serde_json::from_slice(raw) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(broken("not a JSON object".into())),
            Err(e) => return Err(broken(format!("not JSON: {e}"))),
        };
        let Some(Value::String(recorded)) = fields.remove(HASH) else {
            return Err(broken("it has no hash".into()));
        };
        match fields.get("prev") {
            Some(Value::String(p)) if *p == prev => {}
            _ => {
                return Err(broken(
                    "its prev hash is not the hash of the line before it (a line was removed, \
                     added or reordered)"
                        .into(),
                ));
            }
        }
        let body = Value::Object(fields.clone()).to_string();
        let hash = line_hash(&prev, &body);
        if hash != recorded {
            return Err(broken(format!(
                "its content does not match its hash (recorded {recorded}, content hashes to \
                 {hash}): it was edited"
            )));
        }
        prev = hash;
        lines.push(fields);
        rest = &rest[end + 1..];
        good_bytes += end as u64 + 1;
    }
    if lines.is_empty() {
        return Err(JournalError::Broken {
            path: path.to_owned(),
            line: 1,
            reason: "it has no header".into(),
        });
    }
    Ok(Chain {
        lines,
        last_hash: prev,
        good_bytes,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn write(lines: &[Value]) -> (tempfile::TempDir, std::path::PathBuf, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut prev = String::new();
        let mut out = Vec::new();
        for l in lines {
            let mut m = obj(l.clone());
            m.insert("prev".into(), json!(prev));
            let (line, hash) = seal(&prev, &m);
            prev = hash;
            out.push(line);
        }
        std::fs::write(&path, out.join("\n") + "\n").unwrap();
        (dir, path, out)
    }

    #[test]
    fn a_whole_chain_reads_back_and_an_edit_or_a_removed_line_is_named() {
        let (_d, path, lines) = write(&[json!({"h": 1}), json!({"i": 0}), json!({"i": 1})]);
        let chain = read(&path, 1 << 20).unwrap();
        assert_eq!(chain.lines.len(), 3);

        let edited = lines.join("\n").replace("\"i\":1", "\"i\":2") + "\n";
        std::fs::write(&path, edited).unwrap();
        let e = read(&path, 1 << 20).err().unwrap().to_string();
        assert!(e.contains("line 3") && e.contains("edited"), "{e}");

        let cut = format!("{}\n{}\n", lines[0], lines[2]);
        std::fs::write(&path, cut).unwrap();
        let e = read(&path, 1 << 20).err().unwrap().to_string();
        assert!(e.contains("line 2") && e.contains("removed"), "{e}");
    }

    #[test]
    fn a_line_sealed_from_its_body_reads_back_as_one_sealed_from_its_fields() {
        let fields =
            obj(json!({"b": [1, 2.5, "x\u{1}\"y"], "a": {"z": null, "c": true}, "prev": ""}));
        let body = Value::Object(fields.clone()).to_string();
        let (line, hash) = seal_body("", body);
        assert_eq!(seal("", &fields).1, hash);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(&path, line + "\n").unwrap();
        let chain = read(&path, 1 << 20).unwrap();
        assert_eq!(chain.lines[0], fields);
        assert_eq!(chain.last_hash, hash);
    }

    #[test]
    fn a_torn_last_line_is_left_out() {
        let (_d, path, lines) = write(&[json!({"h": 1}), json!({"i": 0})]);
        let torn = format!("{}\n{}\n{{\"i\":", lines[0], lines[1]);
        std::fs::write(&path, &torn).unwrap();
        let chain = read(&path, 1 << 20).unwrap();
        assert_eq!(chain.lines.len(), 2);
        assert_eq!(chain.good_bytes as usize, torn.len() - 5);
    }
}
