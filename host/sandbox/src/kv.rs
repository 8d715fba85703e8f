//! Per-agent storage: one file per key under `<ws>/.agents/<agent>/kv/`.
//!
//! A key maps to the file `k_<key with / as ~>` (`~` is not a key character, so the
//! mapping is one-to-one and never nests directories). All access goes through a
//! cap-std directory handle, so a symlink planted in the workspace cannot lead a write
//! outside it. Writes are durable: temp file, fsync, rename, fsync of the directory.

use std::io::{ErrorKind, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

use crate::bindings::nrvna::agent::types::JobError;
use crate::text::quoted;

pub const MAX_KEY_LEN: usize = 128;
pub const MAX_VALUE_BYTES: usize = 1 << 20;
pub const MAX_KEYS: usize = 10_000;
/// Where agent state lives, relative to the workspace root.
pub const AGENTS_DIR: &str = ".agents";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub(crate) struct Kv {
    ws_root: PathBuf,
    agent: String,
    /// The directory under the agent's: `kv` for the guest's own keys, `submitted` for
    /// the host's record of idempotent submissions (the guest cannot write there).
    space: &'static str,
    /// Bytes all its keys may hold together (`None`: no limit but the key and value ones).
    max_bytes: Option<u64>,
}

impl Kv {
    /// `agent` must already satisfy [`crate::grants::check_name`].
    pub(crate) fn new(ws_root: PathBuf, agent: String) -> Kv {
        Kv {
            ws_root,
            agent,
            space: "kv",
            max_bytes: None,
        }
    }

    /// The same store, holding at most `bytes` in all its keys.
    pub(crate) fn with_byte_limit(mut self, bytes: u64) -> Kv {
        self.max_bytes = Some(bytes);
        self
    }

    /// The record of `submit` keys: key → the route and id of the job it queued.
    pub(crate) fn submitted(ws_root: PathBuf, agent: String) -> Kv {
        Kv {
            ws_root,
            agent,
            space: "submitted",
            max_bytes: None,
        }
    }

    /// The same agent's record of `submit` keys.
    pub(crate) fn submitted_keys(&self) -> Kv {
        Kv::submitted(self.ws_root.clone(), self.agent.clone())
    }

    /// Whether a full store makes room by forgetting its oldest keys (the record of
    /// submit keys) rather than refusing the new one (the guest's kv).
    fn evicts(&self) -> bool {
        self.space == "submitted"
    }

    fn rel(&self) -> String {
        format!("{AGENTS_DIR}/{}/{}", self.agent, self.space)
    }

    /// The agent's kv directory; `None` if it does not exist and `create` is false.
    fn dir(&self, create: bool) -> Result<Option<Dir>, JobError> {
        let root = Dir::open_ambient_dir(&self.ws_root, ambient_authority()).map_err(io)?;
        let rel = self.rel();
        if create {
            root.create_dir_all(&rel).map_err(io)?;
        }
        match root.open_dir(&rel) {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if e.kind() == ErrorKind::NotFound && !create => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<Vec<u8>>, JobError> {
        let name = file_name(key)?;
        let Some(dir) = self.dir(false)? else {
            return Ok(None);
        };
        let file = match dir.open(&name) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let md = file.metadata().map_err(io)?;
        if !md.is_file() || md.len() > MAX_VALUE_BYTES as u64 {
            return Err(JobError::Failed(format!(
                "kv: the stored value of {key:?} is not a regular file of at most {MAX_VALUE_BYTES} bytes"
            )));
        }
        let mut bytes = Vec::with_capacity(md.len() as usize);
        file.take(MAX_VALUE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Ok(Some(bytes))
    }

    pub(crate) fn set(&self, key: &str, value: &[u8]) -> Result<(), JobError> {
        let name = file_name(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(JobError::Invalid(format!(
                "kv value for {key:?} is {} bytes; the limit is {MAX_VALUE_BYTES} bytes",
                value.len()
            )));
        }
        let Some(dir) = self.dir(true)? else {
            return Err(JobError::Failed("kv: storage directory vanished".into()));
        };
        let replaced = match dir.symlink_metadata(&name) {
            Ok(md) => Some(md.len()),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let exists = replaced.is_some();
        // Under a byte budget: the store's count key and what its other keys hold.
        let mut counted = None;
        if let Some(limit) = self.max_bytes {
            // What the other keys hold, plus the new value (a replaced value is freed).
            let usage_key = self.ws_root.join(self.rel());
            let total = usage::total(&usage_key, &dir)?;
            let others = total.saturating_sub(replaced.unwrap_or(0));
            counted = Some((usage_key, others));
            if others.saturating_add(value.len() as u64) > limit {
                return Err(JobError::Quota(format!(
                    "kv bytes: agent {:?} keeps {others} bytes in its other keys; {} more \
                     for {} would pass the limit of {limit} bytes (--max-kv-bytes)",
                    self.agent,
                    value.len(),
                    quoted(key, MAX_KEY_LEN)
                )));
            }
        }
        if !exists {
            let names = key_names(&dir)?;
            let count = names.len();
            if count >= MAX_KEYS {
                if !self.evicts() {
                    return Err(JobError::Quota(format!(
                        "kv keys: agent {:?} already has {count} keys; the limit is {MAX_KEYS}",
                        self.agent
                    )));
                }
                evict_oldest(&dir, names, MAX_KEYS - 1)?;
            }
        }
        let tmp = format!(
            "t_{}_{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let written = (|| {
            let mut f = dir.open_with(&tmp, OpenOptions::new().write(true).create_new(true))?;
            f.write_all(value)?;
            f.sync_all()?;
            dir.rename(&tmp, &dir, &name)?;
            sync_dir(&dir)
        })();
        if let Err(e) = written {
            let _ = dir.remove_file(&tmp);
            if let Some((usage_key, _)) = &counted {
                usage::forget(usage_key);
            }
            return Err(io(e));
        }
        if let Some((usage_key, others)) = &counted {
            usage::wrote(usage_key, &dir, others.saturating_add(value.len() as u64));
        }
        Ok(())
    }

    pub(crate) fn delete(&self, key: &str) -> Result<(), JobError> {
        let name = file_name(key)?;
        let Some(dir) = self.dir(false)? else {
            return Err(JobError::NotFound(format!("kv key {key:?}")));
        };
        if self.max_bytes.is_some() {
            usage::forget(&self.ws_root.join(self.rel()));
        }
        match dir.remove_file(&name) {
            Ok(()) => sync_dir(&dir).map_err(io),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(JobError::NotFound(format!("kv key {key:?}")))
            }
            Err(e) => Err(io(e)),
        }
    }

    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<String>, JobError> {
        if prefix.len() > MAX_KEY_LEN {
            return Ok(Vec::new());
        }
        let Some(dir) = self.dir(false)? else {
            return Ok(Vec::new());
        };
        let mut keys: Vec<String> = key_names(&dir)?
            .into_iter()
            .filter_map(|name| decode(&name))
            .filter(|key| key.starts_with(prefix))
            .collect();
        keys.sort();
        Ok(keys)
    }
}

/// Checks a key against the WIT rules and returns its file name.
pub(crate) fn file_name(key: &str) -> Result<String, JobError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'));
    if !ok {
        return Err(JobError::Invalid(format!(
            "kv key {}: keys are 1-{MAX_KEY_LEN} characters from A-Z a-z 0-9 _ - . / without `..`",
            quoted(key, MAX_KEY_LEN + 1)
        )));
    }
    Ok(format!("k_{}", key.replace('/', "~")))
}

fn decode(name: &str) -> Option<String> {
    let key = name.strip_prefix("k_")?.replace('~', "/");
    file_name(&key).ok().map(|_| key)
}

/// Removes the least recently written of `names` until at most `keep` remain.
fn evict_oldest(dir: &Dir, names: Vec<String>, keep: usize) -> Result<(), JobError> {
    let mut aged: Vec<(std::time::SystemTime, String)> = names
        .into_iter()
        .filter_map(|name| {
            let modified = dir.symlink_metadata(&name).ok()?.modified().ok()?;
            Some((modified.into_std(), name))
        })
        .collect();
    aged.sort();
    let excess = aged.len().saturating_sub(keep);
    for (_, name) in aged.into_iter().take(excess) {
        let _ = dir.remove_file(&name);
    }
    sync_dir(dir).map_err(io)
}

/// Bytes all the keys hold: one pass over the directory, each size read through the
/// directory handle.
fn stored_bytes(dir: &Dir) -> Result<u64, JobError> {
    let mut total = 0u64;
    for entry in dir.entries().map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("k_") {
            total = total.saturating_add(entry.metadata().map_err(io)?.len());
        }
    }
    Ok(total)
}

/// What a store's keys hold, counted once and then kept up to date by this process's
/// own writes, so a `kv.set` under a byte budget does not read every key's size.
///
/// The count is trusted only while the directory is as this process last left it
/// (same inode, modification and change times): a key added, replaced or removed by
/// another process (another run of the same agent) changes them, and the next set
/// counts again. A change that lands in the same clock tick as one of ours, or a file
/// rewritten in place, leaves them unchanged; every [`RECOUNT_EVERY`]th set counts
/// again anyway, which bounds how long such a change goes unseen.
mod usage {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};

    use cap_std::fs::Dir;

    use super::{JobError, stored_bytes};

    pub(super) const RECOUNT_EVERY: u32 = 64;

    #[derive(Clone, Copy, PartialEq, Eq)]
    struct Stamp {
        dev: u64,
        ino: u64,
        mtime: (i64, u64),
        ctime: (i64, u64),
    }

    struct Counted {
        stamp: Stamp,
        bytes: u64,
        sets: u32,
    }

    fn table() -> std::sync::MutexGuard<'static, HashMap<PathBuf, Counted>> {
        static TABLE: OnceLock<Mutex<HashMap<PathBuf, Counted>>> = OnceLock::new();
        TABLE
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stamp(dir: &Dir) -> Option<Stamp> {
        let st = rustix::fs::fstat(dir).ok()?;
        Some(Stamp {
            dev: st.st_dev,
            ino: st.st_ino,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        })
    }

    /// Bytes all keys of the store at `key` (opened as `dir`) hold.
    pub(super) fn total(key: &Path, dir: &Dir) -> Result<u64, JobError> {
        let now = stamp(dir);
        if let Some(now) = now
            && let Some(c) = table().get(key)
            && c.stamp == now
            && c.sets < RECOUNT_EVERY
        {
            return Ok(c.bytes);
        }
        let bytes = stored_bytes(dir)?;
        if let Some(stamp) = now {
            table().insert(
                key.to_owned(),
                Counted {
                    stamp,
                    bytes,
                    sets: 0,
                },
            );
        }
        Ok(bytes)
    }

    /// After a set of ours: the store now holds `bytes`.
    pub(super) fn wrote(key: &Path, dir: &Dir, bytes: u64) {
        let Some(now) = stamp(dir) else {
            forget(key);
            return;
        };
        let mut table = table();
        let sets = table.get(key).map_or(0, |c| c.sets.saturating_add(1));
        table.insert(
            key.to_owned(),
            Counted {
                stamp: now,
                bytes,
                sets,
            },
        );
    }

    /// The next set counts again.
    pub(super) fn forget(key: &Path) {
        table().remove(key);
    }
}

fn key_names(dir: &Dir) -> Result<Vec<String>, JobError> {
    let mut names = Vec::new();
    for entry in dir.entries().map_err(io)? {
        let entry = entry.map_err(io)?;
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with("k_")
        {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// fsyncs the directory so a rename or removal in it survives power loss. (cap-std
/// directory handles are `O_PATH`, which cannot be synced; `.` opened through the
/// handle can.)
fn sync_dir(dir: &Dir) -> std::io::Result<()> {
    dir.open(".")?.sync_all()
}

fn io(e: std::io::Error) -> JobError {
    if e.kind() == ErrorKind::StorageFull || e.kind() == ErrorKind::QuotaExceeded {
        JobError::Quota(format!("kv storage: {e}"))
    } else {
        JobError::Failed(format!("kv storage: {e}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn invalid(r: Result<impl std::fmt::Debug, JobError>) -> bool {
        matches!(r, Err(JobError::Invalid(_)))
    }

    #[test]
    fn the_byte_budget_frees_a_replaced_value_and_counts_keys_written_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::new(dir.path().to_owned(), "a".into()).with_byte_limit(100);
        kv.set("x", &[0; 40]).unwrap();
        kv.set("x", &[0; 60]).unwrap();
        assert!(matches!(kv.set("y", &[0; 50]), Err(JobError::Quota(_))));
        kv.set("y", &[0; 40]).unwrap();
        // Another run of the same agent, in another process, adds a key. (A clock tick
        // later: a change in the same tick as ours is found by the periodic recount.)
        std::thread::sleep(std::time::Duration::from_millis(30));
        let store = dir.path().join(AGENTS_DIR).join("a").join("kv");
        std::fs::write(store.join("k_z"), [0u8; 1]).unwrap();
        match kv.set("y", &[0; 40]) {
            Err(JobError::Quota(m)) => assert!(m.contains("61 bytes"), "{m}"),
            other => panic!("{other:?}"),
        }
        kv.delete("z").unwrap();
        kv.set("y", &[0; 40]).unwrap();
        // Many sets in a row are counted from the first count and this process's writes.
        for i in 0..200 {
            kv.set("y", &[0; 40][..(i % 40)]).unwrap();
        }
        assert!(matches!(kv.set("w", &[0; 41]), Err(JobError::Quota(_))));
        kv.set("w", &[0; 1]).unwrap();
    }

    #[test]
    fn a_full_store_refuses_guest_keys_but_forgets_the_oldest_submit_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let fill = |space: &str| {
            let dir = tmp.path().join(AGENTS_DIR).join("a").join(space);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..MAX_KEYS {
                std::fs::write(dir.join(format!("k_old{i:05}")), b"x").unwrap();
            }
            // The first key is clearly the oldest.
            let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
            std::fs::File::options()
                .write(true)
                .open(dir.join("k_old00000"))
                .unwrap()
                .set_modified(past)
                .unwrap();
            dir
        };
        fill("kv");
        let kv = Kv::new(tmp.path().to_owned(), "a".into());
        assert!(matches!(kv.set("new", b"v"), Err(JobError::Quota(_))));
        let dir = fill("submitted");
        let keys = kv.submitted_keys();
        keys.set("new", b"v").unwrap();
        assert_eq!(keys.get("new").unwrap().as_deref(), Some(&b"v"[..]));
        assert!(!dir.join("k_old00000").exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), MAX_KEYS);
    }

    #[test]
    fn round_trip_list_delete_and_hostile_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let kv = Kv::new(tmp.path().to_owned(), "agent".into());
        assert_eq!(kv.get("a/b").unwrap(), None);
        assert!(kv.list("").unwrap().is_empty());
        kv.set("a/b", b"1").unwrap();
        kv.set("a/c.txt", b"22").unwrap();
        kv.set("z", b"").unwrap();
        kv.set("a/b", b"3").unwrap();
        assert_eq!(kv.get("a/b").unwrap(), Some(b"3".to_vec()));
        assert_eq!(kv.list("a/").unwrap(), vec!["a/b", "a/c.txt"]);
        assert!(tmp.path().join(".agents/agent/kv/k_a~b").is_file());
        kv.delete("a/b").unwrap();
        assert!(matches!(kv.delete("a/b"), Err(JobError::NotFound(_))));
        assert_eq!(kv.list("").unwrap(), vec!["a/c.txt", "z"]);

        for key in [
            "",
            "..",
            "../x",
            "a/../b",
            "a\0",
            "sp ace",
            "é",
            &"k".repeat(129),
        ] {
            assert!(invalid(kv.set(key, b"x")), "{key:?}");
            assert!(invalid(kv.get(key)), "{key:?}");
        }
        assert!(invalid(kv.set("big", &vec![0; MAX_VALUE_BYTES + 1])));
        // Guest text is escaped once, and only a prefix of it is shown.
        let bad = kv.set("a\nb", b"x");
        assert!(
            matches!(&bad, Err(JobError::Invalid(m)) if m.starts_with(r#"kv key "a\nb": "#)),
            "{bad:?}"
        );
        let huge = kv.get(&"\n".repeat(1 << 20));
        assert!(
            matches!(&huge, Err(JobError::Invalid(m)) if m.len() < 2 * (MAX_KEY_LEN + 100)),
            "{huge:?}"
        );
        kv.set("max", &vec![7; MAX_VALUE_BYTES]).unwrap();
        assert_eq!(
            kv.get("max").unwrap().map(|v| v.len()),
            Some(MAX_VALUE_BYTES)
        );
    }

    #[test]
    fn a_symlinked_store_cannot_lead_outside_the_workspace() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(ws.join(".agents/evil")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, ws.join(".agents/evil/kv")).unwrap();
        let kv = Kv::new(ws, "evil".into());
        assert!(kv.set("k", b"x").is_err());
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    }
}
