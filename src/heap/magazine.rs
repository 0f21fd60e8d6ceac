//! Per-class magazines: a small stack of free objects in front of the slabs.
//!
//! Allocation pops, free pushes; the slabs are touched only once per
//! half-magazine (refill or flush), which is what makes small objects cheap.

use core::ptr::null_mut;

/// Objects a magazine holds when full.
pub(crate) const MAG_CAP: usize = 64;

/// A fixed stack of free object pointers of one class.
pub(crate) struct Magazine {
    len: usize,
    slots: [*mut u8; MAG_CAP],
}

impl Magazine {
    /// An empty magazine.
    pub(crate) const fn new() -> Self {
        Self {
            len: 0,
            slots: [null_mut(); MAG_CAP],
        }
    }

    /// Objects held.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no object is held.
    #[inline(always)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether no more objects fit.
    #[inline(always)]
    pub(crate) fn is_full(&self) -> bool {
        self.len == MAG_CAP
    }

    /// Takes the most recently freed object.
    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<*mut u8> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: `len` never exceeds MAG_CAP (`push` is only called on a
        // magazine that is not full), so `len - 1` indexes a slot.
        Some(unsafe { *self.slots.get_unchecked(self.len) })
    }

    /// Adds an object.
    ///
    /// # Safety
    /// The magazine must not be full ([`Magazine::is_full`]).
    #[inline(always)]
    pub(crate) unsafe fn push(&mut self, obj: *mut u8) {
        debug_assert!(self.len < MAG_CAP);
        // SAFETY: the caller guarantees `len < MAG_CAP`, a valid slot index.
        unsafe { *self.slots.get_unchecked_mut(self.len) = obj };
        self.len += 1;
    }

    /// Removes the `n` oldest objects, handing each to `f`.
    pub(crate) fn drain_oldest(&mut self, n: usize, mut f: impl FnMut(*mut u8)) {
        let n = n.min(self.len);
        self.slots[..n].iter().for_each(|&p| f(p));
        self.slots.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// The objects held, oldest first.
    pub(crate) fn objects(&self) -> &[*mut u8] {
        &self.slots[..self.len]
    }
}

impl Default for Magazine {
    fn default() -> Self {
        Self::new()
    }
}
