//! Waiting for state changes through file-system notifications, with a slow periodic
//! re-check as a safety net (notifications can be dropped on overflow or unsupported
//! file systems).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::error::Result;
use crate::id::JobId;
use crate::workspace::{State, Workspace};

/// How often a waiter re-checks even without a notification.
pub const SAFETY_RESCAN: Duration = Duration::from_millis(1000);

/// Watches some directories (not recursively) and reports changed paths.
pub struct DirWatcher {
    _watcher: RecommendedWatcher,
    rx: Receiver<PathBuf>,
}

impl DirWatcher {
    pub fn new<P: AsRef<Path>>(dirs: &[P]) -> Result<DirWatcher> {
        let (tx, rx) = channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                match event {
                    // Entries leaving a directory are never news to a waiter.
                    Ok(event) if is_departure(&event.kind) => {}
                    Ok(event) => {
                        for path in event.paths {
                            let _ = tx.send(path);
                        }
                    }
                    // An overflow or error: wake the waiter with an empty path so it rescans.
                    Err(_) => {
                        let _ = tx.send(PathBuf::new());
                    }
                }
            })?;
        for dir in dirs {
            watcher.watch(dir.as_ref(), RecursiveMode::NonRecursive)?;
        }
        Ok(DirWatcher {
            _watcher: watcher,
            rx,
        })
    }

    /// Blocks until something changes or `timeout` passes; returns the changed paths
    /// (an empty path means "unknown change, rescan").
    pub fn wait(&self, timeout: Duration) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        match self.rx.recv_timeout(timeout) {
            Ok(p) => paths.push(p),
            Err(RecvTimeoutError::Timeout) => return paths,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(timeout);
                return paths;
            }
        }
        paths.extend(self.rx.try_iter());
        paths
    }
}

fn is_departure(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(RenameMode::From))
    )
}

/// Waits until `id` reaches a terminal state, or `timeout` passes. Returns the last state
/// seen (`None`: no such job).
pub fn wait_terminal(
    ws: &Workspace,
    id: &JobId,
    timeout: Option<Duration>,
) -> Result<Option<State>> {
    wait_terminal_with(ws, id, timeout, |_| {})
}

/// [`wait_terminal`], calling `pending` with the job's state at each look that has to
/// wait on (for a waiter that shows progress).
pub fn wait_terminal_with(
    ws: &Workspace,
    id: &JobId,
    timeout: Option<Duration>,
    mut pending: impl FnMut(State),
) -> Result<Option<State>> {
    let mut last = None;
    wait_until(ws, timeout, |ws| {
        last = ws.state_of(id)?;
        match last {
            Some(state) if !state.is_terminal() => {
                pending(state);
                Ok(false)
            }
            _ => Ok(true),
        }
    })?;
    Ok(last)
}

/// Waits until `done(ws)` holds, re-checking on every change in any state directory.
/// Returns whether it held before `timeout` passed.
///
/// The watcher is armed before the first look, so a change between the look and the wait
/// is never lost.
pub fn wait_until(
    ws: &Workspace,
    timeout: Option<Duration>,
    mut done: impl FnMut(&Workspace) -> Result<bool>,
) -> Result<bool> {
    let dirs: Vec<PathBuf> = State::ALL.iter().map(|s| ws.state_dir(*s)).collect();
    let watcher = DirWatcher::new(&dirs)?;
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        if done(ws)? {
            return Ok(true);
        }
        let mut slice = SAFETY_RESCAN;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            slice = slice.min(left);
        }
        watcher.wait(slice);
    }
}

/// The network or user-space file system `path` is on, when it is one whose inotify
/// cannot see changes made by other machines (nfs(5): "inotify ... only local changes"):
/// NFS, CephFS, SMB/CIFS, 9p, AFS, and FUSE (CephFS, GlusterFS, sshfs... mounted through
/// it). `None`: a local file system, where notifications see every change.
pub fn remote_file_system(path: &Path) -> Option<&'static str> {
    let fs = rustix::fs::statfs(path).ok()?;
    // f_type's width differs between architectures; the magic numbers fit in 32 bits.
    #[allow(clippy::unnecessary_cast)]
    let magic = fs.f_type as i64 as u32;
    file_system_name(magic)
}

fn file_system_name(magic: u32) -> Option<&'static str> {
    Some(match magic {
        0x0000_6969 => "nfs",
        0x00c3_6400 => "ceph",
        0xfe53_4d42 => "smb2",
        0xff53_4d42 => "cifs",
        0x0000_517b => "smb",
        0x0102_1997 => "9p",
        0x5346_414f => "afs",
        0x6573_5546 => "fuse",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_file_systems_are_named_local_ones_are_not() {
        assert_eq!(file_system_name(0x6969), Some("nfs"));
        assert_eq!(file_system_name(0x00c3_6400), Some("ceph"));
        assert_eq!(file_system_name(0xef53), None); // ext4
        assert_eq!(file_system_name(0x0102_1994), None); // tmpfs
        let dir = tempfile::tempdir().unwrap();
        // The test runs on a local disk or tmpfs.
        assert_eq!(remote_file_system(dir.path()), None);
    }
}
