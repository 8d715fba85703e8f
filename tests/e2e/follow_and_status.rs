//! What a user sees while following jobs: closed pipes, waits on a workspace nobody
//! serves, empty sets, the live status line on a terminal, the status JSON, `nrvna ps`.
//! Terminals are real ptys (`script` from util-linux).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nrvna_tests::{TestWs, bin, code, run, stderr, stdout};

fn nrvna(args: &[&str]) -> Output {
    run(Command::new(bin("nrvna")).args(args))
}

/// Shell-quotes one word.
fn quoted(word: &OsStr) -> String {
    format!("'{}'", word.to_string_lossy().replace('\'', r"'\''"))
}

/// `script` running the command `words` on a fresh pty, so its stdout and stderr are a
/// terminal. Its stdout is what the terminal showed: both streams, `\n` as `\r\n`; its
/// exit status is the command's.
fn on_terminal(words: &[&OsStr]) -> Command {
    let line: Vec<String> = words.iter().map(|w| quoted(w)).collect();
    let mut cmd = Command::new("script");
    cmd.args(["-qfec", &line.join(" "), "/dev/null"]);
    cmd
}

/// A done job made by hand (no daemon): its result has no final newline.
fn done_job(ws: &TestWs, result: &str) -> String {
    let id = ws.submit(&["made by hand"]);
    std::fs::rename(
        ws.path.join("input/ready").join(&id),
        ws.path.join("output").join(&id),
    )
    .unwrap();
    std::fs::write(ws.path.join("output").join(&id).join("result.txt"), result).unwrap();
    id
}

#[test]
fn a_closed_stdout_ends_every_program_quietly() {
    let ws = TestWs::new();
    ws.submit(&["hello"]);
    let ws_arg = ws.path.to_str().unwrap();
    let cases: [(&str, Vec<&str>); 5] = [
        ("flw", vec![ws_arg]),
        ("nrvna", vec!["status", ws_arg]),
        ("nrvna", vec!["ps", ws_arg]),
        ("nrvnad", vec!["status", ws_arg]),
        ("wrk", vec![ws_arg, "hi"]),
    ];
    for (program, args) in cases {
        // The reader is gone before the program writes, as after `| head -1`.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(bin(program))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(13),
            "{program} {args:?} should die of SIGPIPE like a C program: {:?} {}",
            out.status,
            stderr(&out)
        );
        assert_eq!(stderr(&out), "", "{program} {args:?}");
    }
    // In a shell pipeline the reader takes one line and leaves.
    let line = format!("{} status {ws_arg} | head -1", bin("nrvna").display());
    let out = run(Command::new("bash").args(["-c", &line]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn wrk_says_when_it_creates_a_workspace() {
    let ws = TestWs::new();
    let out = ws.wrk(&["hello"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out);
    assert_eq!(id.lines().count(), 1, "stdout is only the id: {id:?}");
    assert!(
        stderr(&out).contains(&format!("created workspace {}", ws.path.display())),
        "{}",
        stderr(&out)
    );
    let again = ws.wrk(&["hello again"]);
    assert_eq!(code(&again), 0);
    assert_eq!(stderr(&again), "", "an existing workspace is not news");
}

/// Reads `child`'s first stderr line, or `None` after `timeout`.
fn first_stderr_line(child: &mut std::process::Child, timeout: Duration) -> Option<String> {
    let pipe = child.stderr.take()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(pipe).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(timeout).ok()
}

#[test]
fn a_wait_on_a_workspace_no_daemon_serves_warns_at_once() {
    let ws = TestWs::new();
    let id = ws.submit(&["hello", "--tag", "t"]);
    // No timeout: the warning must come while flw goes on waiting.
    let mut child = Command::new(bin("flw"))
        .arg(&ws.path)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_stderr_line(&mut child, Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("flw said nothing while waiting on a workspace with no daemon");
    assert!(line.contains("no daemon is running"), "{line}");
    for args in [
        vec![id.as_str(), "--timeout", "0.3"],
        vec!["-W", "--timeout", "0.3"],
        vec!["--tag", "t", "-W", "--timeout", "0.3"],
    ] {
        let out = ws.flw(&args);
        assert_eq!(code(&out), 3, "{args:?}");
        assert!(
            stderr(&out).contains("warning: no daemon is running"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Nothing to wait for: no warning.
    let done = done_job(&ws, "ok");
    let out = ws.flw(&[&done]);
    assert_eq!((code(&out), stderr(&out)), (0, String::new()));
}

#[test]
fn an_empty_set_is_reported_not_passed() {
    let ws = TestWs::new();
    let parent = ws.submit(&["a job with no children", "--tag", "real"]);
    let no_parent = "12345_1";
    for args in [
        vec!["--tag", "nosuchtag", "-W"],
        vec!["--tag", "nosuchtag"],
        vec!["--children", &parent, "-W"],
        vec!["--children", no_parent],
        vec!["--tag", "nosuchtag", "--json"],
    ] {
        let out = ws.flw(&args);
        assert_eq!(code(&out), 4, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("flw: no job"), "{}", stderr(&out));
        assert_eq!(stdout(&out), "", "{args:?}");
    }
    let out = ws.flw(&["--tag", "real"]);
    assert_eq!(code(&out), 0);
    assert_eq!(stdout(&out).trim(), parent);
}

#[test]
fn a_result_on_a_terminal_ends_its_line_and_a_pipe_gets_it_exact() {
    let ws = TestWs::new();
    let id = done_job(&ws, "no newline here");
    let piped = ws.flw(&[&id]);
    assert_eq!(stdout(&piped), "no newline here");
    let flw = bin("flw");
    let shown = run(&mut on_terminal(&[
        flw.as_ref(),
        ws.path.as_ref(),
        id.as_ref(),
    ]));
    assert_eq!(code(&shown), 0, "{}", stderr(&shown));
    assert_eq!(stdout(&shown), "no newline here\r\n");
    // A result that ends its line already gets no second newline.
    let id = done_job(&ws, "one line\n");
    let shown = run(&mut on_terminal(&[
        flw.as_ref(),
        ws.path.as_ref(),
        id.as_ref(),
    ]));
    assert_eq!(stdout(&shown), "one line\r\n");
}

#[test]
fn waits_on_a_terminal_show_a_live_status_line_and_pipes_stay_clean() {
    let ws = TestWs::new();
    let ids: Vec<String> = (0..3)
        .map(|i| ws.submit(&[&format!("Count to {i}."), "--tag", "t", "--max-tokens", "8"]))
        .collect();
    let flw = bin("flw");
    let flw_ws = |args: &[&str]| {
        let mut words: Vec<&OsStr> = vec![flw.as_ref(), ws.path.as_ref()];
        words.extend(args.iter().map(OsStr::new));
        on_terminal(&words)
    };
    // No daemon yet: the line shows the job's state while it waits.
    let shown = run(&mut flw_ws(&[&ids[0], "--timeout", "1"]));
    assert_eq!(code(&shown), 3);
    assert!(
        stdout(&shown).contains(&format!("{}  queued", ids[0])),
        "{}",
        stdout(&shown)
    );
    // Piped stderr, or --json: no status line at all.
    let piped = ws.flw(&["--tag", "t", "-W", "--timeout", "1"]);
    assert_eq!(code(&piped), 3);
    assert!(!stderr(&piped).contains("queued"), "{}", stderr(&piped));
    let shown = run(&mut flw_ws(&[
        "--tag",
        "t",
        "-W",
        "--json",
        "--timeout",
        "1",
    ]));
    assert!(!stdout(&shown).contains("queued"), "{}", stdout(&shown));

    // The barrier waits; a daemon starts and works the set off.
    let barrier = flw_ws(&["--tag", "t", "-W", "--timeout", "300"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let d = ws.daemon(1);
    let out = barrier.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), d.log_text());
    let screen = stdout(&out);
    assert!(screen.contains("no daemon is running"), "{screen}");
    assert!(
        screen.contains("3 jobs: 3 queued  0 running  0 done  0 failed"),
        "{screen}"
    );
    // The last line stays: every job done, and the rate of the tokens they generated.
    let last = screen.rsplit("\r\n").find(|l| !l.is_empty()).unwrap_or("");
    let last = last.rsplit('\r').next().unwrap_or("");
    assert!(
        last.contains("3 jobs: 0 queued  0 running  3 done  0 failed") && last.contains("tok/s"),
        "{last:?}"
    );
    // The same rate is in each job's meta.json and the daemon's job line.
    for id in &ids {
        let rate = ws.meta("output", id)["tokens_per_s"].as_f64().unwrap();
        assert!(rate > 0.0, "{id}: {rate}");
    }
    let log = d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(&ids[0]) && l.contains("done") && l.contains("tok/s")),
        "{log}"
    );
}

#[test]
fn flw_and_nrvna_status_print_one_status_json() {
    let ws = TestWs::new();
    ws.submit(&["hello"]);
    let ws_arg = ws.path.to_str().unwrap();
    let both = || {
        let flw: serde_json::Value = serde_json::from_str(&stdout(&ws.flw(&["--json"]))).unwrap();
        let status: serde_json::Value =
            serde_json::from_str(&stdout(&nrvna(&["status", ws_arg, "--json"]))).unwrap();
        (flw, status)
    };
    let (flw, status) = both();
    assert_eq!(flw, status);
    assert_eq!(flw["daemon"], "not running");
    assert_eq!(flw["queued"], 1);
    assert!(flw["pid"].is_null());
    let d = ws.daemon(1);
    let (flw, status) = both();
    assert_eq!(flw, status);
    assert_eq!(flw["daemon"], "ready");
    assert_eq!(flw["pid"], d.pid());
    assert_eq!(flw["workers"], 1);
    assert!(flw["model"].is_string() && flw["started_at"].is_string());
}

#[test]
fn nrvna_ps_shows_running_and_queued_jobs() {
    let ws = TestWs::new();
    let first =
        ws.submit(&["Write a poem\nabout the sea, in many many words please, as long as you can"]);
    let second = ws.submit(&["second job"]);
    let done = done_job(&ws, "ended");
    let ws_arg = ws.path.to_str().unwrap();
    let out = nrvna(&["ps", ws_arg]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for word in ["ID", "STATE", "AGE", "TOKENS", "TOK/S", "PROMPT"] {
        assert!(lines[0].contains(word), "{text}");
    }
    assert!(
        lines[1].starts_with(&first) && lines[1].contains("queued"),
        "{text}"
    );
    assert!(lines[1].contains("Write a poem about the sea"), "{text}");
    assert!(
        !lines[1].contains("as long as you can"),
        "the excerpt is short: {text}"
    );
    assert!(lines[2].starts_with(&second), "{text}");
    assert!(!text.contains(&done), "ended jobs are not shown");

    let out = nrvna(&["ps", ws_arg, "--json"]);
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], first.as_str());
    assert_eq!(rows[0]["state"], "queued");
    assert!(rows[0]["age_s"].as_f64().unwrap() >= 0.0);
    assert!(rows[0]["generated_tokens"].is_null());
    assert_eq!(rows[1]["prompt"], "second job");

    // --watch redraws a terminal, at a bounded interval; a pipe is refused.
    let out = nrvna(&["ps", ws_arg, "--watch"]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("not"), "{}", stderr(&out));
    assert_eq!(
        code(&nrvna(&["ps", ws_arg, "--watch", "--interval", "0"])),
        2
    );
    let nrvna_bin = bin("nrvna");
    let mut watch: Vec<&OsStr> = ["timeout", "-s", "INT", "1.5"].map(OsStr::new).to_vec();
    watch.push(nrvna_bin.as_ref());
    watch.extend(["ps", ws_arg, "--watch", "--interval", "0.2"].map(OsStr::new));
    let shown = stdout(&run(&mut on_terminal(&watch)));
    let redraws = shown.matches("\x1b[2J").count();
    assert!(redraws >= 3, "{redraws} redraws: {shown:?}");
    assert!(shown.contains(&second), "{shown}");
}

#[test]
fn nrvna_ps_shows_a_running_jobs_tokens_so_far() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let id = ws.submit(&[
        "Write a long story about a lighthouse keeper.",
        "--max-tokens",
        "2000",
    ]);
    let ws_arg = ws.path.to_str().unwrap();
    let mut seen = None;
    let found = nrvna_tests::wait_for(Duration::from_secs(60), || {
        let out = nrvna(&["ps", ws_arg, "--json"]);
        seen = stdout(&out)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|row| row["id"] == id.as_str() && row["state"] == "running");
        seen.as_ref()
            .and_then(|row| row["generated_tokens"].as_u64())
            .is_some_and(|n| n > 0)
    });
    assert!(found, "no running row with tokens so far: {seen:?}");
    let row = seen.unwrap();
    assert!(row["tokens_per_s"].as_f64().unwrap() > 0.0, "{row}");
    // While it runs, its count lives outside the job directory and goes with the job.
    let progress = ws.path.join(".progress").join(&id);
    assert!(progress.is_file());
    let out = nrvna(&["cancel", ws_arg, &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(nrvna_tests::wait_for(Duration::from_secs(30), || {
        ws.entries("failed").contains(&id)
    }));
    assert!(nrvna_tests::wait_for(Duration::from_secs(5), || !progress.exists()));
    assert!(!ws.path.join("failed").join(&id).join(".progress").exists());
}
