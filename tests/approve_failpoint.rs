//! `nrvna` with a failpoint armed, for the crash tests of approvals
//! (tests/e2e/approval.rs): the real `nrvna` command, except that when it reaches the
//! failpoint named by `NRVNA_FAILPOINT` it writes the file `NRVNA_FAILPOINT_MARKER` and
//! stops there, for the test to `kill -9` it. Built only by `cargo test` (an example of
//! the test crate, with the queue's `failpoints` feature): no release binary has any of
//! this.

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    if let (Ok(name), Ok(marker)) = (
        std::env::var("NRVNA_FAILPOINT"),
        std::env::var("NRVNA_FAILPOINT_MARKER"),
    ) {
        let armed = fail::cfg_callback(name.clone(), move || {
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
