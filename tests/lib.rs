//! Fixture for the end-to-end tests: a temporary workspace, the real binaries, the real
//! model.
//!
//! The binaries are the ones cargo built next to this test (`target/<profile>/`), so run
//! `cargo build --release --bins` first (`scripts/test` does). The model is
//! `$NRVNA_TEST_MODEL`, else the default model `scripts/setup` installs; the embedding
//! model is `$NRVNA_TEST_EMBED_MODEL`, else the one `scripts/setup` converts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The embedding model `scripts/setup` builds with `scripts/embedding-model`.
pub const EMBED_MODEL: &str = "all-MiniLM-L6-v2.f16.gguf";

/// Path of one of our binaries, built beside the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build --release --bins, or scripts/test)",
        path.display()
    );
    path
}

/// The GGUF model the tests run against.
pub fn model() -> PathBuf {
    if let Some(p) = std::env::var_os("NRVNA_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = home.join(".cache/nrvna/models").join(DEFAULT_MODEL);
    assert!(
        path.is_file(),
        "the default model is not installed at {}: run scripts/setup (or set NRVNA_TEST_MODEL)",
        path.display()
    );
    path
}

/// The dedicated embedding model (all-MiniLM-L6-v2) the tests run against.
pub fn embed_model() -> PathBuf {
    if let Some(p) = std::env::var_os("NRVNA_TEST_EMBED_MODEL") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = home.join(".cache/nrvna/models").join(EMBED_MODEL);
    assert!(
        path.is_file(),
        "the embedding model is not installed at {}: run scripts/setup (or set \
         NRVNA_TEST_EMBED_MODEL)",
        path.display()
    );
    path
}

/// A temporary workspace, removed on drop.
pub struct TestWs {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Default for TestWs {
    fn default() -> Self {
        Self::new()
    }
}

impl TestWs {
    pub fn new() -> TestWs {
        let dir = tempfile::Builder::new()
            .prefix("nrvna-e2e-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("ws");
        TestWs { _dir: dir, path }
    }

    /// A workspace at a caller-chosen path (e.g. on a small tmpfs).
    pub fn at(path: PathBuf) -> TestWs {
        let dir = tempfile::tempdir().expect("temp dir");
        TestWs { _dir: dir, path }
    }

    pub fn scratch(&self) -> PathBuf {
        self._dir.path().to_owned()
    }

    pub fn wrk(&self, args: &[&str]) -> Output {
        run(Command::new(bin("wrk")).arg(&self.path).args(args))
    }

    pub fn wrk_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_with_stdin(Command::new(bin("wrk")).arg(&self.path).args(args), stdin)
    }

    pub fn flw(&self, args: &[&str]) -> Output {
        run(Command::new(bin("flw")).arg(&self.path).args(args))
    }

    /// Submits and returns the id, asserting success.
    pub fn submit(&self, args: &[&str]) -> String {
        let out = self.wrk(args);
        assert!(
            out.status.success(),
            "wrk {args:?} failed: {}",
            stderr(&out)
        );
        let id = stdout(&out).trim().to_owned();
        assert!(!id.is_empty());
        id
    }

    /// Waits for the job and returns (exit code, stdout, stderr).
    pub fn follow(&self, id: &str) -> (i32, String, String) {
        let out = self.flw(&[id, "--timeout", "300"]);
        (code(&out), stdout(&out), stderr(&out))
    }

    pub fn entries(&self, state_dir: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path.join(state_dir))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn job_file(&self, state_dir: &str, id: &str, name: &str) -> String {
        fs::read_to_string(self.path.join(state_dir).join(id).join(name))
            .unwrap_or_else(|e| panic!("{state_dir}/{id}/{name}: {e}"))
    }

    pub fn meta(&self, state_dir: &str, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.job_file(state_dir, id, "meta.json")).expect("meta.json parses")
    }

    /// Waits until a daemon is running `id` for the `attempt`-th time (claimed, with its
    /// start recorded in meta.json).
    pub fn wait_started(&self, id: &str, attempt: u64) {
        let meta = self.path.join("processing").join(id).join("meta.json");
        let started = || {
            fs::read_to_string(&meta)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|m| m["started_at"].is_string() && m["attempts"] == attempt)
        };
        assert!(
            wait_for(Duration::from_secs(120), started),
            "{id} never started (attempt {attempt})"
        );
    }

    /// Starts a daemon with small, fast settings and waits until it is ready.
    pub fn daemon(&self, workers: usize) -> Daemon {
        Daemon::start(&self.path, &model(), workers, &[], &[])
    }
}

/// A running `nrvnad`, killed on drop. Its stderr goes to a log file.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

/// `nrvna exec COMPONENT --ws WS --model MODEL -w 1 -- ARGS` with [`TEST_ENV`] and `env`:
/// a component run on a daemon of its own command.
pub fn exec_with_model(
    ws: &TestWs,
    component: Component,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = Command::new(bin("nrvna"));
    cmd.arg("exec")
        .arg(guest(component))
        .arg("--ws")
        .arg(&ws.path)
        .arg("--model")
        .arg(model())
        .args(["-w", "1", "--"])
        .args(args);
    for (k, v) in TEST_ENV.iter().chain(env) {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// Settings that keep test jobs short.
/// One decoding thread per daemon: tests run side by side on small machines, and
/// llama.cpp's thread barriers degrade badly when threads outnumber cores.
pub const TEST_ENV: [(&str, &str); 4] = [
    ("NRVNA_PREDICT", "32"),
    ("NRVNA_CTX", "1024"),
    ("NRVNA_LOG", "info"),
    ("NRVNA_THREADS", "1"),
];

impl Daemon {
    pub fn spawn(
        ws: &Path,
        model: &Path,
        workers: usize,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::spawn_with(&bin("nrvnad"), &[model.as_os_str()], ws, workers, args, env)
    }

    /// [`Daemon::spawn`] of another build of `nrvnad` (a test example).
    pub fn spawn_program(
        program: &Path,
        ws: &Path,
        model: &Path,
        workers: usize,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::spawn_with(program, &[model.as_os_str()], ws, workers, args, env)
    }

    /// `nrvnad --backend URL WS WORKERS ARGS`: a daemon on a remote OpenAI-compatible
    /// server, not yet ready.
    pub fn spawn_remote(
        url: &str,
        ws: &Path,
        workers: usize,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let lead = [std::ffi::OsStr::new("--backend"), std::ffi::OsStr::new(url)];
        Daemon::spawn_with(&bin("nrvnad"), &lead, ws, workers, args, env)
    }

    /// `PROGRAM LEAD WS WORKERS ARGS` with [`TEST_ENV`] and `env`.
    fn spawn_with(
        program: &Path,
        lead: &[&std::ffi::OsStr],
        ws: &Path,
        workers: usize,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let log = ws.with_extension(format!("nrvnad-{}.log", unique()));
        let log_file = fs::File::create(&log).expect("daemon log");
        let mut cmd = Command::new(program);
        cmd.args(lead)
            .arg(ws)
            .arg(workers.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            // Embedding jobs use the chat model unless a test asks otherwise.
            .env_remove("NRVNA_EMBED_MODEL");
        for (k, v) in TEST_ENV.iter().chain(env) {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn nrvnad");
        Daemon { child, log }
    }

    pub fn start(
        ws: &Path,
        model: &Path,
        workers: usize,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut d = Daemon::spawn(ws, model, workers, args, env);
        d.wait_ready(ws);
        d
    }

    pub fn wait_ready(&mut self, ws: &Path) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ws.join(".nrvnad.ready").exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nrvnad exited early ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "nrvnad not ready:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid()) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// SIGTERM, then waits for exit; returns the exit code.
    pub fn stop(mut self) -> i32 {
        self.signal(rustix::process::Signal::TERM);
        self.wait_exit(Duration::from_secs(60))
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "nrvnad did not exit:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- nrvnad log ---\n{}", self.log_text());
        }
        let _ = fs::remove_file(&self.log);
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run command")
}

pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(mut stdin) = child.stdin.take() {
        // The program may refuse early (oversize input); a broken pipe is fine then.
        let _ = stdin.write_all(input);
    }
    child.wait_with_output().expect("wait")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A WebAssembly component that `tests/build.rs` builds: a fixture in `tests/guests/`
/// or a pattern in `guests/patterns/`. Each has a constant generated from its crate
/// (`FX_ECHO`, `MAP_REDUCE`, ...) in `$OUT_DIR/components.rs`, which a test crate
/// includes, so a misspelt component does not compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    /// The crate's package name, the name the component gives itself (`map-reduce`).
    pub package: &'static str,
    /// The crate name, the stem of `<name>.wasm`: the agent name the host gives it
    /// (its `.agents/<name>/` storage, its `[<name>]` log lines).
    pub name: &'static str,
}

/// The built `.wasm` file of `component`.
pub fn guest(component: Component) -> PathBuf {
    let path = Path::new(env!("NRVNA_GUESTS_DIR")).join(format!("{}.wasm", component.name));
    assert!(path.is_file(), "guest {} was not built", path.display());
    path
}
