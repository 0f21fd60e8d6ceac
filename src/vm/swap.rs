//! Swap: the device interface, the slot allocator, the swap cache and the
//! encoding of a swapped-out page in its page-table entry.
//!
//! A swapped-out page is a non-present 4 KiB entry `slot << 12 | 0b10`:
//! bit 0 (present) is clear, so the CPU never uses it; bit 1 tells it from
//! an empty entry (slot 0 included); bits 12..52 hold the slot. Bit 2
//! marks a page in transit (being read in, or written out by reclaim):
//! a fault on it returns `FaultOutcome::InTransit` and is retried.
//!
//! A slot has one reference per page-table entry naming it (a fork shares
//! the entry) plus one for each resident frame the swap cache holds for it:
//! the cache maps a frame read back from a slot to that slot, so a page
//! evicted again without having been written (its Dirty bit clear) is
//! dropped without writing, and, the other way, each slot to the frame last
//! read from it, so a slot several spaces name after a fork is read from
//! the device once: the next sharer's fault copies the resident frame.
//! A slot is free when its last reference goes.
//!
//! What makes that copy safe: a cached frame whose slot some other entry
//! still names is mapped read-only (swap-in maps a page writable only when
//! its entry was the slot's last reference), and a frame leaves the cache
//! before it is made writable or freed; the copy runs under the cache
//! shard's lock with the frame still cached, so no write and no free can
//! overlap it.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use crate::smp::CachePadded;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Bytes in a page and in a slot.
pub const PAGE_BYTES: usize = crate::PAGE_SIZE as usize;
/// The most pages one device request carries (clustered write-out).
pub const CLUSTER: usize = 32;

const SWAP_TAG: u64 = 0b10;

/// Set in a non-present entry whose page is in transit (read in from swap,
/// or unmapped by reclaim and being written out): a fault on it waits for
/// the transfer, with no lock held, instead of resolving it a second time.
pub(crate) const BUSY: u64 = 0b100;

/// Set (an available bit the CPU ignores) in the present entry of a page
/// the process gave up with `MADV_FREE`: reclaim drops it without writing
/// while its Dirty bit stays clear; a write sets Dirty and keeps it.
pub(crate) const LAZY_FREE: u64 = 1 << 9;

/// Set (an available bit) in the present, read-only entry of a page whose
/// write to swap is in flight: reads go on, no reclaim takes it again.
pub(crate) const WRITE_OUT: u64 = 1 << 10;

/// Set beside [`WRITE_OUT`] by a write fault on the page: when the write
/// ends the page stays (writable, its copy on swap cached) instead of going.
pub(crate) const CANCEL: u64 = 1 << 11;

/// The page-table entry of a page swapped out to `slot`.
pub(crate) const fn swap_entry(slot: u64) -> u64 {
    (slot << 12) | SWAP_TAG
}

/// The slot of a swap entry, if `entry` is one.
pub(crate) const fn slot_of(entry: u64) -> Option<u64> {
    if entry & 1 == 0 && entry & SWAP_TAG != 0 {
        Some((entry >> 12) & ((1 << 40) - 1))
    } else {
        None
    }
}

/// Why a device request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwapIoError {
    /// The first slot of the request.
    pub slot: u64,
    /// Pages in the request.
    pub pages: usize,
}

impl fmt::Display for SwapIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "swap I/O failed at slot {} ({} pages)",
            self.slot, self.pages
        )
    }
}

impl core::error::Error for SwapIoError {}

/// A block device holding swapped-out pages, addressed in 4 KiB slots.
/// Requests cover consecutive slots, so a cluster is one request.
///
/// Requests come from several CPUs at once (each fault and each reclaim
/// issues its own, with no lock of kmem held): a device serves them
/// concurrently or serializes them itself. kmem never has a write in
/// flight to a slot while another request covers it (two reads of one slot
/// may overlap: sharers reading ahead).
pub trait SwapDevice: Send + Sync {
    /// Capacity in slots.
    fn slots(&self) -> u64;
    /// Writes `pages` to the slots from `first` on.
    fn write(&self, first: u64, pages: &[&[u8; PAGE_BYTES]]) -> Result<(), SwapIoError>;
    /// Reads the slots from `first` on into `pages`.
    fn read(&self, first: u64, pages: &mut [&mut [u8; PAGE_BYTES]]) -> Result<(), SwapIoError>;
    /// `slot` holds nothing kmem will read any more (its last reference
    /// went; it may be written again later): a device that keeps copies
    /// elsewhere (a compressed pool, [`super::zswap`]) drops them. Called
    /// with kmem's page-table locks possibly held: it must not block on I/O.
    fn discard(&self, slot: u64) {
        let _ = slot;
    }
    /// Whether the device's copy of `slot` takes RAM (a compressed pool)
    /// rather than disk. Asked after a read: kmem then frees a slot no
    /// other entry names once its page is back (Linux zswap's exclusive
    /// loads), where a disk's copy is kept so that the page, evicted again
    /// unwritten, costs no write.
    fn copy_in_ram(&self, slot: u64) -> bool {
        let _ = slot;
        false
    }
}

/// A device behind a pointer is a device: boxed (one device chosen at run
/// time, in front of which a [`super::Zswap`] goes) or shared with the
/// kernel (an `Arc`, to read a `Zswap`'s counters while the vm uses it).
macro_rules! forward_swap_device {
    ($($ptr:ident),*) => {$(
        impl<D: SwapDevice + ?Sized> SwapDevice for $ptr<D> {
            fn slots(&self) -> u64 {
                (**self).slots()
            }
            fn write(&self, first: u64, pages: &[&[u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
                (**self).write(first, pages)
            }
            fn read(
                &self,
                first: u64,
                pages: &mut [&mut [u8; PAGE_BYTES]],
            ) -> Result<(), SwapIoError> {
                (**self).read(first, pages)
            }
            fn discard(&self, slot: u64) {
                (**self).discard(slot);
            }
            fn copy_in_ram(&self, slot: u64) -> bool {
                (**self).copy_in_ram(slot)
            }
        }
    )*};
}

use alloc::sync::Arc;
forward_swap_device!(Box, Arc);

/// A swap device in memory, for tests and simulations, with failure
/// injection. Each slot has its own lock, so requests on different slots
/// run at once.
#[derive(Debug)]
pub struct MemSwap {
    data: Vec<spin::Mutex<[u8; PAGE_BYTES]>>,
    fail_writes: AtomicBool,
    fail_reads: AtomicBool,
}

impl MemSwap {
    /// A device of `slots` slots.
    pub fn new(slots: u64) -> Self {
        Self {
            data: (0..slots)
                .map(|_| spin::Mutex::new([0; PAGE_BYTES]))
                .collect(),
            fail_writes: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
        }
    }

    /// Makes every write (and, with `reads`, every read) fail from now on.
    pub fn fail(&self, writes: bool, reads: bool) {
        self.fail_writes.store(writes, Ordering::Relaxed);
        self.fail_reads.store(reads, Ordering::Relaxed);
    }
}

impl SwapDevice for MemSwap {
    fn slots(&self) -> u64 {
        self.data.len() as u64
    }

    fn write(&self, first: u64, pages: &[&[u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        let err = SwapIoError {
            slot: first,
            pages: pages.len(),
        };
        if self.fail_writes.load(Ordering::Relaxed)
            || first as usize + pages.len() > self.data.len()
        {
            return Err(err);
        }
        for (i, p) in pages.iter().enumerate() {
            self.data[first as usize + i].lock().copy_from_slice(&p[..]);
        }
        Ok(())
    }

    fn read(&self, first: u64, pages: &mut [&mut [u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        let err = SwapIoError {
            slot: first,
            pages: pages.len(),
        };
        if self.fail_reads.load(Ordering::Relaxed) || first as usize + pages.len() > self.data.len()
        {
            return Err(err);
        }
        for (i, p) in pages.iter_mut().enumerate() {
            p.copy_from_slice(&self.data[first as usize + i].lock()[..]);
        }
        Ok(())
    }
}

/// Free and used slots, one bit each, and a hint to the first free word.
#[derive(Debug)]
struct Slots {
    /// Bit set = free.
    bits: Vec<u64>,
    count: u64,
    free: u64,
    hint: usize,
}

impl Slots {
    /// `count` free slots, their bits in `bits` (empty, with room reserved).
    fn new(count: u64, mut bits: Vec<u64>) -> Self {
        let words = count.div_ceil(64) as usize;
        bits.resize(words, u64::MAX);
        if !count.is_multiple_of(64) {
            bits[words - 1] = (1 << (count % 64)) - 1;
        }
        Self {
            bits,
            count,
            free: count,
            hint: 0,
        }
    }

    fn is_free(&self, s: u64) -> bool {
        self.bits[(s / 64) as usize] & (1 << (s % 64)) != 0
    }

    /// The first run of up to `n` consecutive free slots (at least one),
    /// taken.
    fn take_run(&mut self, n: usize) -> Option<(u64, usize)> {
        let words = self.bits.len();
        for k in 0..words {
            let w = (self.hint + k) % words;
            if self.bits[w] == 0 {
                continue;
            }
            let first = w as u64 * 64 + u64::from(self.bits[w].trailing_zeros());
            let mut len = 0;
            while len < n && first + (len as u64) < self.count && self.is_free(first + len as u64) {
                let s = first + len as u64;
                self.bits[(s / 64) as usize] &= !(1 << (s % 64));
                len += 1;
            }
            self.free -= len as u64;
            self.hint = w;
            return Some((first, len));
        }
        None
    }

    fn give_back(&mut self, s: u64) {
        debug_assert!(!self.is_free(s), "slot {s} freed twice");
        self.bits[(s / 64) as usize] |= 1 << (s % 64);
        self.free += 1;
    }
}

/// The swap state of a [`Vm`](super::Vm): the device (which takes
/// requests from several CPUs at once), and its slots, their references and
/// the swap cache behind a lock (never held across a request). Everything is sized
/// when the device is attached: a swap-out or swap-in, which run when
/// memory is short, never allocates.
pub(crate) struct Swap {
    pub(crate) device: Box<dyn SwapDevice + Send>,
    state: spin::Mutex<SwapState>,
    /// Resident frame → the slot holding the same data, in shards by frame,
    /// each with its own lock: swap-ins on several CPUs rarely meet.
    cache: [CachePadded<spin::Mutex<FrameCache>>; CACHE_SHARDS],
    /// References to each slot (page-table entries naming it, plus one for
    /// each cached frame holding it): counted without the state lock, which
    /// only a slot's first and last reference take.
    refs: Vec<AtomicU32>,
    /// Slot → the frame last read from it plus one, [`READING`] while a
    /// swap-in reads it, 0 for none: a hint, checked against `cache`
    /// under the frame's shard lock before it is used.
    frame_of: Vec<AtomicU64>,
}

/// In `frame_of`: a swap-in is reading the slot; other sharers wait for it.
const READING: u64 = u64::MAX;

/// What a swap-in finds for its slot ([`Swap::claim`]).
pub(crate) enum Claim<'s> {
    /// No frame holds the slot: read it from the device; the claim makes
    /// other sharers wait until the page is cached or the claim drops.
    Read(Reading<'s>),
    /// Another swap-in is reading the slot: wait for it.
    Wait,
    /// A resident frame holding the slot's data was copied.
    Copied,
}

/// A slot being read by one swap-in (see [`Claim::Read`]); dropping it
/// lets other sharers in again if the page was not cached.
pub(crate) struct Reading<'s> {
    cell: &'s AtomicU64,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        // Cached meanwhile (the cell names the frame): nothing to undo.
        let _ = self
            .cell
            .compare_exchange(READING, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Shards of the swap cache.
const CACHE_SHARDS: usize = 16;

pub(crate) struct SwapState {
    slots: Slots,
}

impl fmt::Debug for Swap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.lock();
        f.debug_struct("Swap")
            .field("slots", &s.slots.count)
            .field("free", &s.slots.free)
            .field("cached", &self.cached())
            .finish()
    }
}

impl Swap {
    /// The swap state of `device`; the device back when its bookkeeping
    /// (about 80 bytes a slot) does not fit on the heap.
    pub(crate) fn new(
        device: Box<dyn SwapDevice + Send>,
    ) -> Result<Self, Box<dyn SwapDevice + Send>> {
        let count = device.slots();
        let Some(state) = SwapState::new(count) else {
            return Err(device);
        };
        // Twice the average share: a shard that fills up caches no more (the
        // page is written again when evicted), correct but slower.
        let per_shard = (count / CACHE_SHARDS as u64 * 2).max(16);
        let mut cache = Vec::new();
        if cache.try_reserve_exact(CACHE_SHARDS).is_err() {
            return Err(device);
        }
        for _ in 0..CACHE_SHARDS {
            let Some(shard) = FrameCache::new(per_shard) else {
                return Err(device);
            };
            cache.push(CachePadded(spin::Mutex::new(shard)));
        }
        let Ok(cache) = cache.try_into() else {
            unreachable!("CACHE_SHARDS shards made");
        };
        let (mut frame_of, mut refs) = (Vec::new(), Vec::new());
        let Ok(n) = usize::try_from(count) else {
            return Err(device);
        };
        if frame_of.try_reserve_exact(n).is_err() || refs.try_reserve_exact(n).is_err() {
            return Err(device);
        }
        frame_of.resize_with(n, || AtomicU64::new(0));
        refs.resize_with(n, || AtomicU32::new(0));
        Ok(Self {
            device,
            state: spin::Mutex::new(state),
            cache,
            refs,
            frame_of,
        })
    }

    fn shard(&self, frame: u64) -> &spin::Mutex<FrameCache> {
        &self.cache[(frame.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % CACHE_SHARDS]
    }

    /// Records that `frame` holds the data of `slot`, taking over one
    /// reference to the slot (dropped at once when the cache has no room).
    pub(crate) fn cache(&self, frame: u64, slot: u64) {
        let dropped = {
            let mut shard = self.shard(frame).lock();
            let dropped = shard.insert(frame, slot);
            if dropped != Some(slot) {
                self.frame_of[slot as usize].store(frame + 1, Ordering::Release);
            }
            if let Some(old) = dropped.filter(|&old| old != slot) {
                self.forget_frame(old, frame);
            }
            dropped
        };
        if let Some(old) = dropped {
            self.drop_ref(old);
        }
    }

    /// Clears `slot`'s frame hint if it names `frame`.
    fn forget_frame(&self, slot: u64, frame: u64) {
        let _ = self.frame_of[slot as usize].compare_exchange(
            frame + 1,
            0,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The slot cached for `frame`, removed from the cache with its reference.
    pub(crate) fn uncache(&self, frame: u64) -> Option<u64> {
        let mut shard = self.shard(frame).lock();
        let slot = shard.remove(frame)?;
        self.forget_frame(slot, frame);
        Some(slot)
    }

    /// Whether a frame holds `slot`, or a swap-in is reading it: readahead
    /// stops there (that page is copied when its own fault comes).
    pub(crate) fn held(&self, slot: u64) -> bool {
        let cell = usize::try_from(slot)
            .ok()
            .and_then(|s| self.frame_of.get(s));
        cell.is_some_and(|c| c.load(Ordering::Acquire) != 0)
    }

    /// What a swap-in of `slot` into the frame behind `fill` should do:
    /// when a resident frame holds the slot's data, `fill` copies it (run
    /// under that frame's shard lock, the frame still cached, so nothing
    /// writes or frees it meanwhile); when another swap-in reads the slot,
    /// wait; else read it, holding the claim until the page is cached.
    pub(crate) fn claim(&self, slot: u64, fill: impl FnOnce(u64)) -> Claim<'_> {
        let cell = &self.frame_of[slot as usize];
        loop {
            match cell.load(Ordering::Acquire) {
                READING => return Claim::Wait,
                0 => {
                    if cell
                        .compare_exchange(0, READING, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Claim::Read(Reading { cell });
                    }
                }
                held => {
                    let frame = held - 1;
                    let shard = self.shard(frame).lock();
                    if shard.get(frame) == Some(slot) {
                        fill(frame);
                        return Claim::Copied;
                    }
                    drop(shard);
                    // The frame left the cache meanwhile: clear the stale hint.
                    self.forget_frame(slot, frame);
                }
            }
        }
    }

    /// Forgets `frame`'s copy on swap, if it has one (its slot loses the
    /// cache's reference).
    pub(crate) fn drop_cached(&self, frame: x86_64::structures::paging::PhysFrame) {
        if let Some(slot) = self.uncache(frame.start_address().as_u64() / crate::PAGE_SIZE) {
            self.drop_ref(slot);
        }
    }

    /// Entries in the swap cache.
    pub(crate) fn cached(&self) -> usize {
        self.cache.iter().map(|c| c.lock().len).sum()
    }

    /// References to `slot`: entries naming it and cached frames holding it.
    pub(crate) fn refs(&self, slot: u64) -> u32 {
        self.refs[slot as usize].load(Ordering::Acquire)
    }

    /// Takes a run of up to `n` free slots, each with one reference.
    pub(crate) fn take(&self, n: usize) -> Option<(u64, usize)> {
        let mut state = self.state();
        let (first, len) = state.slots.take_run(n)?;
        for s in first..first + len as u64 {
            self.refs[s as usize].store(1, Ordering::Release);
        }
        Some((first, len))
    }

    /// One more reference to `slot`, which has one already.
    pub(crate) fn add_ref(&self, slot: u64) {
        let before = self.refs[slot as usize].fetch_add(1, Ordering::AcqRel);
        debug_assert!(before > 0, "slot {slot} gained a reference while free");
    }

    /// One reference to `slot` fewer; the slot is free after its last.
    pub(crate) fn drop_ref(&self, slot: u64) {
        let before = self.refs[slot as usize].fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "slot {slot} has no reference to drop");
        if before == 1 {
            // Before the slot can be taken again.
            self.device.discard(slot);
            self.state().slots.give_back(slot);
        }
    }

    /// The slot state, locked (never across a device request).
    pub(crate) fn state(&self) -> spin::MutexGuard<'_, SwapState> {
        self.state.lock()
    }

    /// Gives the device back.
    pub(crate) fn into_device(self) -> Box<dyn SwapDevice + Send> {
        self.device
    }
}

impl SwapState {
    fn new(count: u64) -> Option<Self> {
        let n = usize::try_from(count).ok()?;
        let mut bits = Vec::new();
        bits.try_reserve_exact(n.div_ceil(64)).ok()?;
        Some(Self {
            slots: Slots::new(count, bits),
        })
    }

    /// Slots in use.
    pub(crate) fn used(&self) -> u64 {
        self.slots.count - self.slots.free
    }

    /// Whether `slot` is allocated.
    pub(crate) fn in_use(&self, slot: u64) -> bool {
        slot < self.slots.count && !self.slots.is_free(slot)
    }

    /// Slots in all.
    pub(crate) fn capacity(&self) -> u64 {
        self.slots.count
    }
}

/// A shard of the swap cache: frame number → slot, an open-addressed table
/// allocated once (kept at most half full), so inserting never allocates.
/// Linear probing with backward-shift deletion.
struct FrameCache {
    /// `(frame + 1, slot)`; a key of 0 is an empty bucket.
    buckets: Vec<(u64, u64)>,
    len: usize,
}

impl FrameCache {
    fn new(slots: u64) -> Option<Self> {
        let n = usize::try_from(slots)
            .ok()?
            .max(1)
            .checked_mul(2)?
            .next_power_of_two();
        let mut buckets = Vec::new();
        buckets.try_reserve_exact(n).ok()?;
        buckets.resize(n, (0, 0));
        Some(Self { buckets, len: 0 })
    }

    fn home(&self, frame: u64) -> usize {
        // Fibonacci hashing spreads consecutive frame numbers.
        (frame.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & (self.buckets.len() - 1)
    }

    fn find(&self, frame: u64) -> Result<usize, usize> {
        let mask = self.buckets.len() - 1;
        let mut i = self.home(frame);
        loop {
            match self.buckets[i].0 {
                0 => return Err(i),
                k if k == frame + 1 => return Ok(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Inserts; returns the slot `frame` had before, or `slot` itself when
    /// the table is full: the caller drops the reference it returns.
    fn insert(&mut self, frame: u64, slot: u64) -> Option<u64> {
        match self.find(frame) {
            Ok(i) => Some(core::mem::replace(&mut self.buckets[i].1, slot)),
            // At most half full, so that probes stay short: past that the
            // new entry is refused (handed back to be dropped).
            Err(_) if self.len >= self.buckets.len() / 2 => Some(slot),
            Err(i) => {
                self.buckets[i] = (frame + 1, slot);
                self.len += 1;
                None
            }
        }
    }

    fn get(&self, frame: u64) -> Option<u64> {
        self.find(frame).ok().map(|i| self.buckets[i].1)
    }

    fn remove(&mut self, frame: u64) -> Option<u64> {
        let mut hole = self.find(frame).ok()?;
        let slot = self.buckets[hole].1;
        self.buckets[hole] = (0, 0);
        self.len -= 1;
        // Backward shift: pull later entries of the run into the hole when
        // their home does not lie between the hole and them.
        let mask = self.buckets.len() - 1;
        let mut j = (hole + 1) & mask;
        while self.buckets[j].0 != 0 {
            let home = self.home(self.buckets[j].0 - 1);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.buckets[hole] = self.buckets[j];
                self.buckets[j] = (0, 0);
                hole = j;
            }
            j = (j + 1) & mask;
        }
        Some(slot)
    }
}
