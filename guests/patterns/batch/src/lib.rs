//! `batch`: batch processing. One job per input — the arguments, or the lines of a file
//! in a granted directory — with a bounded number in flight; prints every result in
//! input order. A failed input is reported in its place and does not stop the others.
//!
//! ```text
//! nrvna exec batch.wasm --ws ./ws --dir ./data:/data:ro -- --file /data/questions.txt
//! nrvna exec batch.wasm --ws ./ws --dir ./photos:/photos:ro -- --image --file /photos/list.txt
//! ```
//!
//! Arguments: INPUT words (each one job) or `--file PATH` (each non-empty line one job,
//! surrounding whitespace trimmed; PATH is the guest path of a directory granted with
//! `nrvna exec --dir HOST:GUEST`). `--template` turns an input into a prompt
//! (`{input}`); with `--image` each input is an image path attached to the job, and
//! the prompt is the template (default `Caption this image`), as in the seed.
//! Defaults: 8 jobs in flight, at most 1000 inputs.
//! Limits: 1-64 in flight, 1-10000 inputs, a file of at most 16 MiB.
//!
//! Output: for each input, a header `=== N: INPUT ===` (the input cut to 60 characters)
//! and its result, or `error: ...` after a header ending in `FAILED`; with `--json`
//! one JSON object per line. A summary goes to the log. The run fails only when every
//! input failed (or none could be read).
//!
//! Jobs are tagged `batch`.

use nrvna_guest::prelude::*;
use nrvna_guest::serde_json::json;
use nrvna_guest::text;

pub const USAGE: &str = "\
usage: batch [OPTIONS] [--] INPUT...
       batch [OPTIONS] --file PATH

Run one job per INPUT (or per non-empty line of PATH, a file in a directory granted
with `nrvna exec --dir`), at most --parallel at a time; print the results in order.
Failed inputs are reported in place; the run fails only if all of them fail.

Options:
  --file PATH      read inputs from PATH, one per non-empty line
  --template TEXT  the prompt for an input; {input} is replaced by it
                   [{input}; with --image: Caption this image]
  --image          inputs are image paths (in a granted directory) attached to the job
  --parallel N     most jobs in flight at once, 1-64 [8]
  --limit N        most inputs, 1-10000 [1000]
  --route NAME     run every job on this granted route [own workspace]
  --json           print one JSON object per input:
                   {\"index\",\"input\",\"id\",\"ok\",\"text\"|\"error\"}
  --max-tokens N   most tokens per job [daemon default]
  --temp T         sampling temperature 0-5 [daemon default]
  --seed N         sampling seed
  --system TEXT    system message for every job
  --tag TAG        add a tag to every job (repeatable)
  -h, --help       this text";

const MAX_FILE_BYTES: u64 = 16 << 20;

struct Config {
    inputs: Vec<String>,
    file: Option<String>,
    template: Option<String>,
    image: bool,
    parallel: usize,
    limit: usize,
    json: bool,
    opts: Options,
}

impl Flags for Config {
    fn flag(&mut self, flag: &str, p: &mut Parser) -> Result<bool, String> {
        match flag {
            "--file" => self.file = Some(p.value()?),
            "--template" => self.template = Some(p.value()?),
            "--image" => self.image = true,
            "--parallel" => self.parallel = p.number_in(1..=64)?,
            "--limit" => self.limit = p.number_in(1..=10_000)?,
            "--route" => self.opts.route = route_of(&p.value()?).map(Into::into),
            "--json" => self.json = true,
            _ => return self.opts.accept(flag, p),
        }
        Ok(true)
    }
}

fn parse(args: Vec<String>) -> Result<Option<Config>, String> {
    let mut p = Parser::new("batch", USAGE, args);
    let mut c = Config {
        inputs: Vec::new(),
        file: None,
        template: None,
        image: false,
        parallel: 8,
        limit: 1000,
        json: false,
        opts: Options::default(),
    };
    let Some(words) = p.read(&mut c)? else {
        return Ok(None);
    };
    c.inputs = words;
    match (&c.file, c.inputs.is_empty()) {
        (Some(_), false) => Err(p.error("give INPUTs or --file, not both")),
        (None, true) => Err(p.error("no INPUT given")),
        _ => Ok(Some(c)),
    }
}

export_command!(parse, USAGE, batch);

/// The non-empty lines of the file, trimmed.
fn read_inputs(path: &str) -> Result<Vec<String>, String> {
    let hint = "grant its directory with nrvna exec --dir HOST:GUEST and pass the GUEST path";
    let meta =
        std::fs::metadata(path).map_err(|e| format!("batch: --file {path}: {e} ({hint})"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "batch: --file {path}: {} bytes; the limit is {MAX_FILE_BYTES}",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("batch: --file {path}: {e} ({hint})"))?;
    Ok(lines(&String::from_utf8_lossy(&bytes)))
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn batch(mut c: Config) -> Result<String, String> {
    if let Some(path) = &c.file {
        c.inputs = read_inputs(path)?;
        if c.inputs.is_empty() {
            return Err(format!("batch: --file {path} has no non-empty line"));
        }
    }
    if c.inputs.len() > c.limit {
        return Err(nrvna_guest::args::usage_error(
            "batch",
            USAGE,
            format!("{} inputs, over --limit {}", c.inputs.len(), c.limit),
        ));
    }
    let template = c.template.clone().unwrap_or_else(|| {
        if c.image {
            "Caption this image".into()
        } else {
            "{input}".into()
        }
    });
    let jobs: Vec<Job> = c
        .inputs
        .iter()
        .map(|input| {
            let job = Job::new(text::fill(&template, &[("input", input)]))
                .with(&c.opts)
                .tag("batch");
            if c.image {
                job.image(input.as_str())
            } else {
                job
            }
        })
        .collect();
    log::info(format!(
        "submitting {} job(s), {} at a time",
        jobs.len(),
        c.parallel
    ));
    let results = run_all(&jobs, c.parallel);

    let failed = results.iter().filter(|r| r.is_err()).count();
    log::info(format!(
        "batch: {} of {} done, {failed} failed",
        results.len() - failed,
        results.len()
    ));
    let mut out = String::new();
    for (i, (input, r)) in c.inputs.iter().zip(&results).enumerate() {
        let n = i + 1;
        if c.json {
            let line = match r {
                Ok(o) => {
                    json!({"index": n, "input": input, "id": o.id, "ok": true, "text": o.text})
                }
                Err(e) => json!({"index": n, "input": input, "ok": false, "error": e.to_string()}),
            };
            out.push_str(&line.to_string());
            out.push('\n');
            continue;
        }
        let shown = text::head(input, 60).replace('\n', " ");
        match r {
            Ok(o) => out.push_str(&format!("=== {n}: {shown} ===\n{}\n", o.text)),
            Err(e) => out.push_str(&format!("=== {n}: {shown} === FAILED\nerror: {e}\n")),
        }
    }
    if failed == results.len() {
        return Err(format!("batch: all {failed} job(s) failed\n{out}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn inputs_are_args_or_file_lines() {
        let c = parse(args(&["--parallel", "2", "a", "b c"]))
            .unwrap()
            .unwrap();
        assert_eq!((c.inputs.len(), c.parallel), (2, 2));
        let c = parse(args(&["--file", "/d/x.txt"])).unwrap().unwrap();
        assert_eq!(c.file.as_deref(), Some("/d/x.txt"));
        assert_eq!(lines(" one \n\n  \ntwo\r\n"), ["one", "two"]);
        for bad in [&[][..], &["--file", "f", "x"], &["--parallel", "0", "x"]] {
            assert!(parse(args(bad)).err().unwrap().contains("usage: batch"));
        }
    }
}
