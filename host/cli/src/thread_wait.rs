//! How llama.cpp's CPU threads wait for each other.
//!
//! ggml runs every operation of a decode on all `NRVNA_THREADS` threads and meets them at
//! an OpenMP barrier after each (hundreds per step). libgomp, by default, spins ~3 ms at
//! a barrier before it sleeps. On a quiet machine that is fastest; with anything else
//! running — a build in another terminal, even at `nice 19`, since the kernel's autogroup
//! shares the CPU between sessions first — a thread that is preempted leaves the others
//! spinning away the daemon's share of the CPU, and throughput collapses (16 × 32 tokens
//! on 4 workers: 72 s instead of 6.3 s). The engine lowers its thread count under such
//! load (`nrvna_engine`'s `cpu_share`), which takes about a second; a short spin (30 000
//! rounds, about a tenth of libgomp's default) keeps a quiet machine's speed (the barrier
//! gaps there are microseconds) while wasting little in that second. Sleeping at once
//! (`OMP_WAIT_POLICY=passive`) cost 1.24–1.95× the time on a quiet machine;
//! `nrvna bench --only load` measures the three.
//!
//! libgomp reads its policy once, when it is loaded — before `main` — so a program that
//! runs the engine re-executes itself with [`DEFAULT_WAIT`] unless the user has chosen a
//! policy (`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` set, e.g. `OMP_WAIT_POLICY=active` on a
//! machine reserved for nrvna).

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;

/// The wait used when the user has not chosen one: spin this many rounds, then sleep.
pub const DEFAULT_WAIT: (&str, &str) = ("GOMP_SPINCOUNT", "30000");

/// Whether the environment already names a policy for libgomp.
fn chosen(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT"]
        .iter()
        .any(|name| var(name).is_some_and(|v| !v.is_empty()))
}

/// Re-executes this program (same arguments, same pid) with [`DEFAULT_WAIT`] unless a
/// policy is already set. Returns when it did not re-execute: a policy was set, or the
/// exec failed (then libgomp's default stays, with a warning).
pub fn reexec_with_short_spin() {
    if chosen(|name| std::env::var_os(name)) {
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::warn!("cannot find this program to set OMP_WAIT_POLICY: {e}");
            return;
        }
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(&exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    cmd.args(args)
        .env(DEFAULT_WAIT.0, OsStr::new(DEFAULT_WAIT.1));
    let e = cmd.exec();
    tracing::warn!(
        "cannot re-execute {} with {}={}: {e}; llama.cpp's \
         threads spin 3 ms at barriers, which is slow when other programs use the CPU",
        exe.display(),
        DEFAULT_WAIT.0,
        DEFAULT_WAIT.1
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_the_user_set_is_kept() {
        let env = |set: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                set.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert!(!chosen(env(&[])));
        assert!(!chosen(env(&[("OMP_WAIT_POLICY", "")])));
        assert!(chosen(env(&[("OMP_WAIT_POLICY", "active")])));
        assert!(chosen(env(&[("GOMP_SPINCOUNT", "10000")])));
    }
}
