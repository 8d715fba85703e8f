//! What every nrvna command shares: logging, argument-error exit codes, model lookup.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Parser;

/// `-v`/`--version` (and `-V`), as the predecessor had, for every program.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct VersionFlag {
    /// Print the version (-V works too)
    #[arg(short = 'v', short_alias = 'V', long, action = clap::ArgAction::Version)]
    version: Option<bool>,
}

/// Makes a write to a closed pipe end the program the way a shell expects (killed by
/// SIGPIPE: quietly, status 141), as C programs do. Rust ignores SIGPIPE, which turns
/// `flw WS | head -1` into a "Broken pipe" panic (exit 101). Every program's `main`
/// calls this first.
pub fn exit_quietly_on_closed_pipe() {
    // SAFETY: called at the start of main, before any thread exists; SIG_DFL is the
    // disposition every process starts with outside Rust.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Logs go to stderr; stdout stays machine-readable. `NRVNA_LOG` sets the filter.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NRVNA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(log_colour())
        .with_target(false)
        .compact()
        .try_init();
}

/// Colour only for a person at a terminal: a log redirected to a file stays plain text.
/// A non-empty `NO_COLOR` turns it off everywhere (no-color.org).
fn log_colour() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Parses argv, exiting with `usage_code` on a usage error (help and version exit 0).
pub fn parse_args<T: Parser>(usage_code: u8) -> T {
    parse_from(std::env::args_os(), usage_code)
}

pub fn parse_from<T: Parser, I, S>(args: I, usage_code: u8) -> T
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    match T::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let code = if e.use_stderr() { usage_code } else { 0 };
            let _ = e.print();
            std::process::exit(code.into());
        }
    }
}

/// An error and its causes on one line, each said once: a cause whose text a message
/// before it already holds (many library errors repeat their source) is left out.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Where models are cached: `NRVNA_MODELS_DIR`, else `~/.cache/nrvna/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NRVNA_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/nrvna/models")
}

/// A model argument is a path, or else a case-insensitive part of a `.gguf` file name
/// in the models directory (projector files excluded; the first match by name wins).
/// An argument with a `/` in it is only ever a path.
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    let path = Path::new(arg);
    if path.exists() {
        return Ok(path.to_owned());
    }
    if arg.contains(std::path::MAIN_SEPARATOR) {
        bail!("model file {arg} does not exist");
    }
    let dir = models_dir();
    let needle = arg.to_lowercase();
    let models = model_files(&dir);
    let found = models
        .iter()
        .find(|name| name.to_lowercase().contains(&needle));
    match found {
        Some(name) => Ok(dir.join(name)),
        None => bail!("{}", model_not_found(arg, &dir, &models)),
    }
}

/// The model file names in `dir`, sorted: `.gguf` files that are not projectors.
fn model_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            let lower = name.to_lowercase();
            lower.ends_with(".gguf") && !lower.contains("mmproj")
        })
        .collect();
    names.sort();
    names
}

/// Says what the models directory holds, so the next try can name one of them.
fn model_not_found(arg: &str, dir: &Path, models: &[String]) -> String {
    let shown = dir.display();
    if !dir.is_dir() {
        return format!(
            "model {arg:?} not found: not a file here, and the models directory {shown} \
             (NRVNA_MODELS_DIR) does not exist"
        );
    }
    if models.is_empty() {
        return format!(
            "model {arg:?} not found: not a file here, and the models directory {shown} \
             (NRVNA_MODELS_DIR) holds no .gguf file"
        );
    }
    format!(
        "model {arg:?} not found: not a file here, and no .gguf in {shown} \
         (NRVNA_MODELS_DIR) has that in its name; it holds: {}",
        models.join(", ")
    )
}

/// The default model of `scripts/setup`, for tools that want one.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::from_raw_os_error(13);
        let shown = io.to_string();
        let err = anyhow::Error::new(io).context(format!("cannot open x: {shown}"));
        assert_eq!(error_chain(&err), format!("cannot open x: {shown}"));
        let err = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&err), "outer: inner");
    }
}
