//! The one place that turns flags and `NRVNA_*` variables into a daemon's configuration,
//! for `nrvnad` and for the daemon `nrvna exec --model` runs in its own process. Defaults
//! come from the crates that own them (`EngineConfig::new`, the sandbox's `Limits`);
//! ranges are written once, in [`vars`], and the `--help` table is made from both.

use std::fmt::Display;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use nrvna_engine::{
    DEFAULT_REQUEST_TIMEOUT, EngineConfig, RemoteConfig, RetryPolicy, SamplingDefaults,
    check_model_file,
};
use nrvna_http::HttpConfig;
use nrvna_sandbox::Grants;

use crate::cli::resolve_model;
use crate::settings::{env_in, env_str};

/// One `NRVNA_*` number: its name, what it sets and its accepted range.
pub struct NumVar<T> {
    pub name: &'static str,
    pub what: &'static str,
    pub min: T,
    pub max: T,
}

impl<T: FromStr + PartialOrd + Display + Copy> NumVar<T> {
    /// The value, strictly parsed; `None` when unset or empty.
    pub fn read(&self) -> Result<Option<T>> {
        env_in(self.name, self.min, self.max)
    }

    pub fn read_or(&self, default: T) -> Result<T> {
        Ok(self.read()?.unwrap_or(default))
    }

    fn help_row(&self, default: impl Display) -> String {
        format!(
            "  {:<19} {:<40} {:<8} ({}-{})",
            self.name, self.what, default, self.min, self.max
        )
    }
}

/// Every number variable the daemon reads.
pub mod vars {
    use super::NumVar;

    pub const PREDICT: NumVar<u32> = NumVar {
        name: "NRVNA_PREDICT",
        what: "max tokens generated per job",
        min: 1,
        max: 65_536,
    };
    pub const TEMP: NumVar<f32> = NumVar {
        name: "NRVNA_TEMP",
        what: "sampling temperature (0 = greedy)",
        min: 0.0,
        max: 5.0,
    };
    pub const CTX: NumVar<u32> = NumVar {
        name: "NRVNA_CTX",
        what: "context per job, in tokens",
        min: 64,
        max: 1_048_576,
    };
    pub const BATCH: NumVar<u32> = NumVar {
        name: "NRVNA_BATCH",
        what: "max tokens decoded per step",
        min: 1,
        max: 65_536,
    };
    pub const GPU_LAYERS: NumVar<u32> = NumVar {
        name: "NRVNA_GPU_LAYERS",
        what: "layers offloaded to the GPU (cuda build)",
        min: 0,
        max: 10_000,
    };
    pub const SEED: NumVar<u32> = NumVar {
        name: "NRVNA_SEED",
        what: "default sampling seed",
        min: 0,
        max: u32::MAX,
    };
    pub const TOP_K: NumVar<u32> = NumVar {
        name: "NRVNA_TOP_K",
        what: "top-k sampling (0 = off)",
        min: 0,
        max: 100_000,
    };
    pub const TOP_P: NumVar<f32> = NumVar {
        name: "NRVNA_TOP_P",
        what: "top-p sampling",
        min: 0.01,
        max: 1.0,
    };
    pub const THREADS: NumVar<u32> = NumVar {
        name: "NRVNA_THREADS",
        what: "fixed decode threads (unset: adapt)",
        min: 1,
        max: 1024,
    };
    pub const WORKERS: NumVar<usize> = NumVar {
        name: "NRVNA_WORKERS",
        what: "jobs decoded together (-w wins)",
        min: 1,
        max: 64,
    };
    pub const MAX_ATTEMPTS: NumVar<u32> = NumVar {
        name: "NRVNA_MAX_ATTEMPTS",
        what: "starts before a crashing job fails",
        min: 1,
        max: 100,
    };
    pub const FSYNC: NumVar<u8> = NumVar {
        name: "NRVNA_FSYNC",
        what: "fsync before each publishing rename",
        min: 0,
        max: 1,
    };
    pub const PREFIX_CACHE: NumVar<u8> = NumVar {
        name: "NRVNA_PREFIX_CACHE",
        what: "reuse cached prompt prefixes across jobs",
        min: 0,
        max: 1,
    };
    pub const HTTP_MAX_BODY: NumVar<usize> = NumVar {
        name: "NRVNA_HTTP_MAX_BODY",
        what: "largest HTTP request body, bytes",
        min: 1024,
        max: 1 << 30,
    };
    pub const MAX_QUEUE: NumVar<usize> = NumVar {
        name: "NRVNA_MAX_QUEUE",
        what: "queued jobs before HTTP answers 429",
        min: 1,
        max: 10_000_000,
    };
    pub const LLAMA_LOG: NumVar<u8> = NumVar {
        name: "NRVNA_LLAMA_LOG",
        what: "show llama.cpp's own log on stderr",
        min: 0,
        max: 1,
    };
    pub const BACKEND_RETRIES: NumVar<u32> = NumVar {
        name: "NRVNA_BACKEND_RETRIES",
        what: "--backend: retries before a job fails",
        min: 0,
        max: 100,
    };
    pub const BACKEND_BACKOFF_MS: NumVar<u64> = NumVar {
        name: "NRVNA_BACKEND_BACKOFF_MS",
        what: "--backend: first retry wait, ms (doubles)",
        min: 1,
        max: 60_000,
    };
    pub const BACKEND_TIMEOUT: NumVar<u64> = NumVar {
        name: "NRVNA_BACKEND_TIMEOUT",
        what: "--backend: seconds one request may take",
        min: 1,
        max: 86_400,
    };
}

/// Workers when neither a flag nor `NRVNA_WORKERS` says.
pub const DEFAULT_WORKERS: usize = 4;
/// Starts before a crashing job fails, when `NRVNA_MAX_ATTEMPTS` is unset.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The environment section of `nrvnad --help`: every variable the daemon reads, with its
/// default and range as the code has them.
pub fn env_help() -> String {
    let engine = EngineConfig::new("");
    let s = SamplingDefaults::default();
    let rows = [
        vars::PREDICT.help_row(s.max_tokens),
        vars::TEMP.help_row(s.temperature),
        vars::CTX.help_row(engine.ctx_per_slot),
        vars::BATCH.help_row(engine.batch),
        vars::GPU_LAYERS.help_row(engine.gpu_layers),
        vars::SEED.help_row("random"),
        vars::TOP_K.help_row(s.top_k),
        vars::TOP_P.help_row(s.top_p),
        vars::THREADS.help_row("auto"),
        vars::WORKERS.help_row(DEFAULT_WORKERS),
        vars::MAX_ATTEMPTS.help_row(DEFAULT_MAX_ATTEMPTS),
        vars::PREFIX_CACHE.help_row(u8::from(engine.prefix_cache)),
        vars::FSYNC.help_row(1),
        vars::LLAMA_LOG.help_row(0),
        vars::HTTP_MAX_BODY.help_row(nrvna_http::DEFAULT_MAX_BODY),
        vars::MAX_QUEUE.help_row("none"),
        vars::BACKEND_RETRIES.help_row(RetryPolicy::default().max_retries),
        vars::BACKEND_BACKOFF_MS.help_row(RetryPolicy::default().base_delay.as_millis()),
        vars::BACKEND_TIMEOUT.help_row(DEFAULT_REQUEST_TIMEOUT.as_secs()),
    ];
    let mut out = String::from("Environment (parsed strictly; a bad value stops start-up):\n");
    for row in rows {
        out.push_str(&row);
        out.push('\n');
    }
    out.push_str(
        "  NRVNA_MODELS_DIR    where a bare model name is looked up     ~/.cache/nrvna/models\n\
         \x20 NRVNA_EMBED_MODEL   embedding model (--embed-model wins)     the chat model, mean-pooled\n\
         \x20 NRVNA_HTTP          serve the HTTP API here (--http wins)    off\n\
         \x20 NRVNA_API_KEY       key HTTP clients send as a Bearer token  none\n\
         \x20 NRVNA_BACKEND_API_KEY key sent to the --backend server        none\n\
         \x20 NRVNA_LOG           log filter (error, warn, info, debug)    info\n\
         \x20 GOMP_SPINCOUNT      decode threads' spin before they sleep   30000\n\
         \x20 OMP_WAIT_POLICY     how decode threads wait (active/passive) unset\n\
         \x20 XDG_CACHE_HOME      compiled agents cached in its nrvna/wasm ~/.cache\n\
         \x20 NO_COLOR            set: no colour (else only on a terminal) unset",
    );
    out
}

/// What runs agent jobs (`wrk --agent`): the grants every one of them gets.
pub struct AgentSettings {
    pub grants: Grants,
    /// Agent jobs running at once; more wait their turn.
    pub max_running: usize,
    /// Where compiled components are cached; `None`: compile every time.
    pub cache_dir: Option<PathBuf>,
}

/// Everything a daemon needs to start.
pub struct DaemonConfig {
    pub workspace: PathBuf,
    pub engine: EngineConfig,
    pub max_attempts: u32,
    /// Work until no job is queued or running, then exit.
    pub drain: bool,
    /// How long running jobs may finish after a stop before they are requeued.
    pub grace: Duration,
    /// The OpenAI-compatible HTTP API (`--http`); `None`: no server.
    pub http: Option<HttpConfig>,
    /// `None`: agent jobs fail with a reason (the in-process daemon of `nrvna exec`, whose
    /// component runs beside it, not inside it).
    pub agents: Option<AgentSettings>,
    /// `--shared`, `--watch` (daemon::scale).
    pub scale: super::scale::ScaleConfig,
    /// A remote OpenAI-compatible server runs the jobs (`--backend`) instead of a model
    /// loaded here; `engine` then only gives the workers and sampling defaults.
    pub remote: Option<RemoteConfig>,
}

impl DaemonConfig {
    /// The configuration for serving `workspace` with `model` (a path, or part of a file
    /// name in `NRVNA_MODELS_DIR`). `workers` is the flag's value; `None` reads
    /// `NRVNA_WORKERS`. `embed_model` is `--embed-model`; `None` reads
    /// `NRVNA_EMBED_MODEL`. Checks that need nothing loaded happen here, so bad input
    /// fails before anything starts.
    pub fn new(
        workspace: PathBuf,
        model: &str,
        workers: Option<usize>,
        embed_model: Option<&str>,
    ) -> Result<DaemonConfig> {
        let model = resolve_model(model)?;
        check_model_file(&model)?;
        let embed_model = embed_model_file(embed_model)?;
        let workers = match workers {
            Some(w) => w,
            None => vars::WORKERS.read_or(DEFAULT_WORKERS)?,
        };
        let mut engine = engine_config(model, workers)?;
        engine.embed_model = embed_model;
        // Read here so a bad value stops start-up; the queue and engine read them again.
        vars::FSYNC.read()?;
        vars::LLAMA_LOG.read()?;
        DaemonConfig::serving(workspace, engine, None)
    }

    /// What every daemon shares, local or remote, around its engine settings.
    fn serving(
        workspace: PathBuf,
        engine: EngineConfig,
        remote: Option<RemoteConfig>,
    ) -> Result<DaemonConfig> {
        Ok(DaemonConfig {
            workspace,
            engine,
            max_attempts: vars::MAX_ATTEMPTS.read_or(DEFAULT_MAX_ATTEMPTS)?,
            drain: false,
            grace: Duration::from_secs(15),
            http: None,
            agents: None,
            scale: Default::default(),
            remote,
        })
    }

    /// The configuration for serving `workspace` with the remote OpenAI-compatible server
    /// at `url` (`--backend`): `model` is `--backend-model`, `api_key` is
    /// `--backend-api-key` (`None` reads `NRVNA_BACKEND_API_KEY`); the retry bound and
    /// timeout come from `NRVNA_BACKEND_*`.
    pub fn remote(
        workspace: PathBuf,
        url: &str,
        model: Option<&str>,
        api_key: Option<String>,
        workers: Option<usize>,
    ) -> Result<DaemonConfig> {
        let workers = match workers {
            Some(w) => w,
            None => vars::WORKERS.read_or(DEFAULT_WORKERS)?,
        };
        let engine = engine_config(PathBuf::new(), workers)?;
        let defaults = RetryPolicy::default();
        let retry = RetryPolicy {
            max_retries: vars::BACKEND_RETRIES.read_or(defaults.max_retries)?,
            base_delay: vars::BACKEND_BACKOFF_MS
                .read()?
                .map_or(defaults.base_delay, Duration::from_millis),
            max_delay: defaults.max_delay,
        };
        let mut remote = RemoteConfig::new(url);
        remote.model = model.map(str::to_owned);
        remote.api_key = match api_key {
            Some(key) => Some(key),
            None => env_str("NRVNA_BACKEND_API_KEY")?,
        };
        remote.workers = workers;
        remote.sampling = engine.sampling.clone();
        remote.retry = retry;
        remote.request_timeout = vars::BACKEND_TIMEOUT
            .read()?
            .map_or(DEFAULT_REQUEST_TIMEOUT, Duration::from_secs);
        vars::FSYNC.read()?;
        DaemonConfig::serving(workspace, engine, Some(remote))
    }

    pub fn workers(&self) -> usize {
        self.engine.slots
    }
}

/// What `--http` and its companions (or `NRVNA_HTTP`, `NRVNA_API_KEY`,
/// `NRVNA_HTTP_MAX_BODY`, `NRVNA_MAX_QUEUE`) ask for; `None`: no HTTP server. An address
/// is `HOST:PORT`, a bare `PORT` (on loopback), or empty for the default.
pub fn http_config(
    addr: Option<&str>,
    api_key: Option<String>,
    max_body: Option<usize>,
    max_queue: Option<usize>,
    header_timeout: Option<std::time::Duration>,
) -> Result<Option<HttpConfig>> {
    let addr = match addr {
        Some(a) => a.to_owned(),
        None => match env_str("NRVNA_HTTP")? {
            Some(a) => a,
            None => return Ok(None),
        },
    };
    let addr = parse_http_addr(&addr)?;
    let api_key = match api_key {
        Some(key) => Some(key),
        None => env_str("NRVNA_API_KEY")?,
    };
    let max_body = match max_body {
        Some(n) => n,
        None => vars::HTTP_MAX_BODY.read_or(nrvna_http::DEFAULT_MAX_BODY)?,
    };
    let max_queue = match max_queue {
        Some(n) => Some(n),
        None => vars::MAX_QUEUE.read()?,
    };
    let config = HttpConfig {
        addr,
        api_key,
        max_body_bytes: max_body,
        max_queue,
        header_read_timeout: header_timeout.unwrap_or(nrvna_http::DEFAULT_HEADER_READ_TIMEOUT),
    };
    config.check().map_err(anyhow::Error::msg)?;
    Ok(Some(config))
}

/// `HOST:PORT`, `PORT` (loopback) or `""` (loopback, the default port).
pub fn parse_http_addr(text: &str) -> Result<std::net::SocketAddr> {
    let text = text.trim();
    let loopback = std::net::Ipv4Addr::LOCALHOST;
    if text.is_empty() {
        return Ok((loopback, nrvna_http::DEFAULT_PORT).into());
    }
    if let Ok(port) = text.parse::<u16>() {
        return Ok((loopback, port).into());
    }
    text.parse().with_context(|| {
        format!(
            "--http {text:?}: expected HOST:PORT (127.0.0.1:{0}), a port, or nothing for              127.0.0.1:{0}",
            nrvna_http::DEFAULT_PORT
        )
    })
}

/// The dedicated embedding model: `--embed-model`, else `NRVNA_EMBED_MODEL`, resolved like
/// MODEL and checked to be a GGUF file; errors name where the path came from.
fn embed_model_file(flag: Option<&str>) -> Result<Option<PathBuf>> {
    let (arg, source) = match flag {
        Some(arg) => (arg.to_owned(), "--embed-model"),
        None => match env_str("NRVNA_EMBED_MODEL")? {
            Some(arg) => (arg, "NRVNA_EMBED_MODEL"),
            None => return Ok(None),
        },
    };
    let path = resolve_model(&arg).with_context(|| format!("{source} {arg}"))?;
    check_model_file(&path).with_context(|| format!("{source} {}", path.display()))?;
    Ok(Some(path))
}

/// Engine settings from the worker count and the `NRVNA_*` variables; what a variable
/// leaves unset keeps the engine's own default.
fn engine_config(model: PathBuf, workers: usize) -> Result<EngineConfig> {
    let mut config = EngineConfig::new(model);
    config.slots = workers;
    config.ctx_per_slot = vars::CTX.read_or(config.ctx_per_slot)?;
    config.batch = vars::BATCH.read_or(config.batch)?;
    config.gpu_layers = vars::GPU_LAYERS.read_or(config.gpu_layers)?;
    config.threads = vars::THREADS.read()?.or(config.threads);
    config.prefix_cache = vars::PREFIX_CACHE.read_or(u8::from(config.prefix_cache))? == 1;
    let s = &config.sampling;
    config.sampling = SamplingDefaults {
        max_tokens: vars::PREDICT.read_or(s.max_tokens)?,
        temperature: vars::TEMP.read_or(s.temperature)?,
        top_k: vars::TOP_K.read_or(s.top_k)?,
        top_p: vars::TOP_P.read_or(s.top_p)?,
        min_p: s.min_p,
        seed: vars::SEED.read()?.or(s.seed),
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_help_names_every_variable_with_the_code_defaults() {
        let help = env_help();
        for name in [
            "NRVNA_PREDICT",
            "NRVNA_CTX",
            "NRVNA_FSYNC",
            "NRVNA_LLAMA_LOG",
            "NRVNA_PREFIX_CACHE",
            "OMP_WAIT_POLICY",
            "NRVNA_MAX_ATTEMPTS",
            "NRVNA_EMBED_MODEL",
        ] {
            assert!(help.contains(name), "{name} missing from\n{help}");
        }
        let ctx = help
            .lines()
            .find(|l| l.contains("NRVNA_CTX"))
            .unwrap_or_default();
        assert!(
            ctx.contains(&EngineConfig::new("").ctx_per_slot.to_string()) && ctx.contains("64-"),
            "{ctx}"
        );
    }
}
