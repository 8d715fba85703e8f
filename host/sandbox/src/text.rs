//! Guest text in host messages. A guest string can be as large as the host-call limit
//! allows (16 MiB by default), so only a prefix of it is ever looked at: cut first, then
//! escaped, once.

/// The first `max_chars` characters of `text` as a quoted, escaped literal (`"a\nb"`),
/// followed by `...` if there were more. For a `{}` in a message, never `{:?}`.
pub(crate) fn quoted(text: &str, max_chars: usize) -> String {
    let (head, more) = prefix(text, max_chars);
    format!("{head:?}{}", if more { "..." } else { "" })
}

/// The first `max_chars` characters of `text`, escaped but not quoted (a path in a
/// sentence), followed by `...` if there were more.
pub(crate) fn escaped(text: &str, max_chars: usize) -> String {
    let (head, more) = prefix(text, max_chars);
    let mut shown = head.escape_debug().to_string();
    if more {
        shown.push_str("...");
    }
    shown
}

/// `text` cut to at most `max_bytes` (on a character boundary), with `marker` where it
/// was cut.
pub(crate) fn cut(mut text: String, max_bytes: usize, marker: &str) -> String {
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(marker);
    }
    text
}

/// The first `max_chars` characters of `text`, and whether there were more.
pub(crate) fn prefix(text: &str, max_chars: usize) -> (&str, bool) {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => (&text[..end], true),
        None => (text, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_is_cut_then_escaped_once() {
        assert_eq!(quoted("a\nb\"", 10), r#""a\nb\"""#);
        assert_eq!(escaped("a\nb", 10), r"a\nb");
        assert_eq!(quoted("héllo", 2), r#""hé"..."#);
        assert_eq!(escaped(&"\0".repeat(1 << 20), 3), r"\0\0\0...");
        assert_eq!(prefix("abc", 3), ("abc", false));
        assert_eq!(prefix("", 0), ("", false));
        assert_eq!(prefix("a", 0), ("", true));
        assert_eq!(cut("aé".into(), 2, "..."), "a...");
        assert_eq!(cut("ab".into(), 2, "..."), "ab");
    }
}
