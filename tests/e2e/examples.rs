//! The example scripts (`examples/shell/*.sh` and `examples/components/*.sh`) run
//! against the default model, checking the shape of their output (not its wording).
//!
//! Each test serves one workspace with the fixture's daemon (short outputs); the scripts
//! find it ready and use it. The routing scripts start daemons of their own on
//! `WS-code` and `WS-fast`, as a user's would, and stop them on exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nrvna_tests::{TEST_ENV, TestWs, bin, code, guest, model, stderr, stdout};

use crate::components::REFINE;
use crate::patterns::run_limited;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .join("examples")
}

/// Runs `examples/KIND/NAME.sh WS ARGS...` with our binaries first on PATH, the built
/// components, the test model, and the fixture's short-output settings.
fn script(kind: &str, name: &str, ws: &Path, args: &[&str]) -> Output {
    let path = examples().join(kind).join(format!("{name}.sh"));
    assert!(path.is_file(), "{} is missing", path.display());
    let bins = bin("nrvna").parent().expect("bin dir").to_owned();
    let components = guest(REFINE).parent().expect("guest dir").to_owned();
    let search = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bins];
    paths.extend(std::env::split_paths(&search));
    let mut cmd = Command::new("bash");
    cmd.arg(&path)
        .arg(ws)
        .args(args)
        .env("PATH", std::env::join_paths(paths).expect("PATH"))
        .env("NRVNA_COMPONENTS", components)
        .env("NRVNA_MODEL", model())
        .env("NRVNA_WORKERS", "1")
        .env_remove("NRVNA_WS");
    for (k, v) in TEST_ENV {
        cmd.env(k, v);
    }
    let out = run_limited(cmd);
    assert_eq!(
        code(&out),
        0,
        "{kind}/{name}.sh failed\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Runs both versions of an example on one workspace; returns (shell, component) stdout.
fn both(name: &str, ws: &TestWs, args: &[&str]) -> (String, String) {
    let shell = script("shell", name, &ws.path, args);
    let component = script("components", name, &ws.path, args);
    (stdout(&shell), stdout(&component))
}

fn headers(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("=== ")).collect()
}

fn not_blank(what: &str, text: &str) {
    assert!(!text.trim().is_empty(), "{what} printed nothing");
}

#[test]
fn every_seed_pattern_has_a_shell_and_a_component_example() {
    let readme = std::fs::read_to_string(examples().join("README.md")).expect("README");
    for name in [
        "batch",
        "fan-out",
        "refine",
        "agent-loop",
        "watch",
        "memory",
        "routing",
        "compare",
        "retry",
        "decompose",
    ] {
        for kind in ["shell", "components"] {
            let rel = format!("{kind}/{name}.sh");
            let text = std::fs::read_to_string(examples().join(&rel))
                .unwrap_or_else(|e| panic!("{rel}: {e}"));
            assert!(text.starts_with("#!/usr/bin/env bash\n"), "{rel}");
            assert!(text.contains("set -euo pipefail"), "{rel}");
            assert!(
                readme.contains(&format!("]({rel})")),
                "README does not link {rel}"
            );
        }
    }
    // The seed's sections, each named in the table.
    for section in [
        "Batch Processing",
        "Fan-Out / Fan-In",
        "Self-Refinement Loop",
        "Agent Loop",
        "Event-Driven",
        "Memory / Context Accumulation",
        "Multi-Model Routing",
    ] {
        assert!(
            readme.contains(&format!("| {section} |")),
            "README lacks {section}"
        );
    }
}

#[test]
fn batch_examples_print_one_result_per_input_in_order() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let want = [
        "=== 1: What is a queue? ===",
        "=== 2: What is a stack? ===",
        "=== 3: What is a hash map? ===",
    ];
    let (shell, component) = both("batch", &ws, &[]);
    assert_eq!(headers(&shell), want, "{shell}");
    assert_eq!(headers(&component), want, "{component}");

    // From a file: blank lines skipped, the component reads it through a --dir grant.
    let file = ws.scratch().join("questions.txt");
    std::fs::write(&file, "Name a fruit.\n\nName a tree.\n").expect("write");
    let file = file.to_str().expect("utf-8");
    let (shell, component) = both("batch", &ws, &[file]);
    let want = ["=== 1: Name a fruit. ===", "=== 2: Name a tree. ==="];
    assert_eq!(headers(&shell), want, "{shell}");
    assert_eq!(headers(&component), want, "{component}");
}

#[test]
fn fan_out_examples_synthesise_three_findings() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let (shell, component) = both("fan-out", &ws, &[]);
    not_blank("shell/fan-out.sh", &shell);
    not_blank("components/fan-out.sh", &component);
    // Three research jobs and a synthesis each time.
    let prompts: Vec<String> = ws
        .entries("output")
        .iter()
        .map(|id| ws.job_file("output", id, "prompt.txt"))
        .collect();
    let synth = prompts
        .iter()
        .filter(|p| p.starts_with("Synthesize these findings into a recommendation:"))
        .count();
    let research = prompts
        .iter()
        .filter(|p| p.starts_with("Research: "))
        .count();
    assert_eq!((research, synth), (6, 2), "{prompts:?}");
}

#[test]
fn refine_examples_print_the_final_draft() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let (shell, component) = both("refine", &ws, &["Write a haiku about tea"]);
    not_blank("shell/refine.sh", &shell);
    not_blank("components/refine.sh", &component);
    // Draft, critique, improve: three jobs each.
    assert_eq!(ws.entries("output").len(), 6);
}

#[test]
fn agent_loop_examples_print_numbered_iterations() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let (shell, component) = both("agent-loop", &ws, &["Write a short poem", "2"]);
    for (what, text) in [("shell", &shell), ("component", &component)] {
        let h = headers(text);
        assert!(
            h == ["=== Iteration 1 ==="] || h == ["=== Iteration 1 ===", "=== Iteration 2 ==="],
            "{what}: {text}"
        );
    }
}

#[test]
fn watch_examples_print_every_result() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let (shell, component) = both("watch", &ws, &["Name a fish.", "Name a bird."]);
    // The shell watcher prints by job id, in order of completion.
    let h = headers(&shell);
    assert_eq!(h.len(), 2, "{shell}");
    for line in h {
        let id = line.trim_start_matches("=== ").trim_end_matches(" ===");
        assert!(ws.entries("output").iter().any(|e| e == id), "{line}");
    }
    assert_eq!(
        headers(&component),
        ["=== 1: Name a fish. ===", "=== 2: Name a bird. ==="],
        "{component}"
    );
}

#[test]
fn memory_examples_answer_from_accumulated_context() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let (shell, component) = both("memory", &ws, &["Which is best for a small team?"]);
    not_blank("shell/memory.sh", &shell);
    not_blank("components/memory.sh", &component);
    let finals: Vec<String> = ws
        .entries("output")
        .iter()
        .map(|id| ws.job_file("output", id, "prompt.txt"))
        .filter(|p| p.starts_with("Given this context:"))
        .collect();
    assert_eq!(finals.len(), 2);
    assert!(
        finals
            .iter()
            .all(|p| p.ends_with("Answer: Which is best for a small team?"))
    );
}

#[test]
fn routing_examples_send_code_to_the_code_workspace() {
    let ws = TestWs::new();
    let (shell, component) = both("routing", &ws, &["main.py"]);
    not_blank("shell/routing.sh", &shell);
    not_blank("components/routing.sh", &component);
    let code_ws = TestWs::at(ws.path.with_file_name("ws-code"));
    let done = code_ws.entries("output");
    assert_eq!(
        done.len(),
        2,
        "jobs in {}: {done:?}",
        code_ws.path.display()
    );
    for id in &done {
        assert_eq!(
            code_ws.job_file("output", id, "prompt.txt"),
            "Process this: main.py"
        );
    }
    // Anything else goes to the fast workspace.
    let out = script("components", "routing", &ws.path, &["notes.txt"]);
    not_blank("components/routing.sh notes.txt", &stdout(&out));
    let fast_ws = TestWs::at(ws.path.with_file_name("ws-fast"));
    assert_eq!(fast_ws.entries("output").len(), 1);
}

#[test]
fn compare_examples_print_the_chosen_answer() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let shell = script("shell", "compare", &ws.path, &["Name a planet."]);
    not_blank("shell/compare.sh", &stdout(&shell));
    assert!(
        stderr(&shell).contains("best: answer "),
        "{}",
        stderr(&shell)
    );
    let component = script("components", "compare", &ws.path, &["Name a planet."]);
    not_blank("components/compare.sh", &stdout(&component));
    // Three samples and a judge each.
    assert_eq!(ws.entries("output").len() + ws.entries("failed").len(), 8);
}

#[test]
fn retry_examples_print_json_with_a_name() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let (shell, component) = both("retry", &ws, &[]);
    for (what, text) in [("shell", &shell), ("component", &component)] {
        let v: serde_json::Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {text}"));
        assert!(v["name"].is_string(), "{what}: {v}");
    }
}

#[test]
fn decompose_examples_print_a_combined_answer() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let (shell, component) = both("decompose", &ws, &["Plan a picnic", "1"]);
    not_blank("shell/decompose.sh", &shell);
    not_blank("components/decompose.sh", &component);
}
