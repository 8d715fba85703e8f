//! Serving one workspace from several daemons (`--shared`) and from a network file
//! system (`--watch poll`): the flags, and the workspace-wide duties each shared daemon
//! takes its turn at (docs/scale-out.md).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nrvna_queue::Workspace;
use nrvna_queue::nodes::{Claimer, LeaseWatch, NodeId};
use nrvna_sandbox::parse_duration;

use super::STALE_STAGING;

/// How a daemon learns of new jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WatchMode {
    /// Notifications, unless the workspace is on a network file system (statfs): then
    /// listing.
    Auto,
    /// File-system notifications (inotify), with a sweep every 2 s as a safety net.
    Notify,
    /// Listing input/ready/ every --poll-interval, with jitter: for NFS, CephFS, SMB,
    /// where notifications miss other machines' changes.
    Poll,
}

/// `--shared` and its companions, `--watch`, `--poll-interval`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Serve the workspace together with other `nrvnad --shared` daemons, on this
    /// machine or others sharing it (NFS, CephFS): each claims jobs under its node id
    /// and renews a lease; the jobs of a daemon whose lease lapses are requeued by the
    /// others. Without it a daemon owns the workspace alone (docs/scale-out.md)
    #[arg(long)]
    pub shared: bool,
    /// This daemon's name among those sharing the workspace (1-64 of A-Z a-z 0-9 _ - .)
    /// [default: the host name]
    #[arg(long, value_name = "ID", requires = "shared")]
    pub node_id: Option<String>,
    /// How long a shared daemon's heartbeat may stand still before the others take its
    /// running jobs over; it beats every quarter of this. Seconds, or a number with ms,
    /// s, m or h
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, requires = "shared")]
    pub lease: Duration,
    /// How the daemon learns of new jobs: auto (notifications, or listing on a network
    /// file system), notify, or poll
    #[arg(long, value_enum, default_value_t = WatchMode::Auto, value_name = "HOW")]
    pub watch: WatchMode,
    /// With --watch poll (or auto on a network file system): how often input/ready/ is
    /// listed, give or take a quarter, so daemons on many machines spread their listings
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
}

/// The settings `ScaleArgs` make, checked.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    /// `Some`: share the workspace as this node, with this lease.
    pub shared: Option<(NodeId, Duration)>,
    pub watch: WatchMode,
    pub poll_interval: Duration,
}

impl Default for ScaleConfig {
    fn default() -> ScaleConfig {
        ScaleConfig {
            shared: None,
            watch: WatchMode::Auto,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Shortest lease: heartbeats every quarter of it must keep up on a loaded machine.
const MIN_LEASE: Duration = Duration::from_millis(500);
const MIN_POLL: Duration = Duration::from_millis(50);

impl ScaleArgs {
    pub fn to_config(&self) -> Result<ScaleConfig> {
        if self.poll_interval < MIN_POLL || self.poll_interval > Duration::from_secs(3600) {
            bail!(
                "--poll-interval {:?}: expected 50ms to 1h",
                self.poll_interval
            );
        }
        let shared = if self.shared {
            if self.lease < MIN_LEASE || self.lease > Duration::from_secs(86_400) {
                bail!("--lease {:?}: expected 500ms to 24h", self.lease);
            }
            let node = match &self.node_id {
                Some(id) => NodeId::parse(id)?,
                None => NodeId::of_host()?,
            };
            Some((node, self.lease))
        } else {
            None
        };
        Ok(ScaleConfig {
            shared,
            watch: self.watch,
            poll_interval: self.poll_interval,
        })
    }
}

/// `Some(interval)` when the daemon lists `input/ready/` instead of waiting for
/// notifications, and why (for its start-up line).
pub fn polling(config: &ScaleConfig, root: &Path) -> Option<(Duration, String)> {
    match config.watch {
        WatchMode::Notify => None,
        WatchMode::Poll => Some((config.poll_interval, "--watch poll".into())),
        WatchMode::Auto => nrvna_queue::watch::remote_file_system(root)
            .map(|fs| (config.poll_interval, format!("the workspace is on {fs}"))),
    }
}

/// `interval`, give or take a quarter, so daemons started together do not list the
/// directory in step.
pub fn jittered(interval: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let unit = (h.finish() % 1001) as f64 / 1000.0; // 0..=1
    interval.mul_f64(0.75 + unit * 0.5)
}

/// The workspace-wide duties of a shared daemon, done by each at its own pace; every
/// step is a rename or an exclusive create that one daemon wins and the others skip.
pub struct SharedDuties {
    claimer: Claimer,
    watch: LeaseWatch,
    staging_seen: HashMap<std::ffi::OsString, Instant>,
    every: Duration,
    last: Option<Instant>,
    max_attempts: u32,
}

impl SharedDuties {
    pub fn new(claimer: Claimer, lease: Duration, max_attempts: u32) -> SharedDuties {
        SharedDuties {
            claimer,
            watch: LeaseWatch::new(lease),
            staging_seen: HashMap::new(),
            // Often enough that a lapsed lease is noticed within a fifth of it.
            every: (lease / 5).max(Duration::from_millis(50)),
            last: None,
            max_attempts,
        }
    }

    /// Does the duties when their time has come.
    pub fn tick(&mut self, ws: &Workspace) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        match ws.recover_lapsed(&self.claimer, &mut self.watch, self.max_attempts) {
            Ok(report) => {
                for id in &report.requeued {
                    super::job_line(id, "requeued", None, "its node's lease lapsed");
                }
                for id in &report.failed {
                    super::job_line(id, "failed", None, "attempt ceiling reached");
                }
            }
            Err(e) => tracing::warn!("cannot recover jobs of lapsed nodes: {e}"),
        }
        match ws.clean_stale_staging_seen(&mut self.staging_seen, STALE_STAGING) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} abandoned submission(s) from input/writing"),
            Err(e) => tracing::warn!("cannot clean input/writing: {e}"),
        }
    }
}
