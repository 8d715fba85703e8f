//! The OpenAI-compatible HTTP API (`nrvnad --http`), driven by clients nobody here wrote:
//! `curl` and the official `openai` Python package (scripts/setup installs it), against
//! the real daemon and the real model.

mod clients;
mod hostile;
mod recovery;
mod requests;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use nrvna_tests::{Daemon, TestWs, model, wait_for};

/// A daemon serving HTTP on a free loopback port.
pub struct HttpDaemon {
    pub daemon: Daemon,
    pub base: String,
}

impl HttpDaemon {
    pub fn start(ws: &TestWs, workers: usize, extra: &[&str]) -> HttpDaemon {
        let mut args = vec!["--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let daemon = Daemon::start(&ws.path, &model(), workers, &args, &[]);
        let base = base_url(&daemon);
        HttpDaemon { daemon, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// The address the daemon says it listens on (`--http 127.0.0.1:0` picks a free port).
pub fn base_url(daemon: &Daemon) -> String {
    let mut base = String::new();
    let found = wait_for(Duration::from_secs(30), || {
        let log = daemon.log_text();
        match log.lines().find_map(|l| l.split("HTTP API on ").nth(1)) {
            Some(rest) => {
                base = rest.split_whitespace().next().unwrap_or("").to_owned();
                true
            }
            None => false,
        }
    });
    assert!(found, "no HTTP address in the log:\n{}", daemon.log_text());
    base
}

/// `curl -sS` with `args`; `-w` appends the status code on a last line of its own.
pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "120", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl (Debian package curl)")
}

/// The body and status `curl` got.
pub fn split_status(out: &Output) -> (String, u16) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (body.to_owned(), status.trim().parse().unwrap_or(0))
}

/// POSTs JSON; returns (status, headers text, body).
pub fn post_json(url: &str, body: &str, extra: &[&str]) -> (u16, String, String) {
    let headers = tempfile::NamedTempFile::new().unwrap();
    let mut args = vec![
        "-D",
        headers.path().to_str().unwrap(),
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
    ];
    args.extend_from_slice(extra);
    args.push(url);
    let out = curl(&args);
    let (body, status) = split_status(&out);
    let headers = std::fs::read_to_string(headers.path()).unwrap_or_default();
    (status, headers, body)
}

/// The value of header `name` (lower case) in a `curl -D` dump.
pub fn header(headers: &str, name: &str) -> Option<String> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_owned())
    })
}

/// The Python of the venv scripts/setup makes for the `openai` package.
pub fn openai_python() -> PathBuf {
    let venv = match std::env::var_os("NRVNA_OPENAI_VENV") {
        Some(dir) => PathBuf::from(dir),
        None => {
            Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache/nrvna/venv-openai")
        }
    };
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import openai: run scripts/setup (it creates this venv)",
        python.display()
    );
    python
}

/// An OpenAI error object with every field OpenAI's has.
pub fn assert_error_object(body: &str, code: Option<&str>) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let e = &v["error"];
    assert!(e["message"].is_string(), "{body}");
    assert!(e["type"].is_string(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
    if let Some(code) = code {
        assert_eq!(e["code"], code, "{body}");
    }
    v
}
