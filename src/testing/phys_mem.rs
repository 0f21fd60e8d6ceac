//! Emulated physical memory backed by a host buffer, and a frame allocator over it.
//!
//! Physical addresses are the host addresses of the buffer (so the `x86_64` crate's
//! `OffsetPageTable` works on the same memory with an offset of zero). Only table frames
//! need to live here; leaf frames of mappings are just numbers and are never dereferenced.

use core::marker::PhantomData;
use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::vec::Vec;

use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, PageTable, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use crate::paging::PhysMem;

const FRAME: usize = crate::PAGE_SIZE as usize;

/// A zeroed, 4 KiB-aligned host buffer standing in for physical memory.
///
/// ```
/// use kmem::testing::phys_mem::EmulatedMemory;
/// use x86_64::structures::paging::FrameAllocator;
/// let mem = EmulatedMemory::new(16);
/// let mut frames = mem.frame_allocator();
/// let f = frames.allocate_frame().unwrap();
/// assert!(mem.contains(f.start_address()));
/// assert_eq!(frames.in_use(), 1);
/// ```
#[derive(Debug)]
pub struct EmulatedMemory {
    base: NonNull<u8>,
    frames: usize,
}

// SAFETY: the buffer is owned exclusively (like a Box) and only accessed through raw pointers.
unsafe impl Send for EmulatedMemory {}

impl EmulatedMemory {
    /// `frames` zeroed 4 KiB frames (at least one). Large buffers are zeroed lazily by the OS.
    pub fn new(frames: usize) -> Self {
        let frames = frames.max(1);
        let layout = Self::layout(frames);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let base = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        // Physical addresses are host addresses: expose the provenance so `OffsetPageTable`
        // (which turns integers into pointers) may use them too.
        let _ = base.as_ptr().expose_provenance();
        Self { base, frames }
    }

    fn layout(frames: usize) -> Layout {
        Layout::from_size_align(frames * FRAME, FRAME).expect("emulated memory too large")
    }

    /// The first physical address.
    pub fn start(&self) -> PhysAddr {
        PhysAddr::new(self.base.as_ptr().addr() as u64)
    }

    /// One past the last physical address.
    pub fn end(&self) -> PhysAddr {
        self.start() + (self.frames * FRAME) as u64
    }

    /// Number of frames.
    pub fn frame_count(&self) -> usize {
        self.frames
    }

    /// Whether `addr` lies in this memory.
    pub fn contains(&self, addr: PhysAddr) -> bool {
        addr >= self.start() && addr < self.end()
    }

    /// The direct-map offset for `OffsetPageTable`/`OffsetPhysMem`: zero.
    pub fn phys_offset(&self) -> VirtAddr {
        VirtAddr::zero()
    }

    /// A bounds-checked [`PhysMem`] over this memory (panics on a frame outside it: a bug).
    pub fn phys_mem(&self) -> EmulatedPhysMem<'_> {
        EmulatedPhysMem {
            base: self.base,
            start: self.start().as_u64(),
            len: (self.frames * FRAME) as u64,
            _mem: PhantomData,
        }
    }

    /// A frame allocator handing out every frame of this memory, lowest first.
    pub fn frame_allocator(&self) -> EmulatedFrameAllocator {
        EmulatedFrameAllocator::new(self.start(), self.frames)
    }

    /// A frame allocator over frames `[first, first + count)` of this memory.
    pub fn frame_allocator_range(&self, first: usize, count: usize) -> EmulatedFrameAllocator {
        let count = count.min(self.frames.saturating_sub(first));
        EmulatedFrameAllocator::new(self.start() + (first * FRAME) as u64, count)
    }

    /// Reads the 64-bit word at `addr` (8-aligned, inside the memory).
    pub fn read_u64(&self, addr: PhysAddr) -> u64 {
        // SAFETY: `word` checks bounds and alignment.
        unsafe { self.word(addr).read() }
    }

    /// Writes the 64-bit word at `addr` (e.g. to forge a page-table entry in a test).
    pub fn write_u64(&self, addr: PhysAddr, value: u64) {
        // SAFETY: `word` checks bounds and alignment; the memory is only accessed through raw
        // pointers, so no reference is invalidated.
        unsafe { self.word(addr).write(value) }
    }

    fn word(&self, addr: PhysAddr) -> *mut u64 {
        assert!(
            self.contains(addr) && addr.as_u64().is_multiple_of(8),
            "bad emulated address {addr:?}"
        );
        let off = (addr - self.start()) as usize;
        self.base.as_ptr().wrapping_add(off).cast()
    }

    /// The table in `frame` as a reference, for `OffsetPageTable::new`.
    ///
    /// # Safety
    ///
    /// `frame` must lie in this memory and no other access to it (a mapper included) may
    /// happen while the reference lives.
    #[allow(clippy::mut_from_ref)] // exclusivity is the caller's `# Safety` obligation
    pub unsafe fn table_mut(&self, frame: PhysFrame) -> &mut PageTable {
        let ptr = self.phys_mem().table_ptr(frame);
        // SAFETY: in bounds and aligned (checked by `table_ptr`); exclusivity by the caller.
        unsafe { &mut *ptr.as_ptr() }
    }
}

impl Drop for EmulatedMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { dealloc(self.base.as_ptr(), Self::layout(self.frames)) }
    }
}

/// A [`PhysMem`] handle onto an [`EmulatedMemory`]; copyable, borrows the memory.
#[derive(Debug, Clone, Copy)]
pub struct EmulatedPhysMem<'a> {
    base: NonNull<u8>,
    start: u64,
    len: u64,
    _mem: PhantomData<&'a EmulatedMemory>,
}

// SAFETY: a handle is an address range and a borrow of the buffer, which outlives it; it
// hands out raw pointers only, whose use (and any race through them) is the user's
// `unsafe` code's to order, as with pointers into a kernel's direct map.
unsafe impl Send for EmulatedPhysMem<'_> {}
// SAFETY: as for `Send`: `&EmulatedPhysMem` gives nothing but raw pointers.
unsafe impl Sync for EmulatedPhysMem<'_> {}

// SAFETY: frames inside the buffer are 4096-aligned, 4096 bytes, disjoint and live as long as
// the borrow `'a`; a frame outside panics instead of returning a pointer. The buffer is
// touched only through raw pointers.
unsafe impl PhysMem for EmulatedPhysMem<'_> {
    #[inline]
    fn table_ptr(&self, frame: PhysFrame) -> NonNull<PageTable> {
        let off = frame.start_address().as_u64().wrapping_sub(self.start);
        assert!(off < self.len, "frame {frame:?} outside emulated memory");
        let ptr = self.base.as_ptr().wrapping_add(off as usize);
        NonNull::new(ptr.cast()).unwrap_or(NonNull::dangling())
    }
}

/// A frame allocator over emulated memory: bump then free list, counts, fault injection.
/// Panics on a double free or a foreign frame (a bug in the code under test).
#[derive(Debug, Clone)]
pub struct EmulatedFrameAllocator {
    start: u64,
    frames: usize,
    next: usize,
    free: Vec<usize>,
    allocated: Vec<bool>,
    in_use: usize,
    successes: u64,
    fail_after: Option<u64>,
}

impl EmulatedFrameAllocator {
    fn new(start: PhysAddr, frames: usize) -> Self {
        Self {
            start: start.as_u64(),
            frames,
            next: 0,
            free: Vec::new(),
            allocated: std::vec![false; frames],
            in_use: 0,
            successes: 0,
            fail_after: None,
        }
    }

    /// Frames currently handed out.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Frames still available.
    pub fn free_count(&self) -> usize {
        self.frames - self.in_use
    }

    /// Successful allocations so far.
    pub fn allocations(&self) -> u64 {
        self.successes
    }

    /// Lets `n` more allocations succeed, then fails every one (until [`Self::clear_failure`]).
    pub fn fail_after(&mut self, n: u64) {
        self.fail_after = Some(self.successes + n);
    }

    /// Stops injecting failures.
    pub fn clear_failure(&mut self) {
        self.fail_after = None;
    }

    /// Whether `frame` is currently handed out.
    pub fn is_allocated(&self, frame: PhysFrame) -> bool {
        self.slot(frame).is_some_and(|i| self.allocated[i])
    }

    /// Every frame currently handed out, in address order.
    pub fn allocated_frames(&self) -> Vec<PhysFrame> {
        (0..self.frames)
            .filter(|&i| self.allocated[i])
            .map(|i| self.frame(i))
            .collect()
    }

    /// `count` contiguous frames whose first is aligned to `align` bytes (from the untouched
    /// part), e.g. the frames behind a huge page.
    pub fn allocate_contiguous(&mut self, count: usize, align: u64) -> Option<PhysAddr> {
        let align = align.max(FRAME as u64);
        let mut i = self.next;
        while !(self.start + (i * FRAME) as u64).is_multiple_of(align) {
            i += 1;
        }
        if i + count > self.frames || self.fail_after.is_some_and(|k| self.successes >= k) {
            return None;
        }
        for j in self.next..i {
            self.free.push(j);
        }
        for j in i..i + count {
            self.allocated[j] = true;
        }
        self.next = i + count;
        self.in_use += count;
        self.successes += 1;
        Some(PhysAddr::new(self.start + (i * FRAME) as u64))
    }

    fn frame(&self, i: usize) -> PhysFrame {
        PhysFrame::containing_address(PhysAddr::new(self.start + (i * FRAME) as u64))
    }

    fn slot(&self, frame: PhysFrame) -> Option<usize> {
        let off = frame.start_address().as_u64().checked_sub(self.start)?;
        let i = (off / FRAME as u64) as usize;
        (i < self.frames).then_some(i)
    }
}

// SAFETY: a frame is handed out only when not already allocated (tracked in `allocated`).
unsafe impl FrameAllocator<Size4KiB> for EmulatedFrameAllocator {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        if self.fail_after.is_some_and(|k| self.successes >= k) {
            return None;
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None if self.next < self.frames => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.allocated[i] = true;
        self.in_use += 1;
        self.successes += 1;
        Some(self.frame(i))
    }
}

impl FrameDeallocator<Size4KiB> for EmulatedFrameAllocator {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        let i = self
            .slot(frame)
            .unwrap_or_else(|| panic!("foreign frame {frame:?} freed"));
        assert!(self.allocated[i], "double free of {frame:?}");
        self.allocated[i] = false;
        self.in_use -= 1;
        self.free.push(i);
    }
}
