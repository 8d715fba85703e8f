//! `wrk` and `flw` on their own: argument handling, bad input, exit codes. No daemon.

use nrvna_tests::{TestWs, code, stderr, stdout};

fn assert_nothing_left(ws: &TestWs) {
    for dir in [
        "input/writing",
        "input/ready",
        "processing",
        "output",
        "failed",
    ] {
        assert!(
            ws.entries(dir).is_empty(),
            "{dir} not empty: {:?}",
            ws.entries(dir)
        );
    }
}

#[test]
fn wrk_prints_only_a_valid_id_and_stages_the_job() {
    let ws = TestWs::new();
    let out = ws.wrk(&[
        "hello",
        "world",
        "--tag",
        "t1",
        "--max-tokens",
        "5",
        "--temp",
        "0",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out);
    assert!(id.ends_with('\n'));
    let id = id.trim();
    assert!(id.bytes().all(|b| b.is_ascii_digit() || b == b'_'), "{id}");
    assert_eq!(ws.entries("input/ready"), vec![id.to_owned()]);
    assert_eq!(ws.job_file("input/ready", id, "prompt.txt"), "hello world");
    let meta = ws.meta("input/ready", id);
    assert_eq!(meta["tags"], serde_json::json!(["t1"]));
    assert_eq!(meta["max_tokens"], 5);
    assert_eq!(meta["temperature"], 0.0);
    assert_eq!(meta["mode"], "text");
    assert!(meta["submitted_at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn wrk_reads_stdin_and_strips_one_newline() {
    let ws = TestWs::new();
    let out = ws.wrk_stdin(&[], b"line one\nline two\n\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    assert_eq!(
        ws.job_file("input/ready", &id, "prompt.txt"),
        "line one\nline two\n"
    );
    // `-` reads stdin even with options after it.
    let out = ws.wrk_stdin(&["-", "--tag", "x"], b"from dash\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    assert_eq!(ws.job_file("input/ready", &id, "prompt.txt"), "from dash");
}

#[test]
fn wrk_rejects_bad_input_and_leaves_nothing_behind() {
    let ws = TestWs::new();
    let image = ws.scratch().join("missing.png");
    let notimage = ws.scratch().join("notes.txt");
    std::fs::write(&notimage, "x").unwrap();
    let big = vec![b'a'; 4 * 1024 * 1024 + 1];
    // A malformed argument is a usage error (2); input that cannot be used fails (1).
    const FAILED: i32 = 1;
    const USAGE: i32 = 2;
    // (arguments, stdin, exit code, expected part of the error)
    type Case<'a> = (Vec<String>, Option<&'a [u8]>, i32, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], Some(b"".as_slice()), FAILED, "empty prompt"),
        (vec!["-".into()], Some(big.as_slice()), FAILED, "limit"),
        (
            vec!["hi".into(), "--image".into(), image.display().to_string()],
            None,
            FAILED,
            "missing.png",
        ),
        (
            vec![
                "hi".into(),
                "--image".into(),
                notimage.display().to_string(),
            ],
            None,
            FAILED,
            "extension",
        ),
        (
            vec!["hi".into(), "--tag".into(), "bad tag!".into()],
            None,
            USAGE,
            "invalid tag",
        ),
        (
            vec!["hi".into(), "--tag".into(), "x".repeat(65)],
            None,
            USAGE,
            "invalid tag",
        ),
        (
            vec!["hi".into(), "--parent".into(), "../etc".into()],
            None,
            USAGE,
            "invalid job id",
        ),
        (
            vec!["hi".into(), "--temp".into(), "9".into()],
            None,
            USAGE,
            "temperature",
        ),
        (
            vec!["hi".into(), "--max-tokens".into(), "0".into()],
            None,
            USAGE,
            "max-tokens",
        ),
        (
            vec![
                "hi".into(),
                "--json-schema".into(),
                notimage.display().to_string(),
            ],
            None,
            FAILED,
            "not valid JSON",
        ),
        (vec!["hi".into(), "--bogus".into()], None, USAGE, "--bogus"),
    ];
    for (args, input, expected_code, expect) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = match input {
            Some(bytes) => ws.wrk_stdin(&args, bytes),
            None => ws.wrk(&args),
        };
        assert_eq!(
            code(&out),
            expected_code,
            "wrk {args:?} should fail: {}",
            stderr(&out)
        );
        assert!(
            stdout(&out).is_empty(),
            "wrk {args:?} printed {:?}",
            stdout(&out)
        );
        assert!(
            stderr(&out).contains(expect),
            "wrk {args:?}: expected {expect:?} in {:?}",
            stderr(&out)
        );
        assert_nothing_left(&ws);
    }
}

#[test]
fn flw_exit_codes_without_a_daemon() {
    let ws = TestWs::new();
    let id = ws.submit(&["queued forever"]);
    // Queued, --no-wait: not ready, 3.
    let out = ws.flw(&[&id, "--no-wait"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("queued"));
    // Waiting with a timeout: 3 after roughly the timeout.
    let t = std::time::Instant::now();
    let out = ws.flw(&[&id, "--timeout", "0.3"]);
    assert_eq!(code(&out), 3);
    assert!(t.elapsed().as_secs_f64() >= 0.3);
    // Valid but unknown id: not found, 4. Hostile ids: usage, 2, and nothing outside is
    // touched.
    assert_eq!(code(&ws.flw(&["12345_1_000000"])), 4);
    for bad in ["../../etc/passwd", "/etc/passwd", "1/../2", "abc"] {
        let out = ws.flw(&[bad]);
        assert_eq!(code(&out), 2, "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("invalid job id"), "{}", stderr(&out));
    }
    // Usage error: 2. Not a workspace: not found, 4.
    assert_eq!(code(&ws.flw(&["--no-such-flag"])), 2);
    let out = nrvna_tests::run(
        std::process::Command::new(nrvna_tests::bin("flw")).arg(ws.scratch().join("nope")),
    );
    assert_eq!(code(&out), 4);
    // Status view and JSON counts.
    let out = ws.flw(&["--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["queued"], 1);
    assert_eq!(v["daemon"], "not running");
    let out = ws.flw(&[]);
    assert!(stdout(&out).contains("queued 1"), "{}", stdout(&out));
}

#[test]
fn help_teaches_exit_codes_and_env() {
    let out = nrvna_tests::run(std::process::Command::new(nrvna_tests::bin("flw")).arg("--help"));
    let text = stdout(&out);
    for needle in ["Exit codes", "not ready", "--no-wait", "--tag", "Examples"] {
        assert!(text.contains(needle), "flw --help lacks {needle:?}");
    }
    let out =
        nrvna_tests::run(std::process::Command::new(nrvna_tests::bin("nrvnad")).arg("--help"));
    let text = stdout(&out);
    for needle in ["NRVNA_CTX", "NRVNA_MAX_ATTEMPTS", "--drain", "status"] {
        assert!(text.contains(needle), "nrvnad --help lacks {needle:?}");
    }
    let out =
        nrvna_tests::run(std::process::Command::new(nrvna_tests::bin("nrvna")).arg("version"));
    assert!(stdout(&out).starts_with("nrvna "));
}

#[test]
fn every_timeout_takes_the_same_duration_format() {
    let ws = TestWs::new();
    let id = ws.submit(&["queued forever"]);
    // flw: plain seconds as before, or a number with a unit, as nrvna exec takes it.
    for timeout in ["300ms", "0.3s", "0.3"] {
        let started = std::time::Instant::now();
        let out = ws.flw(&[&id, "--timeout", timeout]);
        assert_eq!(code(&out), 3, "--timeout {timeout}: {}", stderr(&out));
        assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    }
    // nrvnad stop: with no daemon it answers at once, whatever form the timeout takes.
    let stop = |timeout: &str| {
        nrvna_tests::run(
            std::process::Command::new(nrvna_tests::bin("nrvnad"))
                .arg("stop")
                .arg(&ws.path)
                .args(["--timeout", timeout]),
        )
    };
    for timeout in ["5s", "1m", "5"] {
        let out = stop(timeout);
        assert_eq!(code(&out), 0, "--timeout {timeout}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), "not running");
    }
    // A malformed duration is a usage error in both, naming the units.
    for out in [stop("5x"), ws.flw(&[&id, "--timeout", "5x"])] {
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("unknown unit; use ms, s, m or h"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn every_program_shows_the_one_exit_code_table() {
    let help = |program: &str, args: &[&str]| {
        stdout(&nrvna_tests::run(
            std::process::Command::new(nrvna_tests::bin(program)).args(args),
        ))
    };
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md"),
    )
    .unwrap();
    // Each row of `nrvna --help` (the whole table) is a row of docs/cli.md's table.
    let table = help("nrvna", &["--help"]);
    let rows: Vec<(String, String)> = table
        .split("Exit codes (the same in every nrvna program):\n")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (code, meaning) = line.trim().split_once(' ')?;
            Some((code.to_owned(), meaning.trim().to_owned()))
        })
        .collect();
    assert_eq!(rows.len(), 11, "{table}");
    for (code, meaning) in &rows {
        assert!(
            docs.contains(&format!("| {code} | {meaning} |")),
            "docs/cli.md lacks the row {code} {meaning}"
        );
    }
    // Every program's help shows its rows of that table, in the same words.
    for (program, args, codes) in [
        ("nrvnad", vec!["--help"], vec!["0", "1", "2", "3", "5"]),
        ("wrk", vec!["--help"], vec!["0", "1", "2"]),
        ("flw", vec!["--help"], vec!["0", "1", "2", "3", "4"]),
        (
            "nrvna",
            vec!["exec", "--help"],
            vec!["0", "1", "2", "7", "8", "130", "143"],
        ),
        (
            "nrvna",
            vec!["cancel", "--help"],
            vec!["0", "1", "2", "4", "6"],
        ),
    ] {
        let text = help(program, &args);
        for code in codes {
            let (_, meaning) = rows.iter().find(|(c, _)| *c == code).unwrap();
            assert!(
                text.contains(&format!("{code:<4} {meaning}")),
                "{program} {args:?} lacks exit code {code}:\n{text}"
            );
        }
    }
}
