//! How llama.cpp's CPU threads wait for each other.
//!
//! ggml runs every operation of a decode on all `NRVNA_THREADS` threads and meets them at
//! an OpenMP barrier after each (hundreds per step). libgomp, by default, spins ~3 ms at
//! a barrier before it sleeps. On a quiet machine that is fastest; with anything else
//! running — a build in another terminal, even at `nice 19`, since the kernel's autogroup
//! shares the CPU between sessions first — a thread that is preempted leaves the others
//! spinning away the daemon's share of the CPU, and throughput collapses (16 × 32 tokens
//! on 4 workers: 72 s instead of 6.3 s). Waiting passively (sleeping at once) keeps the
//! daemon's throughput under load; `nrvna bench --only load` measures both.
//!
//! libgomp reads its policy once, when it is loaded — before `main` — so a program that
//! runs the engine re-executes itself with `OMP_WAIT_POLICY=passive` unless the user has
//! chosen a policy (`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` set, e.g.
//! `OMP_WAIT_POLICY=active` on a machine reserved for nrvna).

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;

/// The policy used when the user has not chosen one.
pub const DEFAULT_POLICY: &str = "passive";

/// Whether the environment already names a policy for libgomp.
fn chosen(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT"]
        .iter()
        .any(|name| var(name).is_some_and(|v| !v.is_empty()))
}

/// Re-executes this program (same arguments, same pid) with
/// `OMP_WAIT_POLICY=`[`DEFAULT_POLICY`] unless a policy is already set. Returns when it
/// did not re-execute: a policy was set, or the exec failed (then libgomp's default
/// stays, with a warning).
pub fn reexec_with_passive_wait() {
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
        .env("OMP_WAIT_POLICY", OsStr::new(DEFAULT_POLICY));
    let e = cmd.exec();
    tracing::warn!(
        "cannot re-execute {} with OMP_WAIT_POLICY={DEFAULT_POLICY}: {e}; llama.cpp's \
         threads keep spinning at barriers, which is slow when other programs use the CPU",
        exe.display()
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
