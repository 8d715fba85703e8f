//! Durable file-system primitives: every state change is a rename, and everything a
//! rename publishes is on disk before it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// `NRVNA_FSYNC=0` turns every fsync off: still safe against process crashes (renames
/// stay atomic and the page cache survives), not against power loss. For scratch or
/// tmpfs workspaces where throughput matters more. Read once per process.
pub fn fsync_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::env::var("NRVNA_FSYNC")
            .map(|v| v.trim() != "0")
            .unwrap_or(true)
    })
}

fn sync_file(f: &File) -> std::io::Result<()> {
    if fsync_enabled() {
        f.sync_all()
    } else {
        Ok(())
    }
}

/// A temporary name beside `path`, unique to this writer, so two writers racing on the
/// same file each rename a whole file of their own (the last one wins).
fn tmp_path(path: &Path) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}-{n}.tmp", std::process::id()));
    tmp.into()
}

/// Writes `bytes` to `path` durably: a temporary file, fsync, rename over `path`.
/// The caller fsyncs the parent directory before publishing it.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let tmp = tmp.as_path();
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)
            .at(tmp)?;
        f.write_all(bytes).at(tmp)?;
        sync_file(&f).at(tmp)?;
        fs::rename(tmp, path).at(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Writes `bytes` to a new file at `path` and fsyncs it, without a temporary name: for
/// files nobody can see yet (a staging directory) or that are written once before
/// their job moves on.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .at(path)?;
    f.write_all(bytes).at(path)?;
    sync_file(&f).at(path)
}

/// Replaces `path` atomically (tmp + rename) without forcing it to disk: for state that
/// must survive a process crash (the page cache does) but may be lost on power loss.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let tmp = tmp.as_path();
    let result = fs::write(tmp, bytes)
        .at(tmp)
        .and_then(|()| fs::rename(tmp, path).at(path));
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// fsyncs a directory so the entries created or renamed in it survive power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    if !fsync_enabled() {
        return Ok(());
    }
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Renames `from` to `to` and makes the new entry durable. (The old entry's removal is
/// in the same journal transaction on ext4/xfs; if it resurfaced after a power loss, the
/// job would only run again, which at-least-once allows.)
pub fn rename_durable(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::rename(from, to)?;
    if let Some(dir) = to.parent()
        && fsync_enabled()
    {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}
