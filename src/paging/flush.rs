//! The must-use TLB flush token a TLB-changing operation returns.

use x86_64::VirtAddr;

use super::Mmu;

/// Above this many pages a range operation asks for one full flush instead of `invlpg`s.
pub const FLUSH_THRESHOLD: usize = 32;

/// The TLB work an operation left to do: flush it (through an [`Mmu`]) or ignore it explicitly
/// (e.g. when the tables are not active).
#[must_use = "the TLB may still hold the old translation: call `flush` or `ignore`"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flush {
    pages: [u64; FLUSH_THRESHOLD],
    len: usize,
    all: bool,
}

impl Default for Flush {
    fn default() -> Self {
        Self::none()
    }
}

impl Flush {
    /// Nothing to flush (e.g. a new mapping over non-present entries, which the TLB never caches).
    pub const fn none() -> Self {
        Self {
            pages: [0; FLUSH_THRESHOLD],
            len: 0,
            all: false,
        }
    }

    /// Records that the translation of `addr` changed.
    #[inline]
    pub(crate) fn add(&mut self, addr: u64) {
        // A freed table's range often starts at the page just recorded.
        if self.all || (self.len > 0 && self.pages[self.len - 1] == addr) {
            return;
        }
        if self.len == FLUSH_THRESHOLD {
            self.all = true;
            return;
        }
        self.pages[self.len] = addr;
        self.len += 1;
    }

    /// Adds the work of `other` to this token.
    pub(crate) fn merge(&mut self, other: Flush) {
        if other.all {
            self.all = true;
        } else {
            other.pages[..other.len].iter().for_each(|&a| self.add(a));
        }
    }

    /// Whether this token will flush the whole TLB.
    pub const fn is_full(&self) -> bool {
        self.all
    }

    /// The pages that will be invalidated one by one (empty for a full flush).
    pub fn pages(&self) -> impl Iterator<Item = VirtAddr> + '_ {
        let n = if self.all { 0 } else { self.len };
        self.pages[..n].iter().map(|&a| VirtAddr::new_truncate(a))
    }

    /// Whether there is nothing to flush.
    pub const fn is_empty(&self) -> bool {
        !self.all && self.len == 0
    }

    /// Performs the flush: single `invlpg`s, or one full flush above the threshold.
    pub fn flush<M: Mmu + ?Sized>(self, mmu: &mut M) {
        if self.all {
            mmu.flush_all();
        } else {
            self.pages().for_each(|a| mmu.invlpg(a));
        }
    }

    /// Drops the token on purpose (the tables are not active, or a later full flush covers it).
    pub fn ignore(self) {}
}
