//! `retry`: a job wrapped in retries. Submits PROMPT, checks the output with a
//! validator, and tries again — after an exponentially growing, jittered wait — when the
//! job fails, times out, or its output is rejected; prints the first accepted output.
//!
//! ```text
//! nrvna exec retry.wasm --ws ./ws -- --attempts 4 \
//!     --schema '{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}' \
//!     "Invent a product name. Answer in JSON."
//! ```
//!
//! Arguments: the prompt (words joined by spaces) and the options in [`USAGE`].
//! Validators (all given must pass; default: at least 1 non-space character):
//! `--schema` (the output must be JSON valid against the schema; the job is also
//! constrained with it, so the daemon's grammar does most of the work and the check
//! here catches what a grammar cannot, such as lengths, ranges and cut-off output),
//! `--expect-json`, `--contains TEXT`, `--min-chars N`.
//! With `--schema` or `--expect-json` the result printed is the JSON value found in the
//! output (small models add prose around JSON), compact.
//! Backoff: the wait after failure n is `--backoff-ms`·2^(n-1), capped at
//! `--max-backoff-ms`, then scaled by a random factor in [0.5, 1) unless `--no-jitter`.
//! Each attempt uses a different seed (`--seed N` makes them N, N+1, ...), so a retry
//! is not the same sample again (at `--temp 0` it is: greedy decoding ignores seeds).
//! What is retried: a failed or cancelled job, a `--timeout-ms` expiry (the job is
//! cancelled), a rejected output. Bad input, missing grants and quotas fail at once.
//! Limits: 1-10 attempts; waits up to 60 s each.
//!
//! Jobs are tagged `retry` and `retry-attempt`.

use std::time::Duration;

use nrvna_guest::json;
use nrvna_guest::prelude::*;
use nrvna_guest::serde_json::{self, Value};

pub const USAGE: &str = "\
usage: retry [OPTIONS] [--] PROMPT...

Run PROMPT until a validator accepts the output, with exponential backoff and jitter
between attempts; print the accepted output.

Options:
  --attempts N          tries in all, 1-10 [3]
  --backoff-ms MS       wait after the first failure, doubled after each, 0-60000 [500]
  --max-backoff-ms MS   longest wait, 0-60000 [8000]
  --no-jitter           wait exactly the backoff (default: a random 50-100% of it)
  --timeout-ms MS       give up on an attempt after MS and cancel its job [none]
  --schema SCHEMA       the output must be JSON matching this JSON Schema: inline JSON
                        (starting with `{`) or the path of a file in a granted directory
  --expect-json         the output must contain a JSON value
  --contains TEXT       the output must contain TEXT (repeatable)
  --min-chars N         the output needs at least N non-space characters [1]
  --route NAME          run the job on this granted route [own workspace]
  --json                print {\"text\",\"id\",\"attempts\",\"failures\":[...]}
  --max-tokens N        most tokens per attempt [daemon default]
  --temp T              sampling temperature 0-5 [daemon default]
  --seed N              seed of the first attempt (then N+1, ...) [random]
  --system TEXT         system message
  --tag TAG             add a tag to every job (repeatable)
  -h, --help            this text";

struct Config {
    prompt: String,
    attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
    jitter: bool,
    timeout: Option<Duration>,
    schema: Option<Value>,
    expect_json: bool,
    contains: Vec<String>,
    min_chars: usize,
    json: bool,
    opts: Options,
}

impl Flags for Config {
    fn flag(&mut self, flag: &str, p: &mut Parser) -> Result<bool, String> {
        match flag {
            "--attempts" => self.attempts = p.number_in(1..=10)?,
            "--backoff-ms" => self.backoff = Duration::from_millis(p.number_in(0..=60_000)?),
            "--max-backoff-ms" => {
                self.max_backoff = Duration::from_millis(p.number_in(0..=60_000)?)
            }
            "--no-jitter" => self.jitter = false,
            "--timeout-ms" => {
                self.timeout = Some(Duration::from_millis(p.number_in(1..=86_400_000)?))
            }
            "--schema" => {
                let v = p.value()?;
                self.schema = Some(load_schema(&v).map_err(|e| p.error(e))?);
            }
            "--expect-json" => self.expect_json = true,
            "--contains" => self.contains.push(p.value()?),
            "--min-chars" => self.min_chars = p.number_in(0..=1_000_000)?,
            "--route" => self.opts.route = route_of(&p.value()?).map(Into::into),
            "--json" => self.json = true,
            _ => return self.opts.accept(flag, p),
        }
        Ok(true)
    }
}

fn parse(args: Vec<String>) -> Result<Option<Config>, String> {
    let mut p = Parser::new("retry", USAGE, args);
    let mut c = Config {
        prompt: String::new(),
        attempts: 3,
        backoff: Duration::from_millis(500),
        max_backoff: Duration::from_millis(8000),
        jitter: true,
        timeout: None,
        schema: None,
        expect_json: false,
        contains: Vec::new(),
        min_chars: 1,
        json: false,
        opts: Options::default(),
    };
    let Some(words) = p.read(&mut c)? else {
        return Ok(None);
    };
    c.prompt = p.joined(&words, "PROMPT")?;
    Ok(Some(c))
}

/// Inline JSON, or a file (read through the directories granted to the run).
fn load_schema(v: &str) -> Result<Value, String> {
    let text = if v.trim_start().starts_with('{') {
        v.to_owned()
    } else {
        std::fs::read_to_string(v).map_err(|e| {
            format!("--schema {v}: {e} (inline JSON starts with `{{`; a file must be in a directory granted with --dir)")
        })?
    };
    let schema: Value =
        serde_json::from_str(&text).map_err(|e| format!("--schema: not valid JSON: {e}"))?;
    if !schema.is_object() {
        return Err("--schema: a JSON Schema is an object".into());
    }
    Ok(schema)
}

export_command!(parse, USAGE, |c| retry(&c));

/// The printed result if `text` passes every validator, else why not.
fn validate(c: &Config, text: &str) -> Result<String, String> {
    let chars = text.chars().filter(|ch| !ch.is_whitespace()).count();
    if chars < c.min_chars {
        return Err(format!(
            "{chars} non-space characters, fewer than {}",
            c.min_chars
        ));
    }
    for needle in &c.contains {
        if !text.contains(needle.as_str()) {
            return Err(format!("output does not contain {needle:?}"));
        }
    }
    if c.schema.is_none() && !c.expect_json {
        return Ok(text.to_owned());
    }
    let value = json::extract(text).ok_or("output has no JSON value")?;
    if let Some(schema) = &c.schema {
        json::validate(&value, schema)?;
    }
    Ok(value.to_string())
}

fn retry(c: &Config) -> Result<String, String> {
    let policy = Retry::new(c.attempts)
        .backoff(c.backoff, c.max_backoff)
        .jitter(c.jitter);
    let base_seed = c
        .opts
        .seed
        .unwrap_or_else(|| (nrvna_guest::retry::random_unit() * f64::from(u32::MAX / 2)) as u32);
    let mut failures: Vec<String> = Vec::new();
    let mut last_id = String::new();
    let mut tries = 0;
    let outcome = policy.run(|attempt| {
        tries = attempt;
        let mut job = Job::new(c.prompt.as_str())
            .with(&c.opts)
            .seed(base_seed.wrapping_add(attempt - 1))
            .tag("retry")
            .tag("retry-attempt");
        if let Some(schema) = &c.schema {
            job = job.json_schema(schema.to_string());
        }
        let result = attempt_once(c, &job, &mut last_id);
        if let Err(e) = &result {
            failures.push(format!("attempt {attempt}: {e}"));
        }
        result
    });
    match outcome {
        Ok(text) => {
            log::info(format!("accepted on attempt {tries}"));
            if c.json {
                return Ok(serde_json::json!({
                    "text": text, "id": last_id, "attempts": tries, "failures": failures,
                })
                .to_string());
            }
            Ok(text)
        }
        Err(e) => Err(format!("retry: {e}\n{}", failures.join("\n"))),
    }
}

/// One attempt: submit, wait (cancelling on timeout), validate.
fn attempt_once(c: &Config, job: &Job, last_id: &mut String) -> nrvna_guest::Result<String> {
    let id = job.submit()?;
    *last_id = id.clone();
    let out = match c.timeout {
        Some(t) => match nrvna_guest::jobs::follow_timeout(&id, t) {
            Err(Error::Timeout) => {
                let _ = nrvna_guest::cancel(&id);
                return Err(Error::Timeout);
            }
            other => other?,
        },
        None => nrvna_guest::follow_output(&id)?,
    };
    validate(c, &out.text).map_err(Error::Rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        parse(args.iter().map(|s| s.to_string()).collect())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn default_validator_rejects_blank_output() {
        let c = config(&["p"]);
        assert!(validate(&c, "  \n").is_err());
        assert_eq!(validate(&c, " ok "), Ok(" ok ".to_owned()));
    }

    #[test]
    fn schema_validator_extracts_and_checks_json() {
        let c = config(&[
            "--schema",
            r#"{"type":"object","properties":{"n":{"type":"integer","maximum":5}},"required":["n"]}"#,
            "p",
        ]);
        assert_eq!(validate(&c, "Here: {\"n\": 3}"), Ok("{\"n\":3}".to_owned()));
        assert!(
            validate(&c, "{\"n\": 7}")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(validate(&c, "{\"n\": ").unwrap_err().contains("no JSON"));
    }

    #[test]
    fn contains_and_min_chars() {
        let c = config(&["--contains", "yes", "--min-chars", "5", "p"]);
        assert!(validate(&c, "yes").is_err());
        assert!(validate(&c, "no no no").is_err());
        assert!(validate(&c, "yes indeed").is_ok());
    }

    #[test]
    fn bad_schema_is_a_usage_error() {
        for bad in ["{not json", "/nonexistent/schema.json"] {
            let e = parse(vec!["--schema".into(), bad.into(), "p".into()])
                .err()
                .unwrap();
            assert!(
                e.starts_with("retry: --schema") && e.contains("usage: retry"),
                "{e}"
            );
        }
    }
}
