//! Heap errors.

use super::PageSourceError;

/// Why the heap could not be set up over a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeapInitError {
    /// The range cannot hold the guard pages, one large-heap page and one slab.
    TooSmall {
        /// Start of the range given.
        start: usize,
        /// Length of the range given.
        len: usize,
    },
    /// The range wraps around the address space.
    Overflow {
        /// Start of the range given.
        start: usize,
        /// Length of the range given.
        len: usize,
    },
    /// The first large-heap page could not be mapped.
    Map(PageSourceError),
}

/// Why an allocation failed. The heap is unchanged after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// Neither free blocks nor new pages could hold the request.
    OutOfMemory {
        /// Bytes requested.
        size: usize,
        /// Alignment requested.
        align: usize,
    },
    /// `size` rounded up to `align` overflows `isize`.
    BadLayout {
        /// Bytes requested.
        size: usize,
        /// Alignment requested.
        align: usize,
    },
}

impl core::fmt::Display for HeapInitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooSmall { start, len } => {
                write!(
                    f,
                    "heap range {start:#x}+{len:#x} cannot hold the guard pages, a page and a slab"
                )
            }
            Self::Overflow { start, len } => {
                write!(f, "heap range {start:#x}+{len:#x} wraps around")
            }
            Self::Map(e) => write!(f, "the first heap page could not be mapped: {e}"),
        }
    }
}

impl core::error::Error for HeapInitError {}

impl core::fmt::Display for AllocError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfMemory { size, align } => {
                write!(f, "out of memory for {size} bytes aligned to {align}")
            }
            Self::BadLayout { size, align } => {
                write!(f, "{size} bytes aligned to {align} overflow isize")
            }
        }
    }
}

impl core::error::Error for AllocError {}

impl core::fmt::Display for PageSourceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfFrames { addr } => write!(f, "no frame left for the heap page at {addr:#x}"),
            Self::MapFailed { addr } => write!(f, "the mapper refused the heap page at {addr:#x}"),
            Self::OutOfRange { start, pages } => {
                write!(f, "{pages} pages at {start:#x} lie outside the page source")
            }
        }
    }
}

impl core::error::Error for PageSourceError {}

/// What [`Heap::check_invariants`](super::Heap::check_invariants) found
/// wrong: the first fault of the walk, with the addresses and counts that
/// disagree. Any of these means the heap is corrupt (a heap bug, or a
/// write through a stray pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeapInvariantError {
    /// A large block's `PREV_FREE` flag disagrees with the block before it.
    PrevFreeFlag {
        /// Block address.
        block: usize,
    },
    /// The large heap's end sentinel is not a used block of size 0.
    EndSentinel {
        /// Sentinel address.
        at: usize,
        /// The header found there.
        header: usize,
    },
    /// A large block's size is below the minimum, off the granule, or
    /// runs past the end of the large heap.
    BlockSize {
        /// Block address.
        block: usize,
        /// Its size.
        size: usize,
    },
    /// Two free large blocks are adjacent (they should have merged).
    AdjacentFree {
        /// The second of the two.
        block: usize,
    },
    /// A free large block's footer does not repeat its size.
    FreeFooter {
        /// Block address.
        block: usize,
        /// Size in its header.
        size: usize,
        /// Size in its footer.
        footer: usize,
    },
    /// A free large block's header names a bin its size does not belong to.
    WrongBin {
        /// Block address.
        block: usize,
        /// Bin in its header.
        bin: usize,
        /// Bin of its size.
        expected: usize,
    },
    /// A free large block is not in the list of its bin.
    NotInBin {
        /// Block address.
        block: usize,
        /// Its bin.
        bin: usize,
    },
    /// A used large block's header carries a bin.
    UsedBlockBin {
        /// Block address.
        block: usize,
    },
    /// A bin's list holds something other than a free block of that bin.
    ListMember {
        /// The bin.
        bin: usize,
        /// The member.
        block: usize,
    },
    /// A list member's back link does not name the member before it.
    BackLink {
        /// The bin.
        bin: usize,
        /// The member.
        block: usize,
    },
    /// The free lists hold more blocks than the large heap can: a cycle.
    ListCycle {
        /// The bin where the count ran over.
        bin: usize,
    },
    /// The block walk and the free lists count different free blocks.
    FreeCount {
        /// Free blocks found walking the large heap.
        blocks: usize,
        /// Blocks in the free lists.
        listed: usize,
    },
    /// A bin's bitmap bit disagrees with whether its list is empty.
    BinBitmap {
        /// The bin.
        bin: usize,
    },
    /// A first-level bitmap bit disagrees with its second-level bitmap.
    FirstLevelBitmap {
        /// The first-level index.
        first_level: usize,
    },
    /// The large heap and the slab region overlap, or the slab floor is
    /// not span-aligned.
    RegionOverlap {
        /// End of the large heap.
        brk: usize,
        /// Start of the slab region.
        floor: usize,
        /// End of the slab region.
        top: usize,
    },
    /// A span of the slab region has neither a valid slab header nor a
    /// free-span one.
    SlabHeader {
        /// Span address.
        span: usize,
    },
    /// A slab's free list points outside the slab's handed-out objects.
    SlabFreeList {
        /// Slab address.
        slab: usize,
        /// The bad list entry.
        object: usize,
    },
    /// A slab's free list is longer than the slab's capacity: a cycle.
    SlabFreeListCycle {
        /// Slab address.
        slab: usize,
    },
    /// A slab's free count differs from its listed plus never-used objects.
    SlabFreeCount {
        /// Slab address.
        slab: usize,
        /// Free objects counted.
        counted: usize,
        /// The slab's free count.
        recorded: usize,
    },
    /// The slabs and free spans found in the region differ from the
    /// heap's counts.
    SpanCount {
        /// Slabs found.
        slabs: usize,
        /// Slabs the heap counts.
        slabs_recorded: usize,
        /// Free spans found.
        free_spans: usize,
        /// Free spans in the free-span list's count.
        free_spans_recorded: usize,
    },
    /// A span list reaches a span outside the region or of the wrong kind
    /// (a used slab among free spans, a slab of another class).
    SpanListMember {
        /// The span.
        span: usize,
    },
    /// A span list's length differs from its count.
    SpanListLength {
        /// The list's count.
        len: usize,
        /// Spans reached (counting stops one past `len`).
        counted: usize,
    },
    /// A class's partial list does not hold exactly its slabs with free
    /// objects.
    PartialList {
        /// Size class.
        class: usize,
        /// Slabs in the list.
        len: usize,
        /// Slabs of the class with free objects.
        slabs: usize,
    },
    /// A magazine holds an object outside its class's slabs.
    MagazineObject {
        /// Size class.
        class: usize,
        /// The object.
        object: usize,
    },
    /// A class's objects out of its slabs differ from its count, or its
    /// magazine holds more than that.
    ClassCount {
        /// Size class.
        class: usize,
        /// Objects out of the class's slabs, counted in the slabs.
        counted: usize,
        /// The heap's count of them.
        recorded: usize,
        /// Objects in the class's magazine.
        in_magazine: usize,
    },
    /// The live large blocks differ from the heap's count.
    LargeLive {
        /// Used blocks found walking the large heap.
        blocks: usize,
        /// The heap's count of live large allocations.
        recorded: usize,
    },
    /// The pages held differ from the slab region's and the large heap's.
    PagesHeld {
        /// The heap's count of pages held.
        held: usize,
        /// Pages of the slab region (slabs and cached spans).
        slab_region: usize,
        /// Pages of the large heap.
        large: usize,
    },
}

impl core::fmt::Display for HeapInvariantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::PrevFreeFlag { block } => write!(
                f,
                "the PREV_FREE flag of the large block at {block:#x} disagrees with the block before"
            ),
            Self::EndSentinel { at, header } => write!(
                f,
                "the large heap's end sentinel at {at:#x} reads {header:#x}, not a used block of size 0"
            ),
            Self::BlockSize { block, size } => write!(
                f,
                "the large block at {block:#x} has size {size:#x}: too small, off the granule or past the end"
            ),
            Self::AdjacentFree { block } => write!(
                f,
                "the free large block at {block:#x} follows another free block"
            ),
            Self::FreeFooter { block, size, footer } => write!(
                f,
                "the free large block at {block:#x} of {size:#x} bytes has footer {footer:#x}"
            ),
            Self::WrongBin { block, bin, expected } => write!(
                f,
                "the free large block at {block:#x} names bin {bin}; its size belongs in bin {expected}"
            ),
            Self::NotInBin { block, bin } => write!(
                f,
                "the free large block at {block:#x} is missing from bin {bin}"
            ),
            Self::UsedBlockBin { block } => {
                write!(f, "the used large block at {block:#x} carries a bin")
            }
            Self::ListMember { bin, block } => write!(
                f,
                "bin {bin} lists {block:#x}, which is not a free block of that bin"
            ),
            Self::BackLink { bin, block } => write!(
                f,
                "the back link of {block:#x} in bin {bin} does not name the member before it"
            ),
            Self::ListCycle { bin } => write!(
                f,
                "the free lists hold more blocks than the large heap can (a cycle, at bin {bin})"
            ),
            Self::FreeCount { blocks, listed } => write!(
                f,
                "{blocks} free large blocks, but the free lists hold {listed}"
            ),
            Self::BinBitmap { bin } => {
                write!(f, "the bitmap bit of bin {bin} disagrees with its list")
            }
            Self::FirstLevelBitmap { first_level } => write!(
                f,
                "first-level bitmap bit {first_level} disagrees with its second level"
            ),
            Self::RegionOverlap { brk, floor, top } => write!(
                f,
                "large heap end {brk:#x}, slab region [{floor:#x}, {top:#x}): overlapping or misaligned"
            ),
            Self::SlabHeader { span } => {
                write!(f, "the span at {span:#x} has a corrupt slab header")
            }
            Self::SlabFreeList { slab, object } => write!(
                f,
                "the free list of the slab at {slab:#x} points at {object:#x}, not one of its used objects"
            ),
            Self::SlabFreeListCycle { slab } => write!(
                f,
                "the free list of the slab at {slab:#x} is longer than its capacity (a cycle)"
            ),
            Self::SlabFreeCount {
                slab,
                counted,
                recorded,
            } => write!(
                f,
                "the slab at {slab:#x} has {counted} free objects but counts {recorded}"
            ),
            Self::SpanCount {
                slabs,
                slabs_recorded,
                free_spans,
                free_spans_recorded,
            } => write!(
                f,
                "the slab region holds {slabs} slabs and {free_spans} free spans; \
                 the heap counts {slabs_recorded} and {free_spans_recorded}"
            ),
            Self::SpanListMember { span } => write!(
                f,
                "a span list reaches {span:#x}, outside the slab region or of the wrong kind"
            ),
            Self::SpanListLength { len, counted } => {
                write!(f, "a span list of length {len} reaches {counted} spans")
            }
            Self::PartialList { class, len, slabs } => write!(
                f,
                "the partial list of class {class} holds {len} slabs; {slabs} have free objects"
            ),
            Self::MagazineObject { class, object } => write!(
                f,
                "the magazine of class {class} holds {object:#x}, outside the class's slabs"
            ),
            Self::ClassCount {
                class,
                counted,
                recorded,
                in_magazine,
            } => write!(
                f,
                "class {class}: {counted} objects out of its slabs, {recorded} counted, \
                 {in_magazine} in its magazine"
            ),
            Self::LargeLive { blocks, recorded } => write!(
                f,
                "{blocks} used large blocks, but {recorded} live large allocations counted"
            ),
            Self::PagesHeld {
                held,
                slab_region,
                large,
            } => write!(
                f,
                "{held} pages held, but the slab region has {slab_region} and the large heap {large}"
            ),
        }
    }
}

impl core::error::Error for HeapInvariantError {}
