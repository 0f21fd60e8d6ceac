//! Frame contents through `PhysMem`: zeroing, copying, a page of zeros,
//! and the page a frame holds, for the fault path, swap and reclaim.

use super::swap::PAGE_BYTES;
use crate::paging::PhysMem;
use x86_64::structures::paging::PhysFrame;

/// Zeroes `frame` through `phys`.
pub(crate) fn fill_zero<P: PhysMem>(phys: &P, frame: PhysFrame) {
    let dst = phys.table_ptr(frame).as_ptr().cast::<u8>();
    // SAFETY: `PhysMem` makes every frame of the frame source valid for
    // 4096 bytes of writes; the frame was just allocated, so nothing else
    // uses it.
    unsafe { dst.write_bytes(0, PAGE_BYTES) };
}

/// Copies frame `src` into frame `dst` through `phys`.
pub(crate) fn copy_frame<P: PhysMem>(phys: &P, src: PhysFrame, dst: PhysFrame) {
    let s = phys.table_ptr(src).as_ptr().cast::<u8>();
    let d = phys.table_ptr(dst).as_ptr().cast::<u8>();
    // SAFETY: both frames are valid for 4096 bytes through `PhysMem`, and
    // distinct (`dst` was just allocated), so the ranges do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(s, d, PAGE_BYTES) };
}

/// The page in `frame`, through `phys`. Dereferencing it needs the frame
/// to come from the frame source behind `phys` and nothing else to access it.
pub(super) fn page_ptr<P: PhysMem>(phys: &P, frame: PhysFrame) -> *mut [u8; PAGE_BYTES] {
    phys.table_ptr(frame).as_ptr().cast()
}

/// Whether `frame` holds only zeros.
pub(super) fn is_zero<P: PhysMem>(phys: &P, frame: PhysFrame) -> bool {
    let p = phys.table_ptr(frame).as_ptr().cast::<[u64; 512]>();
    // SAFETY: a frame of the frame source, readable for 4096 bytes through
    // `PhysMem`; its page was unmapped (busy mark) and invalidated on every
    // CPU of the space before this reads it, so nothing writes it.
    unsafe { (*p).iter().all(|&w| w == 0) }
}
