//! A model-free check of a GBNF grammar, following llama.cpp's grammar syntax
//! (llama.cpp's `grammars/README.md`): what llama.cpp would refuse when the job runs is
//! refused at submit, with the line and column named.
//!
//! The syntax: rules `name ::= alternatives`, one per line (a newline inside a group,
//! or after `::=` or `|`, continues the rule); names `[a-zA-Z0-9-]+`; string literals
//! `"..."` and character classes `[...]` (`^` negates, `a-z` ranges) with the escapes
//! `\n \t \r \\ \" \[ \] \- \xHH \uHHHH \UHHHHHHHH`; `.` any character; groups `( )`;
//! alternatives `|`; repetition `* + ? {m} {m,} {m,n}`; comments `#` to the end of the
//! line; tokens `<[id]>`, `<token>` and their negation `!<...>`. Every referenced rule
//! must be defined, and a rule named `root` is where generation starts.
//!
//! The check is one linear pass; groups nest at most [`MAX_NESTING`] deep, so a hostile
//! grammar cannot overflow the stack (llama.cpp's own parser recurses per group).

use std::collections::HashSet;

/// Most groups `( ... )` open inside one another.
pub const MAX_NESTING: usize = 256;
/// Largest repetition count llama.cpp accepts in `{m}` / `{m,}` / `{m,n}` (its minimum).
pub const MAX_REPETITIONS: u64 = 2000;

/// Why a grammar would not load in llama.cpp. Line and column count from 1, the column
/// in characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GbnfError {
    #[error("line {line}, column {column}: {expected}")]
    Syntax {
        line: usize,
        column: usize,
        expected: String,
    },
    #[error(
        "line {line}, column {column}: undefined rule identifier '{name}' (no `{name} ::= ...` rule)"
    )]
    UndefinedRule {
        name: String,
        line: usize,
        column: usize,
    },
    #[error("line {line}, column {column}: groups nested more than {MAX_NESTING} deep")]
    TooDeep { line: usize, column: usize },
    #[error("no `root` rule: generation starts at `root ::= ...`, which the grammar must define")]
    NoRoot,
}

/// Checks `grammar` as llama.cpp's parser would, without a model.
pub fn check_grammar(grammar: &str) -> Result<(), GbnfError> {
    let mut p = Parser {
        src: grammar.as_bytes(),
        pos: 0,
        defined: HashSet::new(),
        referenced: Vec::new(),
        seen: HashSet::new(),
    };
    p.grammar()?;
    if let Some(&(name, at)) = p.referenced.iter().find(|(n, _)| !p.defined.contains(n)) {
        let (line, column) = line_column(grammar, at);
        return Err(GbnfError::UndefinedRule {
            name: name.to_owned(),
            line,
            column,
        });
    }
    if !p.defined.contains("root") {
        return Err(GbnfError::NoRoot);
    }
    Ok(())
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_column(src: &str, at: usize) -> (usize, usize) {
    let before = src.get(..at).unwrap_or(src);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    defined: HashSet<&'a str>,
    /// Each referenced name once, where it is first referenced.
    referenced: Vec<(&'a str, usize)>,
    seen: HashSet<&'a str>,
}

impl<'a> Parser<'a> {
    /// The byte `off` ahead; 0 at the end (as llama.cpp reads a C string).
    fn peek(&self, off: usize) -> u8 {
        self.src.get(self.pos + off).copied().unwrap_or(0)
    }

    fn error_at(&self, at: usize, expected: impl Into<String>) -> GbnfError {
        let text = std::str::from_utf8(self.src).unwrap_or("");
        let (line, column) = line_column(text, at);
        GbnfError::Syntax {
            line,
            column,
            expected: expected.into(),
        }
    }

    fn error(&self, expected: impl Into<String>) -> GbnfError {
        self.error_at(self.pos, expected)
    }

    fn space(&mut self, newline_ok: bool) {
        loop {
            match self.peek(0) {
                b' ' | b'\t' => self.pos += 1,
                b'\r' | b'\n' if newline_ok => self.pos += 1,
                b'#' => {
                    while !matches!(self.peek(0), 0 | b'\r' | b'\n') {
                        self.pos += 1;
                    }
                }
                _ => return,
            }
        }
    }

    fn name(&mut self) -> Result<&'a str, GbnfError> {
        let start = self.pos;
        while is_word(self.peek(0)) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error("expecting a rule name ([a-zA-Z0-9-]+)"));
        }
        // Only ASCII word bytes: always a str boundary.
        Ok(std::str::from_utf8(&self.src[start..self.pos]).unwrap_or(""))
    }

    fn grammar(&mut self) -> Result<(), GbnfError> {
        if self.src.contains(&0) {
            let at = self.src.iter().position(|&b| b == 0).unwrap_or(0);
            return Err(self.error_at(at, "a NUL byte, which ends the grammar for llama.cpp"));
        }
        self.space(true);
        while self.pos < self.src.len() {
            self.rule()?;
        }
        Ok(())
    }

    fn rule(&mut self) -> Result<(), GbnfError> {
        let name = self.name()?;
        self.space(false);
        if !self.src[self.pos..].starts_with(b"::=") {
            return Err(self.error(format!("expecting ::= after the rule name '{name}'")));
        }
        self.defined.insert(name);
        self.pos += 3;
        self.space(true);
        self.alternates(0, false)?;
        match self.peek(0) {
            b'\r' | b'\n' | 0 => {}
            b')' => return Err(self.error("a ')' with no '(' open")),
            _ => return Err(self.error("expecting a newline or the end after the rule")),
        }
        self.space(true);
        Ok(())
    }

    fn alternates(&mut self, depth: usize, nested: bool) -> Result<(), GbnfError> {
        self.sequence(depth, nested)?;
        while self.peek(0) == b'|' {
            self.pos += 1;
            self.space(true);
            self.sequence(depth, nested)?;
        }
        Ok(())
    }

    fn sequence(&mut self, depth: usize, nested: bool) -> Result<(), GbnfError> {
        let mut has_item = false;
        loop {
            let start = self.pos;
            match self.peek(0) {
                b'"' => {
                    self.pos += 1;
                    while self.peek(0) != b'"' {
                        if self.pos >= self.src.len() {
                            return Err(self.error_at(
                                start,
                                "a string literal that is never closed (expecting '\"')",
                            ));
                        }
                        self.char()?;
                    }
                    self.pos += 1;
                }
                b'[' => {
                    self.pos += 1;
                    if self.peek(0) == b'^' {
                        self.pos += 1;
                    }
                    while self.peek(0) != b']' {
                        if self.pos >= self.src.len() {
                            return Err(self.error_at(
                                start,
                                "a character class that is never closed (expecting ']')",
                            ));
                        }
                        self.char()?;
                        if self.peek(0) == b'-' && self.peek(1) != b']' {
                            if self.pos + 1 >= self.src.len() {
                                return Err(self.error("expecting the end of a range after '-'"));
                            }
                            self.pos += 1;
                            self.char()?;
                        }
                    }
                    self.pos += 1;
                }
                b'<' | b'!' => {
                    if self.peek(0) == b'!' {
                        self.pos += 1;
                    }
                    self.token()?;
                }
                b if is_word(b) => {
                    let name = self.name()?;
                    if self.seen.insert(name) {
                        self.referenced.push((name, start));
                    }
                }
                b'(' => {
                    if depth >= MAX_NESTING {
                        let (line, column) =
                            line_column(std::str::from_utf8(self.src).unwrap_or(""), start);
                        return Err(GbnfError::TooDeep { line, column });
                    }
                    self.pos += 1;
                    self.space(true);
                    self.alternates(depth + 1, true)?;
                    if self.peek(0) != b')' {
                        let (line, column) =
                            line_column(std::str::from_utf8(self.src).unwrap_or(""), start);
                        return Err(self.error(format!(
                            "expecting ')' to close the group opened at line {line}, column {column}"
                        )));
                    }
                    self.pos += 1;
                }
                b'.' => self.pos += 1,
                op @ (b'*' | b'+' | b'?' | b'{') => {
                    if !has_item {
                        return Err(
                            self.error(format!("expecting an item before '{}'", op as char))
                        );
                    }
                    self.pos += 1;
                    if op == b'{' {
                        self.space(nested);
                        self.braces(nested)?;
                    }
                }
                _ => return Ok(()),
            }
            has_item = true;
            self.space(nested);
        }
    }

    /// After `{`: `m}`, `m,}` or `m,n}`.
    fn braces(&mut self, nested: bool) -> Result<(), GbnfError> {
        let min = self.int()?;
        self.space(nested);
        match self.peek(0) {
            b'}' => {}
            b',' => {
                self.pos += 1;
                self.space(nested);
                if self.peek(0).is_ascii_digit() {
                    self.int()?;
                    self.space(nested);
                }
                if self.peek(0) != b'}' {
                    return Err(self.error("expecting '}' to end the repetition"));
                }
            }
            _ => return Err(self.error("expecting ',' or '}' in the repetition")),
        }
        if min > MAX_REPETITIONS {
            return Err(self.error(format!(
                "{min} repetitions; llama.cpp allows at most {MAX_REPETITIONS}"
            )));
        }
        self.pos += 1;
        Ok(())
    }

    fn int(&mut self) -> Result<u64, GbnfError> {
        let start = self.pos;
        while self.peek(0).is_ascii_digit() {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error("expecting an integer"));
        }
        std::str::from_utf8(&self.src[start..self.pos])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.error_at(start, "an integer too large"))
    }

    /// `<[id]>` or `<token>` (whether the token is one of the model's cannot be known
    /// without the model).
    fn token(&mut self) -> Result<(), GbnfError> {
        if self.peek(0) != b'<' {
            return Err(self.error("expecting '<' to start a token after '!'"));
        }
        self.pos += 1;
        if self.peek(0) == b'[' {
            self.pos += 1;
            let id = self.int()?;
            if id > u64::from(u32::MAX) {
                return Err(self.error("a token id too large"));
            }
            if self.peek(0) != b']' {
                return Err(self.error("expecting ']' to end the token id"));
            }
            self.pos += 1;
        } else {
            while !matches!(self.peek(0), 0 | b'>') {
                self.pos += 1;
            }
        }
        if self.peek(0) != b'>' {
            return Err(self.error("expecting '>' to end the token"));
        }
        self.pos += 1;
        Ok(())
    }

    /// One character of a literal or class: an escape or a UTF-8 character.
    fn char(&mut self) -> Result<(), GbnfError> {
        let lead = self.peek(0);
        if lead != b'\\' {
            // The source is a str: advance over one whole UTF-8 character.
            let len = match lead {
                0x00..=0x7f => 1,
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            self.pos = (self.pos + len).min(self.src.len());
            return Ok(());
        }
        let hex = match self.peek(1) {
            b'x' => 2,
            b'u' => 4,
            b'U' => 8,
            b't' | b'r' | b'n' | b'\\' | b'"' | b'[' | b']' | b'-' => {
                self.pos += 2;
                return Ok(());
            }
            _ => {
                return Err(self.error(
                    "an unknown escape (expecting \\n \\t \\r \\\\ \\\" \\[ \\] \\- \\xHH \\uHHHH or \\UHHHHHHHH)",
                ));
            }
        };
        let digits = self.pos + 2;
        let ok = (0..hex).all(|i| {
            self.src
                .get(digits + i)
                .is_some_and(|b| b.is_ascii_hexdigit())
        });
        if !ok {
            return Err(self.error_at(digits, format!("expecting {hex} hex digits")));
        }
        self.pos = digits + hex;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"# JSON, as in llama.cpp's grammars/json.gbnf
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
"#;

    const ARITHMETIC: &str = "root  ::= (expr \"=\" ws term \"\\n\")+\r\n\
        expr  ::= term ([-+*/] term)*\n\
        term  ::= ident | num | \"(\" ws expr \")\" ws\n\
        ident ::= [a-z] [a-z0-9_]* ws\n\
        num   ::= [0-9]+ ws\n\
        ws    ::= [ \\t\\n]*\n";

    fn syntax(grammar: &str) -> (usize, usize, String) {
        match check_grammar(grammar) {
            Err(GbnfError::Syntax {
                line,
                column,
                expected,
            }) => (line, column, expected),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn valid_grammars_pass() {
        for g in [
            JSON,
            ARITHMETIC,
            "root ::= \"yes\" | \"no\"",
            "root ::= [^\\n]{1,} \"\\u00e9\\U0001F600\\x41\" .? \"é😀\"",
            "root ::= (\"a\"\n  | \"b\"){2,5} x{3} x{0,}\nx ::= <[42]> !<[7]> <|end|>",
            "root ::= [a-] [-a] [\\]\\-]",
            "root ::=\n  \"a\" # comment\n\n# trailing comment",
        ] {
            assert_eq!(check_grammar(g), Ok(()), "{g}");
        }
    }

    #[test]
    fn syntax_errors_name_line_column_and_what_was_expected() {
        let (l, c, e) = syntax("root ::= \"a\"\nfoo = \"b\"\n");
        assert_eq!((l, c), (2, 5));
        assert!(e.contains("::="), "{e}");

        let (l, c, e) = syntax("root ::= \"abc\n");
        assert_eq!((l, c), (1, 10));
        assert!(e.contains("never closed"), "{e}");

        let (l, c, e) = syntax("root ::= [a-z\n");
        assert_eq!((l, c), (1, 10));
        assert!(e.contains("']'"), "{e}");

        let (l, c, e) = syntax("root ::= (\"a\" | \"b\"\n");
        assert_eq!((l, c), (2, 1));
        assert!(e.contains("line 1, column 10"), "{e}");

        let (_, c, e) = syntax("root ::= * \"a\"");
        assert_eq!(c, 10);
        assert!(e.contains("item before '*'"), "{e}");

        let (_, c, e) = syntax("root ::= \"\\q\"");
        assert_eq!(c, 11);
        assert!(e.contains("unknown escape"), "{e}");

        let (_, c, e) = syntax("root ::= \"\\x4\"");
        assert_eq!(c, 13);
        assert!(e.contains("2 hex digits"), "{e}");

        let (_, _, e) = syntax("root ::= \"a\"{x}");
        assert!(e.contains("integer"), "{e}");
        let (_, _, e) = syntax("root ::= \"a\"{1,2");
        assert!(e.contains("'}'"), "{e}");
        let (_, _, e) = syntax("root ::= \"a\"{2001}");
        assert!(e.contains("2000"), "{e}");
        let (_, _, e) = syntax("root ::= \"a\" )");
        assert!(e.contains("')'"), "{e}");
        let (_, _, e) = syntax("root ::= \"a\" ;");
        assert!(e.contains("newline"), "{e}");
        let (_, _, e) = syntax("::= \"a\"");
        assert!(e.contains("rule name"), "{e}");
        let (_, _, e) = syntax("root ::= <tok");
        assert!(e.contains("'>'"), "{e}");
        let (_, c, e) = syntax("root ::= \"é\" \0");
        assert_eq!(c, 14);
        assert!(e.contains("NUL"), "{e}");
    }

    #[test]
    fn an_undefined_rule_is_named_where_first_used() {
        assert_eq!(
            check_grammar("root ::= greeting\n\n  # none\nx ::= root  nope nope"),
            Err(GbnfError::UndefinedRule {
                name: "greeting".into(),
                line: 1,
                column: 10,
            })
        );
        let e = check_grammar("root ::= a\na ::= b").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 2, column 7: undefined rule identifier 'b' (no `b ::= ...` rule)"
        );
    }

    #[test]
    fn a_grammar_without_root_is_refused() {
        assert_eq!(check_grammar("answer ::= \"yes\""), Err(GbnfError::NoRoot));
        assert_eq!(check_grammar(""), Err(GbnfError::NoRoot));
        assert_eq!(check_grammar("# only a comment\n"), Err(GbnfError::NoRoot));
        // A reference is not a definition.
        assert_eq!(check_grammar("a ::= root\nroot ::= a").map(|_| ()), Ok(()));
    }

    #[test]
    fn hostile_input_is_bounded() {
        let deep = format!(
            "root ::= {}\"a\"{}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        );
        assert!(matches!(
            check_grammar(&deep),
            Err(GbnfError::TooDeep {
                line: 1,
                column: 266
            })
        ));
        let ok = format!(
            "root ::= {}\"a\"{}",
            "(".repeat(MAX_NESTING),
            ")".repeat(MAX_NESTING)
        );
        assert_eq!(check_grammar(&ok), Ok(()));
        // Large but linear: a megabyte of alternatives and references.
        let wide = format!("root ::= {}\"a\"\nx ::= \"b\"", "x | ".repeat(250_000));
        assert_eq!(check_grammar(&wide), Ok(()));
    }
}
