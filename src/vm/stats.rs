//! Counters of the virtual-memory layer: atomic while CPUs count, a
//! plain snapshot for the kernel.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::smp::CachePadded;

/// What the layer did since its [`Vm`](super::Vm) was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmStats {
    /// Page faults handled (resolved or not).
    pub faults: u64,
    /// Private zeroed frames mapped on a first write.
    pub zero_fills: u64,
    /// Maps of the shared zero frame on a first read.
    pub zero_page_maps: u64,
    /// Copies made on a write to a shared frame.
    pub cow_copies: u64,
    /// Writes to a frame no longer shared: write access given back, no copy.
    pub cow_reuses: u64,
    /// Faults on a page that was already mapped as asked (a stale TLB entry).
    pub spurious: u64,
    /// Faults refused: no area, guard, protection.
    pub protection_faults: u64,
    /// Frames shared by more than one mapping right now.
    pub shared_frames: u64,
    /// Faults that read a page back from swap (`pgmajfault`).
    pub major_faults: u64,
    /// Pages read from swap (`pswpin`), readahead included.
    pub swap_ins: u64,
    /// Pages written to swap (`pswpout`).
    pub swap_outs: u64,
    /// Faults that reclaimed before they found a frame (`allocstall`): no
    /// frame free under the limit, or, given the table of spaces, fewer
    /// than the `min` watermark.
    pub direct_reclaims: u64,
    /// Pages the reclaim scan looked at (`pgscan`).
    pub scanned: u64,
    /// Page tables the reclaim worker's harvest skipped whole: no CPU
    /// walked through them since its last look.
    pub tables_skipped: u64,
    /// Pages reclaimed (`pgsteal`): written out, dropped clean, or zero.
    pub reclaimed: u64,
    /// Pages read back after being evicted (`refaults`).
    pub refaults: u64,
    /// Pages the global policy found in its non-resident history when they
    /// came back (`workingset_refault`): evicted recently enough, counted in
    /// every space's evictions, to be part of the working set. The history
    /// is system-wide, as the policy is; CLOCK-Pro keeps a page there while
    /// the resident pages turn over once (its test period), which is
    /// Linux's refault-distance test.
    pub workingset_refaults: u64,
    /// Evicted pages that were all zero: dropped, not written.
    pub zero_elided: u64,
    /// Pages given up with `MADV_FREE` that reclaim dropped unwritten.
    pub lazy_freed: u64,
    /// Evictions a write to the page cancelled while its write-out was in
    /// flight: the page stayed, its copy on swap cached.
    pub writeback_cancelled: u64,
    /// Evicted pages still clean on swap: dropped, not written.
    pub swap_cache_hits: u64,
    /// Swap-ins served by copying a resident frame read from the same slot
    /// (a slot several spaces share after a fork is read once): no device
    /// read, so not major faults.
    pub swap_in_copies: u64,
    /// Pages read ahead of their fault.
    pub readahead: u64,
    /// Faults that mapped a page of a shared mapping of an object (from
    /// its cache, or read in).
    pub object_maps: u64,
    /// Pages of objects read through their pagers (zero-filled, for a
    /// shared anonymous object).
    pub object_reads: u64,
    /// Faults that copied an object's page into a private mapping.
    pub object_copies: u64,
    /// Dirty pages of objects written back through their pagers.
    pub object_writebacks: u64,
    /// Cached pages of objects that left the cache (clean, or once written).
    pub object_evictions: u64,
    /// Pager requests that failed (reads reported to the faulting access,
    /// writes leaving the page dirty).
    pub pager_errors: u64,
    /// First faults that mapped a 2 MiB huge page (`thp_fault_alloc`).
    pub huge_faults: u64,
    /// Huge pages split into 4 KiB pages (`thp_split_pmd`).
    pub huge_splits: u64,
    /// Runs of 512 pages collapsed back into huge pages
    /// (`thp_collapse_alloc`).
    pub huge_collapses: u64,
    /// Frames memory objects and anonymous memory hold now.
    pub resident_frames: u64,
    /// Swap slots in use now.
    pub swap_slots_used: u64,
    /// Swap slots of the attached device.
    pub swap_slots: u64,
    /// Resident pages whose copy on swap is still valid now.
    pub swap_cached: u64,
    /// IPI rounds sent to invalidate translations on other CPUs.
    pub shootdowns: u64,
    /// Frames an operation could not hold for release (the kernel heap was
    /// full): never reused, so never reachable through a stale translation.
    pub leaked_frames: u64,
}

/// CPUs count in shards of their own (by CPU index), so that counting
/// never bounces a cache line between CPUs faulting at once.
pub(crate) const SHARDS: usize = 16;

/// The event counters of [`VmStats`], one set per shard of CPUs (relaxed:
/// each is a statistic, ordered with nothing).
pub(crate) struct Counters {
    shards: [CachePadded<CounterSet>; SHARDS],
}

impl core::fmt::Debug for Counters {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.snapshot().fmt(f)
    }
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            shards: core::array::from_fn(|_| CachePadded(CounterSet::default())),
        }
    }
}

impl Counters {
    /// The counters CPU `cpu` adds to.
    #[inline]
    pub(crate) fn at(&self, cpu: usize) -> &CounterSet {
        &self.shards[cpu % SHARDS]
    }

    /// The counts now, summed over the shards, the state fields left zero.
    pub(crate) fn snapshot(&self) -> VmStats {
        self.shards
            .iter()
            .map(|s| s.snapshot())
            .fold(VmStats::default(), VmStats::plus)
    }
}

/// Adds `n` to the counter `c`.
#[inline]
pub(crate) fn count(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// The event counters, named once: each is a field of [`VmStats`], an
/// atomic of every [`CounterSet`], and a term of the snapshot's sum.
macro_rules! event_counters {
    ($($name:ident),* $(,)?) => {
        /// One shard of [`Counters`].
        #[derive(Debug, Default)]
        pub(crate) struct CounterSet {
            $(pub(crate) $name: AtomicU64,)*
        }

        impl CounterSet {
            /// The counts of this shard.
            fn snapshot(&self) -> VmStats {
                VmStats {
                    $($name: self.$name.load(Relaxed),)*
                    ..VmStats::default()
                }
            }
        }

        impl VmStats {
            /// The event counts of both added (the state fields of `self`).
            fn plus(self, o: Self) -> Self {
                Self {
                    $($name: self.$name + o.$name,)*
                    ..self
                }
            }

            /// The events counted since `before` (a snapshot of the same
            /// `Vm` taken earlier); the state fields as in `self`.
            pub fn since(self, before: Self) -> Self {
                Self {
                    $($name: self.$name.wrapping_sub(before.$name),)*
                    ..self
                }
            }
        }
    };
}

event_counters!(
    faults,
    zero_fills,
    zero_page_maps,
    cow_copies,
    cow_reuses,
    spurious,
    protection_faults,
    major_faults,
    swap_ins,
    swap_outs,
    direct_reclaims,
    scanned,
    tables_skipped,
    reclaimed,
    refaults,
    zero_elided,
    lazy_freed,
    writeback_cancelled,
    swap_cache_hits,
    swap_in_copies,
    readahead,
    object_maps,
    object_reads,
    object_copies,
    object_writebacks,
    object_evictions,
    pager_errors,
    huge_faults,
    huge_splits,
    huge_collapses,
    shootdowns,
    leaked_frames,
);
