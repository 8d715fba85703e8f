//! `map-reduce`: fan-out / fan-in. Runs one job per subtask in parallel, then one
//! synthesis job over their results; prints the synthesis.
//!
//! ```text
//! nrvna exec map_reduce.wasm --ws ./ws -- "Research: PostgreSQL scalability" \
//!     "Research: PostgreSQL ecosystem" "Research: PostgreSQL vs MongoDB"
//! nrvna exec map_reduce.wasm --ws ./ws -- --goal "Choose a database for a startup" --parts 3
//! ```
//!
//! Arguments: each SUBTASK argument is one prompt (quote multi-word prompts), or
//! `--goal GOAL`, which first asks the model to split GOAL into `--parts` subtasks.
//! Defaults: the seed's synthesis prompt (`Synthesize these findings into a
//! recommendation:` followed by the results), all subtasks in flight at once.
//! Limits: 1-16 subtasks; 2-8 parts with `--goal`; each result is quoted into the
//! synthesis up to `--max-chars` (2000) characters.
//!
//! A subtask that fails is left out of the synthesis and reported (in the log, and
//! under `subtasks` with `--json`); the run fails only if every subtask failed or the
//! synthesis failed. A small model's split is parsed leniently (numbered or bulleted
//! lines, or a JSON array) and capped at `--parts`; if nothing usable comes back the
//! goal itself is the one subtask.
//!
//! Jobs are tagged `map-reduce` and `map-reduce-split`, `map-reduce-map` or
//! `map-reduce-reduce`.

use nrvna_guest::prelude::*;
use nrvna_guest::serde_json::json;
use nrvna_guest::text;

pub const USAGE: &str = "\
usage: map-reduce [OPTIONS] [--] SUBTASK...
       map-reduce [OPTIONS] --goal GOAL [--parts N]

Run every SUBTASK as a job in parallel, then synthesise their results in one more job;
prints the synthesis. With --goal, the model first splits GOAL into subtasks.

Options:
  --goal GOAL      split GOAL into subtasks with the model instead of listing them
  --parts N        subtasks to ask for with --goal, 2-8 [3]
  --reduce TEXT    the synthesis prompt: {results} is replaced by the numbered results,
                   {goal} by the goal (or the subtasks)
                   [Synthesize these findings into a recommendation:\\n{results}]
  --parallel N     most subtask jobs in flight at once, 1-16 [16]
  --max-chars N    most characters of each result quoted into the synthesis,
                   50-100000 [2000]
  --route NAME     run every job on this granted route [own workspace]
  --json           print {\"subtasks\":[{\"prompt\",\"id\",\"text\"|\"error\"}],\"id\",\"text\"}
  --max-tokens N   most tokens per job [daemon default]
  --temp T         sampling temperature 0-5 [daemon default]
  --seed N         sampling seed
  --system TEXT    system message for every job
  --tag TAG        add a tag to every job (repeatable)
  -h, --help       this text";

const DEFAULT_REDUCE: &str = "Synthesize these findings into a recommendation:\n{results}";
const MAX_SUBTASKS: usize = 16;

struct Config {
    subtasks: Vec<String>,
    goal: Option<String>,
    parts: usize,
    reduce: String,
    parallel: usize,
    max_chars: usize,
    json: bool,
    opts: Options,
}

impl Flags for Config {
    fn flag(&mut self, flag: &str, p: &mut Parser) -> Result<bool, String> {
        match flag {
            "--goal" => self.goal = Some(p.value()?),
            "--parts" => self.parts = p.number_in(2..=8)?,
            "--reduce" => self.reduce = p.value()?,
            "--parallel" => self.parallel = p.number_in(1..=MAX_SUBTASKS)?,
            "--max-chars" => self.max_chars = p.number_in(50..=100_000)?,
            "--route" => self.opts.route = route_of(&p.value()?).map(Into::into),
            "--json" => self.json = true,
            _ => return self.opts.accept(flag, p),
        }
        Ok(true)
    }

    fn check_word(&self, word: &str, p: &Parser) -> Result<(), String> {
        if word.trim().is_empty() {
            return Err(p.error("an empty SUBTASK"));
        }
        Ok(())
    }
}

fn parse(args: Vec<String>) -> Result<Option<Config>, String> {
    let mut p = Parser::new("map-reduce", USAGE, args);
    let mut c = Config {
        subtasks: Vec::new(),
        goal: None,
        parts: 3,
        reduce: DEFAULT_REDUCE.into(),
        parallel: MAX_SUBTASKS,
        max_chars: 2000,
        json: false,
        opts: Options::default(),
    };
    let Some(words) = p.read(&mut c)? else {
        return Ok(None);
    };
    c.subtasks = words;
    match (&c.goal, c.subtasks.len()) {
        (Some(_), n) if n > 0 => Err(p.error("give SUBTASKs or --goal, not both")),
        (Some(g), _) if g.trim().is_empty() => Err(p.error("--goal is empty")),
        (None, 0) => Err(p.error("no SUBTASK given")),
        (None, n) if n > MAX_SUBTASKS => Err(p.error(format!(
            "{n} subtasks; at most {MAX_SUBTASKS} run in one map-reduce (use batch for more)"
        ))),
        _ => Ok(Some(c)),
    }
}

export_command!(parse, USAGE, |c| map_reduce(&c));

fn job(c: &Config, prompt: String, step: &str) -> Job {
    Job::new(prompt)
        .with(&c.opts)
        .tag("map-reduce")
        .tag(format!("map-reduce-{step}"))
}

fn map_reduce(c: &Config) -> Result<String, String> {
    let subtasks = match &c.goal {
        Some(goal) => split(c, goal)?,
        None => c.subtasks.clone(),
    };

    // Map: everything in flight at once (up to --parallel), results in order.
    let jobs: Vec<Job> = subtasks.iter().map(|s| job(c, s.clone(), "map")).collect();
    let results = run_all(&jobs, c.parallel);

    let mut report = Vec::new();
    let mut findings = String::new();
    let mut ok = 0;
    for (i, (task, r)) in subtasks.iter().zip(&results).enumerate() {
        match r {
            Ok(out) => {
                ok += 1;
                findings.push_str(&format!(
                    "{}. {}\n",
                    ok,
                    text::head(out.text.trim(), c.max_chars)
                ));
                report.push(json!({ "prompt": task, "id": out.id, "text": out.text }));
            }
            Err(e) => {
                log::warn(format!(
                    "subtask {} ({:?}) failed: {e}",
                    i + 1,
                    text::head(task, 60)
                ));
                report.push(json!({ "prompt": task, "error": e.to_string() }));
            }
        }
    }
    if ok == 0 {
        let errors: Vec<String> = results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("  {}: {e}", i + 1)))
            .collect();
        return Err(format!(
            "map-reduce: all {} subtasks failed:\n{}",
            subtasks.len(),
            errors.join("\n")
        ));
    }
    if ok < subtasks.len() {
        log::warn(format!(
            "synthesising {ok} of {} results ({} failed)",
            subtasks.len(),
            subtasks.len() - ok
        ));
    }

    // Reduce.
    let goal = c.goal.clone().unwrap_or_else(|| subtasks.join("; "));
    let prompt = text::fill(
        &c.reduce,
        &[("results", findings.trim_end()), ("goal", &goal)],
    );
    let out = job(c, prompt, "reduce")
        .run()
        .context("map-reduce: synthesis")?;
    if c.json {
        return Ok(json!({ "subtasks": report, "id": out.id, "text": out.text }).to_string());
    }
    Ok(out.text)
}

/// Asks the model to split the goal; the goal itself if nothing usable comes back.
fn split(c: &Config, goal: &str) -> Result<Vec<String>, String> {
    let prompt = format!(
        "Break this task into {} independent subtasks. Write one subtask per line, \
         numbered, nothing else.\nTask: {goal}",
        c.parts
    );
    let answer = job(c, prompt, "split")
        .ask()
        .context("map-reduce: splitting the goal")?;
    let parts = text::parse_list(&answer, c.parts);
    if parts.is_empty() {
        log::warn("the model gave no usable subtasks; using the goal as the only one");
        return Ok(vec![goal.to_owned()]);
    }
    log::info(format!("split into {} subtask(s)", parts.len()));
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn subtasks_or_goal() {
        let c = parse(args(&["a b", "c"])).unwrap().unwrap();
        assert_eq!(c.subtasks, ["a b", "c"]);
        let c = parse(args(&["--goal", "g", "--parts", "4"]))
            .unwrap()
            .unwrap();
        assert_eq!((c.goal.as_deref(), c.parts), (Some("g"), 4));
        let many: Vec<String> = (0..17).map(|i| i.to_string()).collect();
        assert!(parse(many).err().unwrap().contains("at most 16"));
        for bad in [
            &[][..],
            &["--goal", "g", "x"],
            &["--parts", "1", "--goal", "g"],
            &[""],
        ] {
            let e = parse(args(bad)).err().unwrap();
            assert!(e.starts_with("map-reduce: ") && e.contains("usage:"), "{e}");
        }
    }
}
