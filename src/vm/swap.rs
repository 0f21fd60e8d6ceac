//! Swap: the device interface, the slot allocator, the swap cache and the
//! encoding of a swapped-out page in its page-table entry.
//!
//! A swapped-out page is a non-present 4 KiB entry `slot << 12 | 0b10`:
//! bit 0 (present) is clear, so the CPU never uses it; bit 1 tells it from
//! an empty entry (slot 0 included); bits 12..52 hold the slot.
//!
//! A slot has one reference per page-table entry naming it (a fork shares
//! the entry) plus one while the swap cache holds it: the cache maps a
//! resident frame read back from a slot to that slot, so a page evicted
//! again without having been written (its Dirty bit clear) is dropped
//! without writing. A slot is free when its last reference goes.

use super::shares::Shares;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Bytes in a page and in a slot.
pub const PAGE_BYTES: usize = crate::PAGE_SIZE as usize;
/// The most pages one device request carries (clustered write-out).
pub const CLUSTER: usize = 32;

const SWAP_TAG: u64 = 0b10;

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
pub trait SwapDevice {
    /// Capacity in slots.
    fn slots(&self) -> u64;
    /// Writes `pages` to the slots from `first` on.
    fn write(&mut self, first: u64, pages: &[&[u8; PAGE_BYTES]]) -> Result<(), SwapIoError>;
    /// Reads the slots from `first` on into `pages`.
    fn read(&mut self, first: u64, pages: &mut [&mut [u8; PAGE_BYTES]]) -> Result<(), SwapIoError>;
}

/// A swap device in memory, for tests and simulations, with failure
/// injection.
#[derive(Debug)]
pub struct MemSwap {
    data: Vec<[u8; PAGE_BYTES]>,
    /// Requests served so far.
    pub requests: u64,
    fail_writes: bool,
    fail_reads: bool,
}

impl MemSwap {
    /// A device of `slots` slots.
    pub fn new(slots: u64) -> Self {
        Self {
            data: vec![[0; PAGE_BYTES]; slots as usize],
            requests: 0,
            fail_writes: false,
            fail_reads: false,
        }
    }

    /// Makes every write (and, with `reads`, every read) fail from now on.
    pub fn fail(&mut self, writes: bool, reads: bool) {
        self.fail_writes = writes;
        self.fail_reads = reads;
    }
}

impl SwapDevice for MemSwap {
    fn slots(&self) -> u64 {
        self.data.len() as u64
    }

    fn write(&mut self, first: u64, pages: &[&[u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        let err = SwapIoError {
            slot: first,
            pages: pages.len(),
        };
        if self.fail_writes || first as usize + pages.len() > self.data.len() {
            return Err(err);
        }
        self.requests += 1;
        for (i, p) in pages.iter().enumerate() {
            self.data[first as usize + i] = **p;
        }
        Ok(())
    }

    fn read(&mut self, first: u64, pages: &mut [&mut [u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        let err = SwapIoError {
            slot: first,
            pages: pages.len(),
        };
        if self.fail_reads || first as usize + pages.len() > self.data.len() {
            return Err(err);
        }
        self.requests += 1;
        for (i, p) in pages.iter_mut().enumerate() {
            **p = self.data[first as usize + i];
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
    fn new(count: u64) -> Self {
        let words = count.div_ceil(64) as usize;
        let mut bits = vec![u64::MAX; words];
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

/// The swap state of a [`Vm`](super::Vm): the device, its slots, their
/// references, the swap cache.
pub(crate) struct Swap {
    pub(crate) device: Box<dyn SwapDevice + Send>,
    slots: Slots,
    refs: Shares,
    /// Resident frame (frame number) → the slot holding the same data.
    cache: BTreeMap<u64, u64>,
}

impl fmt::Debug for Swap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Swap")
            .field("slots", &self.slots.count)
            .field("free", &self.slots.free)
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Swap {
    pub(crate) fn new(device: Box<dyn SwapDevice + Send>) -> Self {
        let slots = Slots::new(device.slots());
        Self {
            device,
            slots,
            refs: Shares::default(),
            cache: BTreeMap::new(),
        }
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

    /// Takes a run of up to `n` free slots, each with one reference.
    pub(crate) fn take(&mut self, n: usize) -> Option<(u64, usize)> {
        self.slots.take_run(n)
    }

    /// One more reference to `slot`.
    pub(crate) fn add_ref(&mut self, slot: u64) {
        self.refs.add(slot);
    }

    /// One reference to `slot` fewer; the slot is free after its last.
    pub(crate) fn drop_ref(&mut self, slot: u64) {
        if self.refs.remove(slot) {
            self.slots.give_back(slot);
        }
    }

    /// Records that `frame` holds the data of `slot` (taking over one
    /// reference to the slot).
    pub(crate) fn cache(&mut self, frame: u64, slot: u64) {
        if let Some(old) = self.cache.insert(frame, slot) {
            self.drop_ref(old);
        }
    }

    /// The slot cached for `frame`, removed from the cache with its reference.
    pub(crate) fn uncache(&mut self, frame: u64) -> Option<u64> {
        self.cache.remove(&frame)
    }

    /// Entries in the swap cache.
    pub(crate) fn cached(&self) -> usize {
        self.cache.len()
    }
}
