//! Sets of CPUs, and the CPUs that may cache an address space's translations.

use core::sync::atomic::{fence, AtomicU64, Ordering};

const WORDS: usize = 4;

/// CPUs a [`CpuSet`] can name: indices `0..MAX_CPUS`.
pub const MAX_CPUS: usize = WORDS * 64;

/// A set of CPU indices below [`MAX_CPUS`] (a bitmask).
///
/// ```
/// use kmem::smp::CpuSet;
/// let mut set = CpuSet::empty();
/// set.insert(3);
/// set.insert(70);
/// assert_eq!(set.without(3).iter().collect::<Vec<_>>(), [70]);
/// assert_eq!(set.len(), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct CpuSet {
    words: [u64; WORDS],
}

impl CpuSet {
    /// No CPU.
    pub const fn empty() -> Self {
        Self { words: [0; WORDS] }
    }

    /// CPUs `0..count` (clamped to [`MAX_CPUS`]).
    pub fn first(count: usize) -> Self {
        let mut set = Self::empty();
        (0..count.min(MAX_CPUS)).for_each(|c| set.insert(c));
        set
    }

    /// Adds `cpu`.
    ///
    /// # Panics
    /// If `cpu >= MAX_CPUS`.
    pub fn insert(&mut self, cpu: usize) {
        assert!(cpu < MAX_CPUS, "CPU index {cpu} out of range");
        self.words[cpu / 64] |= 1 << (cpu % 64);
    }

    /// Removes `cpu` (no effect if absent or out of range).
    pub fn remove(&mut self, cpu: usize) {
        if cpu < MAX_CPUS {
            self.words[cpu / 64] &= !(1 << (cpu % 64));
        }
    }

    /// This set without `cpu`.
    #[must_use]
    pub fn without(mut self, cpu: usize) -> Self {
        self.remove(cpu);
        self
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.words[cpu / 64] & (1 << (cpu % 64)) != 0
    }

    /// Number of CPUs in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The CPUs in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..WORDS).flat_map(move |i| {
            let mut w = self.words[i];
            core::iter::from_fn(move || {
                (w != 0).then(|| {
                    let bit = w.trailing_zeros() as usize;
                    w &= w - 1;
                    i * 64 + bit
                })
            })
        })
    }
}

/// The CPUs that may hold translations of one address space: a CPU
/// [`enter`](Self::enter)s when it loads the space's CR3 and
/// [`leave`](Self::leave)s after it loaded another one. Lock-free.
///
/// Ordering: `enter` is sequentially consistent and must come *before* the
/// CR3 load; [`snapshot`](Self::snapshot) fences before reading. So a
/// shootdown that changed entries, then took the snapshot, either sees the
/// entering CPU or that CPU's page walks see the changed entries.
///
/// With PCIDs, loading another CR3 keeps this space's entries: leave only
/// after flushing the PCID, or flush it on the next `enter`.
///
/// ```
/// use kmem::smp::ActiveCpus;
/// static SPACE_CPUS: ActiveCpus = ActiveCpus::new();
/// SPACE_CPUS.enter(0);
/// SPACE_CPUS.enter(2);
/// SPACE_CPUS.leave(0);
/// assert_eq!(SPACE_CPUS.snapshot().iter().collect::<Vec<_>>(), [2]);
/// ```
#[derive(Debug, Default)]
pub struct ActiveCpus {
    words: [AtomicU64; WORDS],
}

impl ActiveCpus {
    /// No CPU active (`const`, for statics).
    pub const fn new() -> Self {
        Self {
            words: [const { AtomicU64::new(0) }; WORDS],
        }
    }

    /// Marks `cpu` as possibly caching this space (before loading its CR3).
    ///
    /// # Panics
    /// If `cpu >= MAX_CPUS`.
    pub fn enter(&self, cpu: usize) {
        assert!(cpu < MAX_CPUS, "CPU index {cpu} out of range");
        self.words[cpu / 64].fetch_or(1 << (cpu % 64), Ordering::SeqCst);
    }

    /// Marks `cpu` as no longer caching this space (after its TLB entries
    /// for it are gone).
    pub fn leave(&self, cpu: usize) {
        if cpu < MAX_CPUS {
            self.words[cpu / 64].fetch_and(!(1 << (cpu % 64)), Ordering::SeqCst);
        }
    }

    /// The CPUs that may cache this space now; call after changing entries.
    pub fn snapshot(&self) -> CpuSet {
        fence(Ordering::SeqCst);
        let mut set = CpuSet::empty();
        for (w, a) in set.words.iter_mut().zip(&self.words) {
            *w = a.load(Ordering::SeqCst);
        }
        set
    }
}
