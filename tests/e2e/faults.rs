//! Crashes and bad input the daemon must survive.

use std::os::unix::fs::symlink;
use std::process::Command;
use std::time::Duration;

use nrvna_tests::{Daemon, TestWs, bin, code, model, run, stderr, stdout, wait_for};
use rustix::process::Signal;

const LONG: [&str; 4] = [
    "Write a very long story about a lighthouse keeper.",
    "--max-tokens",
    "400",
    "--temp=0.9",
];

#[test]
fn sigkill_mid_job_then_restart_completes_exactly_once() {
    let ws = TestWs::new();
    let mut d = ws.daemon(1);
    let id = ws.submit(&LONG);
    ws.wait_started(&id, 1);
    d.signal(Signal::KILL);
    d.wait_exit(Duration::from_secs(10));
    assert_eq!(ws.entries("processing"), vec![id.clone()]);
    // The stale lock does not block the next daemon; it requeues and finishes the job.
    let d2 = ws.daemon(1);
    let (rc, out, err) = ws.follow(&id);
    assert_eq!(rc, 0, "{err}\n{}", d2.log_text());
    assert!(!out.is_empty());
    let meta = ws.meta("output", &id);
    assert_eq!(meta["attempts"], 2, "{meta}\n{}", d2.log_text());
    assert!(ws.entries("failed").is_empty());
    assert!(d2.log_text().contains(&format!("recovered job {id}")));
}

#[test]
fn a_job_that_keeps_crashing_the_daemon_fails_at_the_ceiling() {
    let ws = TestWs::new();
    let env = [("NRVNA_MAX_ATTEMPTS", "2")];
    let id = ws.submit(&LONG);
    for attempt in 1..=2 {
        let mut d = Daemon::start(&ws.path, &model(), 1, &[], &env);
        ws.wait_started(&id, attempt);
        d.signal(Signal::KILL);
        d.wait_exit(Duration::from_secs(10));
    }
    let _d = Daemon::start(&ws.path, &model(), 1, &[], &env);
    let (rc, _, err) = ws.follow(&id);
    assert_eq!(rc, 1);
    assert!(
        err.contains("started 2 times") && err.contains("NRVNA_MAX_ATTEMPTS"),
        "{err}"
    );
    assert_eq!(ws.meta("failed", &id)["status"], "failed");
}

#[test]
fn bad_embedding_models_are_refused_before_anything_else() {
    let ws = TestWs::new();
    let junk = ws.scratch().join("junk.gguf");
    std::fs::write(&junk, b"definitely not a model").unwrap();
    let absent = ws.scratch().join("absent.gguf");
    let nrvnad = || {
        let mut cmd = Command::new(bin("nrvnad"));
        cmd.arg(model())
            .arg(&ws.path)
            .env_remove("NRVNA_EMBED_MODEL");
        cmd
    };
    for (path, expect) in [(&junk, "not a GGUF model"), (&absent, "does not exist")] {
        let shown = path.display().to_string();
        let out = run(nrvnad().arg("--embed-model").arg(path));
        assert_eq!(code(&out), 1);
        let err = stderr(&out);
        assert!(
            err.contains(&format!("--embed-model {shown}")) && err.contains(expect),
            "{err}"
        );
        assert!(!ws.path.exists(), "workspace created despite a bad model");
        // The variable is checked the same way and named.
        let out = run(nrvnad().env("NRVNA_EMBED_MODEL", path));
        assert_eq!(code(&out), 1);
        let err = stderr(&out);
        assert!(
            err.contains(&format!("NRVNA_EMBED_MODEL {shown}")) && err.contains(expect),
            "{err}"
        );
        assert!(!ws.path.exists(), "workspace created despite a bad model");
    }
}

#[test]
fn bad_model_files_are_refused_before_anything_else() {
    let ws = TestWs::new();
    let junk = ws.scratch().join("junk.gguf");
    std::fs::write(&junk, b"definitely not a model").unwrap();
    for (model_arg, expect) in [
        (junk.display().to_string(), "not a GGUF model"),
        (
            ws.scratch().join("absent.gguf").display().to_string(),
            "does not exist",
        ),
    ] {
        let out = run(Command::new(bin("nrvnad")).arg(&model_arg).arg(&ws.path));
        assert_eq!(code(&out), 1);
        assert!(
            stderr(&out).contains(expect),
            "{model_arg}: {}",
            stderr(&out)
        );
        assert!(!ws.path.exists(), "workspace created despite a bad model");
    }
    // Strict env parsing names the variable and the range.
    let out = run(Command::new(bin("nrvnad"))
        .arg(model())
        .arg(&ws.path)
        .env("NRVNA_CTX", "12oops"));
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("NRVNA_CTX") && stderr(&out).contains("64 to"),
        "{}",
        stderr(&out)
    );
    let out = run(Command::new(bin("nrvnad"))
        .arg(model())
        .arg(&ws.path)
        .arg("99"));
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("99 is not in 1..=64"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn prompt_longer_than_the_context_fails_alone_with_the_numbers() {
    let ws = TestWs::new();
    let _d = Daemon::start(&ws.path, &model(), 2, &[], &[("NRVNA_CTX", "128")]);
    let long = "word ".repeat(400);
    let bad = ws.submit(&[&long]);
    let good = ws.submit(&["Say hi.", "--max-tokens", "4"]);
    let (rc, _, err) = ws.follow(&bad);
    assert_eq!(rc, 1);
    assert!(err.contains("tokens") && err.contains("holds 128"), "{err}");
    assert_eq!(ws.follow(&good).0, 0);
}

#[test]
fn malformed_ready_entries_go_to_failed_with_a_reason() {
    let ws = TestWs::new();
    let keep = ws.submit(&["Say hi.", "--max-tokens", "4"]);
    let ready = ws.path.join("input/ready");
    // A job directory without a prompt, one with an oversize prompt, a symlink, a FIFO,
    // a plain file and a badly named directory.
    std::fs::create_dir(ready.join("100_1_000001")).unwrap();
    std::fs::create_dir(ready.join("100_1_000002")).unwrap();
    std::fs::write(ready.join("100_1_000002/prompt.txt"), vec![b'a'; 5 << 20]).unwrap();
    symlink("/etc", ready.join("100_1_000003")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        ready.join("100_1_000004"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    std::fs::write(ready.join("100_1_000005"), "x").unwrap();
    std::fs::create_dir(ready.join("not-an-id")).unwrap();
    let _d = ws.daemon(1);
    assert_eq!(ws.follow(&keep).0, 0);
    assert!(
        wait_for(Duration::from_secs(30), || ws
            .entries("input/ready")
            .is_empty()
            && ws.entries("processing").is_empty()
            && ws.entries("failed").len() == 6),
        "left in ready: {:?}",
        ws.entries("input/ready")
    );
    let failed = ws.entries("failed");
    assert_eq!(failed.len(), 6, "{failed:?}");
    let reasons: Vec<String> = failed
        .iter()
        .map(|id| ws.job_file("failed", id, "error.txt"))
        .collect();
    let all = reasons.join("\n");
    for needle in [
        "prompt.txt",
        "limit",
        "not a directory",
        "not a valid job id",
    ] {
        assert!(all.contains(needle), "no {needle:?} in:\n{all}");
    }
    // /etc was not touched through the symlink.
    assert!(std::path::Path::new("/etc/passwd").exists());
    // Counts only ever show real jobs.
    let v: serde_json::Value = serde_json::from_str(&stdout(&ws.flw(&["--json"]))).unwrap();
    assert_eq!(v["queued"], 0);
}

#[test]
fn job_directory_deleted_mid_flight_does_not_stop_the_daemon() {
    let ws = TestWs::new();
    let mut d = ws.daemon(1);
    let doomed = ws.submit(&LONG);
    ws.wait_started(&doomed, 1);
    std::fs::remove_dir_all(ws.path.join("processing").join(&doomed)).unwrap();
    let next = ws.submit(&["Say hi.", "--max-tokens", "4"]);
    let (rc, _, err) = ws.follow(&next);
    assert_eq!(rc, 0, "{err}\n{}", d.log_text());
    assert!(d.is_running());
    assert!(
        d.log_text().contains(&format!("{doomed}  lost")),
        "{}",
        d.log_text()
    );
    assert_eq!(code(&ws.flw(&[&doomed, "--no-wait"])), 4);
}

/// Sets or clears the immutable attribute (root can still be refused writes with it,
/// where mode bits do not stop root).
fn chattr(flag: &str, path: &std::path::Path) {
    let out = run(Command::new("chattr").arg(flag).arg(path));
    assert!(
        out.status.success(),
        "chattr {flag} {} (e2fsprogs, ext4 and root needed): {}",
        path.display(),
        stderr(&out)
    );
}

/// The immutable attribute on a directory, cleared on drop so the temp dir can go.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: &std::path::Path) -> Immutable {
        chattr("+i", path);
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = run(Command::new("chattr").arg("-i").arg(&self.0));
    }
}

#[test]
fn job_directory_made_unwritable_mid_flight_does_not_stop_the_daemon() {
    let ws = TestWs::new();
    let mut d = ws.daemon(1);
    let stuck = ws.submit(&LONG);
    ws.wait_started(&stuck, 1);
    let dir = ws.path.join("processing").join(&stuck);
    let _guard = Immutable::set(&dir);
    // Nothing can be written into it or moved: the job is reported lost, not fatal.
    assert!(
        wait_for(Duration::from_secs(120), || d
            .log_text()
            .contains(&format!("{stuck}  lost"))),
        "{}",
        d.log_text()
    );
    let next = ws.submit(&["Say hi.", "--max-tokens", "4"]);
    let (rc, _, err) = ws.follow(&next);
    assert_eq!(rc, 0, "{err}\n{}", d.log_text());
    assert!(d.is_running());
    // It stayed in processing/, so the next start recovers it.
    assert_eq!(ws.entries("processing"), vec![stuck.clone()]);
}

/// A small tmpfs holds the workspace; unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path));
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it (needs root): {}",
            stderr(&out)
        );
        Tmpfs(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg("-l").arg(&self.0));
    }
}

#[test]
fn full_disk_while_writing_a_result() {
    let scratch = tempfile::tempdir().unwrap();
    let mnt = scratch.path().join("small");
    let _fs = Tmpfs::mount(&mnt, "1m");
    let ws = TestWs::at(mnt.join("ws"));
    let mut d = ws.daemon(1);
    let id = ws.submit(&LONG);
    ws.wait_started(&id, 1);
    // Fill the disk while the job generates.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
        let _ = f.sync_all();
    }
    // The job cannot be written: it ends up requeued (and retried) or failed with a
    // reason, never stuck, and the daemon keeps running.
    assert!(
        wait_for(Duration::from_secs(120), || !ws
            .entries("processing")
            .contains(&id)
            || d.log_text().contains("requeued")),
        "{}",
        d.log_text()
    );
    assert!(d.is_running(), "{}", d.log_text());
    std::fs::remove_file(&filler).unwrap();
    let (rc, _, err) = ws.follow(&id);
    assert!(
        rc == 0 || (rc == 1 && err.contains("No space")),
        "rc {rc}: {err}\n{}",
        d.log_text()
    );
    // After the disk has room again, new work completes.
    let next = ws.submit(&["Say hi.", "--max-tokens", "4"]);
    assert_eq!(ws.follow(&next).0, 0, "{}", d.log_text());
}
