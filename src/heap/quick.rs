//! Quick bins: deferred coalescing for mid-size blocks of the large heap.
//!
//! A freed block of 1 KiB to 128 KiB is not merged with its neighbours at
//! once. It stays a used block (flagged cached in its header) and goes on a
//! short stack for its TLSF bin; an allocation of about the same size takes
//! it back. Both sides then touch one header instead of the free lists and
//! the boundary tags of up to four neighbouring blocks, which is where the
//! time of a boundary-tag heap goes once the heap outgrows the CPU caches.
//!
//! The stacks are bounded in depth and in bytes, a block is reused only if
//! it wastes little over the request, and the large heap flushes them
//! (merges every cached block for real) before it reports out of memory or
//! trims, so caching never costs an allocation that would have succeeded.

/// First-level TLSF indices 1..=`LEVELS` are cached: block sizes 1–128 KiB.
pub const LEVELS: usize = 7;
/// Second-level bins per first level (the large heap's `SL`).
pub const SL: usize = 64;
/// Blocks cached per bin.
pub const DEPTH: usize = 4;
const BINS: usize = LEVELS * SL;

/// One cached block: its offset from the heap start and its size, both in
/// 16-byte units, packed so a bin's stack stays within one cache line.
#[derive(Clone, Copy, Default)]
struct Entry(u64);

impl Entry {
    fn new(offset: usize, size: usize) -> Option<Self> {
        let o = u32::try_from(offset / 16).ok()?;
        let s = u32::try_from(size / 16).ok()?;
        Some(Self(u64::from(o) << 32 | u64::from(s)))
    }
    fn offset(self) -> usize {
        (self.0 >> 32) as usize * 16
    }
    fn size(self) -> usize {
        (self.0 as u32) as usize * 16
    }
}

/// The cached blocks, by bin.
pub struct Quick {
    /// Bit `s` of word `f - 1`: bin `(f, s)` is not empty (fast flushes).
    nonempty: [u64; LEVELS],
    len: [u8; BINS],
    slots: [[Entry; DEPTH]; BINS],
    bytes: usize,
    count: usize,
}

/// The quick bin of TLSF bin `(f, s)`, if that bin is cached.
#[inline(always)]
pub fn bin(f: usize, s: usize) -> Option<usize> {
    (1..=LEVELS).contains(&f).then(|| (f - 1) * SL + s)
}

impl Quick {
    /// No cached blocks.
    pub const fn new() -> Self {
        Self {
            nonempty: [0; LEVELS],
            len: [0; BINS],
            slots: [[Entry(0); DEPTH]; BINS],
            bytes: 0,
            count: 0,
        }
    }

    /// Bytes in cached blocks.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Cached blocks.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Caches the block at `offset` of `size` bytes in bin `b` unless the
    /// bin is full or the cache would exceed `budget` bytes.
    #[inline(always)]
    pub fn push(&mut self, b: usize, offset: usize, size: usize, budget: usize) -> bool {
        let n = self.len[b] as usize;
        if n == DEPTH || self.bytes + size > budget {
            return false;
        }
        let Some(e) = Entry::new(offset, size) else {
            return false;
        };
        self.slots[b][n] = e;
        self.len[b] += 1;
        self.nonempty[b / SL] |= 1 << (b % SL);
        self.bytes += size;
        self.count += 1;
        true
    }

    /// Takes the newest block of bin `b`, else of bin `b + 1`, whose size is
    /// in `min..=max`: `(offset, size)`.
    #[inline(always)]
    pub fn take(&mut self, b: usize, min: usize, max: usize) -> Option<(usize, usize)> {
        self.take_in(b, min, max)
            .or_else(|| self.take_in((b + 1).min(BINS - 1), min, max))
    }

    #[inline(always)]
    fn take_in(&mut self, b: usize, min: usize, max: usize) -> Option<(usize, usize)> {
        let n = self.len[b] as usize;
        let slots = &mut self.slots[b];
        let i = (0..n)
            .rev()
            .find(|&i| (min..=max).contains(&slots[i].size()))?;
        let e = slots[i];
        slots[i] = slots[n - 1];
        self.pop_len(b);
        self.bytes -= e.size();
        self.count -= 1;
        Some((e.offset(), e.size()))
    }

    /// Removes the block at `offset` from bin `b`; whether it was there.
    pub fn remove(&mut self, b: usize, offset: usize) -> bool {
        let n = self.len[b] as usize;
        let slots = &mut self.slots[b];
        let Some(i) = (0..n).find(|&i| slots[i].offset() == offset) else {
            return false;
        };
        self.bytes -= slots[i].size();
        slots[i] = slots[n - 1];
        self.pop_len(b);
        self.count -= 1;
        true
    }

    /// Whether bin `b` holds the block at `offset` with `size` bytes.
    pub fn contains(&self, b: usize, offset: usize, size: usize) -> bool {
        let n = self.len[b] as usize;
        self.slots[b][..n]
            .iter()
            .any(|e| e.offset() == offset && e.size() == size)
    }

    #[inline(always)]
    fn pop_len(&mut self, b: usize) {
        self.len[b] -= 1;
        if self.len[b] == 0 {
            self.nonempty[b / SL] &= !(1 << (b % SL));
        }
    }

    /// Takes any cached block, scanning first levels from `*cursor` (a
    /// flush calls this until it returns `None`, the cursor starting at 0).
    pub fn pop_any(&mut self, cursor: &mut usize) -> Option<(usize, usize)> {
        while *cursor < LEVELS {
            let word = self.nonempty[*cursor];
            if word != 0 {
                let b = *cursor * SL + word.trailing_zeros() as usize;
                self.pop_len(b);
                let e = self.slots[b][self.len[b] as usize];
                self.bytes -= e.size();
                self.count -= 1;
                return Some((e.offset(), e.size()));
            }
            *cursor += 1;
        }
        None
    }
}

impl Default for Quick {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_take_respects_depth_budget_and_fit() {
        let mut q = Quick::new();
        for i in 0..DEPTH {
            assert!(q.push(3, 4096 * i, 2048, usize::MAX));
        }
        assert!(!q.push(3, 1 << 20, 2048, usize::MAX), "bin full");
        assert!(!q.push(4, 1 << 20, 2048, q.bytes() + 2047), "over budget");
        assert_eq!((q.count(), q.bytes()), (DEPTH, DEPTH * 2048));
        assert_eq!(q.take(3, 2064, 4096), None, "too small for the request");
        assert_eq!(q.take(3, 1024, 2048), Some((4096 * (DEPTH - 1), 2048)));
        assert!(q.push(4, 1 << 20, 2064, usize::MAX));
        assert_eq!(q.take(3, 2064, 4096), Some((1 << 20, 2064)), "next bin");
        assert!(q.remove(3, 0));
        assert!(!q.remove(3, 0));
        assert!(q.contains(3, 4096, 2048));
        let (mut seen, mut cursor) = (0, 0);
        while let Some((_, size)) = q.pop_any(&mut cursor) {
            seen += size;
        }
        assert_eq!((seen, q.count(), q.bytes()), ((DEPTH - 2) * 2048, 0, 0));
    }
}
