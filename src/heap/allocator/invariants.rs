//! The heap's invariant checker: the large heap's own check, then every
//! span of the slab region, every span list and magazine, and the counts.

use super::Heap;
use crate::heap::page_source::{PageSource, PAGE_SIZE};
use crate::heap::size_class::NUM_CLASSES;
use crate::heap::slab::{self, SlabHeader, SpanList, SLAB_SIZE};
use crate::heap::HeapInvariantError;

impl<P: PageSource> Heap<P> {
    /// Checks the whole structure: large-heap blocks, bins and bitmaps; every
    /// slab's free count against its list; magazines holding only free objects
    /// of their class; per-class and total live counts against the slabs and
    /// blocks; pages held = slab + large + cached pages. Returns the first
    /// fault found.
    pub fn check_invariants(&self) -> Result<(), HeapInvariantError> {
        let (large_used, _) = self.large.check()?;
        if self.large.brk() > self.floor
            || self.floor > self.top
            || !self.floor.is_multiple_of(SLAB_SIZE)
        {
            return Err(HeapInvariantError::RegionOverlap {
                brk: self.large.brk(),
                floor: self.floor,
                top: self.top,
            });
        }
        let mut slabs = 0;
        let mut free_spans = 0;
        let mut in_slabs = [0usize; NUM_CLASSES];
        let mut partial = [0usize; NUM_CLASSES];
        let mut base = self.floor;
        while base < self.top {
            let span = base as *const SlabHeader;
            // SAFETY: every span in [floor, top) is mapped with a header.
            if unsafe { slab::is_free_span(span) } {
                free_spans += 1;
            } else {
                // SAFETY: as above.
                let class = unsafe { slab::slab_class(span) }
                    .ok_or(HeapInvariantError::SlabHeader { span: base })?;
                // SAFETY: as above.
                let free = unsafe { slab::check_slab(span, class) }?;
                // SAFETY: as above.
                in_slabs[class] += unsafe { (*span).capacity as usize } - free;
                partial[class] += (free > 0) as usize;
                slabs += 1;
            }
            base += SLAB_SIZE;
        }
        if slabs != self.slabs_live || free_spans != self.free_spans.len {
            return Err(HeapInvariantError::SpanCount {
                slabs,
                slabs_recorded: self.slabs_live,
                free_spans,
                free_spans_recorded: self.free_spans.len,
            });
        }
        // SAFETY: list members lie in the mapped region (checked first).
        self.check_span_list(&self.free_spans, |s| unsafe { slab::is_free_span(s) })?;
        for (class, entry) in self.classes.iter().enumerate() {
            if entry.partial.len != partial[class] {
                return Err(HeapInvariantError::PartialList {
                    class,
                    len: entry.partial.len,
                    slabs: partial[class],
                });
            }
            self.check_span_list(&entry.partial, |s| {
                // SAFETY: list members lie in the mapped region (checked first).
                unsafe { slab::check_slab(s, class) }.is_ok()
            })?;
            for &object in entry.mag.objects() {
                let span = slab::slab_of(object);
                if (span as usize) < self.floor
                    || span as usize >= self.top
                    // SAFETY: the span is in the region, hence mapped.
                    || unsafe { slab::check_slab(span, class) }.is_err()
                {
                    return Err(HeapInvariantError::MagazineObject {
                        class,
                        object: object as usize,
                    });
                }
            }
            if in_slabs[class] != entry.out || entry.mag.len() > in_slabs[class] {
                return Err(HeapInvariantError::ClassCount {
                    class,
                    counted: in_slabs[class],
                    recorded: entry.out,
                    in_magazine: entry.mag.len(),
                });
            }
        }
        if large_used != self.large_live {
            return Err(HeapInvariantError::LargeLive {
                blocks: large_used,
                recorded: self.large_live,
            });
        }
        let slab_region = (self.top - self.floor) / PAGE_SIZE;
        let large = (self.large.brk() - self.lo) / PAGE_SIZE;
        if self.stats.pages_held != slab_region + large {
            return Err(HeapInvariantError::PagesHeld {
                held: self.stats.pages_held,
                slab_region,
                large,
            });
        }
        Ok(())
    }

    /// Checks that `list` holds `list.len` spans of the region, each `ok`.
    fn check_span_list(
        &self,
        list: &SpanList,
        ok: impl Fn(*const SlabHeader) -> bool,
    ) -> Result<(), HeapInvariantError> {
        let mut span = list.head;
        let mut counted = 0;
        while !span.is_null() {
            if (span as usize) < self.floor || span as usize >= self.top || !ok(span) {
                return Err(HeapInvariantError::SpanListMember {
                    span: span as usize,
                });
            }
            if counted >= list.len {
                return Err(HeapInvariantError::SpanListLength {
                    len: list.len,
                    counted: counted + 1,
                });
            }
            counted += 1;
            // SAFETY: `span` passed the checks above.
            span = unsafe { (*span).next };
        }
        if counted != list.len {
            return Err(HeapInvariantError::SpanListLength {
                len: list.len,
                counted,
            });
        }
        Ok(())
    }
}
