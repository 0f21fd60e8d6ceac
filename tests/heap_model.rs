//! Heap tests on the host arena: unit cases and shadow-model property tests
//! (over the whole range, and with few frames) with the invariant checker
//! run after every operation.
//!
//! - `cargo test --test heap_model` (64 cases; `PROPTEST_CASES=600` ran
//!   426 s clean).
//! - Miri: `MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-permissive-provenance"
//!   cargo +nightly miri test --test heap_model -- shadow_model realloc_stays
//!   too_small` and `cargo +nightly miri test --features tracking --test
//!   heap_tracking`. Under Miri the shadow model shrinks (1 MiB arena, sizes
//!   up to 64 KiB, 60 operations, 4 cases; `PROPTEST_CASES` overrides).

use core::alloc::Layout;
use core::ptr::NonNull;
use kmem::heap::{AllocError, Heap, PAGE_SIZE};
use kmem::testing::arena::ArenaPageSource;
use proptest::prelude::*;

type ArenaHeap = Heap<ArenaPageSource>;

/// Pages the tracker (feature `tracking`) maps for its live bitmap: the
/// page source's, but not in the heap's `pages_held`.
fn tracker_pages<P: kmem::heap::PageSource>(heap: &kmem::heap::Heap<P>) -> usize {
    #[cfg(feature = "tracking")]
    return heap.tracker().stats().bitmap_pages;
    #[cfg(not(feature = "tracking"))]
    {
        let _ = heap;
        0
    }
}

fn heap(bytes: usize) -> ArenaHeap {
    heap_with_frames(bytes, usize::MAX)
}

/// A heap over `bytes` whose page source runs out after `frames` frames.
fn heap_with_frames(bytes: usize, frames: usize) -> ArenaHeap {
    let mut arena = ArenaPageSource::new(bytes);
    arena.set_frame_limit(frames);
    let (start, len) = arena.range();
    // SAFETY: the arena's range belongs to this heap alone.
    unsafe { Heap::new(arena, start, len) }.unwrap()
}

/// A live allocation of the shadow model: every byte holds `fill`.
struct Live {
    ptr: NonNull<u8>,
    layout: Layout,
    fill: u8,
}

/// The shadow model: what the heap must have handed out.
struct Model {
    heap: ArenaHeap,
    live: Vec<Live>,
    next_fill: u8,
    /// The page source's frame limit (`usize::MAX`: only the range limits).
    frames: usize,
}

impl Model {
    fn new(bytes: usize) -> Self {
        Self::with_frames(bytes, usize::MAX)
    }

    /// A model whose page source runs out after `frames` frames.
    fn with_frames(bytes: usize, frames: usize) -> Self {
        Self {
            heap: heap_with_frames(bytes, frames),
            live: Vec::new(),
            next_fill: 1,
            frames,
        }
    }

    fn fill(&mut self) -> u8 {
        self.next_fill = self.next_fill.wrapping_add(1).max(1);
        self.next_fill
    }

    fn alloc(&mut self, size: usize, align: usize) -> bool {
        let layout = Layout::from_size_align(size, align).unwrap();
        match self.heap.allocate(layout) {
            Ok(ptr) => {
                assert_eq!(ptr.as_ptr() as usize % align, 0, "{layout:?} misaligned");
                let fill = self.fill();
                // SAFETY: the block is ours and `size` bytes long.
                unsafe { ptr.as_ptr().write_bytes(fill, size) };
                self.live.push(Live { ptr, layout, fill });
                true
            }
            Err(e) => {
                assert_eq!(e, AllocError::OutOfMemory { size, align });
                // No free page the heap held could have served the request:
                // with every one given back, it fails again.
                self.heap.trim();
                if let Ok(p) = self.heap.allocate(layout) {
                    panic!("{layout:?} failed, then succeeded after trim at {p:p}");
                }
                false
            }
        }
    }

    fn free(&mut self, i: usize) {
        let a = self.live.swap_remove(i);
        Self::check_fill(&a, a.layout.size());
        // SAFETY: live, allocated with this layout.
        unsafe { self.heap.deallocate(a.ptr, a.layout) };
    }

    fn realloc(&mut self, i: usize, new_size: usize) {
        let a = &self.live[i];
        let (ptr, layout, fill) = (a.ptr, a.layout, a.fill);
        let before = self.heap.stats();
        // SAFETY: live, allocated with this layout.
        match unsafe { self.heap.reallocate(ptr, layout, new_size) } {
            Ok(p) => {
                let new = Layout::from_size_align(new_size, layout.align()).unwrap();
                let kept = layout.size().min(new_size);
                let moved = Live {
                    ptr: p,
                    layout: new,
                    fill,
                };
                Self::check_fill(&moved, kept);
                assert_eq!(p.as_ptr() as usize % layout.align(), 0);
                // SAFETY: the block is ours and `new_size` bytes long.
                unsafe { p.as_ptr().write_bytes(fill, new_size) };
                self.live[i] = moved;
            }
            Err(_) => {
                // The old block must be untouched.
                Self::check_fill(&self.live[i], layout.size());
                assert_eq!(self.heap.stats().live_bytes, before.live_bytes);
            }
        }
    }

    fn check_fill(a: &Live, n: usize) {
        // SAFETY: the block is live and at least `n` bytes long.
        let bytes = unsafe { core::slice::from_raw_parts(a.ptr.as_ptr(), n) };
        // Under Miri (which hunts undefined behaviour, not lost bytes) every
        // 61st byte and the last are enough; natively, every byte.
        let bad = if cfg!(miri) {
            (0..n)
                .step_by(61)
                .chain(n.checked_sub(1))
                .find(|&i| bytes[i] != a.fill)
        } else {
            bytes.iter().position(|&b| b != a.fill)
        };
        if let Some(off) = bad {
            panic!("fill of {:?} at {:p} broken at {off}", a.layout, a.ptr);
        }
    }

    fn check(&self) {
        self.heap.check_invariants().unwrap();
        let stats = self.heap.stats();
        assert_eq!(stats.live_allocs, self.live.len());
        assert_eq!(
            stats.live_bytes,
            self.live.iter().map(|a| a.layout.size()).sum::<usize>()
        );
        assert_eq!(
            stats.pages_held + tracker_pages(&self.heap),
            self.heap.source().mapped_pages()
        );
        assert_eq!(
            stats.pages_held,
            stats.slab_pages + stats.large_pages + stats.cached_pages
        );
        let mut spans: Vec<(usize, usize)> = self
            .live
            .iter()
            .map(|a| (a.ptr.as_ptr() as usize, a.layout.size().max(1)))
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap {w:x?}");
        }
        for &(addr, len) in &spans {
            assert!(
                self.heap.source().is_mapped(addr) && self.heap.source().is_mapped(addr + len - 1)
            );
        }
        for a in &self.live {
            Self::check_fill(a, a.layout.size());
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Alloc { size, align_shift } => {
                self.alloc(size, 1 << align_shift);
            }
            Op::Free { pick } if !self.live.is_empty() => self.free(pick % self.live.len()),
            Op::Realloc { pick, size } if !self.live.is_empty() => {
                self.realloc(pick % self.live.len(), size)
            }
            _ => {}
        }
    }

    /// Frees everything, then checks the heap is whole again: one block
    /// takes the whole range, or every frame but the large heap's first page.
    fn drain_and_check_whole(&mut self) {
        while !self.live.is_empty() {
            self.free(self.live.len() - 1);
        }
        self.heap.trim();
        self.heap.check_invariants().unwrap();
        assert_eq!(self.heap.stats().live_bytes, 0);
        let (lo, top) = self.heap.bounds();
        // Frames left for data: all but the large heap's first page and the
        // tracker's bitmap (mapped, plus 1 page per 64 it may still need).
        let mut frames = self.frames.saturating_sub(1 + tracker_pages(&self.heap));
        if cfg!(feature = "tracking") {
            frames = frames.saturating_sub(frames.div_ceil(65) + 1);
        }
        let bytes = (top - lo - 2 * PAGE_SIZE).min(frames.saturating_mul(PAGE_SIZE));
        if bytes == 0 {
            return; // the tracker's bitmap took every frame there was
        }
        let whole = Layout::from_size_align(bytes, 8).unwrap();
        let p = self
            .heap
            .allocate(whole)
            .expect("whole-heap allocation after drain");
        // SAFETY: just allocated.
        unsafe { self.heap.deallocate(p, whole) };
        self.heap.check_invariants().unwrap();
    }
}

#[derive(Debug, Clone)]
enum Op {
    Alloc { size: usize, align_shift: u32 },
    Free { pick: usize },
    Realloc { pick: usize, size: usize },
}

/// Arena of the shadow model, largest size and longest run (smaller under
/// Miri, where every byte checked costs thousands of host instructions).
const MODEL_ARENA: usize = if cfg!(miri) { 1 << 20 } else { 4 << 20 };
const MODEL_MAX_SIZE: usize = if cfg!(miri) { 64 << 10 } else { 200_000 };
const MODEL_MAX_OPS: usize = if cfg!(miri) { 60 } else { 300 };

fn size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..=1100, 2 => 1000usize..20_000, 1 => 20_000usize..MODEL_MAX_SIZE]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (size_strategy(), prop_oneof![6 => 0u32..=4, 1 => 5u32..=13])
            .prop_map(|(size, align_shift)| Op::Alloc { size, align_shift }),
        3 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        2 => (any::<usize>(), size_strategy()).prop_map(|(pick, size)| Op::Realloc { pick, size }),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(miri) { 4 } else { 64 })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn shadow_model(ops in proptest::collection::vec(op_strategy(), 1..MODEL_MAX_OPS)) {
        let mut m = Model::new(MODEL_ARENA);
        for op in ops {
            m.apply(op);
            m.check();
        }
        m.drain_and_check_whole();
    }

    /// The frames run out long before the range: slabs and the large heap
    /// hand pages to each other through the page source.
    #[test]
    fn shadow_model_on_few_frames(
        frames in 2usize..200,
        ops in proptest::collection::vec(op_strategy(), 1..MODEL_MAX_OPS),
    ) {
        let mut m = Model::with_frames(MODEL_ARENA, frames);
        for op in ops {
            m.apply(op);
            m.check();
        }
        m.drain_and_check_whole();
    }
}

#[test]
fn every_alignment_and_zero_size() {
    let mut m = Model::new(8 << 20);
    for shift in 0..=14 {
        for size in [0, 1, 7, 8, 24, 100, 1024, 1025, 4096, 5000] {
            assert!(m.alloc(size, 1 << shift));
            m.check();
        }
    }
    m.drain_and_check_whole();
}

#[test]
fn realloc_stays_in_place_when_it_can() {
    let mut h = heap(4 << 20);
    let small = Layout::from_size_align(20, 8).unwrap();
    let p = h.allocate(small).unwrap();
    // SAFETY: live with `small`.
    let q = unsafe { h.reallocate(p, small, 24) }.unwrap();
    assert_eq!(p, q, "same class stays in place");
    let big = Layout::from_size_align(5000, 8).unwrap();
    let a = h.allocate(big).unwrap();
    // SAFETY: live with `big`; grows into the free space after it.
    let b = unsafe { h.reallocate(a, big, 9000) }.unwrap();
    assert_eq!(a, b, "large grows in place into the free block after it");
    let bigger = Layout::from_size_align(9000, 8).unwrap();
    // SAFETY: live with `bigger`.
    let c = unsafe { h.reallocate(b, bigger, 3000) }.unwrap();
    assert_eq!(b, c, "large shrinks in place");
    h.check_invariants().unwrap();
}

#[test]
fn grows_past_initial_size_then_gives_pages_back() {
    let mut m = Model::new(64 << 20);
    let initial = m.heap.stats().pages_held;
    for i in 0..3000 {
        assert!(m.alloc(16 + (i * 37) % 9000, 8));
    }
    m.check();
    let grown = m.heap.stats().pages_held;
    assert!(
        grown > initial + 1000,
        "grew from {initial} to {grown} pages"
    );
    while !m.live.is_empty() {
        m.free(0);
    }
    m.check();
    let after_free = m.heap.stats().pages_held;
    // Hysteresis keeps at most: one slab per class (24 × 4 pages), 16 cached
    // spans (64 pages) and a large-heap free top under the 512 KiB trigger.
    assert!(
        after_free <= 24 * 4 + 16 * 4 + 128 + 1,
        "kept {after_free} pages"
    );
    assert!(
        after_free * 4 < grown,
        "most pages went back: {after_free} of {grown}"
    );
    m.heap.trim();
    m.check();
    assert!(
        m.heap.stats().pages_held <= 2,
        "trim gives all back: {:?}",
        m.heap.stats()
    );
}

#[test]
fn shrinking_realloc_at_the_top_gives_pages_back() {
    let mut h = heap(64 << 20);
    let big = Layout::from_size_align(4 << 20, 8).unwrap();
    let p = h.allocate(big).unwrap();
    let grown = h.stats().pages_held;
    // SAFETY: `p` is live with `big`; a shrink stays in place.
    let q = unsafe { h.reallocate(p, big, 10_000) }.unwrap();
    assert_eq!(p, q);
    let after = h.stats().pages_held;
    // The 4 MiB tail joined the free top, over the trigger: cut to 128 KiB.
    assert!(after + 900 < grown, "kept {after} of {grown} pages");
    h.check_invariants().unwrap();
    let small = Layout::from_size_align(10_000, 8).unwrap();
    // SAFETY: `q` is live with `small`; shrinking by less than the trigger
    // keeps the pages (hysteresis).
    unsafe { h.reallocate(q, small, 9_000) }.unwrap();
    assert_eq!(h.stats().pages_held, after);
    h.check_invariants().unwrap();
}

#[test]
fn boundary_alloc_free_does_not_thrash() {
    let mut h = heap(16 << 20);
    let layout = Layout::from_size_align(300_000, 8).unwrap();
    let keep = h.allocate(layout).unwrap();
    let calls = h.source().calls();
    let bitmap = tracker_pages(&h);
    for _ in 0..1000 {
        let p = h.allocate(layout).unwrap();
        // SAFETY: just allocated with `layout`.
        unsafe { h.deallocate(p, layout) };
        let q = h.allocate(Layout::new::<[u64; 4]>()).unwrap();
        // SAFETY: just allocated.
        unsafe { h.deallocate(q, Layout::new::<[u64; 4]>()) };
    }
    let (maps, unmaps) = h.source().calls();
    // The tracker maps its bitmap once per new stretch of heap, never again.
    let maps = maps - (tracker_pages(&h) - bitmap);
    assert!(
        maps - calls.0 <= 2 && unmaps - calls.1 <= 2,
        "{calls:?} -> {maps} {unmaps}"
    );
    // SAFETY: live with `layout`.
    unsafe { h.deallocate(keep, layout) };
    h.check_invariants().unwrap();
}

#[test]
fn out_of_frames_is_an_error_and_changes_nothing() {
    let mut h = heap_with_frames(16 << 20, 64);
    let mut live = Vec::new();
    let layout = Layout::from_size_align(10_000, 16).unwrap();
    while let Ok(p) = h.allocate(layout) {
        live.push(p);
    }
    let before = h.stats();
    let big = Layout::from_size_align(1 << 20, 8).unwrap();
    assert_eq!(
        h.allocate(big),
        Err(AllocError::OutOfMemory {
            size: 1 << 20,
            align: 8
        })
    );
    h.check_invariants().unwrap();
    let after = h.stats();
    assert_eq!(
        (after.live_bytes, after.live_allocs),
        (before.live_bytes, before.live_allocs)
    );
    assert_eq!(after.failures, before.failures + 1);
    for p in live {
        // SAFETY: live with `layout`.
        unsafe { h.deallocate(p, layout) };
    }
    h.check_invariants().unwrap();
    assert!(h.allocate(big).is_err(), "64 frames can never hold 1 MiB");
    assert!(h
        .allocate(Layout::from_size_align(100_000, 8).unwrap())
        .is_ok());
}

#[test]
fn reuse_serves_more_than_the_heap_holds() {
    let mut h = heap(1 << 20);
    let layout = Layout::from_size_align(700, 8).unwrap();
    for _ in 0..100_000 {
        let p = h.allocate(layout).unwrap();
        // SAFETY: just allocated.
        unsafe { h.deallocate(p, layout) };
    }
    assert_eq!(h.stats().total_allocs, 100_000);
    h.check_invariants().unwrap();
}

#[test]
fn too_small_range_is_refused() {
    let arena = ArenaPageSource::new(4 * PAGE_SIZE);
    let (start, len) = arena.range();
    // SAFETY: the arena's range belongs to this heap alone.
    let r = unsafe { Heap::new(arena, start, len) };
    assert!(matches!(r, Err(kmem::heap::HeapInitError::TooSmall { .. })));
}

#[test]
fn fill_with_small_objects_until_failure() {
    let mut m = Model::new(2 << 20);
    let mut rng = 12345u64;
    let mut step = 0;
    loop {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        step += 1;
        if rng % 6 == 5 {
            if !m.live.is_empty() {
                let i = (rng >> 8) as usize % m.live.len();
                m.free(i);
            }
        } else {
            let size = 4 + (rng >> 16) as usize % 252;
            let align = 8 << (((rng >> 40) as u16).trailing_zeros().min(8) / 2);
            if !m.alloc(size, align) {
                break;
            }
        }
        if step % 1000 == 0 {
            m.check();
        }
    }
    m.check();
    let s = m.heap.stats();
    assert!(s.live_bytes * 100 / (2 << 20) > 70, "{s:?}");
    m.drain_and_check_whole();
}

/// `LockedHeap::init` builds the heap in place: it works on a thread whose
/// stack is smaller than two copies of the heap's own state (~32 KiB;
/// ~240 KiB with `tracking`), which building it on the stack first and
/// moving it in would need.
#[test]
fn locked_heap_init_fits_a_small_stack() {
    static HEAP: kmem::heap::LockedHeap<ArenaPageSource> = kmem::heap::LockedHeap::empty();
    const STACK: usize = 48 << 10;
    let state = core::mem::size_of::<ArenaHeap>();
    assert!(
        state > STACK / 2,
        "the heap state is {state} bytes: test premise gone"
    );
    let handle = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(|| {
            let heap = &HEAP;
            let arena = ArenaPageSource::new(1 << 20);
            let (start, len) = arena.range();
            // SAFETY: the arena's range belongs to this heap alone.
            unsafe { heap.init(arena, start, len) }.unwrap();
            let layout = Layout::from_size_align(64, 8).unwrap();
            // SAFETY: a valid layout; the block goes back with it.
            unsafe {
                let p = core::alloc::GlobalAlloc::alloc(heap, layout);
                assert!(!p.is_null());
                core::alloc::GlobalAlloc::dealloc(heap, p, layout);
            }
            heap.stats().unwrap().live_allocs
        })
        .unwrap();
    assert_eq!(handle.join().unwrap(), 0);
}

#[test]
fn absurd_sizes_are_out_of_memory_not_a_panic() {
    let mut h = heap(4 << 20);
    for align in [8, 64, 4096] {
        let small = Layout::from_size_align(5000, align).unwrap();
        let p = h.allocate(small).unwrap();
        for shift in [30, 40, 47, 48, 50, 53, 60, 62] {
            let size = (1usize << shift) + 1;
            let layout = Layout::from_size_align(size, align).unwrap();
            let before = h.stats();
            assert_eq!(
                h.allocate(layout),
                Err(AllocError::OutOfMemory { size, align }),
                "{layout:?}"
            );
            // SAFETY: `p` is live with `small`; a failed resize keeps it.
            assert!(unsafe { h.reallocate(p, small, size) }.is_err());
            let after = h.stats();
            assert_eq!(after.pages_held, before.pages_held, "{layout:?}");
            assert_eq!((after.live_bytes, after.live_allocs), (5000, 1));
            h.check_invariants().unwrap();
        }
        // SAFETY: live with `small`.
        unsafe { h.deallocate(p, small) };
    }
    let max = Layout::from_size_align(isize::MAX as usize - 4095, 4096).unwrap();
    assert!(h.allocate(max).is_err());
    h.check_invariants().unwrap();
}
