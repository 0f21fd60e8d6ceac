//! A bounded LIFO of frames: one CPU's cache, and the counters of a cache.

/// A bounded stack of up to `N` 64-bit items (frame addresses): what one
/// CPU caches. LIFO, so the frame freed last (warm in this CPU's caches)
/// is handed out first.
///
/// Plain data with no locking: [`PerCpuFrames`](super::PerCpuFrames)
/// keeps one per CPU behind that CPU's lock; the model-checked tests drive
/// the same type.
///
/// ```
/// use kmem::smp::Magazine;
/// let mut m = Magazine::<4>::new();
/// assert!(m.push(1).is_ok() && m.push(2).is_ok());
/// assert_eq!(m.pop(), Some(2));
/// assert_eq!(m.len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct Magazine<const N: usize> {
    items: [u64; N],
    len: usize,
}

impl<const N: usize> Magazine<N> {
    /// An empty magazine.
    pub const fn new() -> Self {
        Self {
            items: [0; N],
            len: 0,
        }
    }

    /// Number of items held.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether it holds `N` items.
    pub const fn is_full(&self) -> bool {
        self.len == N
    }

    /// Takes the item pushed last.
    #[inline]
    pub fn pop(&mut self) -> Option<u64> {
        self.len = self.len.checked_sub(1)?;
        Some(self.items[self.len])
    }

    /// Adds `item`, or gives it back when full.
    #[inline]
    pub fn push(&mut self, item: u64) -> Result<(), u64> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = item;
                self.len += 1;
                Ok(())
            }
            None => Err(item),
        }
    }

    /// Whether `item` is held (a double-free check, O(N)).
    pub fn contains(&self, item: u64) -> bool {
        self.items[..self.len].contains(&item)
    }

    /// Removes up to `n` items, the oldest first (the coldest go back to
    /// the shared pool), passing each to `f`.
    pub fn take_oldest(&mut self, n: usize, mut f: impl FnMut(u64)) {
        let n = n.min(self.len);
        self.items[..n].iter().for_each(|&i| f(i));
        self.items.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

impl<const N: usize> Default for Magazine<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters of one CPU's cache (or their sum over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Allocations served from the cache, no shared lock taken.
    pub hits: u64,
    /// Allocations the cache could not serve (went to the shared allocator).
    pub misses: u64,
    /// Batches moved from the shared allocator into the cache.
    pub refills: u64,
    /// Frees that found the cache full and sent a batch back.
    pub flushes: u64,
    /// Times the cache was emptied by [`drain_all`](super::PerCpuFrames::drain_all)
    /// (memory pressure).
    pub drains: u64,
    /// Items held now.
    pub cached: u64,
}

impl CacheStats {
    /// All counters zero (`const`, for the per-CPU slots of a static).
    pub const ZERO: Self = Self {
        hits: 0,
        misses: 0,
        refills: 0,
        flushes: 0,
        drains: 0,
        cached: 0,
    };

    /// Adds `other`'s counters to these.
    pub fn add(&mut self, other: &CacheStats) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.refills += other.refills;
        self.flushes += other.flushes;
        self.drains += other.drains;
        self.cached += other.cached;
    }
}
