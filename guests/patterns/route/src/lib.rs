//! `route`: multi-model routing. Picks a route for INPUT — by shell-style rules, else
//! (with `--classify`) by asking the model, else the default — submits the input
//! there and prints the result.
//!
//! ```text
//! nrvna exec route.wasm --ws ./ws-fast --route code=./ws-code --route vision=./ws-vision \
//!     -- --rule '*.py=code' --rule '*.js=code' --rule '*.jpg=vision' "main.py"
//! ```
//!
//! Arguments: the input (words joined by spaces) and the options in [`USAGE`].
//! Routes are the names granted with `nrvna exec --route NAME=WS` (see `jobs.routes`);
//! `self` is the component's own workspace, the default destination.
//! Rules are tried in order, the first match wins; a rule's pattern matches the whole
//! input like a shell `case` (case-sensitive; `*`, `?`, `[...]`), as the seed's
//! `classify` function does. A rule naming a route that is not granted is a usage error.
//!
//! `--classify` asks the model to choose among the granted routes with a JSON schema
//! (`{"route": one of the names}`). The answer of a small model can be poor; an answer
//! that is not one of the routes (or a failed classification job) falls back to the
//! default route, with a warning in the log.
//!
//! Limits: one input per run (use `batch` for many); at most 64 rules. Jobs are tagged
//! `route` and `route-classify`/`route-job`.

use nrvna_guest::prelude::*;
use nrvna_guest::serde_json::{Value, json};
use nrvna_guest::text;

pub const USAGE: &str = "\
usage: route [OPTIONS] [--] INPUT...

Send INPUT to the route its rules (or the model, with --classify) pick; print the result.
Routes are granted with `nrvna exec --route NAME=WS`; `self` is the own workspace.

Options:
  --rule GLOB=ROUTE     inputs matching the shell pattern GLOB go to ROUTE (repeatable,
                        first match wins; case-sensitive; * ? [..])
  --classify            when no rule matches, ask the model to pick a granted route
  --describe NAME=TEXT  what a route is for, shown to the classifier (repeatable)
  --default ROUTE       where inputs go when nothing else decides [self]
  --template TEXT       the prompt; {input} is replaced by the input [{input}]
  --dry-run             print the chosen route's name; submit nothing but the
                        classification
  --json                print {\"route\",\"by\",\"id\",\"text\"} (by: rule, model or default)
  --max-tokens N        most tokens for the job [daemon default]
  --temp T              sampling temperature 0-5 [daemon default]
  --seed N              sampling seed
  --system TEXT         system message
  --tag TAG             add a tag to the jobs (repeatable)
  -h, --help            this text";

struct Config {
    input: String,
    rules: Vec<(String, String)>,
    classify: bool,
    descriptions: Vec<(String, String)>,
    default: String,
    template: String,
    dry_run: bool,
    json: bool,
    opts: Options,
}

impl Flags for Config {
    fn flag(&mut self, flag: &str, p: &mut Parser) -> Result<bool, String> {
        match flag {
            "--rule" => {
                let v = p.value()?;
                // The route is after the last `=`, so a pattern may contain `=`.
                match v.rsplit_once('=') {
                    Some((glob, route)) if !glob.is_empty() && !route.is_empty() => {
                        self.rules.push((glob.to_owned(), route.to_owned()))
                    }
                    _ => return Err(p.error(format!("--rule {v:?}: expected GLOB=ROUTE"))),
                }
                if self.rules.len() > 64 {
                    return Err(p.error("at most 64 --rule options"));
                }
            }
            "--classify" => self.classify = true,
            "--describe" => {
                let v = p.value()?;
                match v.split_once('=') {
                    Some((name, what)) if !name.is_empty() => {
                        self.descriptions.push((name.to_owned(), what.to_owned()))
                    }
                    _ => {
                        return Err(p.error(format!("--describe {v:?}: expected NAME=TEXT")));
                    }
                }
            }
            "--default" => self.default = p.value()?,
            "--template" => self.template = p.value()?,
            "--dry-run" => self.dry_run = true,
            "--json" => self.json = true,
            _ => return self.opts.accept(flag, p),
        }
        Ok(true)
    }
}

fn parse(args: Vec<String>) -> Result<Option<Config>, String> {
    let mut p = Parser::new("route", USAGE, args);
    let mut c = Config {
        input: String::new(),
        rules: Vec::new(),
        classify: false,
        descriptions: Vec::new(),
        default: "self".into(),
        template: "{input}".into(),
        dry_run: false,
        json: false,
        opts: Options::default(),
    };
    let Some(words) = p.read(&mut c)? else {
        return Ok(None);
    };
    c.input = p.joined(&words, "INPUT")?;
    Ok(Some(c))
}

export_command!(parse, USAGE, |c| route(&c));

/// How the route was chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
enum By {
    Rule,
    Model,
    Default,
}

impl By {
    fn name(self) -> &'static str {
        match self {
            By::Rule => "rule",
            By::Model => "model",
            By::Default => "default",
        }
    }
}

fn route(c: &Config) -> Result<String, String> {
    let granted = routes();
    let known = |r: &str| r == "self" || granted.iter().any(|g| g == r);
    let usage = |msg: String| nrvna_guest::args::usage_error("route", USAGE, msg);
    let grants = || {
        if granted.is_empty() {
            "none are granted (nrvna exec --route NAME=WS)".to_owned()
        } else {
            format!("granted: {}", granted.join(", "))
        }
    };
    for (_, r) in &c.rules {
        if !known(r) {
            return Err(usage(format!("--rule names route {r:?}, but {}", grants())));
        }
    }
    if !known(&c.default) {
        return Err(usage(format!(
            "--default names route {:?}, but {}",
            c.default,
            grants()
        )));
    }
    if c.classify && granted.is_empty() {
        return Err(usage(format!(
            "--classify chooses among routes, but {}",
            grants()
        )));
    }

    let (name, by) = match by_rule(&c.rules, &c.input) {
        Some(r) => (r.to_owned(), By::Rule),
        None if c.classify => match classify(c, &granted) {
            Some(r) => (r, By::Model),
            None => (c.default.clone(), By::Default),
        },
        None => (c.default.clone(), By::Default),
    };
    log::info(format!("route: {name} (by {})", by.name()));
    if c.dry_run {
        return Ok(if c.json {
            json!({ "route": name, "by": by.name() }).to_string()
        } else {
            name
        });
    }

    let prompt = text::fill(&c.template, &[("input", &c.input)]);
    let out = Job::new(prompt)
        .with(&c.opts)
        .route(route_of(name.as_str()))
        .tag("route")
        .tag("route-job")
        .run()
        .context(format!("route {name}"))?;
    if c.json {
        return Ok(
            json!({ "route": name, "by": by.name(), "id": out.id, "text": out.text }).to_string(),
        );
    }
    Ok(out.text)
}

/// The route of the first rule whose pattern matches the input.
fn by_rule<'a>(rules: &'a [(String, String)], input: &str) -> Option<&'a str> {
    let input = input.trim();
    rules
        .iter()
        .find(|(glob, _)| text::glob_match(glob, input))
        .map(|(_, r)| r.as_str())
}

/// Asks the model to pick one of `granted`; `None` if it could not.
fn classify(c: &Config, granted: &[String]) -> Option<String> {
    let mut list = String::new();
    for name in granted {
        match c.descriptions.iter().find(|(n, _)| n == name) {
            Some((_, what)) => list.push_str(&format!("- {name}: {what}\n")),
            None => list.push_str(&format!("- {name}\n")),
        }
    }
    let schema = json!({
        "type": "object",
        "properties": { "route": { "type": "string", "enum": granted } },
        "required": ["route"],
    });
    let prompt = format!(
        "Choose the best route for this input.\nRoutes:\n{list}Input: {}\n\
         Answer with JSON: {{\"route\": \"NAME\"}}",
        text::head(&c.input, 4000)
    );
    // The answer is a few tokens of JSON; the user's sampling options apply, their
    // --max-tokens does not (too few would cut the JSON).
    let job = Job::new(prompt)
        .json_schema(schema.to_string())
        .max_tokens(48)
        .temperature(c.opts.temperature.unwrap_or(0.0))
        .tag("route")
        .tag("route-classify");
    let job = c.opts.tags.iter().fold(job, |j, t| j.tag(t.as_str()));
    match job.ask() {
        Ok(answer) => {
            let pick = pick_route(&answer, granted);
            if pick.is_none() {
                log::warn(format!(
                    "the classifier answered {:?}, not a route; using the default",
                    text::head(&answer, 200)
                ));
            }
            pick
        }
        Err(e) => {
            log::warn(format!("classification failed ({e}); using the default"));
            None
        }
    }
}

/// The route named in the classifier's answer: `{"route": NAME}`, else a bare name.
fn pick_route(answer: &str, granted: &[String]) -> Option<String> {
    let named = match nrvna_guest::json::extract(answer) {
        Some(Value::Object(o)) => o.get("route").and_then(Value::as_str).map(str::to_owned),
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let named = named.unwrap_or_else(|| answer.trim().trim_matches('"').to_owned());
    granted.iter().find(|g| **g == named.trim()).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rules_first_match_wins() {
        let c = parse(args(&[
            "--rule",
            "*.py=code",
            "--rule",
            "*=fast",
            "--rule",
            "a=b=c",
            "main.py",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.rules[2], ("a=b".to_owned(), "c".to_owned()));
        assert_eq!(by_rule(&c.rules, " main.py "), Some("code"));
        assert_eq!(by_rule(&c.rules, "notes.txt"), Some("fast"));
        assert_eq!(by_rule(&c.rules[..1], "notes.txt"), None);
    }

    #[test]
    fn classifier_answers_are_read_leniently() {
        let granted = ["code".to_owned(), "fast".to_owned()];
        assert_eq!(
            pick_route("{\"route\": \"fast\"}", &granted).as_deref(),
            Some("fast")
        );
        assert_eq!(pick_route(" code\n", &granted).as_deref(), Some("code"));
        assert_eq!(pick_route("{\"route\": \"slow\"}", &granted), None);
        assert_eq!(pick_route("", &granted), None);
    }

    #[test]
    fn bad_rules_are_usage_errors() {
        for bad in [
            &["--rule", "*.py", "x"][..],
            &["--rule", "=code", "x"],
            &["x", "--nope"],
        ] {
            let e = parse(args(bad)).err().unwrap();
            assert!(e.contains("usage: route"), "{e}");
        }
    }
}
