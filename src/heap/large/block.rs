//! Boundary tags: reading and writing block headers, footers and free-list
//! links, and finding a live payload's block.

use super::{OFFSET, OVERHEAD, SIZE_MASK};
use core::ptr::NonNull;

/// One free-list link pair, stored in the free block after its header.
#[repr(C)]
pub(super) struct Links {
    pub(super) next: *mut u8,
    pub(super) prev: *mut u8,
}

/// The header word of block `b`.
///
/// # Safety
/// `b` must be a block address (header, sentinel or OFFSET word) inside
/// the live span.
#[inline(always)]
pub(super) unsafe fn hdr(b: *mut u8) -> usize {
    // SAFETY: the caller passes a block address in the span; headers are
    // 8-aligned.
    unsafe { b.cast::<usize>().read() }
}

/// Writes `v` as the header word of block `b`.
///
/// # Safety
/// As [`hdr`].
#[inline(always)]
pub(super) unsafe fn set_hdr(b: *mut u8, v: usize) {
    // SAFETY: as in `hdr`.
    unsafe { b.cast::<usize>().write(v) }
}

/// The free-list links of the free block `b`.
///
/// # Safety
/// `b` must be a free block (at least `MIN_BLOCK` bytes) in the live span.
#[inline(always)]
pub(super) unsafe fn links(b: *mut u8) -> *mut Links {
    // SAFETY: free blocks are ≥ MIN_BLOCK, links follow the header.
    unsafe { b.add(OVERHEAD).cast() }
}

/// Writes the footer (`size` in its last word) of the free block `b`.
///
/// # Safety
/// `b` must be a block of `size` bytes in the live span.
#[inline(always)]
pub(super) unsafe fn set_footer(b: *mut u8, size: usize) {
    // SAFETY: the footer is the last word of a free block of `size` bytes.
    unsafe { b.add(size - 8).cast::<usize>().write(size) }
}

/// The block holding the live payload `ptr`, its header, and the payload's
/// offset from the block's usual payload start (its in-block alignment gap).
///
/// # Safety
/// `ptr` must be a live payload of a heap span.
#[inline(always)]
pub(super) unsafe fn block_of(ptr: NonNull<u8>) -> (*mut u8, usize, usize) {
    // SAFETY: a live payload is preceded by its header or an OFFSET word.
    unsafe {
        let word = ptr.as_ptr().sub(OVERHEAD);
        let header = hdr(word);
        if header & OFFSET != 0 {
            return offset_block(word, header);
        }
        (word, header, 0)
    }
}

/// `block_of` for an aligned payload behind the OFFSET word `offset` at
/// `word`. Out of line so the common case stays a branch rather than a
/// select, which would put a second header load on every free.
///
/// # Safety
/// As `block_of`, with `offset` the OFFSET word at `word`.
#[cold]
#[inline(never)]
unsafe fn offset_block(word: *mut u8, offset: usize) -> (*mut u8, usize, usize) {
    let gap = offset & SIZE_MASK;
    // SAFETY: the OFFSET word names the distance back to the block's header.
    unsafe {
        let block = word.sub(gap);
        (block, hdr(block), gap)
    }
}

/// Asks the CPU to pull `p`'s cache line in. Any address is fine: a
/// prefetch never faults.
#[inline(always)]
pub(super) fn prefetch(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: `prefetcht0` only hints the cache; it reads no memory
    // architecturally, cannot fault, and leaves flags and stack alone.
    unsafe {
        core::arch::asm!(
            "prefetcht0 [{}]",
            in(reg) p,
            options(nostack, preserves_flags, readonly)
        );
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = p;
}
