//! The large-object heap: a two-level segregated-fit (TLSF) allocator with
//! boundary tags over one contiguous, growable span `[start, brk)`.
//!
//! Block layout (every block starts at an address ≡ −8 mod `GRANULE`, sizes
//! are multiples of `GRANULE`, so payloads are `GRANULE`-aligned):
//! ```text
//! used: [size|flags: 8][payload ..................]
//! used, aligned: [size|flags: 8][gap ...][gap|OFFSET: 8][payload .....]
//! free: [bin|size|flags: 8][next: 8][prev: 8] ... [size: 8]   (footer)
//! ```
//! An aligned payload short of a split from its block's start keeps that
//! gap inside the block; the word before it then says how far back the
//! header is (`OFFSET` set), so no useless free block is split off in front.
//! Sizes stay below 2^48 (the top 16 header bits hold a free block's bin).
//! `PREV_FREE` in a header says the block before is free, so its footer is
//! valid and the two can merge. An 8-byte used sentinel of size 0 sits at
//! `brk - 8`. Lists are searched by "good fit": the head of the exact bin is
//! tried, then the first non-empty bin whose every block fits (O(1) bitmaps).

use core::ptr::{null_mut, NonNull};

const FREE: usize = 1;
const PREV_FREE: usize = 2;
/// Marks the word before an aligned payload as a back-offset to the header
/// (never set in a header: sizes are multiples of `GRANULE`).
const OFFSET: usize = 8;
/// Block sizes are multiples of this, and every payload is aligned to it:
/// a cache line, so large objects never share one, and 32- and 64-byte
/// alignments need no in-block gap. With 16, such requests (a quarter of
/// the aligned ones in talc's workload) paid the gap's out-of-line lookup
/// on free and made up a quarter of the slowest 1.5 % of alloc+free pairs
/// while being 5 % of them. Heap efficiency: 97.12 % with 16, 97.09 %
/// with 64 (96.95 % with 32: placement shifts either way).
pub const GRANULE: usize = 64;
const _: () = assert!(GRANULE.is_power_of_two() && GRANULE > OFFSET && GRANULE >= 16);
/// The size bits of a header. A free block's header also names its bin in
/// the bits above (`BIN_SHIFT`), so unlinking it needs no size-to-bin math.
const SIZE_MASK: usize = (1 << BIN_SHIFT) - 16;
const BIN_SHIFT: u32 = 48;
/// Header bytes in front of every payload.
pub const OVERHEAD: usize = 8;
/// Smallest block: header, two links, footer (32 bytes), in granules.
pub const MIN_BLOCK: usize = if GRANULE > 32 { GRANULE } else { 32 };
/// Smallest tail split off an allocation; a shorter one stays in the block
/// as slack. Requests below 1 KiB go to the slabs, so a free block this
/// small could only wait for a neighbour to merge with, and made every
/// split pay a link now and an unlink later: keeping it as slack is
/// faster at mid sizes for under 0.1 point of heap efficiency (figures in
/// BENCHMARKS.md, heap).
const SPLIT_MIN: usize = 1024;
/// Blocks of the request's own bin tried before good fit moves up a bin.
/// Its blocks may be too small; the few first ones are worth a look: 4
/// gave 0.1 point of heap efficiency over the head alone, 16 no more.
const EXACT_SCAN: usize = 4;
const SL_LOG2: u32 = 6;
const SL: usize = 1 << SL_LOG2;
/// First-level classes: enough for every block up to `MAX_BLOCK`.
const FL: usize = 39;
/// Bins, indexed flat: `first_level * SL + second_level`.
const BINS: usize = FL * SL;
/// Largest block, and largest span: sizes stay below a header's bin bits.
pub const MAX_BLOCK: usize = SIZE_MASK;
const _: () = assert!(bin_of(MAX_BLOCK) < BINS && bin_of(MAX_BLOCK) / SL == FL - 1);
/// Blocks below this size are binned exactly (16-byte bins, first level 0;
/// with 64-byte granules only every fourth is used).
const LINEAR: usize = SL << 4;

/// One free-list link pair, stored in the free block after its header.
#[repr(C)]
struct Links {
    next: *mut u8,
    prev: *mut u8,
}

/// The TLSF state. Holds no memory of its own: blocks live in `[start, brk)`.
pub struct Large {
    start: usize,
    brk: usize,
    fl_bitmap: u64,
    sl_bitmap: [u64; FL],
    heads: [*mut u8; BINS],
}

// SAFETY: the raw pointers refer into memory the owning heap has exclusive
// access to; `Large` is moved, not shared.
unsafe impl Send for Large {}

/// Block size needed for `size` payload bytes with alignment ≤ `GRANULE`, or
/// `None` if no block can be that large.
#[inline(always)]
pub fn block_size(size: usize) -> Option<usize> {
    let bs = size.checked_add(OVERHEAD + GRANULE - 1)? & !(GRANULE - 1);
    (bs <= MAX_BLOCK).then_some(bs.max(MIN_BLOCK))
}

/// Size of a free block that holds `size` bytes aligned to `align` wherever
/// it lies: the block plus the largest alignment gap (payloads are
/// `GRANULE`-aligned, so the gap is at most `align - GRANULE`), or `None`
/// if no block can be that large.
#[inline(always)]
pub fn fit_size(size: usize, align: usize) -> Option<usize> {
    let gap = align.saturating_sub(GRANULE);
    block_size(size)?
        .checked_add(gap)
        .filter(|&n| n <= MAX_BLOCK)
}

/// The bin holding free blocks of `size` (≤ `MAX_BLOCK`): exact 16-byte
/// bins below `LINEAR`, then `SL` bins per power of two.
#[inline(always)]
const fn bin_of(size: usize) -> usize {
    if size < LINEAR {
        size >> 4
    } else {
        let l = usize::BITS - 1 - size.leading_zeros();
        let f = (l - (SL_LOG2 + 4) + 1) as usize;
        f * SL + ((size >> (l - SL_LOG2)) & (SL - 1))
    }
}

/// `(bin_of(bs), first bin whose every block holds bs)`: the same bin if
/// `bs` is its lower bound, else the next one.
#[inline(always)]
fn bins_for(bs: usize) -> (usize, usize) {
    let bin = bin_of(bs);
    // Bits below the bin's resolution: exact bins have none.
    let below = if bs < LINEAR {
        0
    } else {
        bs & ((1 << (usize::BITS - 1 - bs.leading_zeros() - SL_LOG2)) - 1)
    };
    (bin, bin + usize::from(below != 0))
}

// Raw block accessors. All take a block address inside a live heap span.
#[inline(always)]
unsafe fn hdr(b: *mut u8) -> usize {
    // SAFETY: caller passes a block address; headers are 8-aligned.
    unsafe { b.cast::<usize>().read() }
}
#[inline(always)]
unsafe fn set_hdr(b: *mut u8, v: usize) {
    // SAFETY: as `hdr`.
    unsafe { b.cast::<usize>().write(v) }
}
#[inline(always)]
unsafe fn links(b: *mut u8) -> *mut Links {
    // SAFETY: free blocks are ≥ MIN_BLOCK, links follow the header.
    unsafe { b.add(OVERHEAD).cast() }
}
#[inline(always)]
unsafe fn set_footer(b: *mut u8, size: usize) {
    // SAFETY: the footer is the last word of a free block of `size` bytes.
    unsafe { b.add(size - 8).cast::<usize>().write(size) }
}

/// The block holding the live payload `ptr`, its header, and the payload's
/// offset from the block's usual payload start (its in-block alignment gap).
///
/// # Safety
/// `ptr` must be a live payload of a heap span.
#[inline(always)]
unsafe fn block_of(ptr: NonNull<u8>) -> (*mut u8, usize, usize) {
    // SAFETY: a live payload is preceded by its header or an OFFSET word.
    unsafe {
        let w = ptr.as_ptr().sub(OVERHEAD);
        let h = hdr(w);
        if h & OFFSET != 0 {
            return offset_block(w, h);
        }
        (w, h, 0)
    }
}

/// `block_of` for an aligned payload behind an OFFSET word `h` at `w`. Out
/// of line so the common case stays a branch: as a select, it put a second
/// header load on every free's critical path.
///
/// # Safety
/// As `block_of`, with `h` the OFFSET word at `w`.
#[cold]
#[inline(never)]
unsafe fn offset_block(w: *mut u8, h: usize) -> (*mut u8, usize, usize) {
    let gap = h & SIZE_MASK;
    // SAFETY: the OFFSET word names the distance back to the block's header.
    unsafe {
        let b = w.sub(gap);
        (b, hdr(b), gap)
    }
}

/// Asks the CPU to pull `p`'s cache line in. Any address is fine: a
/// prefetch never faults.
#[inline(always)]
fn prefetch(p: *const u8) {
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

impl Large {
    /// An empty heap; [`Large::init`] gives it memory.
    pub const fn new() -> Self {
        Self {
            start: 0,
            brk: 0,
            fl_bitmap: 0,
            sl_bitmap: [0; FL],
            heads: [null_mut(); BINS],
        }
    }

    /// Writes an empty state (as [`Large::new`]) at `slot` without building
    /// its ~23 KiB on the stack first.
    ///
    /// # Safety
    /// `slot` must be valid for writes of a `Large` and aligned.
    pub unsafe fn init_at(slot: *mut Self) {
        // SAFETY: the caller gives a writable, aligned slot; every field is
        // an integer or a raw pointer, for which all-zero bits are the
        // empty state (`new` sets exactly zeros and nulls).
        unsafe { slot.write_bytes(0, 1) }
    }

    /// Takes `[start, brk)` (page-aligned, at least a page, writable) as the heap.
    ///
    /// # Safety
    /// The span must be writable memory used by nothing else, and it must
    /// stay under 256 TiB (`MAX_BLOCK`) as it grows: a free block's size
    /// shares its header with the bin index.
    pub unsafe fn init(&mut self, start: usize, brk: usize) {
        // SAFETY: `self` is a valid, aligned `Large`; resetting it in place
        // keeps its ~23 KiB off the stack (no `Self::new()` temporary).
        unsafe { Self::init_at(self) };
        self.start = start;
        // The first block starts at `start + GRANULE - 8`, where the
        // sentinel is until `extend` turns it into the first free block.
        self.brk = start + GRANULE;
        // SAFETY: the sentinel lies inside the span.
        unsafe { set_hdr((self.brk - 8) as *mut u8, 0) };
        // SAFETY: forwarded from the caller.
        unsafe { self.extend(brk) };
    }

    /// End of the heap span.
    pub fn brk(&self) -> usize {
        self.brk
    }

    /// Grows the span to `new_brk` (page-aligned, above the current end).
    ///
    /// # Safety
    /// `[brk, new_brk)` must be writable memory used by nothing else, and
    /// the whole span stays under 256 TiB (see [`Large::init`]).
    pub unsafe fn extend(&mut self, new_brk: usize) {
        debug_assert!(new_brk - self.start <= MAX_BLOCK);
        let b = (self.brk - 8) as *mut u8;
        // SAFETY: `b` is the old sentinel; the new memory follows it.
        unsafe {
            let prev_free = hdr(b) & PREV_FREE;
            let size = new_brk - self.brk;
            set_hdr(b, size | prev_free);
            set_hdr((new_brk - 8) as *mut u8, 0);
            self.brk = new_brk;
            self.release(NonNull::new_unchecked(b.add(OVERHEAD)));
        }
    }

    /// Size of the free block that ends the span, 0 if the last block is
    /// used. Extending the span merges the new memory into that block.
    pub fn free_top(&self) -> usize {
        let sentinel = (self.brk - 8) as *mut u8;
        // SAFETY: the sentinel and, if PREV_FREE, the last block's footer are in the span.
        unsafe {
            if hdr(sentinel) & PREV_FREE == 0 {
                return 0;
            }
            sentinel.sub(8).cast::<usize>().read()
        }
    }

    /// If the last block is free and larger than `trigger`, shrinks the span
    /// so about `keep` free bytes stay; returns the page-aligned range cut.
    pub fn trim(&mut self, trigger: usize, keep: usize, page: usize) -> Option<(usize, usize)> {
        let size = self.free_top();
        if size == 0 || size < trigger {
            return None;
        }
        let sentinel = (self.brk - 8) as *mut u8;
        // SAFETY: the last block is free and `size` long, so it and its
        // header lie in the span, below the sentinel.
        unsafe {
            let b = sentinel.sub(size);
            let new_brk = (b as usize + 16 + keep.max(MIN_BLOCK)).next_multiple_of(page);
            if new_brk >= self.brk {
                return None;
            }
            self.unlink(b, hdr(b));
            let new_size = new_brk - 8 - b as usize;
            set_footer(b, new_size);
            self.link(b, new_size, hdr(b) & PREV_FREE);
            set_hdr((new_brk - 8) as *mut u8, PREV_FREE);
            let cut = (new_brk, self.brk);
            self.brk = new_brk;
            Some(cut)
        }
    }

    /// Allocates `size` bytes aligned to `align` (a power of two), by good fit.
    #[inline]
    pub fn allocate(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if align > GRANULE {
            return self.allocate_aligned(size, align, false);
        }
        let bs = block_size(size)?;
        let b = self.take(bs)?;
        // SAFETY: `b` is a free block of at least `bs` bytes, now unlinked.
        Some(unsafe { self.carve(b, bs) })
    }

    /// As [`Large::allocate`], but when good fit finds nothing, also scans the
    /// one bin whose blocks may or may not fit (the slow last resort before
    /// reporting out of memory).
    pub fn allocate_exhaustive(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if align > GRANULE {
            return self.allocate_aligned(size, align, true);
        }
        let bs = block_size(size)?;
        let b = self.take(bs).or_else(|| self.take_scan(bs))?;
        // SAFETY: as in `allocate`.
        Some(unsafe { self.carve(b, bs) })
    }

    /// Allocation with alignment above `GRANULE`: a block with room for the gap
    /// in front of an aligned payload. A gap of at least `SPLIT_MIN` becomes
    /// a free block; a shorter one stays in the block behind an `OFFSET`
    /// word (splitting it off cost two list operations per aligned
    /// allocation and made those the slowest 1 % of alloc+free pairs).
    /// Out of line: inlined, LLVM computed this path's bin lookups on every
    /// allocation.
    #[inline(never)]
    fn allocate_aligned(&mut self, size: usize, align: usize, scan: bool) -> Option<NonNull<u8>> {
        let bs = block_size(size)?;
        let need = fit_size(size, align)?;
        let b = self
            .take(need)
            .or_else(|| if scan { self.take_scan(need) } else { None })?;
        // SAFETY: the block holds `gap + bs` bytes; the gap is a multiple
        // of GRANULE, so an `OFFSET` word at `b + gap` lies past the header.
        unsafe {
            let pay = b as usize + OVERHEAD;
            let gap = ((pay + align - 1) & !(align - 1)) - pay;
            if gap >= SPLIT_MIN {
                let h = hdr(b);
                let rest = b.add(gap);
                set_hdr(rest, ((h & SIZE_MASK) - gap) | PREV_FREE);
                set_footer(b, gap);
                self.link(b, gap, h & PREV_FREE);
                return Some(self.carve(rest, bs));
            }
            let p = self.carve(b, gap + bs).as_ptr();
            if gap == 0 {
                return Some(NonNull::new_unchecked(p));
            }
            p.add(gap - OVERHEAD).cast::<usize>().write(gap | OFFSET);
            Some(NonNull::new_unchecked(p.add(gap)))
        }
    }

    /// Marks the unlinked free block `b` used with size `bs`, freeing the tail.
    #[inline(always)]
    unsafe fn carve(&mut self, b: *mut u8, bs: usize) -> NonNull<u8> {
        // SAFETY: forwarded.
        unsafe { self.carve_with(b, bs, false) }
    }

    /// As `carve`; `mark_next` also sets `PREV_FREE` on the block after a
    /// split-off tail (needed when `b`'s successor was not free before).
    #[inline(always)]
    unsafe fn carve_with(&mut self, b: *mut u8, bs: usize, mark_next: bool) -> NonNull<u8> {
        // SAFETY: `b` is a free, unlinked block of at least `bs` bytes.
        unsafe {
            let h = hdr(b);
            let size = h & SIZE_MASK;
            let rest = size - bs;
            if rest >= SPLIT_MIN {
                let t = b.add(bs);
                set_footer(t, rest);
                self.link(t, rest, 0);
                if mark_next {
                    let n = t.add(rest);
                    set_hdr(n, hdr(n) | PREV_FREE);
                }
                set_hdr(b, bs | (h & PREV_FREE));
            } else {
                set_hdr(b, size | (h & PREV_FREE));
                let n = b.add(size);
                set_hdr(n, hdr(n) & !PREV_FREE);
            }
            NonNull::new_unchecked(b.add(OVERHEAD))
        }
    }

    /// Finds and unlinks a free block of at least `bs` (≤ `MAX_BLOCK`) bytes.
    #[inline(always)]
    fn take(&mut self, bs: usize) -> Option<*mut u8> {
        let (bin, fit) = bins_for(bs);
        // Good fit skips the request's own bin, whose blocks may be too
        // small; trying its first few costs a read each and measurably
        // improves the fit (about 0.6 point of heap efficiency).
        if let Some(b) = self.scan_bin(bin, bs, EXACT_SCAN) {
            return Some(b);
        }
        let b = self.head(self.find_nonempty(fit)?);
        // SAFETY: a non-empty bin's head is a free block in the span.
        unsafe { self.unlink(b, hdr(b)) };
        Some(b)
    }

    /// Scans the bin of `bs` itself (where blocks may be too small) for a fit.
    #[cold]
    fn take_scan(&mut self, bs: usize) -> Option<*mut u8> {
        self.scan_bin(bin_of(bs), bs, usize::MAX)
    }

    /// Unlinks the first of the first `limit` blocks of `bin` holding `bs`.
    #[inline(always)]
    fn scan_bin(&mut self, bin: usize, bs: usize, limit: usize) -> Option<*mut u8> {
        let mut b = self.head(bin);
        let mut n = 0;
        while !b.is_null() && n < limit {
            // SAFETY: list members are free blocks in the span.
            unsafe {
                let h = hdr(b);
                if h & SIZE_MASK >= bs {
                    self.unlink(b, h);
                    return Some(b);
                }
                b = (*links(b)).next;
            }
            n += 1;
        }
        None
    }

    /// The first non-empty bin at or above `bin` (≤ `BINS`).
    #[inline(always)]
    fn find_nonempty(&self, bin: usize) -> Option<usize> {
        let (f, s) = (bin / SL, bin % SL);
        if f < FL {
            let sl = self.sl_bitmap[f] & (u64::MAX << s);
            if sl != 0 {
                return Some(f * SL + sl.trailing_zeros() as usize);
            }
        }
        let fl = self.fl_bitmap & u64::MAX.checked_shl(f as u32 + 1).unwrap_or(0);
        if fl == 0 {
            return None;
        }
        let f = fl.trailing_zeros() as usize;
        Some(f * SL + self.sl_bitmap.get(f)?.trailing_zeros() as usize)
    }

    /// The head of `bin` (< `BINS`; every caller derives it from a size
    /// ≤ `MAX_BLOCK`, from a bitmap bit, or from a free block's header).
    #[inline(always)]
    fn head(&self, bin: usize) -> *mut u8 {
        debug_assert!(bin < BINS);
        // SAFETY: `bin < BINS` as documented: sizes ≤ MAX_BLOCK map below
        // BINS (const-asserted), bitmap bits are only set for such bins,
        // and `link` writes only such bins into headers.
        unsafe { *self.heads.get_unchecked(bin) }
    }

    #[inline(always)]
    fn set_head(&mut self, bin: usize, b: *mut u8) {
        debug_assert!(bin < BINS);
        // SAFETY: as in `head`.
        unsafe { *self.heads.get_unchecked_mut(bin) = b }
    }

    /// Makes `b` a free block of `size` bytes (header with its bin and
    /// `prev_flags`, links) at the head of its bin. The footer is the caller's.
    #[inline(always)]
    unsafe fn link(&mut self, b: *mut u8, size: usize, prev_flags: usize) {
        debug_assert!(size <= MAX_BLOCK, "block size collides with the bin bits");
        let bin = bin_of(size);
        let head = self.head(bin);
        // SAFETY: `b` is a free block; `head` (if any) too.
        unsafe {
            set_hdr(b, bin << BIN_SHIFT | size | FREE | prev_flags);
            links(b).write(Links {
                next: head,
                prev: null_mut(),
            });
            if !head.is_null() {
                (*links(head)).prev = b;
            }
        }
        self.set_head(bin, b);
        let f = bin / SL;
        // SAFETY: `bin < BINS`, so `f < FL` (see `head`).
        unsafe { *self.sl_bitmap.get_unchecked_mut(f) |= 1 << (bin % SL) };
        self.fl_bitmap |= 1 << f;
    }

    /// Takes the free block `b`, whose header is `h`, out of its bin.
    #[inline(always)]
    unsafe fn unlink(&mut self, b: *mut u8, h: usize) {
        // SAFETY: `b` is a linked free block; its neighbours in the list too.
        unsafe {
            let Links { next, prev } = links(b).read();
            if !next.is_null() {
                (*links(next)).prev = prev;
            }
            if prev.is_null() {
                let bin = h >> BIN_SHIFT;
                self.set_head(bin, next);
                if next.is_null() {
                    let f = bin / SL;
                    // SAFETY: a free block's header names a bin < BINS.
                    let sl = self.sl_bitmap.get_unchecked_mut(f);
                    *sl &= !(1 << (bin % SL));
                    if *sl == 0 {
                        self.fl_bitmap &= !(1 << f);
                    }
                }
            } else {
                (*links(prev)).next = next;
            }
        }
    }

    /// Starts loading the header after a live block of `size` requested
    /// bytes, where [`Large::release`] will look next. `release` finds that
    /// header from the block's own, and both are usually cold: without the
    /// hint the two cache misses happen one after the other. A hint only:
    /// slack or a stale size just prefetches a useless line.
    #[inline(always)]
    pub fn prefetch_successor(ptr: NonNull<u8>, size: usize) {
        let bs = size.wrapping_add(OVERHEAD + GRANULE - 1) & !(GRANULE - 1);
        prefetch(ptr.as_ptr().wrapping_sub(OVERHEAD).wrapping_add(bs));
    }

    /// Frees the block whose payload is `ptr`, merging with free neighbours.
    ///
    /// # Safety
    /// `ptr` must come from [`Large::allocate`] on this heap and be live.
    /// Returns the size of the free block the payload ended in, if that
    /// block is the last one (a trim candidate): the caller can decide on
    /// trimming without touching the sentinel's cache line.
    #[inline]
    pub unsafe fn release(&mut self, ptr: NonNull<u8>) -> Option<usize> {
        // SAFETY: `ptr` is a live payload, so its header and neighbours are valid.
        unsafe {
            let (mut b, h, _) = block_of(ptr);
            let mut size = h & SIZE_MASK;
            let n = b.add(size);
            let nh = hdr(n);
            if nh & FREE != 0 {
                self.unlink(n, nh);
                size += nh & SIZE_MASK;
            } else {
                set_hdr(n, nh | PREV_FREE);
            }
            let mut pf = h & PREV_FREE;
            if pf != 0 {
                let ps = b.sub(8).cast::<usize>().read();
                b = b.sub(ps);
                let ph = hdr(b);
                self.unlink(b, ph);
                size += ps;
                pf = ph & PREV_FREE;
            }
            set_footer(b, size);
            self.link(b, size, pf);
            (b as usize + size == self.brk - 8).then_some(size)
        }
    }

    /// Bytes usable in the live block at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be a live payload of this heap.
    pub unsafe fn usable(&self, ptr: NonNull<u8>) -> usize {
        // SAFETY: forwarded from the caller.
        unsafe {
            let (_, h, gap) = block_of(ptr);
            (h & SIZE_MASK) - OVERHEAD - gap
        }
    }

    /// Resizes the live block at `ptr` in place to hold `new_size` bytes.
    /// Returns `None` (nothing changed) if the next block cannot give
    /// enough; else the size of the free block the resize left at the end
    /// of the heap (0 if none), so the caller can decide on trimming
    /// without reading the sentinel's line.
    ///
    /// # Safety
    /// `ptr` must be a live payload of this heap.
    #[inline]
    pub unsafe fn resize_in_place(&mut self, ptr: NonNull<u8>, new_size: usize) -> Option<usize> {
        // SAFETY: `ptr` is live, so its header and its successor's are valid.
        unsafe {
            let (b, h, gap) = block_of(ptr);
            let bs = block_size(new_size)?.checked_add(gap)?;
            let size = h & SIZE_MASK;
            let n = b.add(size);
            let nh = hdr(n);
            let total = if nh & FREE != 0 {
                size + (nh & SIZE_MASK)
            } else {
                size
            };
            if bs > total {
                return None;
            }
            if bs <= size && size - bs < SPLIT_MIN {
                return Some(0); // fits, nothing worth splitting off
            }
            let next_free = nh & FREE != 0;
            if next_free {
                self.unlink(n, nh);
            }
            set_hdr(b, total | FREE | (h & PREV_FREE));
            self.carve_with(b, bs, !next_free);
            let rest = total - bs;
            let at_top = rest >= SPLIT_MIN && b as usize + total == self.brk - 8;
            Some(if at_top { rest } else { 0 })
        }
    }

    /// Grows the live block at `ptr` by merging it with a free block before
    /// it (and after it, if free), moving the first `keep` bytes down.
    /// Returns the new payload, or `None` (nothing changed) if that is not
    /// enough. Only for alignment ≤ `GRANULE`.
    ///
    /// # Safety
    /// `ptr` must be a live payload of this heap with alignment ≤ `GRANULE` and at
    /// least `keep` bytes.
    pub unsafe fn resize_backward(
        &mut self,
        ptr: NonNull<u8>,
        new_size: usize,
        keep: usize,
    ) -> Option<NonNull<u8>> {
        let bs = block_size(new_size)?;
        // SAFETY: `ptr` is live, so its header, its successor's and (if
        // PREV_FREE) its predecessor's footer are valid.
        unsafe {
            let (b, h, gap) = block_of(ptr);
            if h & PREV_FREE == 0 || gap != 0 {
                return None;
            }
            let size = h & SIZE_MASK;
            let ps = b.sub(8).cast::<usize>().read();
            let n = b.add(size);
            let nh = hdr(n);
            let ns = if nh & FREE != 0 { nh & SIZE_MASK } else { 0 };
            if ps + size + ns < bs {
                return None;
            }
            let p = b.sub(ps);
            let ph = hdr(p);
            let pf = ph & PREV_FREE;
            self.unlink(p, ph);
            if ns != 0 {
                self.unlink(n, nh);
            }
            core::ptr::copy(ptr.as_ptr(), p.add(OVERHEAD), keep);
            set_hdr(p, (ps + size + ns) | FREE | pf);
            Some(self.carve_with(p, bs, ns == 0))
        }
    }

    /// Walks every block and list, checking the structure. Returns
    /// `(used_blocks, free_blocks)` or a description of the first fault.
    pub fn check(&self) -> Result<(usize, usize), &'static str> {
        let (mut used, mut free) = (0, 0);
        let mut b = (self.start + GRANULE - 8) as *mut u8;
        let mut prev_free = false;
        loop {
            // SAFETY: the walk follows sizes inside [start, brk) (checked).
            let h = unsafe { hdr(b) };
            if (h & PREV_FREE != 0) != prev_free {
                return Err("PREV_FREE flag disagrees with the previous block");
            }
            let size = h & SIZE_MASK;
            if b as usize == self.brk - 8 {
                if size != 0 || h & FREE != 0 {
                    return Err("bad end sentinel");
                }
                break;
            }
            if size < MIN_BLOCK || !size.is_multiple_of(GRANULE) || b as usize + size > self.brk - 8
            {
                return Err("block size out of bounds");
            }
            if h & FREE != 0 {
                if prev_free {
                    return Err("two adjacent free blocks");
                }
                // SAFETY: footer of a free block inside the span.
                if unsafe { b.add(size - 8).cast::<usize>().read() } != size {
                    return Err("free block footer mismatch");
                }
                let bin = bin_of(size);
                if h >> BIN_SHIFT != bin {
                    return Err("free block header names the wrong bin");
                }
                if !self.list_contains(bin, b) {
                    return Err("free block missing from its bin");
                }
                free += 1;
            } else {
                if h >> BIN_SHIFT != 0 {
                    return Err("used block header carries a bin");
                }
                used += 1;
            }
            prev_free = h & FREE != 0;
            // SAFETY: bounded by the check above.
            b = unsafe { b.add(size) };
        }
        if self.list_members()? != free {
            return Err("free block count differs from the lists");
        }
        for f in 0..FL {
            for s in 0..SL {
                let bit = self.sl_bitmap[f] & (1 << s) != 0;
                if bit == self.heads[f * SL + s].is_null() {
                    return Err("bin bitmap disagrees with its list");
                }
            }
            if (self.fl_bitmap & (1 << f) != 0) != (self.sl_bitmap[f] != 0) {
                return Err("first-level bitmap disagrees");
            }
        }
        Ok((used, free))
    }

    /// Most blocks the span can hold: a bound for list walks (a cycle ends).
    fn max_blocks(&self) -> usize {
        (self.brk - self.start) / MIN_BLOCK
    }

    /// Counts the members of every list, checking that each names its bin
    /// and that back links match.
    fn list_members(&self) -> Result<usize, &'static str> {
        let mut total = 0;
        for (bin, &head) in self.heads.iter().enumerate() {
            let (mut p, mut prev) = (head, null_mut());
            while !p.is_null() {
                // SAFETY: list members are free blocks in the span (each
                // is also found by the block walk, which runs first).
                let (h, l) = unsafe { (hdr(p), links(p).read()) };
                if h & FREE == 0 || h >> BIN_SHIFT != bin {
                    return Err("list member is not a free block of its bin");
                }
                if l.prev != prev {
                    return Err("list back link is wrong");
                }
                total += 1;
                if total > self.max_blocks() {
                    return Err("free lists hold a cycle");
                }
                (prev, p) = (p, l.next);
            }
        }
        Ok(total)
    }

    fn list_contains(&self, bin: usize, b: *mut u8) -> bool {
        let mut p = self.heads[bin];
        let mut n = 0;
        while !p.is_null() && n <= self.max_blocks() {
            if p == b {
                return true;
            }
            // SAFETY: list members are free blocks in the span.
            p = unsafe { (*links(p)).next };
            n += 1;
        }
        false
    }
}

impl Default for Large {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64 KiB, page-aligned span for one `Large`.
    #[repr(C, align(4096))]
    struct Span([u8; 1 << 16]);

    fn heap(span: &mut Span) -> Large {
        let mut l = Large::new();
        let start = span.0.as_mut_ptr() as usize;
        // SAFETY: the span is ours, writable and page-aligned.
        unsafe { l.init(start, start + span.0.len()) };
        l
    }

    #[test]
    fn short_tails_stay_as_slack_long_ones_are_split() {
        let mut span = Span([0; 1 << 16]);
        let mut l = heap(&mut span);
        let a = l.allocate(8000, 8).unwrap();
        let _guard = l.allocate(8000, 8).unwrap();
        // SAFETY: `a` is live.
        unsafe { l.release(a) };
        assert_eq!(l.check(), Ok((1, 2)), "a's hole and the free top");
        let hole = block_size(8000).unwrap();
        assert!(hole - block_size(7100).unwrap() < SPLIT_MIN);
        let short = l.allocate(7100, 8).unwrap();
        assert_eq!(short, a, "good fit takes the hole");
        // SAFETY: `short` is live.
        assert_eq!(unsafe { l.usable(short) }, hole - OVERHEAD);
        assert_eq!(
            l.check(),
            Ok((2, 1)),
            "no free fragment in front of the guard"
        );
        // SAFETY: `short` is live.
        unsafe { l.release(short) };
        assert!(hole - block_size(6900).unwrap() >= SPLIT_MIN);
        let long = l.allocate(6900, 8).unwrap();
        // SAFETY: `long` is live.
        let usable = unsafe { l.usable(long) };
        assert_eq!(usable, block_size(6900).unwrap() - OVERHEAD);
        assert_eq!(l.check(), Ok((2, 2)));
    }

    #[test]
    fn shrinking_by_less_than_a_split_keeps_the_block() {
        let mut span = Span([0; 1 << 16]);
        let mut l = heap(&mut span);
        let a = l.allocate(8000, 8).unwrap();
        let _guard = l.allocate(100, 8).unwrap();
        // SAFETY: `a` is live.
        unsafe {
            assert_eq!(l.resize_in_place(a, 7500), Some(0));
            let full = block_size(8000).unwrap() - OVERHEAD;
            assert_eq!(l.usable(a), full, "500 bytes: kept as slack");
            assert_eq!(l.resize_in_place(a, 8000), Some(0), "grown back into it");
            assert_eq!(l.resize_in_place(a, 5000), Some(0), "tail not at the top");
            let short = block_size(5000).unwrap() - OVERHEAD;
            assert_eq!(l.usable(a), short, "3000 bytes: split off");
        }
        assert_eq!(l.check(), Ok((2, 2)));
    }

    #[test]
    fn alignments_up_to_a_granule_need_no_gap() {
        let mut span = Span([0; 1 << 16]);
        let mut l = heap(&mut span);
        let mut live = [None; 12];
        for (i, slot) in live.iter_mut().enumerate() {
            let (size, align) = (1000 + 337 * i, 8 << (i % 4));
            assert!(align <= GRANULE);
            let p = l.allocate(size, align).unwrap();
            assert!((p.as_ptr() as usize).is_multiple_of(GRANULE));
            // SAFETY: `p` is live.
            let (_, _, gap) = unsafe { block_of(p) };
            assert_eq!(gap, 0, "{size} bytes aligned to {align}");
            *slot = Some(p);
        }
        assert_eq!(l.check().map(|(used, _)| used), Ok(live.len()));
        for p in live.into_iter().flatten() {
            // SAFETY: `p` is live.
            unsafe { l.release(p) };
        }
        assert_eq!(l.check(), Ok((0, 1)));
    }

    #[test]
    fn small_alignment_gaps_stay_in_the_block_large_ones_are_freed() {
        let mut span = Span([0; 1 << 16]);
        let mut l = heap(&mut span);
        let start = span.0.as_ptr() as usize;
        // The first block's payload sits at start + GRANULE: not aligned to
        // twice that (the span is page-aligned).
        let align = 2 * GRANULE;
        let a = l.allocate(2000, align).unwrap();
        let gap = a.as_ptr() as usize - (start + GRANULE);
        assert!((a.as_ptr() as usize).is_multiple_of(align) && gap > 0 && gap < SPLIT_MIN);
        assert_eq!(l.check(), Ok((1, 1)), "no free block split off in front");
        // SAFETY: `a` is live.
        unsafe {
            assert_eq!(l.usable(a), block_size(2000).unwrap() - OVERHEAD);
            a.as_ptr().write_bytes(0xa5, 2000);
            assert!(
                l.resize_in_place(a, 6000).is_some(),
                "grows into the free rest"
            );
            assert_eq!(l.usable(a), block_size(6000).unwrap() - OVERHEAD);
            let top = l
                .resize_in_place(a, 1000)
                .expect("shrinks, splitting the tail");
            let end = a.as_ptr() as usize - OVERHEAD + block_size(1000).unwrap();
            assert_eq!(end + top, l.brk() - 8, "the tail joined the free top");
            assert_eq!(*a.as_ptr().add(999), 0xa5, "payload kept");
            assert_eq!(l.check(), Ok((1, 1)));
            l.release(a);
        }
        assert_eq!(l.check(), Ok((0, 1)), "the gap came back with the block");
        // A 4 KiB alignment needs a gap of 4 KiB - GRANULE: a free block of its own.
        let b = l.allocate(100, 4096).unwrap();
        assert!((b.as_ptr() as usize).is_multiple_of(4096));
        assert_eq!(l.check(), Ok((1, 2)));
        // SAFETY: `b` is live.
        unsafe { l.release(b) };
        assert_eq!(l.check(), Ok((0, 1)));
    }
}
