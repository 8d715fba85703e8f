//! How many threads a decode step should use while other programs want the CPU.
//!
//! ggml meets its threads at a barrier after every operation of a step, so a step is as
//! slow as its most preempted thread. When another program keeps a core busy, one thread
//! per free core is faster than one per core: on 2 cores beside two `nice 19` busy loops,
//! 16 × 32 tokens took 13.5 s with one thread and 19.4 s with two, while on a quiet
//! machine two are 1.5–1.8× faster than one (`nrvna bench --only load`).
//!
//! The signal is the kernel's count of runnable tasks (`procs_running` in `/proc/stat`),
//! read between steps, less the threads of this process that run at that moment (helper
//! threads that still spin at a barrier among them). What is left is load from elsewhere. The count is smoothed and acted on with hysteresis, because changing
//! the thread count rebuilds the llama.cpp context (llama-cpp-2 offers no other way) and
//! a one-off `ls` must not cost that.

use std::time::{Duration, Instant};

/// How often the runnable count is read (a read of `/proc/stat` costs ~30 µs).
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Time constant of the smoothing: load must last about this long to count.
const SMOOTHING: Duration = Duration::from_millis(700);
/// A lower thread count is taken once it has been the target this long.
const DOWN_AFTER: Duration = Duration::from_secs(1);
/// A higher one waits longer: busy loops come and go, and a rebuild costs a step or two.
const UP_AFTER: Duration = Duration::from_secs(3);
/// Fewest seconds between two changes.
const MIN_GAP: Duration = Duration::from_secs(2);
/// Readings in a row a task must be runnable in to count (their minimum is smoothed).
/// The count of this process's own running threads is taken just after the kernel's
/// total, so a helper thread of ours (the partial-text writer, an HTTP worker) that
/// goes to sleep in between looks like a task from elsewhere; such threads wake and
/// sleep many times a second, and are seldom caught in three readings running.
const IN_A_ROW: usize = 3;

/// Chooses a decode thread count between 1 and `max` from observed foreign load.
#[derive(Debug)]
pub(crate) struct ThreadGovernor {
    cores: f64,
    max: i32,
    current: i32,
    /// Smoothed count of runnable tasks that are not this engine's.
    load: f64,
    /// The last readings, newest last (at most [`IN_A_ROW`]).
    recent: Vec<f64>,
    last_sample: Option<Instant>,
    last_change: Option<Instant>,
    /// The target that differs from `current`, and since when it has.
    pending: Option<(i32, Instant)>,
}

impl ThreadGovernor {
    /// `cores`: CPUs this process may run on; `max`: the most threads to use.
    pub(crate) fn new(cores: u32, max: i32) -> ThreadGovernor {
        let max = max.max(1);
        ThreadGovernor {
            cores: f64::from(cores.max(1)),
            max,
            current: max,
            load: 0.0,
            recent: Vec::with_capacity(IN_A_ROW),
            last_sample: None,
            last_change: None,
            pending: None,
        }
    }

    pub(crate) fn current(&self) -> i32 {
        self.current
    }

    /// The smoothed foreign load, for the log.
    pub(crate) fn load(&self) -> f64 {
        self.load
    }

    /// Whether a sample is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.last_sample
            .is_none_or(|at| now.duration_since(at) >= SAMPLE_EVERY)
    }

    /// Takes one reading of `others` runnable tasks at `now`; returns the thread count
    /// to change to, when it should change.
    pub(crate) fn observe(&mut self, now: Instant, others: f64) -> Option<i32> {
        let dt = self
            .last_sample
            .map(|at| now.duration_since(at))
            .unwrap_or(SAMPLE_EVERY);
        self.last_sample = Some(now);
        if self.recent.len() == IN_A_ROW {
            self.recent.remove(0);
        }
        self.recent.push(others.max(0.0));
        let lasting = self.recent.iter().copied().fold(f64::INFINITY, f64::min);
        let alpha = 1.0 - (-dt.as_secs_f64() / SMOOTHING.as_secs_f64()).exp();
        self.load += alpha * (lasting - self.load);

        let target = self.target();
        if target == self.current {
            self.pending = None;
            return None;
        }
        let since = match self.pending {
            Some((t, since)) if t == target => since,
            _ => {
                self.pending = Some((target, now));
                now
            }
        };
        let hold = if target < self.current {
            DOWN_AFTER
        } else {
            UP_AFTER
        };
        let gap_ok = self
            .last_change
            .is_none_or(|at| now.duration_since(at) >= MIN_GAP);
        if now.duration_since(since) >= hold && gap_ok {
            self.pending = None;
            self.last_change = Some(now);
            self.current = target;
            return Some(target);
        }
        None
    }

    /// Every core not kept busy from elsewhere gets a thread. A core counts as busy once
    /// the smoothed load reaches 3/4 of a task, so a brief extra task rounds away.
    fn target(&self) -> i32 {
        let busy = (self.load + 0.25).floor();
        let free = (self.cores - busy).max(1.0);
        (free as i32).clamp(1, self.max)
    }

    /// A change that could not be made (the context could not be rebuilt): stay at
    /// `threads`, and wait the usual gap before trying again.
    pub(crate) fn revert(&mut self, threads: i32, now: Instant) {
        self.current = threads;
        self.last_change = Some(now);
        self.pending = None;
    }
}

/// The runnable tasks on this machine that are not this process's, from `/proc/stat`;
/// `None` where it cannot be read (not Linux, no procfs). This process's own running
/// threads (the daemon's writers, agents) are counted only when the machine-wide count
/// says something besides the calling thread runs, which keeps the common quiet case at
/// one read.
///
/// The kernel's count is read on both sides of the scan of our own threads and the
/// smaller taken: a thread of ours that runs at the first read and has gone to sleep by
/// the scan (a spinning ggml helper ending its spin, the partial-text writer) would
/// otherwise count as a task from elsewhere; it is seldom running again at the second
/// read, while a busy program from elsewhere is running at both.
pub(crate) fn runnable_others() -> Option<f64> {
    let procs_running = || {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| parse_procs_running(&stat))
    };
    let first = procs_running()?;
    if first <= 1 {
        return Some(0.0);
    }
    let own = own_running_threads().unwrap_or(1).max(1);
    let running = first.min(procs_running().unwrap_or(first));
    Some(running.saturating_sub(own) as f64)
}

/// Threads of this process in state R (running or runnable), the caller included.
fn own_running_threads() -> Option<u64> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut running = 0;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread has ended
        };
        if task_state(&stat) == Some('R') {
            running += 1;
        }
    }
    Some(running)
}

/// The state letter of a `/proc/*/task/*/stat` line: the field after the command name,
/// which is in parentheses and may itself hold spaces and parentheses.
fn task_state(stat: &str) -> Option<char> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

fn parse_procs_running(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("procs_running "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(
        g: &mut ThreadGovernor,
        start: Instant,
        from: Duration,
        to: Duration,
        others: f64,
    ) -> Vec<(Duration, i32)> {
        let mut changes = Vec::new();
        let mut t = from;
        while t < to {
            if let Some(n) = g.observe(start + t, others) {
                changes.push((t, n));
            }
            t += SAMPLE_EVERY;
        }
        changes
    }

    #[test]
    fn a_quiet_machine_keeps_every_core() {
        let start = Instant::now();
        let mut g = ThreadGovernor::new(2, 2);
        assert!(feed(&mut g, start, Duration::ZERO, Duration::from_secs(30), 0.0).is_empty());
        assert_eq!(g.current(), 2);
    }

    #[test]
    fn lasting_load_lowers_the_count_and_its_end_raises_it_again() {
        let start = Instant::now();
        let mut g = ThreadGovernor::new(2, 2);
        let down = feed(&mut g, start, Duration::ZERO, Duration::from_secs(10), 2.0);
        assert_eq!(down.len(), 1, "{down:?}");
        assert_eq!(down[0].1, 1);
        assert!(down[0].0 <= Duration::from_secs(3), "{down:?}");
        let up = feed(
            &mut g,
            start,
            Duration::from_secs(10),
            Duration::from_secs(25),
            0.0,
        );
        assert_eq!(up.len(), 1, "{up:?}");
        assert_eq!(up[0].1, 2);
        assert!(up[0].0 >= Duration::from_secs(13), "{up:?}");
    }

    #[test]
    fn a_brief_extra_task_changes_nothing() {
        let start = Instant::now();
        let mut g = ThreadGovernor::new(2, 2);
        // One sample in ten sees a short-lived process.
        let mut t = Duration::ZERO;
        let mut i = 0;
        while t < Duration::from_secs(30) {
            let others = if i % 10 == 0 { 1.0 } else { 0.0 };
            assert_eq!(g.observe(start + t, others), None, "at {t:?}");
            t += SAMPLE_EVERY;
            i += 1;
        }
    }

    #[test]
    fn a_task_runnable_in_many_readings_but_seldom_in_a_row_changes_nothing() {
        // Seen under 32 HTTP requests: the daemon's own helper threads, caught asleep
        // by the own-thread count after the kernel counted them running, made two in
        // five readings show a task from elsewhere (and once 1.6 on average).
        let start = Instant::now();
        let mut g = ThreadGovernor::new(2, 2);
        let mut seed = 12345u32;
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(60) {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let others = if (seed >> 16) % 5 < 2 { 2.0 } else { 0.0 };
            assert_eq!(g.observe(start + t, others), None, "at {t:?}");
            t += SAMPLE_EVERY;
        }
    }

    #[test]
    fn many_cores_give_up_only_the_busy_ones_and_respect_the_maximum() {
        let start = Instant::now();
        let mut g = ThreadGovernor::new(16, 8);
        assert!(feed(&mut g, start, Duration::ZERO, Duration::from_secs(10), 4.0).is_empty());
        let changes = feed(
            &mut g,
            start,
            Duration::from_secs(10),
            Duration::from_secs(20),
            12.0,
        );
        assert_eq!(changes.last().map(|c| c.1), Some(4));
        let mut g = ThreadGovernor::new(4, 4);
        let changes = feed(&mut g, start, Duration::ZERO, Duration::from_secs(10), 9.0);
        assert_eq!(changes.last().map(|c| c.1), Some(1));
    }

    #[test]
    fn procs_running_is_read_from_proc_stat() {
        let stat = "cpu  1 2 3\nctxt 5\nprocs_running 3\nprocs_blocked 0\n";
        assert_eq!(parse_procs_running(stat), Some(3));
        assert_eq!(parse_procs_running("cpu 1\n"), None);
    }

    #[test]
    fn a_task_state_is_read_past_a_command_name_with_parentheses() {
        assert_eq!(task_state("42 (tokio (rt) 1) R 1 2 3"), Some('R'));
        assert_eq!(task_state("43 (nrvnad) S 1 2 3"), Some('S'));
        assert_eq!(task_state("garbage"), None);
        // The calling thread runs while it reads its own state.
        assert!(own_running_threads().is_some_and(|n| n >= 1));
    }
}
