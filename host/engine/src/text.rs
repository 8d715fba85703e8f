//! Post-processing of generated text.

/// Removes reasoning blocks (`<think>…</think>`, Gemma's `<start_of_thought>` style too)
/// and the whitespace they leave at the start. An unclosed block hides the rest.
pub fn strip_think_blocks(text: &str) -> String {
    const PAIRS: [(&str, &str); 2] = [
        ("<think>", "</think>"),
        ("<start_of_thought>", "<end_of_thought>"),
    ];
    let mut out = text.to_owned();
    let mut stripped = false;
    for (open, close) in PAIRS {
        while let Some(start) = out.find(open) {
            stripped = true;
            match out[start..].find(close) {
                Some(end) => out.replace_range(start..start + end + close.len(), ""),
                None => out.truncate(start),
            }
        }
    }
    if stripped {
        out.trim_start().to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_blocks_and_leaves_plain_text_alone() {
        assert_eq!(strip_think_blocks("<think>hmm</think>\n\nAnswer"), "Answer");
        assert_eq!(
            strip_think_blocks("a<think>x</think>b<think>y</think>c"),
            "abc"
        );
        assert_eq!(strip_think_blocks("Answer<think>unfinished"), "Answer");
        assert_eq!(
            strip_think_blocks("  keep leading space\n"),
            "  keep leading space\n"
        );
    }
}
