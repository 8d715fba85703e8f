//! `wrk WS PROMPT...`: submit a job, print its id.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use nrvna_queue::messages;
use nrvna_queue::{
    AGENT_FILE, AgentJob, GRAMMAR_FILE, JobId, Limits, MESSAGES_FILE, Mode, OutputFormat,
    SCHEMA_FILE, Sampling, Submission, Workspace,
};

use crate::cli::{VersionFlag, init_logging, parse_args};
use crate::exit;

/// Largest schema or grammar file accepted.
const MAX_SPEC_BYTES: u64 = 1 << 20;

const AFTER_HELP: &str = "\
The prompt is the words after WS joined by spaces; `-`, or no words with stdin piped,
reads the whole of stdin (one trailing newline removed). Words with a file or pipe on
stdin as well: the words, a blank line, then stdin (`wrk WS \"Summarise\" < notes.txt`);
an empty stdin adds nothing. A loop that feeds its own stdin to other commands should
give wrk `< /dev/null`. Put `--` before prompt words that start with a dash. No daemon
needs to be running: jobs wait in input/ready/.

Examples:
  id=$(wrk ./ws \"Explain inotify in one paragraph\")
  wrk ./ws \"Summarise\" --tag batch1 --max-tokens 200 | xargs flw ./ws
  git diff | wrk ./ws - --system \"You review code.\"
  wrk ./ws \"Name three colours\" --json-schema colours.json
  wrk ./ws --embed \"text to embed\"
  wrk ./ws --messages chat.json             a conversation, templated as the model's chat
  wrk ./ws --agent refine.wasm -- --rounds 2 \"Write a haiku\"   (an agent job)
  wrk ./ws --hold \"Refund order 42\"   (runs once nrvna approve ./ws ID says so)

On any exit but 0 nothing is left in the workspace.";

#[derive(Parser, Debug)]
#[command(
    name = "wrk",
    version,
    disable_version_flag = true,
    about = "Submit a job to an nrvna workspace and print its id",
    after_help = format!(
        "{AFTER_HELP}\n\n{}",
        exit::help(&[exit::OK, exit::FAILED, exit::USAGE])
    ),
    // `--max-tokens -1` is an out-of-range number (named with the range), not a flag.
    allow_negative_numbers = true
)]
struct Args {
    #[command(flatten)]
    version: VersionFlag,
    /// Workspace directory (created if missing)
    workspace: PathBuf,
    /// Prompt words, or `-` for stdin
    prompt: Vec<String>,
    /// System message for this job
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Most tokens to generate [default: the daemon's NRVNA_PREDICT]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_tokens: Option<u32>,
    /// Sampling temperature, 0 (greedy) to 5 [default: the daemon's NRVNA_TEMP]
    #[arg(long, value_name = "T")]
    temp: Option<f32>,
    /// Sampling seed, for reproducible output
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32))]
    seed: Option<u32>,
    /// Top-k sampling, 0 (off) to 100000
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    top_k: Option<u32>,
    /// Top-p sampling, in (0, 1]
    #[arg(long, value_name = "P")]
    top_p: Option<f32>,
    /// Tag for set operations (`flw --tag`); repeatable; [A-Za-z0-9_-]{1,64}
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Parent job id (lineage only; `flw --children`)
    #[arg(long, value_name = "ID")]
    parent: Option<String>,
    /// Attach an image (jpg, jpeg, png, gif, webp; ≤50 MiB); repeatable. Refused for
    /// now: vision is not supported yet
    #[arg(short = 'i', long = "image", value_name = "FILE")]
    images: Vec<PathBuf>,
    /// Produce an embedding (embedding.json) instead of text
    #[arg(long, conflicts_with_all = ["json_schema", "grammar"])]
    embed: bool,
    /// Constrain the output to this JSON Schema; output that does not parse fails the job
    #[arg(long, value_name = "FILE", conflicts_with = "grammar")]
    json_schema: Option<PathBuf>,
    /// Constrain the output with this GBNF grammar (root rule `root`)
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
    /// A chat job: FILE is a JSON list of {"role": "system"|"user"|"assistant",
    /// "content": "..."} messages, templated together (kept as messages.json; the last
    /// user message is the prompt)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prompt", "embed", "system", "images"])]
    messages: Option<PathBuf>,
    /// Queue an agent job: the daemon runs this component with the prompt words as its
    /// arguments (put `--` before arguments that start with a dash)
    #[arg(long, value_name = "COMPONENT.wasm", conflicts_with_all = ["embed", "json_schema", "grammar", "images", "system"])]
    agent: Option<PathBuf>,
    /// Hold the job in input/held/ until someone runs `nrvna approve WS ID` (or `nrvna
    /// deny`); flw shows it as held
    #[arg(long)]
    hold: bool,
    /// Storage name of the agent job's kv [default: the component's file stem]
    #[arg(long, value_name = "NAME", requires = "agent")]
    agent_name: Option<String>,
}

pub fn main() -> ExitCode {
    init_logging("warn");
    let args: Args = parse_args(exit::USAGE);
    match submit(args) {
        Ok(id) => {
            println!("{id}");
            ExitCode::SUCCESS
        }
        Err(e) => exit::report("wrk", &e),
    }
}

fn submit(args: Args) -> Result<JobId> {
    if let Some(component) = &args.agent {
        return submit_agent(&args, component);
    }
    let mut files = Vec::new();
    let prompt = match &args.messages {
        Some(path) => {
            let bytes = read_spec(path, "--messages")?;
            let list = messages::parse(bytes.as_bytes())
                .with_context(|| format!("--messages {}", path.display()))?;
            files.push((MESSAGES_FILE.to_owned(), bytes.into_bytes()));
            messages::last_user(&list).unwrap_or_default().to_owned()
        }
        None => read_prompt(&args.prompt)?,
    };
    let parent = parent(&args)?;
    let mode = if args.embed {
        Mode::Embed
    } else if !args.images.is_empty() {
        Mode::Vision
    } else {
        Mode::Text
    };
    let mut output_format = None;
    if let Some(path) = &args.json_schema {
        let schema = read_spec(path, "--json-schema")?;
        serde_json::from_str::<serde_json::Value>(&schema)
            .with_context(|| format!("--json-schema {}: not valid JSON", path.display()))?;
        let grammar = nrvna_engine::schema_to_grammar(&schema)
            .with_context(|| format!("--json-schema {}", path.display()))?;
        files.push((SCHEMA_FILE.to_owned(), schema.into_bytes()));
        files.push((GRAMMAR_FILE.to_owned(), grammar.into_bytes()));
        output_format = Some(OutputFormat::JsonSchema);
    }
    if let Some(path) = &args.grammar {
        let grammar = read_spec(path, "--grammar")?;
        // llama.cpp would refuse it only when the job runs; refuse it now, saying where.
        nrvna_engine::check_grammar(&grammar)
            .with_context(|| format!("--grammar {}", path.display()))?;
        files.push((GRAMMAR_FILE.to_owned(), grammar.into_bytes()));
        output_format = Some(OutputFormat::Grammar);
    }
    let sub = Submission {
        prompt,
        mode,
        images: args.images,
        parent,
        tags: args.tags,
        system: args.system,
        sampling: Sampling {
            max_tokens: args.max_tokens,
            temperature: args.temp,
            seed: args.seed,
            top_k: args.top_k,
            top_p: args.top_p,
            stop: Vec::new(),
        },
        output_format,
        files,
        agent: AgentJob::default(),
        raw_prompt: false,
    };
    if !sub.images.is_empty() {
        // Name a bad image file first; then refuse, as no daemon can run the job.
        sub.validate(&Limits::default())?;
        bail!("-i/--image: {VISION_UNSUPPORTED}");
    }
    submit_to(&args.workspace, sub, args.hold)
}

/// Why image input is refused until a daemon can run it.
const VISION_UNSUPPORTED: &str = "vision is not supported yet: nrvnad cannot run image jobs, \
     so the job would only fail; submit the prompt without images";

/// An agent job: the component travels inside the job directory (the daemon may run it
/// long after the file has changed), its arguments in meta.json.
fn submit_agent(args: &Args, component: &Path) -> Result<JobId> {
    let md =
        std::fs::metadata(component).with_context(|| format!("--agent {}", component.display()))?;
    if !md.is_file() {
        bail!("--agent {}: not a regular file", component.display());
    }
    let limit = nrvna_queue::Limits::default()
        .max_file_bytes
        .min(nrvna_sandbox::MAX_COMPONENT_BYTES);
    if md.len() > limit {
        bail!(
            "--agent {}: {} bytes; the limit is {limit}",
            component.display(),
            md.len()
        );
    }
    let bytes =
        std::fs::read(component).with_context(|| format!("--agent {}", component.display()))?;
    // A component (not a core module): magic, then layer 1 of the binary format.
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" || bytes[6..8] != [1, 0] {
        bail!(
            "--agent {}: not a WebAssembly component (build guests with --target wasm32-wasip2)",
            component.display()
        );
    }
    let name = match &args.agent_name {
        Some(n) => n.clone(),
        None => component
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "agent".into()),
    };
    nrvna_sandbox::check_name(&name).map_err(|e| anyhow::anyhow!("agent name {name:?}: {e}"))?;
    let parent = parent(args)?;
    let sub = Submission {
        prompt: args.prompt.join(" "),
        mode: Mode::Agent,
        parent,
        tags: args.tags.clone(),
        files: vec![(AGENT_FILE.to_owned(), bytes)],
        agent: AgentJob {
            args: Some(args.prompt.clone()),
            name: Some(name),
        },
        ..Submission::default()
    };
    submit_to(&args.workspace, sub, args.hold)
}

fn parent(args: &Args) -> Result<Option<JobId>> {
    args.parent
        .as_deref()
        .map(JobId::parse)
        .transpose()
        .context("--parent")
}

/// Validates `sub` before the workspace is created, so bad input leaves no new directory.
fn submit_to(path: &Path, sub: Submission, hold: bool) -> Result<JobId> {
    sub.validate(&Limits::default())?;
    let existed = Workspace::open(path).is_ok();
    let ws = Workspace::create(path)
        .with_context(|| format!("cannot create workspace {}", path.display()))?;
    // Said on stderr (stdout is only the id): a mistyped path otherwise queues unseen.
    if !existed {
        eprintln!("wrk: created workspace {}", path.display());
    }
    if hold {
        return Ok(ws.submit_held_with(sub, |_| Ok(()))?);
    }
    Ok(ws.submit(sub)?)
}

/// Prompt words, or stdin for `-` (or no words with stdin not a terminal). Words with
/// input piped or redirected to stdin as well: the words, a blank line, then the input
/// (as `ollama run` does); an empty stdin (`/dev/null`, a closed pipe) adds nothing.
fn read_prompt(words: &[String]) -> Result<String> {
    let stdin = std::io::stdin();
    if words == ["-"] || (words.is_empty() && !stdin.is_terminal()) {
        return read_stdin();
    }
    let prompt = words.join(" ");
    if words.is_empty() || !stdin_is_piped(&stdin) {
        return Ok(prompt);
    }
    let piped = read_stdin()?;
    if piped.is_empty() {
        return Ok(prompt);
    }
    Ok(format!("{prompt}\n\n{piped}"))
}

/// Whether stdin is a file, pipe or socket: input someone gave on purpose. A terminal or
/// another device (`/dev/null`) is not read, so scripts that leave stdin alone do not
/// block on it.
fn stdin_is_piped(stdin: &std::io::Stdin) -> bool {
    use rustix::fs::FileType;
    match rustix::fs::fstat(stdin) {
        Ok(stat) => matches!(
            FileType::from_raw_mode(stat.st_mode),
            FileType::RegularFile | FileType::Fifo | FileType::Socket
        ),
        Err(_) => false,
    }
}

/// The whole of stdin as UTF-8, one trailing newline removed.
fn read_stdin() -> Result<String> {
    let limit = nrvna_queue::Limits::default().max_prompt_bytes;
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .context("cannot read the prompt from stdin")?;
    if bytes.len() as u64 > limit {
        bail!("prompt on stdin is over the limit of {limit} bytes");
    }
    let mut text = String::from_utf8(bytes).context("the prompt on stdin is not UTF-8")?;
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(text)
}

/// Reads a schema or grammar: a regular file (not a symlink), at most 1 MiB, UTF-8.
fn read_spec(path: &Path, flag: &str) -> Result<String> {
    let md =
        std::fs::symlink_metadata(path).with_context(|| format!("{flag} {}", path.display()))?;
    if !md.file_type().is_file() {
        bail!("{flag} {}: not a regular file", path.display());
    }
    if md.len() > MAX_SPEC_BYTES {
        bail!(
            "{flag} {}: {} bytes; the limit is {MAX_SPEC_BYTES}",
            path.display(),
            md.len()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
}
