//! Prefix reuse: which sequence slot a new prompt goes to, and how much of its KV cache
//! it can keep. A slot whose job has ended keeps its cells and the tokens they hold; a
//! new prompt that starts with those tokens prefills only the rest (llama.cpp's server
//! does the same with `cache_prompt` and `--slot-prompt-similarity`).
//!
//! The policy is a pure function over token lists, so it is tested without a model.

/// A cached prefix shorter than this share of the prompt is no reason to pick a slot:
/// the least recently used one is taken instead, so specific caches live longer
/// (llama.cpp's server default `--slot-prompt-similarity 0.1`).
const MIN_SIMILARITY: f64 = 0.1;

/// Copying cells from another slot costs a copy of a whole per-slot KV buffer (the
/// engine keeps one buffer per sequence); below this many extra tokens, prefilling them
/// is as cheap.
pub(crate) const MIN_COPY_GAIN: usize = 64;

/// What a sequence's KV cells hold: its tokens at positions `0..tokens.len()`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held<'a, T> {
    pub seq: i32,
    pub tokens: &'a [T],
    /// Free slots: when their last job ended (larger is more recent). Busy ones: unused.
    pub last_used: u64,
}

/// Where a new prompt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The free sequence the job runs in.
    pub seq: i32,
    /// Copy this sequence's cells into `seq` first (it holds a longer prefix).
    pub copy_from: Option<i32>,
    /// Prompt tokens whose cells are kept (or copied); prefill starts after them.
    pub reuse: usize,
}

/// Tokens `a` and `b` share from the start.
pub(crate) fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Places `prompt` (at least one token) in one of the `free` sequences (at least one).
/// `busy` are the sequences of running jobs, with the tokens already decoded into them.
/// With `reuse` off every job starts from an empty sequence.
pub(crate) fn place<T: PartialEq>(
    prompt: &[T],
    free: &[Held<'_, T>],
    busy: &[Held<'_, T>],
    reuse: bool,
) -> Option<Placement> {
    let lru = free.iter().min_by_key(|h| h.last_used)?;
    if !reuse {
        return Some(Placement {
            seq: lru.seq,
            copy_from: None,
            reuse: 0,
        });
    }
    // The last prompt token is always decoded: its logits give the first new token.
    let usable = prompt.len().saturating_sub(1);
    let shared = |h: &Held<'_, T>| common_prefix(h.tokens, prompt).min(usable);
    // Longest match; among equals the most recently used (its cells are the ones a
    // conversation just left).
    let best = free
        .iter()
        .max_by_key(|h| (shared(h), h.last_used))
        .unwrap_or(lru);
    let useful = |n: usize| n > 0 && n as f64 >= MIN_SIMILARITY * prompt.len() as f64;
    let dest = if useful(shared(best)) { best } else { lru };
    let mut placement = Placement {
        seq: dest.seq,
        copy_from: None,
        reuse: shared(dest),
    };
    // Another slot, running or free, may hold more of this prompt: copy its cells.
    if let Some(source) = free
        .iter()
        .chain(busy)
        .filter(|h| h.seq != dest.seq)
        .max_by_key(|h| shared(h))
    {
        let n = shared(source);
        if n >= placement.reuse + MIN_COPY_GAIN {
            placement.copy_from = Some(source.seq);
            placement.reuse = n;
        }
    }
    Some(placement)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(seq: i32, tokens: &[u32], last_used: u64) -> Held<'_, u32> {
        Held {
            seq,
            tokens,
            last_used,
        }
    }

    fn seq(n: u32) -> Vec<u32> {
        (0..n).collect()
    }

    #[test]
    fn the_free_slot_with_the_longest_shared_prefix_is_taken() {
        let prompt: Vec<u32> = [seq(100), vec![7, 7]].concat();
        let short = seq(20);
        let long = [seq(90), vec![1, 2, 3]].concat();
        let free = [held(0, &short, 5), held(1, &long, 1), held(2, &[], 0)];
        let p = place(&prompt, &free, &[], true).unwrap();
        assert_eq!(
            p,
            Placement {
                seq: 1,
                copy_from: None,
                reuse: 90
            }
        );
    }

    #[test]
    fn without_a_useful_match_the_least_recently_used_slot_is_taken() {
        let prompt: Vec<u32> = [vec![0], seq(100).iter().map(|t| t + 500).collect()].concat();
        // One shared token of 101: under the similarity threshold.
        let a = seq(50);
        let free = [held(0, &a, 9), held(1, &[42], 3), held(2, &[43], 7)];
        let p = place(&prompt, &free, &[], true).unwrap();
        assert_eq!(p.seq, 1);
        assert_eq!(p.reuse, 0);
    }

    #[test]
    fn a_whole_cached_prompt_still_leaves_its_last_token_to_decode() {
        let prompt = seq(10);
        let cached = seq(40); // the same prompt plus what its job generated
        let free = [held(3, &cached, 1)];
        let p = place(&prompt, &free, &[], true).unwrap();
        assert_eq!(p.reuse, 9);
    }

    #[test]
    fn a_running_job_that_holds_much_more_of_the_prompt_is_copied_from() {
        let prompt: Vec<u32> = [seq(300), vec![9]].concat();
        let running = seq(310);
        let free = [held(0, &[], 0), held(1, &prompt[..10], 1)];
        let p = place(&prompt, &free, &[held(2, &running, 0)], true).unwrap();
        assert_eq!(
            p,
            // Too little in common with slot 1: the least recently used is filled.
            Placement {
                seq: 0,
                copy_from: Some(2),
                reuse: 300
            }
        );
        // A small gain is prefilled instead.
        let running = seq(40);
        let p = place(&prompt, &free, &[held(2, &running, 0)], true).unwrap();
        assert_eq!(p.copy_from, None);
    }

    #[test]
    fn with_reuse_off_nothing_is_kept() {
        let prompt = seq(50);
        let free = [held(0, &prompt, 5), held(1, &[], 2)];
        let running = seq(50);
        let p = place(&prompt, &free, &[held(2, &running, 0)], false).unwrap();
        assert_eq!(
            p,
            Placement {
                seq: 1,
                copy_from: None,
                reuse: 0
            }
        );
        assert_eq!(place::<u32>(&prompt, &[], &[], true), None);
    }
}
