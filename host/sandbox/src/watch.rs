//! Async waiting for job state changes.
//!
//! One notify watcher per workspace for the whole runtime (inotify instances are a
//! scarce per-user resource), shared by every run that waits on it and dropped with the
//! last one. Each change bumps a runtime-wide generation counter; waiters re-check
//! their jobs on every bump and on a slow timer, so a dropped notification only costs
//! latency. Waiting is a tokio future: dropping it (a run cancelled or timed out)
//! leaves no thread behind. (So `nrvna_queue::watch::DirWatcher`, a blocking receiver
//! per waiter, does not fit; [`is_news`] applies its rule for which events are news.)

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use nrvna_queue::{State, Workspace};
use tokio::sync::watch;
use tokio::time::Instant;

/// Re-check interval with notifications working, and without.
const RESCAN: Duration = Duration::from_millis(1000);
const POLL: Duration = Duration::from_millis(200);

pub(crate) struct Watchers {
    changed: watch::Sender<u64>,
    dirs: Mutex<HashMap<PathBuf, Weak<WsWatch>>>,
}

/// Keeps one workspace watched while held.
pub(crate) struct WsWatch {
    watcher: Option<RecommendedWatcher>,
}

impl WsWatch {
    /// Whether changes arrive as notifications (else waiters poll).
    pub(crate) fn notifies(&self) -> bool {
        self.watcher.is_some()
    }
}

impl Watchers {
    pub(crate) fn new() -> Watchers {
        Watchers {
            changed: watch::Sender::new(0),
            dirs: Mutex::new(HashMap::new()),
        }
    }

    /// Watches `ws` (or shares the watcher already on it). If notifications cannot be
    /// set up (inotify limits), the watch still works, by polling.
    pub(crate) fn watch(&self, ws: &Workspace) -> Arc<WsWatch> {
        let key = ws.root().to_owned();
        let Ok(mut dirs) = self.dirs.lock() else {
            return Arc::new(WsWatch { watcher: None });
        };
        if let Some(existing) = dirs.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        dirs.retain(|_, w| w.strong_count() > 0);
        let watcher = match self.notifier(ws) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "cannot watch {} for job changes ({e}); polling every {POLL:?} instead",
                    ws.root().display()
                );
                None
            }
        };
        let watch = Arc::new(WsWatch { watcher });
        dirs.insert(key, Arc::downgrade(&watch));
        watch
    }

    fn notifier(&self, ws: &Workspace) -> notify::Result<RecommendedWatcher> {
        let tx = self.changed.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if is_news(&event) {
                    tx.send_modify(|g| *g = g.wrapping_add(1));
                }
            })?;
        for state in State::ALL {
            watcher.watch(&ws.state_dir(state), RecursiveMode::NonRecursive)?;
        }
        Ok(watcher)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Whether `event` may be a job arriving somewhere a waiter looks. The queue's rule
/// (`nrvna_queue::watch`): entries leaving a directory (removed, renamed away) and mere
/// reads are never news, as a job that moves on always arrives in another state
/// directory, and that arrival wakes the waiters. An error (an overflow) is news:
/// anything may have changed.
fn is_news(event: &notify::Result<notify::Event>) -> bool {
    match event {
        Ok(event) => !matches!(
            event.kind,
            EventKind::Access(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(RenameMode::From))
        ),
        Err(_) => true,
    }
}

/// Calls `check` until it gives a value, re-checking on every change and on a timer;
/// `None` once `deadline` passes. The receiver is marked seen before each check, so a
/// change racing with a check is never missed.
pub(crate) async fn wait_for<T>(
    rx: &mut watch::Receiver<u64>,
    notifies: bool,
    deadline: Option<Instant>,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let rescan = if notifies { RESCAN } else { POLL };
    loop {
        rx.borrow_and_update();
        if let Some(v) = check() {
            return Some(v);
        }
        let now = Instant::now();
        let mut wake = now + rescan;
        if let Some(deadline) = deadline {
            if now >= deadline {
                return None;
            }
            wake = wake.min(deadline);
        }
        tokio::select! {
            changed = rx.changed() => {
                // The sender lives as long as the runtime; if it is gone, fall back to the timer.
                if changed.is_err() {
                    tokio::time::sleep_until(wake).await;
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// A deadline `ms` from now, if it is representable.
pub(crate) fn deadline_in(ms: Option<u64>) -> Option<Instant> {
    ms.and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, DataChange, RemoveKind};
    use nrvna_queue::Submission;

    #[test]
    fn departures_are_not_news_and_arrivals_are() {
        let event = |kind| Ok(notify::Event::new(kind));
        for departure in [
            EventKind::Remove(RemoveKind::Folder),
            EventKind::Remove(RemoveKind::Any),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Access(AccessKind::Any),
        ] {
            assert!(!is_news(&event(departure)), "{departure:?}");
        }
        for arrival in [
            EventKind::Create(CreateKind::Folder),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
        ] {
            assert!(is_news(&event(arrival)), "{arrival:?}");
        }
        assert!(is_news(&Err(notify::Error::generic("queue overflow"))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_wakes_a_waiter_and_a_deadline_ends_it() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::create(tmp.path().join("ws")).unwrap();
        let watchers = Watchers::new();
        let held = watchers.watch(&ws);
        assert!(held.notifies());
        // A second watch of the same workspace shares the watcher.
        assert!(Arc::ptr_eq(&held, &watchers.watch(&ws)));

        let id = ws
            .submit(Submission {
                prompt: "p".into(),
                ..Submission::default()
            })
            .unwrap();
        let mut rx = watchers.subscribe();
        let none = wait_for(&mut rx, true, deadline_in(Some(50)), || {
            ws.state_of(&id).ok().flatten().filter(|s| s.is_terminal())
        })
        .await;
        assert_eq!(none, None);

        let ws2 = ws.clone();
        let id2 = id.clone();
        let started = std::time::Instant::now();
        let cancel = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ws2.cancel(&id2).unwrap();
        });
        let state = wait_for(&mut rx, true, deadline_in(Some(5000)), || {
            ws.state_of(&id).ok().flatten().filter(|s| s.is_terminal())
        })
        .await;
        cancel.await.unwrap();
        assert_eq!(state, Some(State::Failed));
        // Woken by the notification, not the 1 s re-check.
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
    }
}
