//! Compiling a component in a child process, so a compile can be stopped.
//!
//! wasmtime cannot interrupt a compilation: a component of many costly functions keeps
//! a thread (and, compiling in parallel, every core) busy for minutes, long after the
//! run that asked for it has ended. So a program that embeds the runtime (nrvna,
//! nrvnad) serves compiles as a child of itself: [`serve_compile_child`] at the top of
//! its `main` turns a process started with [`COMPILE_CHILD_ARG`] into a compiler. The
//! child reads the component on stdin, compiles it with the same engine configuration
//! ([`engine_config`]) under `RLIMIT_CPU` and `RLIMIT_AS`, and writes
//! `Engine::precompile_component`'s artifact to stdout. The parent kills it at the
//! deadline and waits for it, so nothing keeps compiling for a run that has ended.
//!
//! Trust: the artifact is native code loaded without verification. It comes from this
//! program's own compiler, through a pipe only the parent holds: no file a guest (or
//! anyone else) can reach is involved, so it is as trustworthy as an in-process compile.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wasmtime::{Config, Engine, Precompiled};

use crate::runtime::{MAX_COMPONENT_BYTES, check_compile_cost};

/// The first argument that makes a program a compile child (see [`serve_compile_child`]).
pub const COMPILE_CHILD_ARG: &str = "__nrvna-compile-component";
/// Address space a compile child may map, besides [`COMPILE_MEMORY_PER_THREAD`] for
/// each core: the program's own mappings and its allocator's reservations.
pub const COMPILE_MEMORY_BYTES: u64 = 2 << 30;
/// Address space per compiling thread (one a core): a worst-case function (64 KiB of
/// nested blocks) takes about 170 MB to compile, and functions compile in parallel.
pub const COMPILE_MEMORY_PER_THREAD: u64 = 256 << 20;
/// Largest artifact taken from a compile child (nrvna's components compile to a few
/// MB; 16 MiB of wasm at most).
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;
/// Longest error text taken from a compile child.
const MAX_CHILD_MESSAGE: u64 = 16 << 10;

/// Set once this program has said it serves compiles (see [`serve_compile_child`]).
static SERVES: OnceLock<PathBuf> = OnceLock::new();

/// The engine configuration of every runtime and compile child: an artifact loads only
/// in an engine configured as the one that compiled it.
pub(crate) fn engine_config() -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        // A guest's deep recursion traps instead of exhausting the host's stack.
        .max_wasm_stack(1 << 20);
    wasm
}

/// Call first thing in `main` of a program that runs agents. Started as a compile
/// child (first argument [`COMPILE_CHILD_ARG`]), it compiles and returns the exit code
/// to end with; otherwise it records that this program serves compiles (runtimes it
/// builds then compile in children of it, bounded in time) and returns `None`.
pub fn serve_compile_child() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new(COMPILE_CHILD_ARG)) {
        if let Ok(exe) = std::env::current_exe() {
            let _ = SERVES.set(exe);
        }
        return None;
    }
    let limit_ms = args
        .next()
        .and_then(|a| a.to_str().and_then(|s| s.parse::<u64>().ok()))
        .unwrap_or(1000);
    Some(match compile_child(Duration::from_millis(limit_ms)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "{message}");
            ExitCode::FAILURE
        }
    })
}

/// The executable that serves compiles, if this program called [`serve_compile_child`].
pub(crate) fn compile_child_program() -> Option<PathBuf> {
    SERVES.get().cloned()
}

/// The child's side: limits on itself, the component from stdin, the artifact to stdout.
fn compile_child(limit: Duration) -> Result<(), String> {
    use rustix::process::{Resource, Rlimit, Signal, set_parent_process_death_signal, setrlimit};
    // A parent that dies takes its compile with it.
    let _ = set_parent_process_death_signal(Some(Signal::KILL));
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        return Err("compile child: the parent is gone".into());
    }
    // CPU of all its threads together, so compiling in parallel on many cores spends
    // no more CPU than the limit allows one; and it holds if the parent cannot kill it
    // at the deadline (SIGXCPU at the soft limit, SIGKILL a second later).
    let cpu = limit.as_secs() + 1;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = COMPILE_MEMORY_BYTES + COMPILE_MEMORY_PER_THREAD * threads;
    let limits = [
        (Resource::Cpu, cpu, cpu + 1),
        (Resource::As, memory, memory),
        (Resource::Core, 0, 0),
        (Resource::Fsize, 0, 0),
    ];
    for (resource, soft, hard) in limits {
        setrlimit(
            resource,
            Rlimit {
                current: Some(soft),
                maximum: Some(hard),
            },
        )
        .map_err(|e| format!("compile child: setrlimit({resource:?}): {e}"))?;
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_COMPONENT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("compile child: reading the component: {e}"))?;
    if bytes.len() as u64 > MAX_COMPONENT_BYTES {
        return Err(format!(
            "the component is more than {MAX_COMPONENT_BYTES} bytes"
        ));
    }
    check_compile_cost(&bytes)?;
    let engine = Engine::new(&engine_config()).map_err(|e| format!("compile child: {e}"))?;
    let artifact = engine
        .precompile_component(&bytes)
        .map_err(|e| format!("{e:#}"))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&artifact)
        .and_then(|()| out.flush())
        .map_err(|e| format!("compile child: writing the artifact: {e}"))
}

/// `bytes` in an anonymous file in memory (`memfd`), at its start: the child's stdin.
fn component_file(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    use rustix::fs::{MemfdFlags, SeekFrom, memfd_create, seek};
    let fd = memfd_create("nrvna-component", MemfdFlags::CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    seek(&file, SeekFrom::Start(0))?;
    Ok(file)
}

/// How a compile in a child ended short of an artifact.
#[derive(Debug)]
pub(crate) enum ChildCompileError {
    /// Still compiling at the deadline: killed.
    TimedOut,
    /// The compiler refused the component (its message) or the child failed.
    Failed(String),
}

/// Compiles `bytes` in a child process of `program`, killed if it is still at it after
/// `limit`. Returns the artifact, checked to be a precompiled component; `name` (the
/// component's) shows in the child's command line, for `ps`.
pub(crate) fn compile_in_child(
    program: &std::path::Path,
    name: &str,
    bytes: &[u8],
    limit: Duration,
) -> Result<Vec<u8>, ChildCompileError> {
    let failed = |what: &str, e: std::io::Error| {
        ChildCompileError::Failed(format!("compile child: {what}: {e}"))
    };
    let deadline = Instant::now() + limit;
    // The component goes in as a file in memory, not through a pipe: writing to the
    // pipe of a child killed at the deadline would raise SIGPIPE, which ends nrvna's
    // programs (they restore its default disposition, to end quietly in a shell pipe).
    let input = component_file(bytes).map_err(|e| failed("staging the component", e))?;
    let mut child = Command::new(program)
        .arg(COMPILE_CHILD_ARG)
        .arg(limit.as_millis().to_string())
        .arg(name)
        .env_clear()
        .stdin(Stdio::from(input))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(&format!("cannot start {}", program.display()), e))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ChildCompileError::Failed(
            "compile child: no pipes".to_owned(),
        ));
    };
    // Each pipe on a thread of its own, so a full one never blocks the other; they end
    // when the child does (it is their only other end).
    let reader = std::thread::spawn(move || {
        let mut artifact = Vec::new();
        stdout
            .take(MAX_ARTIFACT_BYTES + 1)
            .read_to_end(&mut artifact)
            .map(|_| artifact)
    });
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.take(MAX_CHILD_MESSAGE).read_to_end(&mut text);
        String::from_utf8_lossy(&text).trim().to_owned()
    });
    let mut pause = Duration::from_micros(200);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => {
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed("waiting for it", e));
            }
        }
    };
    let artifact = reader.join();
    let message = errors.join().unwrap_or_default();
    let Some(status) = status else {
        return Err(ChildCompileError::TimedOut);
    };
    {
        use rustix::process::Signal;
        use std::os::unix::process::ExitStatusExt;
        // Ended by its CPU limit (SIGXCPU, whose default action ends it): its threads
        // together spent the compile time limit in CPU before the deadline came.
        if status.signal() == Some(Signal::XCPU.as_raw()) {
            return Err(ChildCompileError::TimedOut);
        }
    }
    if !status.success() {
        return Err(ChildCompileError::Failed(if message.is_empty() {
            format!("compile child ended by {status}")
        } else {
            message
        }));
    }
    match artifact {
        Ok(Ok(artifact))
            if (artifact.len() as u64) <= MAX_ARTIFACT_BYTES
                && Engine::detect_precompiled(&artifact) == Some(Precompiled::Component) =>
        {
            Ok(artifact)
        }
        Ok(Ok(_)) => Err(ChildCompileError::Failed(
            "compile child: its output is not a compiled component".to_owned(),
        )),
        Ok(Err(e)) => Err(failed("reading its output", e)),
        Err(_) => Err(ChildCompileError::Failed(
            "compile child: the output reader panicked".to_owned(),
        )),
    }
}
