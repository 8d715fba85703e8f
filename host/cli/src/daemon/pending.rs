//! The daemon's in-memory list of queued job ids: deduplicated, oldest first, and
//! woken by the watcher. It is only a hint; the claim rename decides who runs a job.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use nrvna_queue::JobId;

#[derive(Default)]
pub struct Pending {
    inner: Mutex<Inner>,
    wake: Condvar,
}

#[derive(Default)]
struct Inner {
    ids: BTreeSet<JobId>,
    /// Ids taken by a worker and not yet settled: don't hand them out twice.
    taken: HashSet<JobId>,
    closed: bool,
}

impl Pending {
    pub fn push_all(&self, ids: impl IntoIterator<Item = JobId>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let mut added = false;
        for id in ids {
            if !inner.taken.contains(&id) {
                added |= inner.ids.insert(id);
            }
        }
        if added {
            self.wake.notify_all();
        }
    }

    /// The oldest pending id, waiting up to `timeout`; `None` on timeout or once closed.
    pub fn take(&self, timeout: Duration) -> Option<JobId> {
        let mut inner = self.inner.lock().ok()?;
        if inner.ids.is_empty() && !inner.closed {
            inner = self.wake.wait_timeout(inner, timeout).ok()?.0;
        }
        if inner.closed {
            return None;
        }
        let id = inner.ids.pop_first()?;
        inner.taken.insert(id.clone());
        Some(id)
    }

    /// A worker is done with `id` (ran it, or lost the claim race).
    pub fn settle(&self, id: &JobId) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.taken.remove(id);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.lock().map(|i| i.ids.is_empty()).unwrap_or(true)
    }

    /// Stops handing out ids; waiting workers return `None`.
    pub fn close(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.closed = true;
        }
        self.wake.notify_all();
    }
}
