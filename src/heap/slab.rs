//! Slabs: 16 KiB spans aligned to their size, one size class each.
//!
//! The header sits at the start of the span; objects sit at multiples of the
//! class size from the span base (the first ones skipped to clear the header),
//! so power-of-two classes are naturally aligned and an object finds its slab
//! by masking. There is no per-object header. Free objects form an intrusive
//! list; never-used objects are handed out by a bump pointer.

use super::size_class::CLASS_SIZES;
use super::HeapInvariantError;
use core::ptr::null_mut;

/// Bytes in one slab span (a power of two; spans are aligned to it).
pub(crate) const SLAB_SIZE: usize = 16 * 1024;
/// Header bytes reserved at the start of a span.
const HEADER: usize = 64;
/// `magic` of a slab in use.
const SLAB_MAGIC: u32 = 0x51AB_0001;
/// `magic` of a span that is free and cached.
const FREE_MAGIC: u32 = 0x51AB_F4EE;

/// The header at the start of every span of the slab region.
#[repr(C)]
pub(crate) struct SlabHeader {
    magic: u32,
    class: u32,
    /// Free objects: listed plus not yet bumped.
    pub(crate) free_count: u32,
    /// Objects the slab holds.
    pub(crate) capacity: u32,
    free_head: *mut u8,
    bump: *mut u8,
    limit: *mut u8,
    /// Next slab in its class's partial list, or next free span.
    pub(crate) next: *mut SlabHeader,
    /// Previous entry in the same list.
    pub(crate) prev: *mut SlabHeader,
}

const _: () = assert!(core::mem::size_of::<SlabHeader>() <= HEADER);

/// The slab holding `obj`.
#[inline(always)]
pub(crate) fn slab_of(obj: *mut u8) -> *mut SlabHeader {
    (obj as usize & !(SLAB_SIZE - 1)) as *mut SlabHeader
}

/// Objects of `class` per slab and the offset of the first.
pub(crate) const fn layout_of(class: usize) -> (usize, usize) {
    let size = CLASS_SIZES[class];
    let first = HEADER.div_ceil(size) * size;
    ((SLAB_SIZE - first) / size, first)
}

/// Turns the span at `base` into an empty slab of `class`.
///
/// # Safety
/// `base` must be a writable, `SLAB_SIZE`-aligned span used by nothing else.
pub(crate) unsafe fn init_slab(base: *mut u8, class: usize) -> *mut SlabHeader {
    let (cap, first) = layout_of(class);
    let s = base.cast::<SlabHeader>();
    // SAFETY: the span is ours and large enough for the header.
    unsafe {
        s.write(SlabHeader {
            magic: SLAB_MAGIC,
            class: class as u32,
            free_count: cap as u32,
            capacity: cap as u32,
            free_head: null_mut(),
            bump: base.add(first),
            limit: base.add(first + cap * CLASS_SIZES[class]),
            next: null_mut(),
            prev: null_mut(),
        })
    };
    s
}

/// Marks the span at `base` free (cached, still mapped).
///
/// # Safety
/// As [`init_slab`].
pub(crate) unsafe fn init_free_span(base: *mut u8) -> *mut SlabHeader {
    let s = base.cast::<SlabHeader>();
    // SAFETY: the span is ours.
    unsafe {
        s.write(SlabHeader {
            magic: FREE_MAGIC,
            class: u32::MAX,
            free_count: 0,
            capacity: 0,
            free_head: null_mut(),
            bump: null_mut(),
            limit: null_mut(),
            next: null_mut(),
            prev: null_mut(),
        })
    };
    s
}

/// Whether the span header at `s` marks a free span.
///
/// # Safety
/// `s` must be the base of a mapped span of the slab region.
pub(crate) unsafe fn is_free_span(s: *const SlabHeader) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe { (*s).magic == FREE_MAGIC }
}

/// The class of the slab at `s`, if its header says it is a slab.
///
/// # Safety
/// `s` must be the base of a mapped span of the slab region.
pub(crate) unsafe fn slab_class(s: *const SlabHeader) -> Option<usize> {
    // SAFETY: forwarded from the caller.
    let h = unsafe { &*s };
    (h.magic == SLAB_MAGIC && (h.class as usize) < CLASS_SIZES.len()).then_some(h.class as usize)
}

/// Takes one free object (the slab must have `free_count > 0`).
///
/// # Safety
/// `s` must be a live slab with a free object.
#[inline(always)]
pub(crate) unsafe fn pop(s: *mut SlabHeader, size: usize) -> *mut u8 {
    // SAFETY: free objects are inside the slab; the first word of a listed
    // object holds the next link.
    unsafe {
        let h = &mut *s;
        h.free_count -= 1;
        let obj = h.free_head;
        if !obj.is_null() {
            h.free_head = obj.cast::<*mut u8>().read();
            obj
        } else {
            let obj = h.bump;
            h.bump = obj.add(size);
            obj
        }
    }
}

/// Returns `obj` to its slab's free list; returns the new free count.
///
/// # Safety
/// `obj` must be a live object of the slab `s`.
#[inline(always)]
pub(crate) unsafe fn push(s: *mut SlabHeader, obj: *mut u8) -> u32 {
    // SAFETY: the object is ours again and at least 8 bytes long.
    unsafe {
        let h = &mut *s;
        obj.cast::<*mut u8>().write(h.free_head);
        h.free_head = obj;
        h.free_count += 1;
        h.free_count
    }
}

/// A doubly linked list of span headers (partial slabs, or free spans).
pub(crate) struct SpanList {
    /// First entry, or null.
    pub(crate) head: *mut SlabHeader,
    /// Entries in the list.
    pub(crate) len: usize,
}

impl SpanList {
    /// An empty list.
    pub(crate) const fn new() -> Self {
        Self {
            head: null_mut(),
            len: 0,
        }
    }

    /// Adds `s` at the front.
    ///
    /// # Safety
    /// `s` must be a span header that is in no list.
    #[inline(always)]
    pub(crate) unsafe fn push(&mut self, s: *mut SlabHeader) {
        // SAFETY: `s` and the current head are valid headers.
        unsafe {
            (*s).prev = null_mut();
            (*s).next = self.head;
            if !self.head.is_null() {
                (*self.head).prev = s;
            }
        }
        self.head = s;
        self.len += 1;
    }

    /// Removes `s` from the list.
    ///
    /// # Safety
    /// `s` must be in this list.
    #[inline(always)]
    pub(crate) unsafe fn remove(&mut self, s: *mut SlabHeader) {
        // SAFETY: `s` and its neighbours are valid headers in this list.
        unsafe {
            let (next, prev) = ((*s).next, (*s).prev);
            if !next.is_null() {
                (*next).prev = prev;
            }
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).next = next;
            }
        }
        self.len -= 1;
    }
}

impl Default for SpanList {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks one slab of `class`: header, free list inside the slab at
/// object boundaries, counts matching. Returns its free count.
///
/// # Safety
/// `s` must be the base of a mapped span of the slab region.
pub(crate) unsafe fn check_slab(
    s: *const SlabHeader,
    class: usize,
) -> Result<usize, HeapInvariantError> {
    // SAFETY: forwarded from the caller; list walks are bounded by capacity.
    unsafe {
        let h = &*s;
        let (cap, first) = layout_of(class);
        let size = CLASS_SIZES[class];
        let base = s as usize;
        if h.magic != SLAB_MAGIC || h.class as usize != class || h.capacity as usize != cap {
            return Err(HeapInvariantError::SlabHeader { span: base });
        }
        let bumped = (h.limit as usize - h.bump as usize) / size;
        let mut listed = 0;
        let mut p = h.free_head;
        while !p.is_null() {
            let off = (p as usize).wrapping_sub(base);
            if off >= SLAB_SIZE
                || p as usize >= h.bump as usize
                || off < first
                || !(off - first).is_multiple_of(size)
            {
                return Err(HeapInvariantError::SlabFreeList {
                    slab: base,
                    object: p as usize,
                });
            }
            listed += 1;
            if listed > cap {
                return Err(HeapInvariantError::SlabFreeListCycle { slab: base });
            }
            p = p.cast::<*mut u8>().read();
        }
        if listed + bumped != h.free_count as usize {
            return Err(HeapInvariantError::SlabFreeCount {
                slab: base,
                counted: listed + bumped,
                recorded: h.free_count as usize,
            });
        }
        Ok(h.free_count as usize)
    }
}
