//! Durable file-system primitives: every state change is a rename, and everything a
//! rename publishes is on disk before it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Writes `bytes` to `path` durably: `path.tmp`, fsync, rename over `path`.
/// The caller fsyncs the parent directory before publishing it.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)
            .at(tmp)?;
        f.write_all(bytes).at(tmp)?;
        f.sync_all().at(tmp)?;
        fs::rename(tmp, path).at(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// fsyncs a directory so the entries created or renamed in it survive power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Renames `from` to `to` and makes both directory entries durable.
pub fn rename_durable(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::rename(from, to)?;
    for dir in [to.parent(), from.parent()].into_iter().flatten() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}
