//! What a new user meets in the first hour: conflicting or out-of-range input refused
//! with a message that says what to do, input that is not silently dropped, help that
//! lists everything, a log file without escape codes.

use std::fs;
use std::process::Command;

use nrvna_tests::{TestWs, bin, code, model, run, stderr, stdout};

fn nrvnad(args: &[&std::ffi::OsStr]) -> std::process::Output {
    run(Command::new(bin("nrvnad")).args(args))
}

/// A PNG signature and the start of its first chunk: enough for a magic-byte check.
const PNG_HEAD: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

#[test]
fn worker_counts_given_twice_are_refused_naming_both() {
    let ws = TestWs::new();
    let out = nrvnad(&[
        model().as_os_str(),
        ws.path.as_os_str(),
        "2".as_ref(),
        "-w".as_ref(),
        "3".as_ref(),
        // Should it start after all, it exits once the (empty) queue is drained.
        "--drain".as_ref(),
    ]);
    // A usage error, as the one exit-code table says.
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WORKERS 2") && stderr(&out).contains("-w 3"),
        "{}",
        stderr(&out)
    );
    assert!(!ws.path.exists(), "a refused start created the workspace");
}

#[test]
fn wrk_refuses_bad_input_before_creating_the_workspace() {
    let ws = TestWs::new();
    let out = ws.wrk_stdin(&[], b"");
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("empty prompt"), "{}", stderr(&out));
    assert!(!ws.path.exists(), "wrk left {} behind", ws.path.display());
}

/// Stands in for a daemon that exits slowly: holds the workspace lock as nrvnad does and,
/// on SIGTERM, lets it go and exits 2 s later. Named `nrvnad`, as `stop` checks.
const SLOW_EXIT_DAEMON: &str = r#"#!/bin/bash
exec 9<>"$1/.nrvnad.lock"
flock -n 9 || exit 1
echo $$ >&9
trap 'exec 9>&-; sleep 2; exit 0' TERM
touch "$1/.held"
while :; do sleep 0.05; done
"#;

#[test]
fn stop_says_stopped_only_once_the_process_has_exited() {
    use std::os::unix::fs::PermissionsExt;
    let ws = TestWs::new();
    fs::create_dir_all(&ws.path).unwrap();
    let script_dir = ws.scratch().join("bin");
    fs::create_dir(&script_dir).unwrap();
    let script = script_dir.join("nrvnad");
    fs::write(&script, SLOW_EXIT_DAEMON).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let mut daemon = Command::new(&script).arg(&ws.path).spawn().unwrap();
    assert!(nrvna_tests::wait_for(
        std::time::Duration::from_secs(10),
        || ws.path.join(".held").exists()
    ));
    let out = nrvnad(&["stop".as_ref(), ws.path.as_os_str()]);
    let exited = daemon.try_wait().unwrap().is_some();
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "stopped");
    assert!(
        exited,
        "nrvnad stop returned while the daemon was still running"
    );
}

#[test]
fn out_of_range_numbers_are_told_the_accepted_range() {
    let ws = TestWs::new();
    for (args, range) in [
        (["--max-tokens", "-1"], "1..=65536"),
        (["--top-k", "-1"], "0..=100000"),
        (["--temp", "-1"], "between 0 and 5"),
    ] {
        let out = ws.wrk(&["hi", args[0], args[1]]);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(range), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("tip:"), "{args:?}: {}", stderr(&out));
        assert!(!ws.path.exists());
    }
    for (args, range) in [
        (vec!["-1"], "1..=64"),
        (vec!["-w", "-1"], "1..=64"),
        (vec!["--grace", "-1"], "0..=86400"),
    ] {
        let mut cmd = Command::new(bin("nrvnad"));
        cmd.arg(model()).arg(&ws.path).args(&args);
        let out = run(&mut cmd);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(range), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("tip:"), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn a_model_not_found_lists_the_models_there_and_a_path_is_only_a_path() {
    let ws = TestWs::new();
    let models = ws.scratch().join("models");
    fs::create_dir(&models).unwrap();
    for name in ["b-chat.gguf", "a-chat.gguf", "notes.txt", "x-mmproj.gguf"] {
        fs::write(models.join(name), "").unwrap();
    }
    let out = run(Command::new(bin("nrvnad"))
        .arg("llama")
        .arg(&ws.path)
        .env("NRVNA_MODELS_DIR", &models));
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(err.contains("a-chat.gguf, b-chat.gguf"), "{err}");
    assert!(
        !err.contains("notes.txt") && !err.contains("mmproj"),
        "{err}"
    );
    let missing = ws.scratch().join("missing.gguf");
    for arg in [missing.display().to_string(), "./missing.gguf".to_owned()] {
        let out = run(Command::new(bin("nrvnad"))
            .arg(&arg)
            .arg(&ws.path)
            .env("NRVNA_MODELS_DIR", &models));
        assert_eq!(code(&out), 1);
        let err = stderr(&out);
        assert!(err.contains(&format!("{arg} does not exist")), "{err}");
        assert!(!err.contains("NRVNA_MODELS_DIR"), "{err}");
    }
}

#[test]
fn prompt_words_and_piped_stdin_make_one_prompt() {
    let ws = TestWs::new();
    let prompt_of = |out: &std::process::Output| {
        assert_eq!(code(out), 0, "{}", stderr(out));
        ws.job_file("input/ready", stdout(out).trim(), "prompt.txt")
    };
    let piped = ws.wrk_stdin(&["Summarise", "this", "--tag", "b1"], b"notes\nmore\n");
    assert_eq!(prompt_of(&piped), "Summarise this\n\nnotes\nmore");
    // `< notes.txt`, as the README has it.
    let notes = ws.scratch().join("notes.txt");
    fs::write(&notes, "from a file\n").unwrap();
    let redirected = Command::new(bin("wrk"))
        .arg(&ws.path)
        .arg("Summarise this")
        .stdin(fs::File::open(&notes).unwrap())
        .output()
        .unwrap();
    assert_eq!(prompt_of(&redirected), "Summarise this\n\nfrom a file");
    // An empty stdin, a closed pipe or /dev/null, leaves the words alone.
    assert_eq!(
        prompt_of(&ws.wrk_stdin(&["just", "words"], b"")),
        "just words"
    );
    assert_eq!(prompt_of(&ws.wrk(&["just", "words"])), "just words");
}

#[test]
fn nrvnad_help_lists_its_commands_and_every_variable() {
    let ws = TestWs::new();
    let out = run(Command::new(bin("nrvnad"))
        .arg("help")
        .current_dir(ws.scratch()));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let help = stdout(&out);
    for needle in [
        "nrvnad status WORKSPACE [--json]",
        "nrvnad stop WORKSPACE [--timeout DURATION]",
        "NRVNA_MODELS_DIR",
        "XDG_CACHE_HOME",
        "NO_COLOR",
    ] {
        assert!(
            help.contains(needle),
            "nrvnad help lacks {needle:?}:\n{help}"
        );
    }
    let out = nrvnad(&["stop".as_ref(), "--help".as_ref()]);
    assert!(
        stdout(&out).contains("Workspace directory"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_daemon_log_written_to_a_file_has_no_colour() {
    let ws = TestWs::new();
    // A job a crashed daemon left running: start-up logs its recovery.
    crate::startup::leave_running(&ws, 1);
    let daemon = ws.daemon(1);
    let log = daemon.log_text();
    assert!(log.contains("recovered job"), "{log}");
    assert!(!log.contains('\x1b'), "escape codes in a log file: {log:?}");
}

#[test]
fn images_are_checked_and_vision_is_refused_until_it_runs() {
    let ws = TestWs::new();
    let fake = ws.scratch().join("fake.png");
    fs::write(&fake, "not an image").unwrap();
    let jpeg_named_png = ws.scratch().join("photo.png");
    fs::write(&jpeg_named_png, b"\xff\xd8\xff\xe0\0\x10JFIF").unwrap();
    let real = ws.scratch().join("real.png");
    fs::write(&real, PNG_HEAD).unwrap();
    for (image, expect) in [
        (&fake, "not a"),
        (&jpeg_named_png, "content is a jpeg image"),
        (&real, "-i/--image: vision is not supported yet"),
    ] {
        let out = ws.wrk(&["Describe it", "-i", &image.display().to_string()]);
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{}", stderr(&out));
        assert!(!ws.path.exists());
    }
    let out = nrvnad(&[
        model().as_os_str(),
        ws.path.as_os_str(),
        "--mmproj".as_ref(),
        real.as_os_str(),
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--mmproj: vision is not supported yet"),
        "{}",
        stderr(&out)
    );
    assert!(!ws.path.exists());
}

#[test]
fn a_json_job_cut_off_by_the_token_limit_says_so() {
    let ws = TestWs::new();
    let schema = ws.scratch().join("story.json");
    fs::write(
        &schema,
        r#"{"type":"object","properties":{"story":{"type":"string"}},"required":["story"]}"#,
    )
    .unwrap();
    let _daemon = ws.daemon(1);
    let id = ws.submit(&[
        "Write a long story about the sea.",
        "--json-schema",
        &schema.display().to_string(),
        "--max-tokens",
        "6",
        "--temp",
        "0",
    ]);
    let (exit, _, err) = ws.follow(&id);
    assert_eq!(exit, 1, "{err}");
    assert!(
        err.contains("stopped at the token limit (6) before the JSON closed; raise --max-tokens"),
        "{err}"
    );
}

#[test]
fn an_os_error_is_said_once() {
    let ws = TestWs::new();
    let missing = ws.scratch().join("missing.wasm");
    let out = run(Command::new(bin("nrvna"))
        .arg("exec")
        .arg(&missing)
        .arg("--model")
        .arg(model()));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let said = stderr(&out);
    assert_eq!(said.matches("os error 2").count(), 1, "{said}");
    assert!(said.contains("missing.wasm"), "{said}");
    // A workspace that cannot be created: the path and the reason, each once.
    let out = run(Command::new(bin("wrk"))
        .arg("/proc/nrvna-no-such/ws")
        .arg("hi"));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(
        stderr(&out).matches("os error").count(),
        1,
        "{}",
        stderr(&out)
    );
}
