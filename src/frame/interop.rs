//! The `x86_64` crate's `FrameAllocator` and `FrameDeallocator` traits for
//! 4 KiB, 2 MiB and 1 GiB frames (a huge frame is an aligned run of 4 KiB frames).

use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PageSize, PhysFrame};

use super::BitmapFrameAllocator;
use crate::memory_map::FRAME_SIZE;

// SAFETY: every frame returned is marked allocated in the bitmap and is
// handed out again only after it is freed, so no frame is returned twice.
unsafe impl<S: PageSize> FrameAllocator<S> for BitmapFrameAllocator<'_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<S>> {
        let run = self
            .allocate_contiguous(S::SIZE / FRAME_SIZE, S::SIZE, None)
            .ok()?;
        Some(PhysFrame::containing_address(run.start.start_address()))
    }
}

impl<S: PageSize> FrameDeallocator<S> for BitmapFrameAllocator<'_> {
    /// Frees the frame's 4 KiB frames. The trait cannot report errors: an
    /// invalid free (double, reserved, outside the map) is ignored and
    /// changes nothing; use [`BitmapFrameAllocator::free_range`] to see it.
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<S>) {
        let first = frame.start_address().as_u64() / FRAME_SIZE;
        let _ = self.free_frames_at(first, first + S::SIZE / FRAME_SIZE);
    }
}
