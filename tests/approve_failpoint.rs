//! `nrvna` with a failpoint armed, for the crash tests of approvals
//! (tests/e2e/approval.rs) and of agent journals (tests/e2e/journal.rs): the real `nrvna`
//! command, except that when it reaches the failpoint named by `NRVNA_FAILPOINT` (after
//! passing it `NRVNA_FAILPOINT_SKIP` times, 0 by default) it writes the file
//! `NRVNA_FAILPOINT_MARKER` and stops there, for the test to `kill -9` it. Built only by
//! `cargo test` (an example of the test crate, with the queue's and the sandbox's
//! `failpoints` features): no release binary has any of this.

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    if let (Ok(name), Ok(marker)) = (
        std::env::var("NRVNA_FAILPOINT"),
        std::env::var("NRVNA_FAILPOINT_MARKER"),
    ) {
        let skip: u64 = std::env::var("NRVNA_FAILPOINT_SKIP")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let passed = std::sync::atomic::AtomicU64::new(0);
        let armed = fail::cfg_callback(name.clone(), move || {
            if passed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < skip {
                return;
            }
            let _ = std::fs::write(&marker, b"stopped\n");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        });
        if let Err(e) = armed {
            eprintln!("approve-failpoint: cannot arm failpoint {name}: {e}");
            return ExitCode::from(2);
        }
    }
    nrvna::cmd::nrvna::main()
}
