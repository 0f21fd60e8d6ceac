//! The frame bitmap: one bit per frame (1 = free) with summaries.
//!
//! `frames` is a [`Tree`] over the frame bits: finding any free frame is
//! O(log64 n). `full` is a tree with one bit per frame word (64 frames), set
//! iff the whole word is free, and `blocks` one bit per 2 MiB block (512
//! frames, a byte of `full`), set iff the whole block is free: contiguous
//! searches for large runs skip fragmented areas a word or a block at a
//! time. All live in one storage slice; together they cost
//! 1 + 2/64 + 1/512 + ... ≈ 1.034 bits per frame.

use super::tree::{mask as bits, word_masks, words_for, Tree};
use super::FrameInvariantError;

/// Layout of the frame bitmap inside a storage slice (starting at word 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bitmap {
    frames: Tree,
    full: Tree,
    blocks: Tree,
}

/// The granule of a contiguous search: whole words or whole 2 MiB blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// 64 frames.
    Word,
    /// 512 frames.
    Block,
}

impl Unit {
    /// Frames per unit.
    #[inline]
    pub(crate) const fn frames(self) -> usize {
        match self {
            Unit::Word => 64,
            Unit::Block => 512,
        }
    }
}

impl Bitmap {
    /// The layout for `frames` frames.
    pub(crate) const fn new(frames: usize) -> Self {
        let t = Tree::new(0, frames);
        let f = Tree::new(t.words(), words_for(frames));
        let b = Tree::new(t.words() + f.words(), frames.div_ceil(512));
        Self {
            frames: t,
            full: f,
            blocks: b,
        }
    }

    /// Storage words of all trees.
    pub(crate) const fn words(&self) -> usize {
        self.frames.words() + self.full.words() + self.blocks.words()
    }

    /// The first entirely free unit at or after unit `pos`.
    #[inline]
    pub(crate) fn next_unit(&self, s: &[u64], unit: Unit, pos: usize) -> Option<usize> {
        self.unit_tree(unit).next_set(s, pos)
    }

    /// Level-0 word `j` of the unit summary: bit per entirely free unit.
    #[inline]
    pub(crate) fn unit_bits(&self, s: &[u64], unit: Unit, j: usize) -> u64 {
        self.unit_tree(unit).word(s, j)
    }

    #[inline]
    fn unit_tree(&self, unit: Unit) -> &Tree {
        match unit {
            Unit::Word => &self.full,
            Unit::Block => &self.blocks,
        }
    }

    /// Recomputes the block bit of the block holding frame word `w`.
    #[inline]
    fn sync_block(&self, s: &mut [u64], w: usize) {
        let blk = w / 8;
        let byte = (self.full.word(s, blk / 8) >> (blk % 8 * 8)) & 0xff;
        if byte == 0xff {
            self.blocks.set_at(s, 0, blk);
        } else {
            self.blocks.clear_at(s, 0, blk);
        }
    }

    /// Number of frames covered.
    #[inline]
    pub(crate) const fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether frame `i` is free.
    #[inline]
    pub(crate) fn is_free(&self, s: &[u64], i: usize) -> bool {
        self.frames.get(s, i)
    }

    /// The first free frame at or after `pos`.
    #[inline]
    pub(crate) fn next_free(&self, s: &[u64], pos: usize) -> Option<usize> {
        self.frames.next_set(s, pos)
    }

    /// The first entirely free frame word at or after word `pos`.
    #[inline]
    pub(crate) fn next_full_word(&self, s: &[u64], pos: usize) -> Option<usize> {
        self.full.next_set(s, pos)
    }

    /// The first word in `[a, b)` that is not entirely free.
    #[inline]
    pub(crate) fn first_partial_word(&self, s: &[u64], a: usize, b: usize) -> Option<usize> {
        first_with(s, self.full.word0(0), a, b, false)
    }

    /// The first frame in `[a, b)` whose state is `free`.
    #[inline]
    pub(crate) fn first_with(&self, s: &[u64], a: usize, b: usize, free: bool) -> Option<usize> {
        first_with(s, self.frames.word0(0), a, b, free)
    }

    /// Marks frame `i` as free (`true`) or not.
    /// The single-frame fast path of [`set_range`](Self::set_range).
    #[inline]
    pub(crate) fn set(&self, s: &mut [u64], i: usize, free: bool) {
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        let slot = self.frames.word0(w);
        let old = s[slot];
        let new = if free { old | bit } else { old & !bit };
        s[slot] = new;
        if free {
            if old == 0 {
                self.frames.set_at(s, 1, w);
            }
            if new == !0 && old != !0 {
                self.full.set_at(s, 0, w);
                self.sync_block(s, w);
            }
        } else {
            if new == 0 && old != 0 {
                self.frames.clear_at(s, 1, w);
            }
            if old == !0 && new != !0 {
                self.full.clear_at(s, 0, w);
                self.blocks.clear_at(s, 0, w / 8);
            }
        }
    }

    /// Marks frames `[a, b)` as free (`true`) or not: partial edge words
    /// one by one, whole words in bulk with range updates of the summaries.
    #[inline]
    pub(crate) fn set_range(&self, s: &mut [u64], a: usize, b: usize, free: bool) {
        let (wa, wb) = (a.div_ceil(64), b / 64);
        if wa >= wb {
            return self.set_partial(s, a, b, free);
        }
        self.set_partial(s, a, wa * 64, free);
        let base = self.frames.word0(0);
        let value = if free { !0 } else { 0 };
        let mut words = s[base + wa..base + wb].chunks_exact_mut(8);
        // Whole 2 MiB blocks as fixed-size stores, no `memset` call.
        for block in &mut words {
            block.copy_from_slice(&[value; 8]);
        }
        words.into_remainder().fill(value);
        self.frames.update_range(s, 1, wa, wb, free);
        self.full.update_range(s, 0, wa, wb, free);
        // Blocks wholly inside the words take their state; edge blocks are
        // recomputed from the full-word bits.
        let (ba, bb) = (wa.div_ceil(8), wb / 8);
        if ba < bb {
            self.blocks.update_range(s, 0, ba, bb, free);
            if wa % 8 != 0 {
                self.sync_block(s, wa);
            }
            if wb % 8 != 0 {
                self.sync_block(s, wb);
            }
        } else {
            for blk in wa / 8..wb.div_ceil(8) {
                self.sync_block(s, blk * 8);
            }
        }
        self.set_partial(s, wb * 64, b, free);
    }

    /// [`set_range`](Self::set_range) word by word, for ranges within a few words.
    #[inline]
    fn set_partial(&self, s: &mut [u64], a: usize, b: usize, free: bool) {
        for (w, mask) in word_masks(a, b) {
            let old = s[self.frames.word0(w)];
            self.write(s, w, if free { old | mask } else { old & !mask });
        }
    }

    /// Writes frame word `w`, keeping both summaries in step.
    #[inline]
    fn write(&self, s: &mut [u64], w: usize, value: u64) {
        let was_full = s[self.frames.word0(w)] == !0;
        self.frames.write_word(s, w, value);
        match (was_full, value == !0) {
            (false, true) => {
                self.full.set_at(s, 0, w);
                self.sync_block(s, w);
            }
            (true, false) => {
                self.full.clear_at(s, 0, w);
                self.blocks.clear_at(s, 0, w / 8);
            }
            _ => {}
        }
    }

    /// Initializes storage: the frames of `free` ranges (sorted, disjoint)
    /// free, everything else not; then both summaries in bulk. Touches only
    /// the `words()` storage words.
    pub(crate) fn init(&self, s: &mut [u64], free: impl Iterator<Item = (usize, usize)>) {
        // Summaries start empty; frame words are written exactly once below.
        s[self.frames.word_at(1, 0)..self.words()].fill(0);
        let base = self.frames.word0(0);
        let nw = words_for(self.len());
        let mut done = 0; // frame words [0, done) are initialized
        for (a, b) in free {
            let (first, wa, wb) = (a / 64, a.div_ceil(64), b / 64);
            if first >= done {
                s[base + done..=base + first].fill(0);
            }
            if wa > wb {
                s[base + first] |= bits(a % 64, b % 64);
                done = first + 1;
                continue;
            }
            if a % 64 != 0 {
                s[base + first] |= bits(a % 64, 64);
            }
            s[base + wa..base + wb].fill(!0);
            done = wb;
            if b % 64 != 0 {
                s[base + wb] = bits(0, b % 64);
                done = wb + 1;
            }
        }
        s[base + done.min(nw)..base + nw].fill(0);
        self.summarize_words(s);
        self.frames.rebuild_from(s, 2);
        self.full.rebuild(s);
        let (fb, bb) = (self.full.word0(0), self.blocks.word0(0));
        for blk in 0..self.len().div_ceil(512) {
            if (s[fb + blk / 8] >> (blk % 8 * 8)) & 0xff == 0xff {
                s[bb + blk / 64] |= 1 << (blk % 64);
            }
        }
        self.blocks.rebuild(s);
    }

    /// One pass over the frame words writes both per-word summaries: the
    /// "non-empty" level 1 of `frames` and the "entirely free" level 0 of `full`.
    fn summarize_words(&self, s: &mut [u64]) {
        let (base, nw) = (self.frames.word0(0), words_for(self.len()));
        let (l1, f0) = (self.frames.word_at(1, 0), self.full.word0(0));
        let has_l1 = l1 != base + self.frames.words();
        for (j, start) in (0..nw).step_by(64).enumerate() {
            let (mut any, mut all) = (0u64, 0u64);
            for (k, &w) in s[base + start..base + nw.min(start + 64)]
                .iter()
                .enumerate()
            {
                any |= u64::from(w != 0) << k;
                all |= u64::from(w == !0) << k;
            }
            if has_l1 {
                s[l1 + j] = any;
            }
            s[f0 + j] = all;
        }
    }

    /// Free frames in total (a popcount; for the invariant checker).
    pub(crate) fn count_free(&self, s: &[u64]) -> u64 {
        let base = self.frames.word0(0);
        s[base..base + words_for(self.len())]
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }

    /// Frame word `w` (1 = free).
    #[inline]
    pub(crate) fn word(&self, s: &[u64], w: usize) -> u64 {
        s[self.frames.word0(w)]
    }

    /// The longest run of free frames, one pass over the frame words.
    pub(crate) fn largest_free_run(&self, s: &[u64]) -> u64 {
        let (mut best, mut cur) = (0u64, 0u64);
        for w in 0..words_for(self.len()) {
            let word = self.word(s, w);
            if word == !0 {
                cur += 64;
                continue;
            }
            best = best.max(cur + u64::from(word.trailing_ones()));
            best = best.max(longest_ones(word));
            cur = u64::from(word.leading_ones());
        }
        best.max(cur)
    }

    /// Both trees agree with their summaries and `full` with the frames.
    pub(crate) fn check(&self, s: &[u64]) -> Result<(), FrameInvariantError> {
        self.frames.check(s)?;
        self.full.check(s)?;
        self.blocks.check(s)?;
        for blk in 0..self.len().div_ceil(512) {
            let byte = (self.full.word(s, blk / 8) >> (blk % 8 * 8)) & 0xff;
            if (byte == 0xff) != self.blocks.get(s, blk) {
                return Err(FrameInvariantError::BlockSummary { block: blk });
            }
        }
        for w in 0..words_for(self.len()) {
            if (self.word(s, w) == !0) != self.full.get(s, w) {
                return Err(FrameInvariantError::FullWordSummary { word: w });
            }
        }
        Ok(())
    }
}

/// The longest run of ones inside one word.
fn longest_ones(mut x: u64) -> u64 {
    let mut best = 0;
    while x != 0 {
        x >>= x.trailing_zeros();
        let ones = x.trailing_ones();
        best = best.max(u64::from(ones));
        x = x.checked_shr(ones).unwrap_or(0);
    }
    best
}

/// The first bit in `[a, b)` of the level-0 bits at word `base` equal to `want`.
fn first_with(s: &[u64], base: usize, a: usize, b: usize, want: bool) -> Option<usize> {
    word_masks(a, b).find_map(|(w, mask)| {
        let word = if want { s[base + w] } else { !s[base + w] };
        let hit = word & mask;
        (hit != 0).then(|| w * 64 + hit.trailing_zeros() as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_edges() {
        let b = Bitmap::new(130);
        let mut s = vec![0; b.words()];
        b.init(&mut s, [(63, 66), (129, 130)].into_iter());
        b.check(&s).unwrap();
        assert_eq!(b.next_free(&s, 0), Some(63));
        assert_eq!(b.next_free(&s, 64), Some(64));
        assert_eq!(b.next_free(&s, 66), Some(129));
        assert_eq!(b.count_free(&s), 4);
        assert_eq!(b.largest_free_run(&s), 3);
        b.set(&mut s, 64, false);
        assert_eq!(b.first_with(&s, 63, 66, false), Some(64));
        b.check(&s).unwrap();
    }

    #[test]
    fn full_words_track_frames() {
        let b = Bitmap::new(64 * 70);
        let mut s = vec![0; b.words()];
        b.init(&mut s, [(0, 64 * 70)].into_iter());
        assert_eq!(b.next_full_word(&s, 0), Some(0));
        b.set(&mut s, 5, false);
        assert_eq!(b.next_full_word(&s, 0), Some(1));
        assert_eq!(b.first_partial_word(&s, 0, 70), Some(0));
        b.set_range(&mut s, 64, 64 * 69, false);
        assert_eq!(b.next_full_word(&s, 0), Some(69));
        b.check(&s).unwrap();
        b.set_range(&mut s, 0, 64 * 70, true);
        assert_eq!(b.largest_free_run(&s), 64 * 70);
        b.check(&s).unwrap();
    }

    #[test]
    fn longest_ones_in_word() {
        assert_eq!(longest_ones(0), 0);
        assert_eq!(longest_ones(!0), 64);
        assert_eq!(longest_ones(0b1110_0110), 3);
    }
}
