//! A hash index from page id to node number, for the policies' arenas.
//!
//! Open addressing with linear probing over `u32` node numbers; the keys
//! live in the nodes, so a slot is four bytes. Removal shifts later
//! entries back instead of leaving tombstones, so lookups stay short
//! however many pages come and go.

use super::PageId;
use alloc::vec;
use alloc::vec::Vec;

const EMPTY: u32 = u32::MAX;

/// Page id to node number; `key(n)` gives the page id stored in node `n`.
pub(crate) struct Index {
    slots: Vec<u32>,
    shift: u32,
    len: usize,
}

impl Index {
    /// An index for up to `entries` keys at a load of at most one half.
    pub(crate) fn with_capacity(entries: usize) -> Self {
        let size = (entries.max(4) * 2).next_power_of_two();
        Self {
            slots: vec![EMPTY; size],
            shift: 64 - size.trailing_zeros(),
            len: 0,
        }
    }

    /// Slots, for reports of the memory used.
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }

    fn home(&self, key: PageId) -> usize {
        // Fibonacci hashing: the high bits of the product mix every key bit.
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot holding `key`'s node (linear probing from its home).
    fn slot_of(&self, key: PageId, keys: impl Fn(u32) -> PageId) -> Option<usize> {
        let mut i = self.home(key);
        loop {
            let n = self.slots[i];
            if n == EMPTY {
                return None;
            }
            if keys(n) == key {
                return Some(i);
            }
            i = (i + 1) & self.mask();
        }
    }

    /// The node holding `key`.
    pub(crate) fn find(&self, key: PageId, keys: impl Fn(u32) -> PageId) -> Option<u32> {
        self.slot_of(key, keys).map(|i| self.slots[i])
    }

    /// Adds `node` under `key`, which must be absent. The caller keeps the
    /// number of entries within the capacity given at construction (or
    /// calls [`grow`](Self::grow)).
    pub(crate) fn insert(&mut self, key: PageId, node: u32) {
        debug_assert!(self.len < self.slots.len() / 2 + 1);
        let mut i = self.home(key);
        while self.slots[i] != EMPTY {
            i = (i + 1) & self.mask();
        }
        self.slots[i] = node;
        self.len += 1;
    }

    /// Removes `key`, returning its node.
    pub(crate) fn remove(&mut self, key: PageId, keys: impl Fn(u32) -> PageId) -> Option<u32> {
        let mask = self.mask();
        let mut i = self.slot_of(key, &keys)?;
        let found = self.slots[i];
        // Backward shift: pull later entries of the probe run into the hole
        // when the hole lies between their home slot and where they sit.
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let n = self.slots[j];
            if n == EMPTY {
                break;
            }
            let home = self.home(keys(n));
            let dist_hole = i.wrapping_sub(home) & mask;
            let dist_here = j.wrapping_sub(home) & mask;
            if dist_hole < dist_here {
                self.slots[i] = n;
                i = j;
            }
        }
        self.slots[i] = EMPTY;
        self.len -= 1;
        Some(found)
    }

    /// Doubles the slots when the next insert would pass a load of one half.
    pub(crate) fn reserve_one(&mut self, keys: impl Fn(u32) -> PageId) {
        if (self.len + 1) * 2 <= self.slots.len() {
            return;
        }
        let size = self.slots.len() * 2;
        let old = core::mem::replace(&mut self.slots, vec![EMPTY; size]);
        self.shift -= 1;
        self.len = 0;
        for n in old.into_iter().filter(|&n| n != EMPTY) {
            self.insert(keys(n), n);
        }
    }
}
