//! `nrvnad` and the daemon `nrvna exec --model` runs in its own process start through one
//! path with one configuration: the same `NRVNA_*` variables, parsed as strictly.

use std::fs;
use std::process::{Command, Output};

use nrvna_tests::{TestWs, bin, code, model, run, stderr};

use crate::components::FX_ECHO;

/// A job a crashed daemon left in `processing/` after `attempts` starts.
pub fn leave_running(ws: &TestWs, attempts: u32) -> String {
    let id = ws.submit(&["left behind by a crash"]);
    let from = ws.path.join("input/ready").join(&id);
    let to = ws.path.join("processing").join(&id);
    fs::rename(&from, &to).unwrap();
    let mut meta = ws.meta("processing", &id);
    meta["attempts"] = attempts.into();
    fs::write(to.join("meta.json"), meta.to_string()).unwrap();
    id
}

fn exec_with_model(ws: &TestWs, env: &[(&str, &str)]) -> Output {
    nrvna_tests::exec_with_model(ws, FX_ECHO, &["Name a fruit.", "4"], env)
}

#[test]
fn exec_with_a_model_honours_nrvna_max_attempts() {
    let ws = TestWs::new();
    let id = leave_running(&ws, 1);
    let out = exec_with_model(&ws, &[("NRVNA_MAX_ATTEMPTS", "1")]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The in-process daemon's recovery used the ceiling of 1, not a built-in 3.
    assert!(ws.entries("failed").contains(&id), "{}", stderr(&out));
    let error = ws.job_file("failed", &id, "error.txt");
    assert!(
        error.contains("ceiling of 1 (NRVNA_MAX_ATTEMPTS)"),
        "{error}"
    );
}

#[test]
fn both_programs_refuse_the_same_bad_variables() {
    for (var, value, range) in [
        ("NRVNA_FSYNC", "yes", "0 to 1"),
        ("NRVNA_LLAMA_LOG", "2", "0 to 1"),
        ("NRVNA_PREFIX_CACHE", "on", "0 to 1"),
        ("NRVNA_MAX_ATTEMPTS", "0", "1 to 100"),
    ] {
        let ws = TestWs::new();
        let out = exec_with_model(&ws, &[(var, value)]);
        assert_eq!(code(&out), 1, "{var}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(var) && stderr(&out).contains(range),
            "{var}: {}",
            stderr(&out)
        );
        let out = run(Command::new(bin("nrvnad"))
            .arg(model())
            .arg(&ws.path)
            .env(var, value));
        assert_eq!(code(&out), 1, "{var}: {}", stderr(&out));
        assert!(stderr(&out).contains(var), "{var}: {}", stderr(&out));
        assert!(!stderr(&out).contains("RUNNING"), "{}", stderr(&out));
    }
}

#[test]
fn the_daemon_help_lists_every_variable_it_reads() {
    let out = run(Command::new(bin("nrvnad")).arg("--help"));
    let help = nrvna_tests::stdout(&out);
    for var in [
        "NRVNA_FSYNC",
        "NRVNA_LLAMA_LOG",
        "NRVNA_MAX_ATTEMPTS",
        "NRVNA_EMBED_MODEL",
        "NRVNA_THREADS",
        "NRVNA_PREFIX_CACHE",
    ] {
        assert!(help.contains(var), "{var} missing from nrvnad --help");
    }
    // Grant limits show the sandbox's own defaults.
    assert!(
        help.contains("Linear memory of the run [default: 256M]"),
        "{help}"
    );
}
