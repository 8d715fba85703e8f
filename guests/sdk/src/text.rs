//! Text helpers for prompts and for model output that does not follow instructions
//! (small models number lists oddly, wrap them in prose, or stop mid-sentence).

/// At most `max` characters from the start of `s` (cut at a character boundary).
pub fn head(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// At most `max` characters from the end of `s`: keeps the most recent part of a
/// growing memory within a context budget.
pub fn tail(s: &str, max: usize) -> &str {
    let n = s.chars().count();
    if n <= max {
        return s;
    }
    match s.char_indices().nth(n - max) {
        Some((i, _)) => &s[i..],
        None => s,
    }
}

/// Replaces each `{name}` in `template` with its value; unknown names stay as written.
/// Values are inserted once, so a `{...}` inside a value is never expanded.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'scan: while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        for (name, value) in vars {
            if let Some(r) = after.strip_prefix(name).and_then(|r| r.strip_prefix('}')) {
                out.push_str(value);
                rest = r;
                continue 'scan;
            }
        }
        out.push('{');
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Items of a list in model output, at most `max`, in order, without duplicates.
///
/// Accepts a JSON array of strings anywhere in the text; otherwise one item per line,
/// with bullets (`-`, `*`, `•`, `+`), numbering (`1.`, `1)`, `(1)`, `Step 1:`), bold
/// markers and surrounding quotes removed. Lines ending in `:` (headings such as
/// "Here are the subtasks:") are skipped.
pub fn parse_list(text: &str, max: usize) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    let push = |item: &str, items: &mut Vec<String>| {
        let item = item.trim();
        if !item.is_empty() && items.len() < max && !items.iter().any(|i| i == item) {
            items.push(item.to_owned());
        }
    };
    if let Some(serde_json::Value::Array(values)) = crate::json::extract(text) {
        for v in values {
            if let serde_json::Value::String(s) = v {
                push(&s, &mut items);
            }
        }
        if !items.is_empty() {
            return items;
        }
    }
    for line in text.lines() {
        let line = line.trim();
        if line.ends_with(':') || line.starts_with("```") {
            continue;
        }
        push(&strip_marker(line), &mut items);
    }
    items
}

/// The line without its bullet or number, markdown emphasis or quotes.
fn strip_marker(line: &str) -> String {
    let mut s = line.trim_start_matches(['-', '*', '•', '+', '#', ' ']);
    // "Step 3:", "Subtask 2." and the like.
    for word in ["Step", "step", "Subtask", "subtask", "Task", "task"] {
        if let Some(r) = s.strip_prefix(word) {
            let r = r.trim_start();
            if r.starts_with(|c: char| c.is_ascii_digit()) {
                s = r;
            }
        }
    }
    let s = s.strip_prefix('(').unwrap_or(s);
    let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let s = if digits > 0 {
        let r = &s[digits..];
        match r.strip_prefix(['.', ')', ':']) {
            Some(r) => r,
            None => s,
        }
    } else {
        s
    };
    let s = s.replace("**", "");
    s.trim()
        .trim_matches(|c| c == '"' || c == '\'' || c == '`' || c == '*')
        .trim()
        .to_owned()
}

/// Shell-style pattern match of the whole `text`, as `case` does: `*` any characters
/// (newlines too), `?` one character, `[abc]`/`[a-z]`/`[!a-z]` one of a set, `\x` a
/// literal `x`. Case-sensitive.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => match class(&p, pi, t[ti]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                None => (t[ti] == '[').then_some(1),
            },
            Some('\\') if pi + 1 < p.len() => (p[pi + 1] == t[ti]).then_some(2),
            Some(&c) => (c == t[ti]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                pi += len;
                ti += 1;
            }
            (None, Some((sp, st))) => {
                star = Some((sp, st + 1));
                pi = sp + 1;
                ti = st + 1;
            }
            (None, None) => return false,
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == '*')
}

/// Matches `c` against the bracket class starting at `p[start] == '['`: whether it
/// matched and the class's length in pattern characters; `None` if it is unclosed.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((matched != negate, i + 1 - start));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&hi| hi != ']') {
            let hi = p[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

/// A stable 64-bit FNV-1a hash (std's hasher may change between releases; kv keys
/// derived from this must not).
pub fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// How alike two texts are by their words (Jaccard index of lower-cased words, 0 to 1).
/// Crude, but needs no model: good enough to find the answer most others agree with.
pub fn similarity(a: &str, b: &str) -> f64 {
    let words = |s: &str| -> std::collections::BTreeSet<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let (a, b) = (words(a), words(b));
    let union = a.union(&b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_tail_respect_char_boundaries() {
        assert_eq!(head("héllo", 2), "hé");
        assert_eq!(head("hi", 5), "hi");
        assert_eq!(tail("héllo", 4), "éllo");
        assert_eq!(tail("hi", 5), "hi");
        assert_eq!(tail("", 0), "");
    }

    #[test]
    fn fill_replaces_known_names_once() {
        assert_eq!(
            fill(
                "Process {input} for {who}",
                &[("input", "{who}"), ("who", "me")]
            ),
            "Process {who} for me"
        );
        assert_eq!(fill("{unknown} {", &[("x", "y")]), "{unknown} {");
    }

    #[test]
    fn parse_list_accepts_what_small_models_write() {
        let text = "Here are the subtasks:\n1. Research scaling\n2) Compare **costs**\n\
                    - \"Write summary\"\n* Research scaling\nStep 4: Review\n\n(5) Ship";
        assert_eq!(
            parse_list(text, 10),
            [
                "Research scaling",
                "Compare costs",
                "Write summary",
                "Review",
                "Ship"
            ]
        );
        assert_eq!(parse_list(text, 2).len(), 2);
        assert_eq!(
            parse_list("Sure! [\"a\", \"b\", \"a\"] hope it helps", 5),
            ["a", "b"]
        );
        assert!(parse_list("", 3).is_empty());
        assert!(parse_list("Subtasks:\n\n", 3).is_empty());
    }

    #[test]
    fn glob_matches_like_shell_case() {
        let yes = [
            ("*.py", "main.py"),
            ("*.jpg", "photos/a.jpg"),
            ("*", ""),
            ("a?c", "abc"),
            ("[ab]x", "bx"),
            ("[a-c]*", "cat"),
            ("[!a-c]*", "dog"),
            ("*code*", "some code\nhere"),
            ("\\*", "*"),
            ("[x", "[x"),
            ("**a", "a"),
        ];
        for (p, t) in yes {
            assert!(glob_match(p, t), "{p} should match {t:?}");
        }
        let no = [
            ("*.py", "main.js"),
            ("*.py", "main.py.txt"),
            ("a?c", "ac"),
            ("[!a-c]*", "apple"),
            ("*.JPG", "a.jpg"),
            ("\\*", "a"),
            ("abc", "ab"),
        ];
        for (p, t) in no {
            assert!(!glob_match(p, t), "{p} should not match {t:?}");
        }
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn similarity_is_word_overlap() {
        assert_eq!(similarity("The cat", "the CAT"), 1.0);
        assert_eq!(similarity("a b", "c d"), 0.0);
        assert!((similarity("a b c", "a b d") - 0.5).abs() < 1e-9);
        assert_eq!(similarity("", ""), 0.0);
    }
}
