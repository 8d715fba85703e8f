//! The live view of jobs inside the daemon that hosts the server: the daemon pushes each
//! job's start, generated text and end here ([`LiveJobs`], handed to it by
//! [`crate::HttpServer::live`]), and a stream or a waiting request wakes when one comes
//! instead of polling the workspace every few milliseconds.
//!
//! The workspace stays the truth: the job's state says whether it ended, its result is
//! the final text, and `partial.txt` serves other processes (`flw --stream`). A reader
//! that hears nothing here (the job ended before it looked, or was settled by someone
//! other than the daemon, e.g. cancelled while queued) finds out by looking at the
//! workspace every [`LIVE_CHECK`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use nrvna_queue::JobId;
use nrvna_queue::stream::take_utf8;
use tokio::sync::watch;

/// How long a reader waits for news before it looks at the workspace itself.
pub const LIVE_CHECK: Duration = Duration::from_millis(100);

/// Jobs by id, each held by whoever uses it (the daemon while it runs the job, readers
/// while they follow it): an entry nobody holds is dropped.
#[derive(Clone, Default)]
pub struct LiveJobs {
    jobs: Arc<Mutex<HashMap<JobId, Weak<LiveJob>>>>,
}

impl LiveJobs {
    pub fn new() -> LiveJobs {
        LiveJobs::default()
    }

    /// Job `id`'s live view, made on first use by either side.
    pub fn job(&self, id: &JobId) -> Arc<LiveJob> {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(job) = jobs.get(id).and_then(Weak::upgrade) {
            return job;
        }
        jobs.retain(|_, job| job.strong_count() > 0);
        let job = Arc::new(LiveJob::default());
        jobs.insert(id.clone(), Arc::downgrade(&job));
        job
    }

    /// How many jobs have a live view now (for tests: none may leak).
    pub fn len(&self) -> usize {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.values().filter(|job| job.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Default)]
struct Text {
    bytes: Vec<u8>,
    /// Bumped each time the daemon starts the job (a job run again starts its text over).
    run: u32,
    /// The daemon has left the job: it is in `output/`, `failed/`, or back in the queue.
    settled: bool,
}

/// One job's live text and end.
pub struct LiveJob {
    text: Mutex<Text>,
    /// Bumped on every change, so readers wake.
    changed: watch::Sender<u64>,
}

impl Default for LiveJob {
    fn default() -> LiveJob {
        LiveJob {
            text: Mutex::new(Text::default()),
            changed: watch::Sender::new(0),
        }
    }
}

impl LiveJob {
    fn update(&self, f: impl FnOnce(&mut Text)) {
        f(&mut self.text.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The daemon claimed the job and starts running it.
    pub fn begin(&self) {
        self.update(|t| {
            t.bytes.clear();
            t.run += 1;
            t.settled = false;
        });
    }

    /// The daemon generated `bytes` (raw: a piece may end inside a UTF-8 character).
    pub fn append(&self, bytes: &[u8]) {
        self.update(|t| t.bytes.extend_from_slice(bytes));
    }

    /// The daemon has moved the job out of `processing/` (every byte was appended before).
    pub fn settle(&self) {
        self.update(|t| t.settled = true);
    }

    /// Whether the daemon has settled the job.
    pub fn settled(&self) -> bool {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .settled
    }

    /// A reader from the start of the text.
    pub fn reader(self: &Arc<Self>) -> LiveReader {
        LiveReader {
            rx: self.changed.subscribe(),
            job: self.clone(),
            run: 0,
            offset: 0,
            pending: Vec::new(),
        }
    }

    /// Wakes on the next change (a token, a start, the end).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// What one [`LiveReader::read`] saw.
#[derive(Debug, PartialEq)]
pub enum LiveRead {
    /// Text since the last read, in whole UTF-8 characters (may be empty).
    Text(String),
    /// The daemon started the job again after this reader had seen text from an
    /// earlier run: what was read is void.
    Restarted,
    /// The daemon settled the job; every byte was read (`String`: the rest).
    Settled(String),
}

/// Follows one job's live text.
pub struct LiveReader {
    job: Arc<LiveJob>,
    rx: watch::Receiver<u64>,
    /// The run this reader follows (0: none seen yet).
    run: u32,
    offset: usize,
    pending: Vec<u8>,
}

impl LiveReader {
    /// Whether the daemon has started this job since the reader was made (or before).
    pub fn begun(&self) -> bool {
        self.run > 0
    }

    /// What is new; marks everything up to now as seen by [`LiveReader::changed`].
    pub fn read(&mut self) -> LiveRead {
        self.rx.borrow_and_update();
        let text = self.job.text.lock().unwrap_or_else(PoisonError::into_inner);
        if text.run != self.run {
            let seen_text = self.offset > 0 || !self.pending.is_empty();
            self.run = text.run;
            self.offset = 0;
            self.pending.clear();
            if seen_text {
                return LiveRead::Restarted;
            }
        }
        if let Some(new) = text.bytes.get(self.offset..) {
            self.pending.extend_from_slice(new);
            self.offset = text.bytes.len();
        }
        let mut out = take_utf8(&mut self.pending);
        if text.settled && text.run > 0 {
            if !self.pending.is_empty() {
                out.push_str(&String::from_utf8_lossy(&self.pending));
                self.pending.clear();
            }
            return LiveRead::Settled(out);
        }
        LiveRead::Text(out)
    }

    /// Waits for a change since the last [`LiveReader::read`], at most `timeout`; false
    /// when the time ran out.
    pub async fn changed(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.rx.changed()).await,
            Ok(Ok(()))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> JobId {
        JobId::generate()
    }

    #[tokio::test]
    async fn a_reader_sees_text_then_the_end_and_nothing_leaks() {
        let live = LiveJobs::new();
        let id = id();
        let daemon = live.job(&id);
        let mut reader = live.job(&id).reader();
        assert_eq!(reader.read(), LiveRead::Text(String::new()));
        assert!(!reader.begun());
        daemon.begin();
        assert!(reader.changed(Duration::from_secs(1)).await);
        daemon.append("é".as_bytes().get(..1).unwrap_or_default());
        assert_eq!(reader.read(), LiveRead::Text(String::new()));
        assert!(reader.begun());
        daemon.append(&"é!".as_bytes()[1..]);
        assert_eq!(reader.read(), LiveRead::Text("é!".into()));
        assert!(!reader.changed(Duration::from_millis(10)).await);
        daemon.append(b"x");
        daemon.settle();
        assert_eq!(reader.read(), LiveRead::Settled("x".into()));
        drop(daemon);
        drop(reader);
        assert!(live.is_empty());
    }

    #[tokio::test]
    async fn a_run_started_again_voids_what_was_read() {
        let live = LiveJobs::new();
        let id = id();
        let daemon = live.job(&id);
        let mut reader = daemon.reader();
        daemon.begin();
        daemon.append(b"first");
        assert_eq!(reader.read(), LiveRead::Text("first".into()));
        daemon.begin();
        daemon.append(b"second");
        assert_eq!(reader.read(), LiveRead::Restarted);
        assert_eq!(reader.read(), LiveRead::Text("second".into()));
    }
}
