//! `nrvnad` with a failpoint armed, for the HTTP tests of a model still loading and of
//! a batch half queued when its daemon dies (tests/e2e/http/recovery.rs): the real
//! `nrvnad`, except that when the thread reaches the failpoint named by `NRVNA_FAILPOINT`
//! it writes the file `NRVNA_FAILPOINT_MARKER` and stops there (the rest of the process
//! runs on), for the test to look, then `kill -9` it. Built only by `cargo test` (an example of
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
            eprintln!("nrvnad-failpoint: cannot arm failpoint {name}: {e}");
            return ExitCode::from(2);
        }
    }
    nrvna::cmd::nrvnad::main()
}
