//! How much a run may use ([`Limits`], the one place their defaults live) and the
//! budgets that enforce them: linear memory ([`MemoryLimiter`]), guest CPU time (epoch
//! ticks), bytes per host call (wasmtime's hostcall fuel), wall-clock time, and the
//! job, in-flight, prompt-size and call-depth quotas.
//!
//! One [`RunBudget`] is shared by every sandbox of a run, nested `agents.call` included:
//! limits are per run, not per sandbox. A limit that stops the run is a [`LimitHit`]
//! trap; a quota is a `job-error` the component can act on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;

use crate::bindings::nrvna::agent::types::JobError;
use crate::error::{LimitHit, LimitKind};

/// How much one run (with every agent it calls) may use. The defaults
/// ([`Limits::DEFAULT`]) are safe for an untrusted component on a shared machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Linear memory of all the run's sandboxes together.
    pub memory_bytes: u64,
    /// Wall-clock time of the whole run, waiting included, except waiting for people to
    /// approve held jobs (`approval_wait` bounds that).
    pub wall: Duration,
    /// Time the run may spend, in all, waiting on jobs that are held for approval
    /// (`--approve submits`); not counted in `wall`, and never in `cpu`.
    pub approval_wait: Duration,
    /// Time spent executing guest code (measured in epoch ticks), and host work for it.
    pub cpu: Duration,
    /// Time compiling a component may take (each component a run loads, `agents.call`
    /// included); counted in `wall` too.
    pub compile_time: Duration,
    /// Jobs the run may submit in all.
    pub max_jobs: u64,
    /// Jobs the run may have queued or running at once.
    pub max_in_flight: u64,
    /// Bytes of one prompt (system message included).
    pub max_prompt_bytes: u64,
    /// `agents.call` nesting.
    pub max_depth: u32,
    /// Bytes a component may pass to one host call; more traps before the host copies
    /// anything (wasmtime's hostcall fuel).
    pub hostcall_bytes: u64,
    /// Bytes of log (the `log` interface plus stdout and stderr) before lines are dropped.
    pub log_bytes: u64,
    /// Handles (open files and directories, streams, pollables) the run's sandboxes may
    /// hold together: a nested `agents.call` gets what its callers leave.
    pub max_handles: u64,
    /// Bytes one agent may keep in its `kv` storage (all its keys, across runs).
    pub kv_bytes: u64,
    /// Bytes of images the run's jobs may name in all (each is copied into the workspace).
    pub image_bytes: u64,
    /// Bytes the run's sandboxes may write through WASI streams together: files in
    /// read-write `--dir` grants, stdout and stderr.
    pub write_bytes: u64,
    /// Bytes of the run's journal (every host call it makes is recorded), nested agents'
    /// journals each counted on their own.
    pub journal_bytes: u64,
}

impl Limits {
    /// The default limits; a constant so embedders can show them (e.g. in help texts)
    /// without restating them.
    pub const DEFAULT: Limits = Limits {
        memory_bytes: 256 << 20,
        wall: Duration::from_secs(600),
        approval_wait: Duration::from_secs(24 * 3600),
        cpu: Duration::from_secs(60),
        compile_time: Duration::from_secs(30),
        max_jobs: 1000,
        max_in_flight: 64,
        max_prompt_bytes: 1 << 20,
        max_depth: 16,
        hostcall_bytes: 16 << 20,
        log_bytes: 1 << 20,
        max_handles: 1024,
        kv_bytes: 64 << 20,
        image_bytes: 256 << 20,
        write_bytes: 1 << 30,
        journal_bytes: 64 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// wasmtime's error when a host call's arguments exceed the store's hostcall fuel.
/// wasmtime 48 raises it as a private type (`HostcallFuelExhausted`, in
/// `runtime/component/func/options.rs`) with no `Trap` code, while lifting the
/// arguments, before any host function runs: its text is all there is to recognise.
/// The e2e test `a_1_gib_prompt_is_refused_before_the_host_copies_it` fails if a
/// wasmtime upgrade changes it.
const HOSTCALL_FUEL_EXHAUSTED: &str = "too much data is being copied between the host and the \
                                       guest: fuel allocated for hostcalls has been exhausted";

/// Most elements one wasm table may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Instances, tables and linear memories one component may create.
const MAX_INSTANCES: usize = 100;
const MAX_TABLES: usize = 100;
const MAX_MEMORIES: usize = 10;

/// Runs `work` and measures the CPU time this thread spent on it (not time blocked on
/// I/O or locks), for [`RunBudget::charge_host_cpu`].
pub(crate) fn measure_cpu<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let now = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        )
    };
    let start = now();
    let out = work();
    (out, now().saturating_sub(start))
}

/// What a run has used of its [`Limits`]; shared by all its sandboxes.
#[derive(Debug)]
pub(crate) struct RunBudget {
    limits: Limits,
    /// The runtime's epoch tick: the unit of CPU time.
    tick: Duration,
    cpu_limit_ticks: u64,
    cpu_ticks: AtomicU64,
    /// CPU time the host spent on the run's behalf (see [`RunBudget::charge_host_cpu`]).
    host_cpu_nanos: AtomicU64,
    memory_used: AtomicU64,
    memory_peak: AtomicU64,
    jobs_submitted: AtomicU64,
    agent_calls: AtomicU64,
    image_bytes: AtomicU64,
    write_bytes: AtomicU64,
    write_refused: std::sync::atomic::AtomicBool,
    approval: Mutex<ApprovalClock>,
}

/// Time the run has spent waiting for approvals: waits in progress, since when, and the
/// total of those that ended.
#[derive(Debug, Default)]
struct ApprovalClock {
    waiting: u32,
    since: Option<Instant>,
    total: Duration,
}

impl RunBudget {
    pub(crate) fn new(limits: Limits, tick: Duration) -> RunBudget {
        let cpu_limit_ticks = (limits.cpu.as_nanos() / tick.as_nanos().max(1)) as u64;
        RunBudget {
            limits,
            tick,
            cpu_limit_ticks: cpu_limit_ticks.max(1),
            cpu_ticks: AtomicU64::new(0),
            host_cpu_nanos: AtomicU64::new(0),
            memory_used: AtomicU64::new(0),
            memory_peak: AtomicU64::new(0),
            jobs_submitted: AtomicU64::new(0),
            agent_calls: AtomicU64::new(0),
            image_bytes: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            write_refused: std::sync::atomic::AtomicBool::new(false),
            approval: Mutex::new(ApprovalClock::default()),
        }
    }

    // ----- waiting for approval -------------------------------------------------------------

    fn approval_wait_started(&self) {
        if let Ok(mut clock) = self.approval.lock() {
            if clock.waiting == 0 {
                clock.since = Some(Instant::now());
            }
            clock.waiting += 1;
        }
    }

    fn approval_wait_ended(&self) {
        if let Ok(mut clock) = self.approval.lock() {
            clock.waiting = clock.waiting.saturating_sub(1);
            if clock.waiting == 0
                && let Some(since) = clock.since.take()
            {
                clock.total += since.elapsed();
            }
        }
    }

    /// Time spent waiting for approvals so far, and whether a wait is in progress.
    pub(crate) fn approval_waited(&self) -> (Duration, bool) {
        match self.approval.lock() {
            Ok(clock) => (
                clock.total + clock.since.map_or(Duration::ZERO, |s| s.elapsed()),
                clock.waiting > 0,
            ),
            Err(_) => (Duration::ZERO, false),
        }
    }

    /// How long the run started at `started` may go on before a time limit stops it, or
    /// the limit that stops it now: the wall clock (time waiting for approvals left out)
    /// and, while it waits for one, the approval wait.
    pub(crate) fn time_left(&self, started: Instant) -> Result<Duration, LimitHit> {
        let (waited, waiting) = self.approval_waited();
        if waited > self.limits.approval_wait {
            return Err(LimitHit::new(
                LimitKind::ApprovalWait,
                format!(
                    "the run waited more than {} for its held jobs to be approved or denied",
                    show_duration(self.limits.approval_wait)
                ),
            ));
        }
        let counted = started.elapsed().saturating_sub(waited);
        if counted >= self.limits.wall {
            return Err(self.wall_clock_hit());
        }
        let mut left = self.limits.wall - counted;
        if waiting {
            left = self.limits.approval_wait - waited;
        }
        Ok(left.max(Duration::from_millis(1)))
    }

    // ----- limits that stop the run -------------------------------------------------------

    /// One epoch tick of guest execution; past the CPU limit the run stops.
    pub(crate) fn charge_cpu_tick(&self) -> Result<(), LimitHit> {
        self.charge_cpu_ticks(1)
    }

    /// CPU time the host spent working for the run off the guest's thread (converting
    /// a schema, copying images, kv I/O): charged as the ticks it covers, the remainder
    /// carried to the next charge. A call costs its work, not one tick, so many cheap
    /// calls that each make the host work hard end the run at its CPU limit: the host
    /// call that did the work checks [`RunBudget::check_cpu`] before it returns.
    pub(crate) fn charge_host_cpu(&self, spent: Duration) {
        let spent = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        let tick = u64::try_from(self.tick.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let before = self.host_cpu_nanos.fetch_add(spent, Ordering::Relaxed);
        let ticks = before.saturating_add(spent) / tick - before / tick;
        self.cpu_ticks.fetch_add(ticks, Ordering::Relaxed);
    }

    /// CPU time the host spent for the run on the guest's own thread, in a host call:
    /// the epoch tick that passes during the call is charged when the guest resumes
    /// (one tick, however long the call took), so what is charged here is the rest.
    /// Cheap calls are thus counted once, by the ticks, and long ones at their cost.
    pub(crate) fn charge_host_cpu_in_call(&self, spent: Duration) {
        self.charge_host_cpu(spent.saturating_sub(self.tick));
    }

    /// Whether the run is still within its CPU limit (guest ticks and host work).
    pub(crate) fn check_cpu(&self) -> Result<(), LimitHit> {
        self.charge_cpu_ticks(0)
    }

    fn charge_cpu_ticks(&self, ticks: u64) -> Result<(), LimitHit> {
        let used = self.cpu_ticks.fetch_add(ticks, Ordering::Relaxed) + ticks;
        if used > self.cpu_limit_ticks {
            return Err(LimitHit::new(
                LimitKind::Cpu,
                format!(
                    "the run executed guest code, and host work for it, for more than {}",
                    show_duration(self.limits.cpu)
                ),
            ));
        }
        Ok(())
    }

    /// Reserves `bytes` more linear memory for the run, or says which limit stops it.
    fn grow_memory(&self, bytes: u64) -> Result<(), LimitHit> {
        let limit = self.limits.memory_bytes;
        let mut used = self.memory_used.load(Ordering::SeqCst);
        loop {
            let next = used.saturating_add(bytes);
            if next > limit {
                return Err(LimitHit::new(
                    LimitKind::Memory,
                    format!(
                        "growing linear memory by {} would bring the run to {} (nested agents \
                         included); the limit is {}",
                        mib(bytes),
                        mib(next),
                        mib(limit)
                    ),
                ));
            }
            match self.memory_used.compare_exchange_weak(
                used,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    self.memory_peak.fetch_max(next, Ordering::SeqCst);
                    return Ok(());
                }
                Err(now) => used = now,
            }
        }
    }

    /// Linear memory the run may still grow by: what it can still receive from the host.
    pub(crate) fn memory_left(&self) -> u64 {
        self.limits
            .memory_bytes
            .saturating_sub(self.memory_used.load(Ordering::SeqCst))
    }

    fn release_memory(&self, bytes: u64) {
        let _ = self
            .memory_used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// The hostcall fuel each of the run's stores starts every host call with.
    pub(crate) fn hostcall_fuel(&self) -> usize {
        usize::try_from(self.limits.hostcall_bytes).unwrap_or(usize::MAX)
    }

    /// The limit `e` reports, if it is wasmtime's hostcall fuel running out: the
    /// component passed more than [`Limits::hostcall_bytes`] to one host call, and
    /// wasmtime refused it before copying anything.
    pub(crate) fn hostcall_limit_hit(&self, e: &wasmtime::Error) -> Option<LimitHit> {
        (e.root_cause().to_string() == HOSTCALL_FUEL_EXHAUSTED).then(|| {
            LimitHit::new(
                LimitKind::HostcallBytes,
                format!(
                    "the component tried to pass more than {} bytes to one host call",
                    self.limits.hostcall_bytes
                ),
            )
        })
    }

    /// Handles a sandbox may hold when its callers (the sandboxes above it in the
    /// `agents.call` chain, all suspended in that call) hold `above`.
    pub(crate) fn handles_left(&self, above: u64) -> usize {
        usize::try_from(self.limits.max_handles.saturating_sub(above)).unwrap_or(usize::MAX)
    }

    /// The limit `e` reports, if it is a sandbox's handle table being full: the run's
    /// sandboxes together hold [`Limits::max_handles`].
    pub(crate) fn handles_limit_hit(&self, e: &wasmtime::Error) -> Option<LimitHit> {
        use wasmtime::component::ResourceTableError;
        e.chain()
            .any(|c| matches!(c.downcast_ref(), Some(ResourceTableError::Full)))
            .then(|| self.handles_hit())
    }

    /// The run's sandboxes together hold [`Limits::max_handles`].
    pub(crate) fn handles_hit(&self) -> LimitHit {
        LimitHit::new(
            LimitKind::Handles,
            format!(
                "the run's sandboxes (nested agents included) hold {} handles (open files, \
                 directories, streams) together",
                self.limits.max_handles
            ),
        )
    }

    /// Whether a sandbox that holds `own` descriptors of its own from its start (its
    /// `--dir` grants, opened for it) fits beside the `above` its callers hold.
    pub(crate) fn check_handles(&self, above: u64, own: u64) -> Result<(), LimitHit> {
        if above.saturating_add(own) > self.limits.max_handles {
            return Err(self.handles_hit());
        }
        Ok(())
    }

    /// The run outlived its wall-clock limit.
    pub(crate) fn wall_clock_hit(&self) -> LimitHit {
        LimitHit::new(
            LimitKind::WallClock,
            format!(
                "the run took longer than {}",
                show_duration(self.limits.wall)
            ),
        )
    }

    // ----- quotas the component sees ------------------------------------------------------

    /// A prompt of `bytes` (system message included) is within the limit.
    pub(crate) fn check_prompt_size(&self, bytes: u64) -> Result<(), JobError> {
        let limit = self.limits.max_prompt_bytes;
        if bytes > limit {
            return Err(JobError::Invalid(format!(
                "the prompt (with its system message) is {bytes} bytes; the limit is {limit} \
                 bytes (--max-prompt-bytes)"
            )));
        }
        Ok(())
    }

    /// Another job may be submitted: under the job quota, and (asked only then, as it
    /// may look at the disk) `in_flight` under the in-flight quota.
    pub(crate) fn check_job_quota(&self, in_flight: impl FnOnce() -> u64) -> Result<(), JobError> {
        let submitted = self.jobs_submitted.load(Ordering::SeqCst);
        if submitted >= self.limits.max_jobs {
            return Err(JobError::Quota(format!(
                "jobs submitted: this run has submitted {submitted} jobs, the limit (--max-jobs)"
            )));
        }
        let in_flight = in_flight();
        if in_flight >= self.limits.max_in_flight {
            return Err(JobError::Quota(format!(
                "jobs in flight: this run has {in_flight} jobs queued or running, the limit \
                 (--max-in-flight); wait for some to end"
            )));
        }
        Ok(())
    }

    /// Charges an image of `bytes` a job names to the run, or refuses it (charging
    /// nothing) past [`Limits::image_bytes`]. `shown` names the image in the message.
    pub(crate) fn charge_image(&self, bytes: u64, shown: &str) -> Result<(), JobError> {
        let limit = self.limits.image_bytes;
        self.image_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|next| *next <= limit)
            })
            .map(|_| ())
            .map_err(|used| {
                JobError::Quota(format!(
                    "image bytes: this run's jobs have named {used} bytes of images; image \
                     {shown} ({bytes} bytes) would pass the limit of {limit} bytes \
                     (--max-image-bytes)"
                ))
            })
    }

    /// Charges `bytes` the run is about to write through a WASI stream, or says (charging
    /// nothing) that they would pass [`Limits::write_bytes`].
    pub(crate) fn charge_write(&self, bytes: u64) -> Result<(), String> {
        let limit = self.limits.write_bytes;
        self.write_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|next| *next <= limit)
            })
            .map(|_| ())
            .map_err(|used| {
                format!(
                    "write bytes limit reached: the run (nested agents included) has written \
                     {used} bytes through its files, stdout and stderr; {bytes} more would pass \
                     the limit of {limit} bytes (--max-write-bytes); further writes fail"
                )
            })
    }

    /// Settles a write charged `charged` bytes before it ran: what it did not move (all
    /// of it, if it failed) is given back.
    pub(crate) fn settle_write<E>(&self, charged: u64, moved: &Result<u64, E>) {
        let unused = charged.saturating_sub(*moved.as_ref().unwrap_or(&0));
        let _ = self
            .write_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(unused))
            });
    }

    /// True the first time a write is refused (to log it once).
    pub(crate) fn first_write_refusal(&self) -> bool {
        !self.write_refused.swap(true, Ordering::SeqCst)
    }

    /// Bytes of one journal.
    pub(crate) fn journal_bytes(&self) -> u64 {
        self.limits.journal_bytes
    }

    /// Bytes one agent may keep in `kv`.
    pub(crate) fn kv_bytes(&self) -> u64 {
        self.limits.kv_bytes
    }

    /// The in-flight quota, for deciding whether a recount is worth it.
    pub(crate) fn max_in_flight(&self) -> u64 {
        self.limits.max_in_flight
    }

    pub(crate) fn count_job_submitted(&self) {
        self.jobs_submitted.fetch_add(1, Ordering::SeqCst);
    }

    /// The depth a call from a sandbox at `depth` runs at, if nesting allows it.
    /// `callee` is the called agent's name as the message shows it.
    pub(crate) fn check_call_depth(&self, depth: u32, callee: &str) -> Result<u32, JobError> {
        let max = self.limits.max_depth;
        let nested = depth.saturating_add(1);
        if nested > max {
            return Err(JobError::Quota(format!(
                "agents.call depth: calling {callee} would nest {nested} deep; the limit is \
                 {max} (--max-depth)"
            )));
        }
        Ok(nested)
    }

    pub(crate) fn count_agent_call(&self) {
        self.agent_calls.fetch_add(1, Ordering::Relaxed);
    }

    // ----- what was used --------------------------------------------------------------------

    /// Guest CPU time, at epoch-tick granularity.
    pub(crate) fn cpu_time(&self) -> Duration {
        let ticks = self.cpu_ticks.load(Ordering::Relaxed);
        self.tick
            .saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX))
    }
    pub(crate) fn jobs_submitted(&self) -> u64 {
        self.jobs_submitted.load(Ordering::Relaxed)
    }
    pub(crate) fn agent_calls(&self) -> u64 {
        self.agent_calls.load(Ordering::Relaxed)
    }
    pub(crate) fn peak_memory(&self) -> u64 {
        self.memory_peak.load(Ordering::Relaxed)
    }
}

/// Counts a wait as waiting for approval while [`ApprovalTimer::set`] says every job
/// it waits on is held; dropping it ends the count.
pub(crate) struct ApprovalTimer {
    budget: Arc<RunBudget>,
    on: bool,
}

impl ApprovalTimer {
    pub(crate) fn new(budget: Arc<RunBudget>) -> ApprovalTimer {
        ApprovalTimer { budget, on: false }
    }

    pub(crate) fn set(&mut self, all_held: bool) {
        if all_held != self.on {
            if all_held {
                self.budget.approval_wait_started();
            } else {
                self.budget.approval_wait_ended();
            }
            self.on = all_held;
        }
    }
}

impl Drop for ApprovalTimer {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// One store's limiter: charges its linear memory to the run's budget (shared by nested
/// agents) and caps its tables and instances; traps with a [`LimitHit`] naming the limit.
pub(crate) struct MemoryLimiter {
    budget: Arc<RunBudget>,
    /// Bytes this store holds, given back when it is dropped.
    held_bytes: u64,
    /// The growth last allowed, given back if the growth fails anyway.
    last_growth: u64,
}

impl MemoryLimiter {
    pub(crate) fn new(budget: Arc<RunBudget>) -> MemoryLimiter {
        MemoryLimiter {
            budget,
            held_bytes: 0,
            last_growth: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let delta = desired.saturating_sub(current) as u64;
        self.budget.grow_memory(delta)?;
        self.held_bytes += delta;
        self.last_growth = delta;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Growth we allowed failed anyway (the memory's own maximum): give it back.
        self.budget.release_memory(self.last_growth);
        self.held_bytes = self.held_bytes.saturating_sub(self.last_growth);
        self.last_growth = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Err(LimitHit::new(
                LimitKind::Resources,
                format!(
                    "a table would grow to {desired} elements; the limit is {MAX_TABLE_ELEMENTS}"
                ),
            )
            .into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }
    fn tables(&self) -> usize {
        MAX_TABLES
    }
    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.budget.release_memory(self.held_bytes);
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
}

pub(crate) fn show_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", (d.as_secs_f64() * 10.0).round() / 10.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_charged_to_the_run_and_given_back_by_each_store() {
        let limits = Limits {
            memory_bytes: 10 << 20,
            ..Limits::DEFAULT
        };
        let budget = Arc::new(RunBudget::new(limits, Duration::from_millis(10)));
        let mut first = MemoryLimiter::new(budget.clone());
        let mut nested = MemoryLimiter::new(budget.clone());
        assert!(first.memory_growing(0, 6 << 20, None).unwrap());
        let err = nested.memory_growing(0, 6 << 20, None).unwrap_err();
        let hit = err.downcast_ref::<LimitHit>().unwrap();
        assert_eq!(hit.kind, LimitKind::Memory);
        assert!(hit.message.contains("the limit is 10 MiB"), "{hit}");
        drop(first);
        assert!(nested.memory_growing(0, 6 << 20, None).unwrap());
        assert_eq!(budget.peak_memory(), 6 << 20);
    }

    #[test]
    fn cpu_ticks_run_out_and_quotas_name_their_flags() {
        let limits = Limits {
            cpu: Duration::from_millis(20),
            max_jobs: 1,
            max_depth: 1,
            ..Limits::DEFAULT
        };
        let budget = RunBudget::new(limits, Duration::from_millis(10));
        assert!(budget.charge_cpu_tick().is_ok() && budget.charge_cpu_tick().is_ok());
        assert_eq!(budget.charge_cpu_tick().unwrap_err().kind, LimitKind::Cpu);
        assert_eq!(budget.cpu_time(), Duration::from_millis(30));

        // Host work is charged as the ticks it covers, remainders carried.
        let host = RunBudget::new(
            Limits {
                cpu: Duration::from_millis(20),
                ..Limits::DEFAULT
            },
            Duration::from_millis(10),
        );
        host.charge_host_cpu(Duration::from_millis(6));
        assert_eq!(host.cpu_time(), Duration::ZERO);
        host.charge_host_cpu(Duration::from_millis(6));
        assert_eq!(host.cpu_time(), Duration::from_millis(10));
        host.charge_host_cpu(Duration::from_millis(8));
        assert!(host.check_cpu().is_ok());
        assert_eq!(host.cpu_time(), Duration::from_millis(20));
        host.charge_host_cpu(Duration::from_millis(10));
        assert_eq!(host.check_cpu().unwrap_err().kind, LimitKind::Cpu);

        assert!(budget.check_job_quota(|| 0).is_ok());
        budget.count_job_submitted();
        let over = budget.check_job_quota(|| unreachable!("asked only under the job quota"));
        assert!(matches!(over, Err(JobError::Quota(m)) if m.contains("--max-jobs")));
        assert_eq!(budget.check_call_depth(0, "\"a\"").unwrap(), 1);
        let deep = budget.check_call_depth(1, "\"a\"");
        assert!(matches!(deep, Err(JobError::Quota(m)) if m.contains("would nest 2 deep")));
    }
}
