//! Components that run like commands: flags and words in, text out.
//!
//! The component's settings implement [`Flags`]: they take the component's own flags.
//! [`Parser::read`] walks the arguments into them and handles what every component
//! handles alike: `-h`/`--help`, unknown flags, the words. [`export_command!`] makes the
//! whole the component's `run`: `--help` returns the usage text; anything else is
//! parsed, then run.
//!
//! [`export_command!`]: crate::export_command!
//!
//! ```ignore
//! struct Config { goal: String, rounds: u32, opts: Options }
//!
//! impl Flags for Config {
//!     fn flag(&mut self, flag: &str, p: &mut Parser) -> Result<bool, String> {
//!         match flag {
//!             "--rounds" => self.rounds = p.number_in(1..=5)?,
//!             _ => return self.opts.accept(flag, p),
//!         }
//!         Ok(true)
//!     }
//! }
//!
//! fn parse(args: Vec<String>) -> Result<Option<Config>, String> {
//!     let mut p = Parser::new("refine", USAGE, args);
//!     let mut c = Config { goal: String::new(), rounds: 1, opts: Options::default() };
//!     let Some(words) = p.read(&mut c)? else {
//!         return Ok(None);
//!     };
//!     c.goal = p.joined(&words, "GOAL")?;
//!     Ok(Some(c))
//! }
//!
//! fn refine(c: &Config) -> Result<String, String> { /* the work */ }
//!
//! export_command!(parse, USAGE, |c| refine(&c));
//! ```

use crate::args::{Arg, Parser};

/// A component's settings, as [`Parser::read`] fills them from its arguments.
pub trait Flags {
    /// Takes `flag` (reading its value from `p`) if it is one of the component's own,
    /// and says whether it was. A component that submits jobs hands the rest to
    /// [`crate::Options::accept`], the submit flags every pattern shares.
    fn flag(&mut self, flag: &str, p: &mut Parser) -> Result<bool, String>;

    /// Checks a word as it is read, so that a bad one is reported before the arguments
    /// after it. Any word passes unless the component says otherwise.
    fn check_word(&self, _word: &str, _p: &Parser) -> Result<(), String> {
        Ok(())
    }
}

impl Parser {
    /// Reads every argument into `config`: its own flags through [`Flags::flag`],
    /// an unknown flag as a usage error. Returns the words in order, or `None` at `-h`
    /// or `--help` (the arguments after it are not read).
    pub fn read<F: Flags>(&mut self, config: &mut F) -> Result<Option<Vec<String>>, String> {
        let mut words = Vec::new();
        while let Some(arg) = self.next()? {
            match arg {
                Arg::Flag(flag) if flag == "-h" || flag == "--help" => return Ok(None),
                Arg::Flag(flag) => {
                    if !config.flag(&flag, self)? {
                        return Err(self.unknown(&flag));
                    }
                }
                Arg::Word(word) => {
                    config.check_word(&word, self)?;
                    words.push(word);
                }
            }
        }
        Ok(Some(words))
    }

    /// The words as one text, joined by spaces; a usage error (`no WHAT given`) when
    /// that is blank.
    pub fn joined(&self, words: &[String], what: &str) -> Result<String, String> {
        let text = words.join(" ");
        if text.trim().is_empty() {
            return Err(self.error(format!("no {what} given")));
        }
        Ok(text)
    }
}

/// The `run` of a component built with [`crate::export_command!`]: the usage text for
/// `--help` (`Ok(None)`), else `work` on the parsed settings.
pub fn run<C>(
    parsed: Result<Option<C>, String>,
    usage: &str,
    work: impl FnOnce(C) -> Result<String, String>,
) -> Result<String, String> {
    match parsed? {
        Some(config) => work(config),
        None => Ok(usage.to_owned()),
    }
}

/// Exports a command as the component's `run`: `export_command!(parse, USAGE, work)`.
/// `parse` turns the arguments into settings (`fn(Vec<String>) -> Result<Option<C>,
/// String>`, `None` for `--help`), `USAGE` is what `--help` returns, and `work` (a
/// function or closure taking the settings) does the rest. See the [module docs](self).
#[macro_export]
macro_rules! export_command {
    ($parse:path, $usage:expr, $work:expr) => {
        // In a block of its own, so the exported type takes no name in the component.
        const _: () = {
            struct Export;

            impl $crate::Agent for Export {
                fn run(
                    args: ::std::vec::Vec<::std::string::String>,
                ) -> ::std::result::Result<::std::string::String, ::std::string::String> {
                    $crate::command::run($parse(args), $usage, $work)
                }
            }

            $crate::export_agent!(Export);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq)]
    struct Settings {
        n: u32,
        loud: bool,
    }

    impl Flags for Settings {
        fn flag(&mut self, flag: &str, p: &mut Parser) -> Result<bool, String> {
            match flag {
                "--loud" => self.loud = true,
                "--n" => self.n = p.number_in(1..=9)?,
                _ => return Ok(false),
            }
            Ok(true)
        }

        fn check_word(&self, word: &str, p: &Parser) -> Result<(), String> {
            if word.is_empty() {
                return Err(p.error("an empty word"));
            }
            Ok(())
        }
    }

    fn parse(args: &[&str]) -> Result<Option<(Settings, Vec<String>)>, String> {
        let mut p = Parser::new(
            "t",
            "usage: t",
            args.iter().map(|s| s.to_string()).collect(),
        );
        let mut settings = Settings::default();
        Ok(p.read(&mut settings)?.map(|words| (settings, words)))
    }

    #[test]
    fn read_fills_flags_and_keeps_words_in_order() {
        let (s, words) = parse(&["a", "--n", "3", "b", "--loud", "--", "--n"])
            .unwrap()
            .unwrap();
        assert_eq!(s, Settings { n: 3, loud: true });
        assert_eq!(words, ["a", "b", "--n"]);
    }

    #[test]
    fn help_wins_and_errors_carry_the_usage() {
        let e = parse(&["--loud=1", "-h"]).unwrap_err();
        assert_eq!(e, "t: --loud takes no value\n\nusage: t");
        assert!(parse(&["--n", "3", "--help", "--bogus"]).unwrap().is_none());
        let e = parse(&["x", "--bogus", "--help"]).unwrap_err();
        assert_eq!(e, "t: unknown option --bogus\n\nusage: t");
        // A bad word is reported where it stands, before a bad flag after it.
        let e = parse(&["", "--bogus"]).unwrap_err();
        assert!(e.starts_with("t: an empty word"), "{e}");
    }

    #[test]
    fn joined_words_must_say_something() {
        let p = Parser::new("t", "usage: t", Vec::new());
        let words = ["a".to_owned(), "b c".to_owned()];
        assert_eq!(p.joined(&words, "GOAL"), Ok("a b c".to_owned()));
        let e = p.joined(&[" ".to_owned()], "GOAL").unwrap_err();
        assert!(
            e.starts_with("t: no GOAL given") && e.ends_with("usage: t"),
            "{e}"
        );
    }

    #[test]
    fn run_gives_the_usage_for_help_else_does_the_work() {
        let usage = "usage: t";
        let work = |s: Settings| Ok(format!("n={} loud={}", s.n, s.loud));
        assert_eq!(run(Ok(None), usage, work), Ok(usage.to_owned()));
        let settings = Settings { n: 2, loud: false };
        assert_eq!(
            run(Ok(Some(settings)), usage, work),
            Ok("n=2 loud=false".to_owned())
        );
        assert_eq!(run(Err("bad".into()), usage, work), Err("bad".to_owned()));
    }
}
