//! A hierarchical bitmap: pure bit and summary operations over `[u64]` words.
//!
//! Level 0 holds the bits; bit `w` of level `l + 1` is set iff word `w` of
//! level `l` is non-zero. Levels are added until one has a single word, so
//! finding the next set bit at or after any position touches at most two
//! words per level: O(log64 n), 5 levels for a 1 TiB map of 4 KiB frames.
//! Bits past the end of a level are always zero.

use super::FrameInvariantError;

/// Enough levels for 64^8 bits, far past the 2^40 frames of a 52-bit space.
const MAX_LEVELS: usize = 8;

/// Where each level of one tree lives inside a shared storage slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tree {
    offset: [usize; MAX_LEVELS],
    bits: [usize; MAX_LEVELS],
    depth: usize,
}

/// Words needed for `bits` bits.
#[inline]
pub(crate) const fn words_for(bits: usize) -> usize {
    bits.div_ceil(64)
}

impl Tree {
    /// The layout of a tree over `bits` bits starting at word `base`.
    pub(crate) const fn new(base: usize, bits: usize) -> Self {
        let mut t = Tree {
            offset: [base; MAX_LEVELS],
            bits: [0; MAX_LEVELS],
            depth: 1,
        };
        t.bits[0] = bits;
        let mut l = 0;
        while words_for(t.bits[l]) > 1 && l + 1 < MAX_LEVELS {
            t.offset[l + 1] = t.offset[l] + words_for(t.bits[l]);
            t.bits[l + 1] = words_for(t.bits[l]);
            l += 1;
        }
        t.depth = l + 1;
        t
    }

    /// Number of bits at level 0.
    #[inline]
    pub(crate) const fn len(&self) -> usize {
        self.bits[0]
    }

    /// Words used by all levels together.
    pub(crate) const fn words(&self) -> usize {
        let top = self.depth - 1;
        self.offset[top] + words_for(self.bits[top]) - self.offset[0]
    }

    /// Word index (into storage) of word `w` of `level`; past the top
    /// level, the end of this tree.
    #[inline]
    pub(crate) const fn word_at(&self, level: usize, w: usize) -> usize {
        if level < self.depth {
            self.offset[level] + w
        } else {
            self.offset[0] + self.words()
        }
    }

    /// Word index (into storage) of level-0 word `w`.
    #[inline]
    pub(crate) const fn word0(&self, w: usize) -> usize {
        self.offset[0] + w
    }

    /// Whether level-0 bit `i` is set.
    #[inline]
    pub(crate) fn get(&self, s: &[u64], i: usize) -> bool {
        s[self.offset[0] + i / 64] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i` of `level`, propagating to the summaries.
    #[inline]
    pub(crate) fn set_at(&self, s: &mut [u64], mut level: usize, mut i: usize) {
        while level < self.depth {
            let w = &mut s[self.offset[level] + i / 64];
            let was = *w;
            *w = was | 1 << (i % 64);
            if was != 0 {
                return;
            }
            i /= 64;
            level += 1;
        }
    }

    /// Clears bit `i` of `level`, propagating to the summaries.
    #[inline]
    pub(crate) fn clear_at(&self, s: &mut [u64], mut level: usize, mut i: usize) {
        while level < self.depth {
            let w = &mut s[self.offset[level] + i / 64];
            *w &= !(1 << (i % 64));
            if *w != 0 {
                return;
            }
            i /= 64;
            level += 1;
        }
    }

    /// Sets (`set`) or clears bits `[a, b)` of `level`, propagating only
    /// the words whose emptiness changed. The one-word case is inline.
    #[inline]
    pub(crate) fn update_range(&self, s: &mut [u64], level: usize, a: usize, b: usize, set: bool) {
        if level >= self.depth || a >= b {
            return;
        }
        let w = a / 64;
        if w != (b - 1) / 64 {
            return self.update_words(s, level, a, b, set);
        }
        let m = mask(a % 64, (b - 1) % 64 + 1);
        let slot = &mut s[self.offset[level] + w];
        let old = *slot;
        *slot = if set { old | m } else { old & !m };
        if (old == 0) != (*slot == 0) {
            self.flip_parent(s, level, w, set);
        }
    }

    /// [`update_range`](Self::update_range) across several words.
    #[inline(never)]
    fn update_words(&self, s: &mut [u64], level: usize, a: usize, b: usize, set: bool) {
        for (w, m) in word_masks(a, b) {
            let slot = &mut s[self.offset[level] + w];
            let old = *slot;
            *slot = if set { old | m } else { old & !m };
            if (old == 0) != (*slot == 0) {
                self.flip_parent(s, level, w, set);
            }
        }
    }

    /// Word `w` of `level` became non-empty (`set`) or empty: tell the parent.
    #[inline(never)]
    fn flip_parent(&self, s: &mut [u64], level: usize, w: usize, set: bool) {
        if set {
            self.set_at(s, level + 1, w);
        } else {
            self.clear_at(s, level + 1, w);
        }
    }

    /// The raw level-0 word `w`, or 0 past the end.
    #[inline]
    pub(crate) fn word(&self, s: &[u64], w: usize) -> u64 {
        if w < words_for(self.bits[0]) {
            s[self.offset[0] + w]
        } else {
            0
        }
    }

    /// Writes level-0 word `w` and fixes the summary above it.
    #[inline]
    pub(crate) fn write_word(&self, s: &mut [u64], w: usize, value: u64) {
        let slot = &mut s[self.offset[0] + w];
        let was = *slot;
        *slot = value;
        if self.depth > 1 {
            match (was != 0, value != 0) {
                (false, true) => self.set_at(s, 1, w),
                (true, false) => self.clear_at(s, 1, w),
                _ => {}
            }
        }
    }

    /// The first set level-0 bit at or after `pos`, in O(depth).
    #[inline]
    pub(crate) fn next_set(&self, s: &[u64], pos: usize) -> Option<usize> {
        let (mut level, mut p) = (0, pos);
        // Climb until some level has a set bit at or after `p`.
        let mut found = loop {
            let w = p / 64;
            if w < words_for(self.bits[level]) {
                let word = s[self.offset[level] + w] & (!0u64 << (p % 64));
                if word != 0 {
                    break w * 64 + word.trailing_zeros() as usize;
                }
            }
            level += 1;
            if level == self.depth {
                return None;
            }
            p = w + 1;
        };
        // Descend: each summary bit names a non-zero word below.
        while level > 0 {
            level -= 1;
            let word = s[self.offset[level] + found];
            found = found * 64 + word.trailing_zeros() as usize;
        }
        Some(found)
    }

    /// Recomputes every summary level from level 0 (bulk initialization).
    pub(crate) fn rebuild(&self, s: &mut [u64]) {
        self.rebuild_from(s, 1);
    }

    /// Recomputes summary levels `from..` from the level below `from`.
    pub(crate) fn rebuild_from(&self, s: &mut [u64], from: usize) {
        for l in from.max(1)..self.depth {
            let (lower, upper) = (self.offset[l - 1], self.offset[l]);
            let n = words_for(self.bits[l - 1]);
            for (j, chunk_start) in (0..n).step_by(64).enumerate() {
                let chunk = &s[lower + chunk_start..lower + n.min(chunk_start + 64)];
                let mut summary = 0u64;
                for (k, &word) in chunk.iter().enumerate() {
                    summary |= u64::from(word != 0) << k;
                }
                s[upper + j] = summary;
            }
        }
    }

    /// Checks that every summary level agrees with the level below and that
    /// no bit past the end of a level is set.
    pub(crate) fn check(&self, s: &[u64]) -> Result<(), FrameInvariantError> {
        for l in 0..self.depth {
            let n = self.bits[l];
            if !n.is_multiple_of(64) && s[self.offset[l] + n / 64] >> (n % 64) != 0 {
                return Err(FrameInvariantError::BitPastEnd { level: l, len: n });
            }
            if l == 0 {
                continue;
            }
            for w in 0..n {
                let child = s[self.offset[l - 1] + w] != 0;
                let bit = s[self.offset[l] + w / 64] & (1 << (w % 64)) != 0;
                if child != bit {
                    return Err(FrameInvariantError::SummaryBit { level: l, bit: w });
                }
            }
        }
        Ok(())
    }
}

/// The words holding bits `[a, b)`, each with the mask of its bits in the range, in order:
/// the one loop over a masked bit range.
#[inline(always)]
pub(crate) fn word_masks(a: usize, b: usize) -> impl Iterator<Item = (usize, u64)> {
    let mut i = a;
    core::iter::from_fn(move || {
        (i < b).then(|| {
            let w = i / 64;
            let hi = b.min(w * 64 + 64);
            let m = mask(i % 64, hi - w * 64);
            i = hi;
            (w, m)
        })
    })
}

/// Mask of bits `[lo, hi)` of a word, `lo < hi <= 64`.
#[inline]
pub(crate) const fn mask(lo: usize, hi: usize) -> u64 {
    let upper = if hi == 64 { !0 } else { (1u64 << hi) - 1 };
    upper & (!0u64 << lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(bits: usize) -> (Tree, Vec<u64>) {
        let t = Tree::new(3, bits);
        (t, vec![0; 3 + t.words()])
    }

    #[test]
    fn layout_sizes() {
        assert_eq!(Tree::new(0, 0).words(), 0);
        assert_eq!(Tree::new(0, 64).words(), 1);
        assert_eq!(Tree::new(0, 65).words(), 3);
        assert_eq!(Tree::new(0, 64 * 64 * 64).words(), 64 * 64 + 64 + 1);
    }

    #[test]
    fn next_set_crosses_words_and_levels() {
        for n in [1, 63, 64, 65, 4095, 4096, 4097, 300_000] {
            let (t, mut s) = tree(n);
            assert_eq!(t.next_set(&s, 0), None);
            let last = n - 1;
            t.set_at(&mut s, 0, last);
            assert_eq!(t.next_set(&s, 0), Some(last), "n={n}");
            assert_eq!(t.next_set(&s, last), Some(last));
            assert_eq!(t.next_set(&s, last + 1), None);
            t.set_at(&mut s, 0, 0);
            assert_eq!(t.next_set(&s, 1), (last > 0).then_some(last));
            t.check(&s).unwrap();
            t.clear_at(&mut s, 0, last);
            assert_eq!(t.next_set(&s, 1), None);
            assert_eq!(t.next_set(&s, 0), (last > 0).then_some(0));
            t.check(&s).unwrap();
        }
    }

    #[test]
    fn rebuild_matches_incremental() {
        let (t, mut s) = tree(10_000);
        for i in (0..10_000).step_by(97) {
            t.set_at(&mut s, 0, i);
        }
        let incremental = s.clone();
        t.rebuild(&mut s);
        assert_eq!(s, incremental);
    }
}
