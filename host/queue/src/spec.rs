//! A job's spec and its sha256: what decides what the job does, so that a change after
//! submission (or after approval) can be seen and named.
//!
//! The spec is a set of named parts, each hashed on its own:
//!
//! ```text
//! prompt.txt, messages.json, images/<file>, schema.json, grammar.gbnf, agent.wasm
//!             the payload files the job has (absent ones are not parts)
//! options     mode, system message, sampling options, output format and raw_prompt (meta.json)
//! agent       an agent job's arguments and storage name (meta.json)
//! ```
//! The spec's sha256 is the sha256 of the lines `NAME\0HEX\n`, sorted by name. Outputs,
//! tags, lineage and the daemon's bookkeeping are not part of it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};
use crate::files::{AGENT_FILE, GRAMMAR_FILE, IMAGES_DIR, MESSAGES_FILE, PROMPT_FILE, SCHEMA_FILE};
use crate::meta::{Meta, Mode};

/// Single payload files that are part of the spec when present.
const PAYLOAD_FILES: [&str; 5] = [
    PROMPT_FILE,
    MESSAGES_FILE,
    SCHEMA_FILE,
    GRAMMAR_FILE,
    AGENT_FILE,
];

/// A job's spec: the sha256 of each part, and of the whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub sha256: String,
    pub parts: BTreeMap<String, String>,
}

impl Spec {
    /// Reads the spec of the job in `dir`, whose `meta.json` says `meta`.
    pub fn of(dir: &Path, meta: &Meta) -> Result<Spec> {
        let mut parts = BTreeMap::new();
        for name in PAYLOAD_FILES {
            if let Some(hash) = hash_file(&dir.join(name))? {
                parts.insert(name.to_owned(), hash);
            }
        }
        let images = dir.join(IMAGES_DIR);
        match fs::read_dir(&images) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.at(&images)?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if let Some(hash) = hash_file(&entry.path())? {
                        parts.insert(format!("{IMAGES_DIR}/{name}"), hash);
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).at(&images),
        }
        let options = serde_json::json!({
            "mode": meta.mode,
            "system": meta.system,
            "sampling": meta.sampling,
            "output_format": meta.output_format,
            "raw_prompt": meta.raw_prompt,
        });
        parts.insert("options".into(), hex(&Sha256::digest(options.to_string())));
        if meta.mode == Mode::Agent {
            let agent = serde_json::json!({ "args": meta.agent.args, "name": meta.agent.name });
            parts.insert("agent".into(), hex(&Sha256::digest(agent.to_string())));
        }
        let mut whole = Sha256::new();
        for (name, hash) in &parts {
            whole.update(name.as_bytes());
            whole.update(b"\0");
            whole.update(hash.as_bytes());
            whole.update(b"\n");
        }
        Ok(Spec {
            sha256: hex(&whole.finalize()),
            parts,
        })
    }

    /// What differs from the spec recorded as `recorded` (part name → sha256), in words:
    /// `prompt.txt changed`, `images/x.png added`, `schema.json removed`. Empty when the
    /// parts agree.
    pub fn differences(&self, recorded: &BTreeMap<String, String>) -> Vec<String> {
        let mut out = Vec::new();
        for (name, hash) in recorded {
            match self.parts.get(name) {
                Some(now) if now == hash => {}
                Some(_) => out.push(format!("{name} changed")),
                None => out.push(format!("{name} removed")),
            }
        }
        for name in self.parts.keys() {
            if !recorded.contains_key(name) {
                out.push(format!("{name} added"));
            }
        }
        out
    }

    /// [`Spec::differences`] as one phrase, for a message; `fallback` when no part is
    /// named (only the recorded whole differs).
    pub fn describe_differences(&self, recorded: &BTreeMap<String, String>) -> String {
        let diff = self.differences(recorded);
        if diff.is_empty() {
            "the spec's sha256 differs (its recorded parts were edited)".into()
        } else {
            diff.join(", ")
        }
    }
}

/// The sha256 of a regular file; `None` if it does not exist. Anything else at the name
/// (a symlink, a FIFO) hashes as a marker, so it shows as a change and is never followed.
fn hash_file(path: &Path) -> Result<Option<String>> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(path),
    };
    if !md.file_type().is_file() {
        return Ok(Some("not-a-regular-file".into()));
    }
    let mut file = File::open(path).at(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Some(hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_named_by_its_part() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(PROMPT_FILE), "hello").unwrap();
        let meta = Meta::default();
        let before = Spec::of(dir.path(), &meta).unwrap();
        assert_eq!(before, Spec::of(dir.path(), &meta).unwrap());
        assert!(before.differences(&before.parts).is_empty());
        fs::write(dir.path().join(PROMPT_FILE), "hellO").unwrap();
        fs::write(dir.path().join(GRAMMAR_FILE), "root ::= \"x\"").unwrap();
        let mut hotter = meta.clone();
        hotter.sampling.temperature = Some(2.0);
        let after = Spec::of(dir.path(), &hotter).unwrap();
        assert_ne!(after.sha256, before.sha256);
        assert_eq!(
            after.differences(&before.parts),
            [
                "options changed",
                "prompt.txt changed",
                "grammar.gbnf added"
            ]
        );
    }
}
