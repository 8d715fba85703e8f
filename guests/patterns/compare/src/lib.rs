//! `compare`: one prompt to several routes (models) at once, then a judge picks the best
//! answer; prints that answer.
//!
//! ```text
//! nrvna exec compare.wasm --ws ./ws --route code=./ws-code --route fast=./ws-fast \
//!     -- "Explain what a mutex is in two sentences"
//! ```
//!
//! Arguments: the prompt (words joined by spaces) and the options in [`USAGE`].
//! Targets: `--to NAME` (repeatable; `self` is the own workspace; naming a route twice
//! asks it twice, with different seeds). Default: every granted route; with none
//! granted, 3 samples from the own workspace (self-consistency).
//! Judge: a job on `--judge ROUTE` (default the own workspace) shown the numbered
//! answers and asked for JSON `{"best": N}` under a JSON schema. If the judge fails or
//! names no valid answer — small models often do — or with `--no-judge`, the answer
//! that agrees most with the others wins (mean word overlap; ties go to the earlier
//! target). The `method` field of `--json` says which decided: `judge`, `agreement` or
//! `only` (one answer survived).
//! Limits: 2-8 targets; answers are shown to the judge cut to `--max-chars` (1500).
//! A target that fails is left out (and reported); the run fails only if all fail.
//!
//! Jobs are tagged `compare` and `compare-answer` or `compare-judge`.

use nrvna_guest::prelude::*;
use nrvna_guest::serde_json::{Value, json};
use nrvna_guest::text;

pub const USAGE: &str = "\
usage: compare [OPTIONS] [--] PROMPT...

Ask several routes the same PROMPT in parallel, then let a judge job (or agreement
between the answers) pick the best; prints the chosen answer.

Options:
  --to NAME        a route to ask, repeatable; `self` is the own workspace; a repeated
                   name is asked again with another seed
                   [every granted route; none granted: self 3 times]
  --judge ROUTE    where the judge job runs [self]
  --no-judge       decide by agreement between the answers only
  --max-chars N    most characters of an answer shown to the judge, 50-100000 [1500]
  --json           print {\"prompt\",\"answers\":[{\"route\",\"id\",\"text\"|\"error\"}],
                   \"best\",\"method\",\"text\"}
  --max-tokens N   most tokens per answer [daemon default]
  --temp T         sampling temperature 0-5 [daemon default]
  --seed N         base sampling seed (target i gets N+i)
  --system TEXT    system message for the answers
  --tag TAG        add a tag to every job (repeatable)
  -h, --help       this text";

const MAX_TARGETS: usize = 8;

struct Config {
    prompt: String,
    targets: Vec<String>,
    judge: String,
    no_judge: bool,
    max_chars: usize,
    json: bool,
    opts: Options,
}

impl Flags for Config {
    fn flag(&mut self, flag: &str, p: &mut Parser) -> Result<bool, String> {
        match flag {
            "--to" => self.targets.push(p.value()?),
            "--judge" => self.judge = p.value()?,
            "--no-judge" => self.no_judge = true,
            "--max-chars" => self.max_chars = p.number_in(50..=100_000)?,
            "--json" => self.json = true,
            _ => return self.opts.accept(flag, p),
        }
        Ok(true)
    }
}

fn parse(args: Vec<String>) -> Result<Option<Config>, String> {
    let mut p = Parser::new("compare", USAGE, args);
    let mut c = Config {
        prompt: String::new(),
        targets: Vec::new(),
        judge: "self".into(),
        no_judge: false,
        max_chars: 1500,
        json: false,
        opts: Options::default(),
    };
    let Some(words) = p.read(&mut c)? else {
        return Ok(None);
    };
    c.prompt = p.joined(&words, "PROMPT")?;
    if c.targets.len() > MAX_TARGETS {
        return Err(p.error(format!("at most {MAX_TARGETS} --to targets")));
    }
    Ok(Some(c))
}

export_command!(parse, USAGE, compare);

fn compare(mut c: Config) -> Result<String, String> {
    let granted = routes();
    if c.targets.is_empty() {
        c.targets = if granted.is_empty() {
            vec!["self".into(); 3]
        } else {
            granted.iter().take(MAX_TARGETS).cloned().collect()
        };
    }
    if c.targets.len() < 2 {
        return Err(nrvna_guest::args::usage_error(
            "compare",
            USAGE,
            "comparing needs at least 2 targets (name one twice to sample it twice)",
        ));
    }
    for t in c.targets.iter().chain(std::iter::once(&c.judge)) {
        if t != "self" && !granted.contains(t) {
            return Err(format!(
                "compare: route {t:?} is not granted (granted: {}); grant it with \
                 nrvna exec --route {t}=WS",
                if granted.is_empty() {
                    "none".to_owned()
                } else {
                    granted.join(", ")
                }
            ));
        }
    }

    // Different seeds, so that sampling one route twice gives two answers.
    let base = c
        .opts
        .seed
        .unwrap_or_else(|| (nrvna_guest::retry::random_unit() * f64::from(u32::MAX / 2)) as u32);
    let jobs: Vec<Job> = c
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Job::new(c.prompt.as_str())
                .with(&c.opts)
                .route(route_of(t))
                .seed(base.wrapping_add(i as u32))
                .tag("compare")
                .tag("compare-answer")
        })
        .collect();
    let results = run_all(&jobs, jobs.len());

    let answers: Vec<(usize, &Output)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().ok().map(|o| (i, o)))
        .collect();
    for (i, r) in results.iter().enumerate() {
        if let Err(e) = r {
            log::warn(format!("target {} ({}) failed: {e}", i + 1, c.targets[i]));
        }
    }
    if answers.is_empty() {
        return Err(format!(
            "compare: every target failed: {}",
            results
                .iter()
                .filter_map(|r| r.as_ref().err().map(ToString::to_string))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }

    let texts: Vec<&str> = answers.iter().map(|(_, o)| o.text.as_str()).collect();
    let (pick, method) = if answers.len() == 1 {
        (0, "only")
    } else if c.no_judge {
        (by_agreement(&texts), "agreement")
    } else {
        match judge(&c, &texts) {
            Some(n) => (n, "judge"),
            None => (by_agreement(&texts), "agreement"),
        }
    };
    let (target, best) = answers[pick];
    log::info(format!(
        "best: answer {} from {} (by {method})",
        target + 1,
        c.targets[target]
    ));

    if c.json {
        let list: Vec<Value> = results
            .iter()
            .zip(&c.targets)
            .map(|(r, t)| match r {
                Ok(o) => json!({ "route": t, "id": o.id, "text": o.text }),
                Err(e) => json!({ "route": t, "error": e.to_string() }),
            })
            .collect();
        return Ok(json!({
            "prompt": c.prompt,
            "answers": list,
            "best": target + 1,
            "method": method,
            "text": best.text,
        })
        .to_string());
    }
    Ok(best.text.clone())
}

/// Index (into `texts`) of the answer with the highest mean similarity to the others.
fn by_agreement(texts: &[&str]) -> usize {
    let mut best = (0, f64::MIN);
    for (i, a) in texts.iter().enumerate() {
        let score: f64 = texts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, b)| text::similarity(a, b))
            .sum();
        if score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

/// Asks the judge for the best answer; its index into `texts`, or `None`.
fn judge(c: &Config, texts: &[&str]) -> Option<usize> {
    let mut prompt = format!(
        "Question: {}\n\nHere are {} answers.\n",
        text::head(&c.prompt, 4000),
        texts.len()
    );
    for (i, t) in texts.iter().enumerate() {
        prompt.push_str(&format!(
            "\nAnswer {}:\n{}\n",
            i + 1,
            text::head(t.trim(), c.max_chars)
        ));
    }
    prompt.push_str("\nWhich answer is best? Reply with JSON: {\"best\": NUMBER}");
    let numbers: Vec<usize> = (1..=texts.len()).collect();
    let schema = json!({
        "type": "object",
        "properties": { "best": { "type": "integer", "enum": numbers } },
        "required": ["best"],
    });
    // A handful of tokens of JSON: greedy, and room enough not to cut it.
    let job = Job::new(prompt)
        .json_schema(schema.to_string())
        .max_tokens(32)
        .temperature(0.0)
        .route(route_of(&c.judge))
        .tag("compare")
        .tag("compare-judge");
    let job = c.opts.tags.iter().fold(job, |j, t| j.tag(t.as_str()));
    match job.ask() {
        Ok(answer) => {
            let n = read_best(&answer, texts.len());
            if n.is_none() {
                log::warn(format!(
                    "the judge answered {:?}; deciding by agreement",
                    text::head(&answer, 200)
                ));
            }
            n
        }
        Err(e) => {
            log::warn(format!("the judge failed ({e}); deciding by agreement"));
            None
        }
    }
}

/// `{"best": N}` (or a bare number) with 1 <= N <= n, as a 0-based index.
fn read_best(answer: &str, n: usize) -> Option<usize> {
    let v = match nrvna_guest::json::extract(answer)? {
        Value::Object(o) => o.get("best")?.as_f64()?,
        Value::Number(x) => x.as_f64()?,
        _ => return None,
    };
    (v.fract() == 0.0 && v >= 1.0 && v <= n as f64).then(|| v as usize - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_picks_the_answer_closest_to_the_rest() {
        let texts = ["the sky is blue", "sky is blue today", "bananas are yellow"];
        assert_eq!(by_agreement(&texts), 0);
        assert_eq!(by_agreement(&["a", "b"]), 0);
    }

    #[test]
    fn judge_answers_are_checked() {
        assert_eq!(read_best("{\"best\": 2}", 3), Some(1));
        assert_eq!(read_best("I think {\"best\": 3.0} wins", 3), Some(2));
        assert_eq!(read_best("{\"best\": 4}", 3), None);
        assert_eq!(read_best("{\"best\": 0}", 3), None);
        assert_eq!(read_best("answer two", 3), None);
    }

    #[test]
    fn args() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = parse(a(&["--to", "x", "--to", "self", "q?"]))
            .unwrap()
            .unwrap();
        assert_eq!(c.targets, ["x", "self"]);
        let nine: Vec<&str> = ["--to", "x"].repeat(9).into_iter().chain(["q"]).collect();
        assert!(parse(a(&nine)).err().unwrap().contains("at most 8"));
        assert!(parse(a(&[])).err().unwrap().contains("usage: compare"));
    }
}
