//! Table frames obtained before a range operation commits, so the commit cannot fail.
//!
//! The frames are chained through their own first word (no heap needed).

use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size4KiB};
use x86_64::PhysAddr;

use super::{PageTables, PagingError, PhysMem};

/// A stack of allocated, not yet used frames.
pub(crate) struct Reserve {
    head: Option<u64>,
    count: usize,
}

/// Encodes "next frame" in a frame's first word: address | 1, or 0 for the end.
const LINK: u64 = 1;

impl Reserve {
    pub(crate) const fn empty() -> Self {
        Self {
            head: None,
            count: 0,
        }
    }

    /// Obtains `n` frames; on failure returns all obtained ones and reports `OutOfFrames`.
    pub(crate) fn fill<P, A>(
        m: &mut PageTables<P>,
        alloc: &mut A,
        n: usize,
    ) -> Result<Self, PagingError>
    where
        P: PhysMem,
        A: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB> + ?Sized,
    {
        let mut r = Self::empty();
        while r.count < n {
            match alloc.allocate_frame() {
                Some(f) => r.push(m, f.start_address().as_u64()),
                None => {
                    let obtained = r.count;
                    r.free_unused(m, alloc);
                    return Err(PagingError::OutOfFrames {
                        needed: n,
                        obtained,
                    });
                }
            }
        }
        Ok(r)
    }

    fn push<P: PhysMem>(&mut self, m: &mut PageTables<P>, frame: u64) {
        m.write(frame, 0, self.head.map_or(0, |h| h | LINK));
        self.head = Some(frame);
        self.count += 1;
    }

    /// A zeroed frame for a new table. The plan counted every frame the commit takes.
    pub(crate) fn take<P: PhysMem>(&mut self, m: &mut PageTables<P>) -> u64 {
        let frame = self
            .head
            .expect("kmem: range plan undercounted table frames");
        let link = m.read(frame, 0);
        self.head = (link & LINK != 0).then_some(link & !LINK);
        self.count -= 1;
        m.zero_table(frame);
        frame
    }

    /// Returns every remaining frame to `alloc`.
    pub(crate) fn free_unused<P, A>(mut self, m: &mut PageTables<P>, alloc: &mut A)
    where
        P: PhysMem,
        A: FrameDeallocator<Size4KiB> + ?Sized,
    {
        while self.count > 0 {
            let f = self.take(m);
            // SAFETY: `f` came from `alloc` in `fill` and was never linked into a table.
            unsafe { alloc.deallocate_frame(PhysFrame::containing_address(PhysAddr::new(f))) };
        }
    }
}
