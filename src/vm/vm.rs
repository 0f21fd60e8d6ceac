//! What all address spaces of a kernel share: the zero frame, the counts
//! of frames mapped by more than one address space, and the counters.

use super::contents::fill_zero;
use super::shares::{frame_key, Shares};
use super::stats::{Counters, SHARDS};
use super::swap::{slot_of, Swap, SwapDevice, CLUSTER};
use super::VmStats;
use crate::paging::{FrameSource, PhysMem};
use crate::smp::CachePadded;
use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::structures::paging::PhysFrame;

/// The shared state of the virtual-memory layer. One per kernel (or per
/// test): every [`VmSpace`](super::VmSpace) operation takes it, by shared
/// reference, so faults in different spaces run at once on different CPUs.
///
/// Inside, each part has its own lock, taken briefly and never across a
/// device request, after the space's own locks: share counts, then the
/// swap slots, then the swap device (held only for a request). Counters
/// and the resident count are atomics.
///
/// Frame sharing costs nothing for frames that are not shared. Frames
/// mapped by `n ≥ 2` pages (after a fork) are counted in 4 KiB chunks of
/// four-byte counters on the kernel heap, one chunk per 4 MiB of physical
/// memory holding a shared frame (4 bytes per frame there), freed with
/// their last shared frame.
#[derive(Debug)]
pub struct Vm {
    zero: PhysFrame,
    shares: spin::Mutex<Shares>,
    pub(crate) stats: Counters,
    pub(crate) swap: Option<Swap>,
    /// Most frames anonymous memory may hold (`None`: as many as the
    /// frame source gives).
    limit: Option<u64>,
    /// Frames anonymous memory holds now (a shared frame counts once), when
    /// a limit is set: one counter, so the limit holds exactly.
    resident: AtomicU64,
    /// The same count without a limit, in shards by CPU (wrapping: a shard
    /// may free more than it allocated), so faults on several CPUs never
    /// contend for it.
    resident_shards: [CachePadded<AtomicU64>; SHARDS],
    /// Frames in transit, in shards by CPU (wrapping): taken for a page
    /// not mapped yet, or unmapped by reclaim and not freed yet. While some
    /// are, a fault that finds no frame waits (retries) instead of
    /// reporting out of memory: they come back without waiting for it.
    transit: [CachePadded<AtomicU64>; SHARDS],
    /// Pages one reclaim pass frees (`None`: an eighth of the limit, at
    /// most a cluster).
    batch: Option<usize>,
    /// Pages a sequential swap-in reads, the faulting one included.
    readahead: u64,
    /// Pages of locked areas in every space, and the most there may be.
    locked: AtomicU64,
    lock_limit: Option<u64>,
    /// The one policy over the pages of every space that joined global
    /// reclaim (locked after a space's page tables).
    pub(super) global: super::global::GlobalPolicy,
    /// Whether `global` holds one (set with `&mut self`, read unlocked).
    pub(super) has_global: bool,
    /// Free-frame watermarks (`None`: derived from the limit).
    pub(super) marks: Option<super::global::Watermarks>,
    /// Evictions cancelled by a write so far: a reclaim that freed nothing
    /// while this moved made progress (the page is in use again).
    pub(super) cancels: AtomicU64,
    /// Memory objects, by index.
    pub(super) objects: spin::RwLock<super::object::Objects>,
    /// Where transparent huge pages come from (`None`: off).
    pub(super) huge: Option<Box<dyn super::huge::HugeFrames>>,
    /// Whether a huge page was ever mapped (by a fault or a collapse):
    /// until then nothing looks for them.
    pub(super) huge_seen: core::sync::atomic::AtomicBool,
}

impl Vm {
    /// Takes one frame from `frames` and zeroes it: the shared zero frame,
    /// mapped read-only by every first read of anonymous memory. `phys`
    /// must reach the frames `frames` hands out.
    pub fn new<P: PhysMem, A: FrameSource + ?Sized>(phys: &P, frames: &mut A) -> Option<Self> {
        let zero = frames.allocate_frame()?;
        fill_zero(phys, zero);
        Some(Self {
            zero,
            shares: spin::Mutex::new(Shares::default()),
            stats: Counters::default(),
            swap: None,
            limit: None,
            resident: AtomicU64::new(0),
            resident_shards: core::array::from_fn(|_| CachePadded(AtomicU64::new(0))),
            transit: core::array::from_fn(|_| CachePadded(AtomicU64::new(0))),
            batch: None,
            readahead: 8,
            locked: AtomicU64::new(0),
            lock_limit: None,
            global: super::global::GlobalPolicy::default(),
            has_global: false,
            marks: None,
            cancels: AtomicU64::new(0),
            objects: spin::RwLock::new(super::object::Objects::default()),
            huge: None,
            huge_seen: core::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The zero frame.
    pub fn zero_frame(&self) -> PhysFrame {
        self.zero
    }

    /// The counters.
    pub fn stats(&self) -> VmStats {
        let swap = self.swap.as_ref().map(|s| {
            let cached = s.cached() as u64;
            let s = s.state();
            (s.used(), s.capacity(), cached)
        });
        let (used, slots, cached) = swap.unwrap_or_default();
        VmStats {
            shared_frames: self.shares.lock().len() as u64,
            resident_frames: self.resident(),
            swap_slots_used: used,
            swap_slots: slots,
            swap_cached: cached,
            workingset_refaults: self
                .global
                .lock()
                .as_ref()
                .map_or(0, |p| p.stats().refaults),
            ..self.stats.snapshot()
        }
    }

    /// Gives anonymous memory a swap device: under pressure, pages are
    /// written out to it and read back on their next touch. Refused (the
    /// device is handed back) while another device has slots in use, or
    /// when the slot bookkeeping (about 80 bytes a slot) does not fit on the
    /// heap.
    pub fn attach_swap(
        &mut self,
        device: Box<dyn SwapDevice + Send>,
    ) -> Result<(), Box<dyn SwapDevice + Send>> {
        if self.swap.as_ref().is_some_and(|s| s.state().used() > 0) {
            return Err(device);
        }
        self.swap = Some(Swap::new(device)?);
        Ok(())
    }

    /// Takes the swap device back, once no slot is in use.
    pub fn detach_swap(&mut self) -> Option<Box<dyn SwapDevice + Send>> {
        if self.swap.as_ref().is_some_and(|s| s.state().used() > 0) {
            return None;
        }
        self.swap.take().map(Swap::into_device)
    }

    /// Limits the frames anonymous memory may hold (pageable memory): at
    /// the limit, a fault that needs a frame first reclaims some of the
    /// faulting space's pages (written to swap, or dropped when all zero).
    pub fn set_frame_limit(&mut self, limit: Option<u64>) {
        let sharded = self
            .resident_shards
            .iter()
            .fold(0u64, |a, s| a.wrapping_add(s.swap(0, Ordering::Relaxed)));
        *self.resident.get_mut() = self.resident.get_mut().wrapping_add(sharded);
        self.limit = limit;
    }

    /// Frames anonymous memory holds now.
    pub(crate) fn resident(&self) -> u64 {
        self.resident_shards
            .iter()
            .fold(self.resident.load(Ordering::Relaxed), |a, s| {
                a.wrapping_add(s.load(Ordering::Relaxed))
            })
    }

    /// The limit set by [`set_frame_limit`](Self::set_frame_limit).
    pub fn frame_limit(&self) -> Option<u64> {
        self.limit
    }

    /// How many pages one reclaim pass frees: the gap between the low
    /// watermark (the limit) and the high one, at most one cluster.
    pub(crate) fn reclaim_batch(&self) -> usize {
        self.batch.unwrap_or_else(|| {
            self.limit
                .map_or(CLUSTER as u64, |l| (l / 8).clamp(1, CLUSTER as u64)) as usize
        })
    }

    /// Sets how many pages one reclaim pass frees (1 to a cluster; `None`
    /// for the default, an eighth of the limit) and how many pages a
    /// sequential swap-in reads (1: no readahead). With one page a pass and
    /// no readahead, a space's policy sees exactly the calls of
    /// `replace::sim::replay_harvested`.
    pub fn set_reclaim(&mut self, batch: Option<usize>, readahead: u64) {
        self.batch = batch.map(|b| b.clamp(1, CLUSTER));
        self.readahead = readahead.clamp(1, CLUSTER as u64);
    }

    /// Limits the pages all spaces may lock in memory
    /// ([`VmSpace::lock`](super::VmSpace::lock)); `None`: no limit. Pages
    /// locked already stay locked.
    pub fn set_lock_limit(&mut self, limit: Option<u64>) {
        self.lock_limit = limit;
    }

    /// Pages locked in memory now, in every space.
    pub fn locked_pages(&self) -> u64 {
        self.locked.load(Ordering::Relaxed)
    }

    /// Counts `pages` more locked pages, unless that passes the limit.
    pub(crate) fn charge_locked(&self, pages: u64) -> Result<(), super::VmError> {
        let mut now = self.locked.load(Ordering::Relaxed);
        loop {
            if let Some(limit) = self.lock_limit {
                if now.saturating_add(pages) > limit {
                    return Err(super::VmError::LockLimit {
                        locked: now,
                        wanted: pages,
                        limit,
                    });
                }
            }
            match self.locked.compare_exchange_weak(
                now,
                now + pages,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => now = seen,
            }
        }
    }

    /// Counts `pages` fewer locked pages.
    pub(crate) fn uncharge_locked(&self, pages: u64) {
        self.locked.fetch_sub(pages, Ordering::Relaxed);
    }

    /// Pages a sequential swap-in reads.
    pub(crate) fn readahead(&self) -> u64 {
        self.readahead
    }

    /// A frame for anonymous memory, counted (by CPU `cpu`); `None` at the
    /// limit or when the source is empty.
    pub(crate) fn alloc_frame<A: FrameSource + ?Sized>(
        &self,
        cpu: usize,
        frames: &mut A,
    ) -> Option<PhysFrame> {
        if !self.charge_frames(cpu, 1) {
            return None;
        }
        let f = frames.allocate_frame();
        if f.is_none() {
            self.uncharge_frames(cpu, 1);
        }
        f
    }

    /// Counts `n` more frames of pageable memory (by CPU `cpu`), unless
    /// that passes the limit.
    pub(crate) fn charge_frames(&self, cpu: usize, n: u64) -> bool {
        match self.limit {
            Some(limit) => self
                .resident
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                    (r + n <= limit).then_some(r + n)
                })
                .is_ok(),
            None => {
                self.resident_shards[cpu % SHARDS].fetch_add(n, Ordering::Relaxed);
                true
            }
        }
    }

    /// Counts `n` frames fewer (charged but not used).
    pub(crate) fn uncharge_frames(&self, cpu: usize, n: u64) {
        match self.limit {
            Some(_) => self.resident.fetch_sub(n, Ordering::AcqRel),
            None => self.resident_shards[cpu % SHARDS].fetch_sub(n, Ordering::Relaxed),
        };
    }

    /// Takes `frame` out of the swap cache, if it is there (before it is
    /// made writable: sharers of its slot copy cached frames).
    pub(crate) fn drop_cached(&self, frame: PhysFrame) {
        if let Some(swap) = self.swap.as_ref() {
            swap.drop_cached(frame);
        }
    }

    /// Gives back an anonymous frame whose last mapping went, and whose
    /// translations every CPU has dropped (and its swap-cache slot, if it
    /// had one); CPU `cpu` counts it.
    pub(crate) fn release_frame<A: FrameSource + ?Sized>(
        &self,
        cpu: usize,
        frame: PhysFrame,
        frames: &mut A,
    ) {
        self.drop_cached(frame);
        match self.limit {
            Some(_) => self.resident.fetch_sub(1, Ordering::AcqRel),
            None => self.resident_shards[cpu % SHARDS].fetch_sub(1, Ordering::Relaxed),
        };
        // SAFETY: the caller removed the frame's last mapping and invalidated it.
        unsafe { frames.deallocate_frame(frame) };
    }

    /// Counts `n` frames in transit on CPU `cpu` until the guard drops.
    pub(crate) fn transit(&self, cpu: usize, n: u64) -> Transit<'_> {
        let shard = &self.transit[cpu % SHARDS];
        shard.fetch_add(n, Ordering::AcqRel);
        Transit { shard, n }
    }

    /// Whether any frame is in transit now.
    pub(crate) fn any_in_transit(&self) -> bool {
        self.transit
            .iter()
            .fold(0u64, |a, s| a.wrapping_add(s.load(Ordering::Acquire)))
            != 0
    }

    /// Records one more page-table entry naming the swap slot of `entry`.
    pub(crate) fn share_swap(&self, entry: u64) {
        if let (Some(swap), Some(slot)) = (self.swap.as_ref(), slot_of(entry)) {
            swap.add_ref(slot);
        }
    }

    /// Whether `entry` names a slot in use on the attached device.
    pub(crate) fn swap_holds(&self, entry: u64) -> bool {
        match (self.swap.as_ref(), slot_of(entry)) {
            (Some(swap), Some(slot)) => swap.state().in_use(slot),
            _ => false,
        }
    }

    /// References to the swap slot `entry` names (0 for no slot).
    pub(crate) fn swap_refs(&self, entry: u64) -> u32 {
        match (self.swap.as_ref(), slot_of(entry)) {
            (Some(swap), Some(slot)) => swap.refs(slot),
            _ => 0,
        }
    }

    /// Records that a page-table entry naming the slot of `entry` is gone.
    pub(crate) fn drop_swap(&self, entry: u64) {
        if let (Some(swap), Some(slot)) = (self.swap.as_ref(), slot_of(entry)) {
            swap.drop_ref(slot);
        }
    }

    /// How many mappings share `frame` (1 for a frame not shared).
    pub fn share_count(&self, frame: PhysFrame) -> u32 {
        self.shares.lock().count(frame_key(frame))
    }

    /// Whether `frame` is a private frame: not the zero frame, mapped by
    /// one page (reclaim, advice and the worker take only these).
    pub(crate) fn held_alone(&self, frame: PhysFrame) -> bool {
        frame != self.zero && self.share_count(frame) == 1
    }

    /// Frames shared right now.
    pub fn shared_frames(&self) -> usize {
        self.shares.lock().len()
    }

    /// Makes sure `frame` can be shared without allocating (a fork calls
    /// it for every frame before it changes anything); `Err` when the heap
    /// has no room ([`trim_shares`](Self::trim_shares) gives back what
    /// earlier calls made).
    pub(crate) fn reserve_share(&self, frame: PhysFrame) -> Result<(), ()> {
        self.shares.lock().reserve(frame_key(frame))
    }

    /// Gives back share-count chunks that count nothing (after a failed fork).
    pub(crate) fn trim_shares(&self) {
        self.shares.lock().trim();
    }

    /// Records one more mapping of `frame`, whose count was reserved.
    pub(crate) fn share(&self, frame: PhysFrame) {
        self.shares.lock().add(frame_key(frame));
    }

    /// Records that one mapping of `frame` is gone. Returns whether that
    /// was the last one (the caller frees the frame).
    pub(crate) fn unshare(&self, frame: PhysFrame) -> bool {
        self.shares.lock().remove(frame_key(frame))
    }

    /// Gives the zero frame back, once no address space maps it.
    ///
    /// # Safety
    /// No page of any address space may map the zero frame any more.
    pub unsafe fn destroy<A: FrameSource + ?Sized>(self, frames: &mut A) {
        // SAFETY: per the caller, nothing maps the zero frame.
        unsafe { frames.deallocate_frame(self.zero) };
    }
}

/// Frames counted in transit by [`Vm::transit`], until dropped.
pub(crate) struct Transit<'v> {
    shard: &'v AtomicU64,
    n: u64,
}

impl Drop for Transit<'_> {
    fn drop(&mut self) {
        self.shard.fetch_sub(self.n, Ordering::AcqRel);
    }
}
