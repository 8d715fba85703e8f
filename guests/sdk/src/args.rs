//! A small argument parser for components: `--flag`, `--flag VALUE`, `--flag=VALUE`,
//! `--` (everything after it is a word), and words. Errors are `String`s that end with
//! the component's usage text, ready to return from `run`.
//!
//! A component usually lets [`Parser::read`] walk the arguments (see [`crate::command`]);
//! walking them by hand looks like this:
//!
//! ```ignore
//! let mut p = Parser::new("refine", USAGE, args);
//! while let Some(arg) = p.next()? {
//!     match arg {
//!         Arg::Flag(f) if f == "--rounds" => rounds = p.number_in(1..=5)?,
//!         Arg::Flag(f) if f == "--help" || f == "-h" => return Ok(None),
//!         Arg::Flag(f) => return Err(p.unknown(&f)),
//!         Arg::Word(w) => words.push(w),
//!     }
//! }
//! ```

use std::collections::VecDeque;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// One parsed argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// `--name` or `-x` (with `--name=value` the value waits for [`Parser::value`]).
    Flag(String),
    /// A positional word (anything after `--` is a word).
    Word(String),
}

/// Walks a component's arguments; see the module docs.
#[derive(Debug)]
pub struct Parser {
    name: &'static str,
    usage: &'static str,
    rest: VecDeque<String>,
    /// The value of `--flag=value`, until [`Parser::value`] takes it.
    attached: Option<String>,
    /// The last flag returned, for error messages.
    flag: String,
    words_only: bool,
}

impl Parser {
    /// `name` prefixes error messages; `usage` is appended to them.
    pub fn new(name: &'static str, usage: &'static str, args: Vec<String>) -> Parser {
        Parser {
            name,
            usage,
            rest: args.into(),
            attached: None,
            flag: String::new(),
            words_only: false,
        }
    }

    /// The next argument, `None` at the end.
    #[allow(clippy::should_implement_trait)] // fallible, so not an Iterator
    pub fn next(&mut self) -> Result<Option<Arg>, String> {
        if self.attached.is_some() {
            return Err(self.error(format!("{} takes no value", self.flag)));
        }
        let Some(arg) = self.rest.pop_front() else {
            return Ok(None);
        };
        if self.words_only || !is_flag(&arg) {
            return Ok(Some(Arg::Word(arg)));
        }
        if arg == "--" {
            self.words_only = true;
            return self.next();
        }
        let flag = match arg.split_once('=') {
            Some((flag, value)) if arg.starts_with("--") => {
                self.attached = Some(value.to_owned());
                flag.to_owned()
            }
            _ => arg,
        };
        self.flag = flag.clone();
        Ok(Some(Arg::Flag(flag)))
    }

    /// The value of the last flag: its `=value`, else the next argument.
    pub fn value(&mut self) -> Result<String, String> {
        if let Some(v) = self.attached.take() {
            return Ok(v);
        }
        match self.rest.pop_front() {
            Some(v) => Ok(v),
            None => Err(self.error(format!("{} needs a value", self.flag))),
        }
    }

    /// The value of the last flag, parsed.
    pub fn parse<T: FromStr>(&mut self) -> Result<T, String>
    where
        T::Err: Display,
    {
        let v = self.value()?;
        v.parse()
            .map_err(|e| self.error(format!("{} {v:?}: {e}", self.flag)))
    }

    /// A number within `range` (limits are stated in the error).
    pub fn number_in<T>(&mut self, range: RangeInclusive<T>) -> Result<T, String>
    where
        T: FromStr + PartialOrd + Display,
        T::Err: Display,
    {
        let n: T = self.parse()?;
        if !range.contains(&n) {
            return Err(self.error(format!(
                "{} must be between {} and {}, got {n}",
                self.flag,
                range.start(),
                range.end()
            )));
        }
        Ok(n)
    }

    /// A usage error: `NAME: MESSAGE`, a blank line, then the usage text.
    pub fn error(&self, message: impl Display) -> String {
        usage_error(self.name, self.usage, message)
    }

    /// The error for a flag the component does not know.
    pub fn unknown(&self, flag: &str) -> String {
        self.error(format!("unknown option {flag}"))
    }
}

/// `NAME: MESSAGE`, a blank line, then the usage text.
pub fn usage_error(name: &str, usage: &str, message: impl Display) -> String {
    format!("{name}: {message}\n\n{usage}")
}

/// `-x`, `--name`, `--`; not `-` (stdin-style word) or a negative number.
fn is_flag(arg: &str) -> bool {
    let Some(rest) = arg.strip_prefix('-') else {
        return false;
    };
    !rest.is_empty() && !rest.starts_with(|c: char| c.is_ascii_digit() || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser(args: &[&str]) -> Parser {
        Parser::new(
            "t",
            "usage: t",
            args.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn flags_values_and_words() {
        let mut p = parser(&["--n", "3", "word", "--x=5", "-h", "-1", "--", "--not"]);
        assert_eq!(p.next(), Ok(Some(Arg::Flag("--n".into()))));
        assert_eq!(p.number_in(1..=5), Ok(3));
        assert_eq!(p.next(), Ok(Some(Arg::Word("word".into()))));
        assert_eq!(p.next(), Ok(Some(Arg::Flag("--x".into()))));
        assert_eq!(p.value(), Ok("5".into()));
        assert_eq!(p.next(), Ok(Some(Arg::Flag("-h".into()))));
        assert_eq!(p.next(), Ok(Some(Arg::Word("-1".into()))));
        assert_eq!(p.next(), Ok(Some(Arg::Word("--not".into()))));
        assert_eq!(p.next(), Ok(None));
    }

    #[test]
    fn errors_name_the_flag_and_carry_the_usage() {
        let mut p = parser(&["--n", "9"]);
        p.next().ok();
        let e = p.number_in(1..=5).unwrap_err();
        assert!(
            e.starts_with("t: --n must be between 1 and 5, got 9"),
            "{e}"
        );
        assert!(e.ends_with("usage: t"));

        let mut p = parser(&["--n"]);
        p.next().ok();
        assert!(p.value().unwrap_err().contains("--n needs a value"));

        let mut p = parser(&["--n", "x"]);
        p.next().ok();
        assert!(p.parse::<u32>().unwrap_err().contains("--n \"x\""));

        // `--flag=value` for a flag that takes none.
        let mut p = parser(&["--json=1", "w"]);
        p.next().ok();
        assert!(p.next().unwrap_err().contains("--json takes no value"));
    }
}
