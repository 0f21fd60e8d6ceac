//! The heap when its page source runs dry: before an allocation fails, the
//! heap uses or gives back the free pages it holds, so a failure means that
//! even [`Heap::trim`] could not make room for the request; and a failure
//! changes nothing but pages given back.
//!
//! Run: `cargo test --test heap_reclaim`. Not under `tracking`: its live
//! bitmap takes frames from the same page source, so the frame counts
//! below would not add up.
#![cfg(not(feature = "tracking"))]

use core::alloc::Layout;
use core::ptr::NonNull;
use kmem::heap::{AllocError, Heap, HeapStats, PAGE_SIZE};
use kmem::testing::arena::ArenaPageSource;

type ArenaHeap = Heap<ArenaPageSource>;

/// Frames of the small heaps below: the large heap's first page and three
/// 4-page slab spans, with three frames to spare.
const FRAMES: usize = 16;

/// A heap over a 1 MiB range whose page source has only `frames` frames, so
/// the frames run out long before the virtual range does.
fn heap_with_frames(frames: usize) -> ArenaHeap {
    let mut arena = ArenaPageSource::new(1 << 20);
    arena.set_frame_limit(frames);
    let (start, len) = arena.range();
    // SAFETY: the arena's range belongs to this heap alone.
    unsafe { Heap::new(arena, start, len) }.unwrap()
}

/// The heap's own checks, and its page count against the page source's.
fn check(h: &ArenaHeap) {
    h.check_invariants().unwrap();
    let s = h.stats();
    assert_eq!(s.pages_held, h.source().mapped_pages());
    assert_eq!(s.pages_held, s.slab_pages + s.large_pages + s.cached_pages);
}

/// `stats` without the fields that giving back free pages changes.
fn without_pages(stats: HeapStats) -> HeapStats {
    HeapStats {
        pages_held: 0,
        slab_pages: 0,
        large_pages: 0,
        cached_pages: 0,
        ..stats
    }
}

/// Allocates `layout`. On failure, checks that the heap is as before (but
/// for pages given back) and that no page it held could have served the
/// request: after `trim`, the same request must fail too.
fn alloc(h: &mut ArenaHeap, layout: Layout) -> Option<NonNull<u8>> {
    let before = h.stats();
    let err = match h.allocate(layout) {
        Ok(p) => return Some(p),
        Err(e) => e,
    };
    assert_eq!(
        err,
        AllocError::OutOfMemory {
            size: layout.size(),
            align: layout.align()
        }
    );
    check(h);
    let after = h.stats();
    assert!(
        after.pages_held <= before.pages_held,
        "{before:?} -> {after:?}"
    );
    let expected = HeapStats {
        failures: before.failures + 1,
        ..without_pages(before)
    };
    assert_eq!(without_pages(after), expected, "a failure changed the heap");
    h.trim();
    check(h);
    if let Ok(p) = h.allocate(layout) {
        panic!(
            "{layout:?} failed while the heap held {} pages, and succeeded after trim at {p:p}",
            after.pages_held
        );
    }
    check(h);
    None
}

/// The large heap keeps a freed block's pages as its free top (hysteresis);
/// when the frames are gone, a new slab must come from them.
#[test]
fn a_new_slab_takes_the_large_heaps_free_pages() {
    let mut h = heap_with_frames(FRAMES);
    let big = Layout::from_size_align(50 << 10, 8).unwrap();
    let p = alloc(&mut h, big).expect("50 KiB fit in 16 frames");
    // SAFETY: live with `big`.
    unsafe { h.deallocate(p, big) };
    check(&h);
    let small = Layout::from_size_align(8, 8).unwrap();
    let q = alloc(&mut h, small).expect("8 bytes while the large heap holds free pages");
    check(&h);
    // SAFETY: live with `small`.
    unsafe { h.deallocate(q, small) };
    let p = alloc(&mut h, big).expect("50 KiB again once the slab is empty");
    check(&h);
    // SAFETY: live with `big`.
    unsafe { h.deallocate(p, big) };
    check(&h);
}

/// The kernel's case: a heap that grew and shrank keeps up to 512 KiB of
/// free top; every other frame is taken; then a small object needs a slab.
#[test]
fn a_small_object_after_the_frames_are_gone() {
    let mut h = heap_with_frames(131);
    let big = Layout::from_size_align(500 << 10, 8).unwrap();
    let p = alloc(&mut h, big).expect("500 KiB fit in 131 frames");
    let layout = Layout::from_size_align(800, 8).unwrap();
    let mut live = Vec::new();
    while let Some(q) = alloc(&mut h, layout) {
        live.push(q);
    }
    // SAFETY: live with `big`.
    unsafe { h.deallocate(p, big) };
    check(&h);
    let q = alloc(&mut h, layout).expect("800 bytes after 500 KiB were freed");
    live.push(q);
    check(&h);
    for q in live {
        // SAFETY: live with `layout`.
        unsafe { h.deallocate(q, layout) };
    }
    check(&h);
}

/// The other direction: freed small objects leave empty slabs in magazines,
/// partial lists and the span cache; a large block must get their frames.
#[test]
fn a_large_block_takes_the_pages_of_empty_slabs() {
    let mut h = heap_with_frames(FRAMES);
    let layouts = [8, 100, 640, 1000].map(|s| Layout::from_size_align(s, 8).unwrap());
    let mut live = Vec::new();
    'fill: loop {
        for &l in &layouts {
            match alloc(&mut h, l) {
                Some(p) => live.push((p, l)),
                None => break 'fill,
            }
        }
    }
    check(&h);
    for (p, l) in live {
        // SAFETY: live with `l`.
        unsafe { h.deallocate(p, l) };
    }
    check(&h);
    // The slabs hold 12 frames and 3 are left: a block of more than 15
    // pages needs the slabs' frames and the large heap's free first page.
    let big = Layout::from_size_align(15 * PAGE_SIZE + 1024, 8).unwrap();
    let p = alloc(&mut h, big).expect("a 61 KiB block once every small object is free");
    check(&h);
    // SAFETY: live with `big`.
    unsafe { h.deallocate(p, big) };
    check(&h);
}

/// The largest block a fresh heap of `FRAMES` frames serves (found by
/// bisection; each probe is freed again).
fn largest_block(h: &mut ArenaHeap) -> Layout {
    let (mut ok, mut bad) = (0, FRAMES * PAGE_SIZE);
    while bad - ok > 1 {
        let mid = (ok + bad) / 2;
        let l = Layout::from_size_align(mid, 1).unwrap();
        match alloc(h, l) {
            Some(p) => {
                // SAFETY: live with `l`.
                unsafe { h.deallocate(p, l) };
                ok = mid;
            }
            None => bad = mid,
        }
    }
    Layout::from_size_align(ok, 1).unwrap()
}

/// How a round frees what it allocated (linked_list_allocator's patterns).
#[derive(Clone, Copy, Debug)]
enum FreeOrder {
    Forward,
    Backward,
    /// Even indices first, then odd ones, both ascending.
    InterleavedForward,
    /// As `InterleavedForward` over the reversed list.
    InterleavedBackward,
}

impl FreeOrder {
    fn apply<T>(self, mut items: Vec<T>) -> Vec<T> {
        if matches!(self, Self::Backward | Self::InterleavedBackward) {
            items.reverse();
        }
        if matches!(self, Self::InterleavedForward | Self::InterleavedBackward) {
            let (even, odd): (Vec<_>, Vec<_>) =
                items.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
            items = even.into_iter().chain(odd).map(|(_, x)| x).collect();
        }
        items
    }
}

/// linked_list_allocator's `allocate_many_size_aligns` on 16 frames: for
/// every free order, alignment 1 to 512 and size 1 to 512, allocate until
/// failure, free in that order, and the largest block must fit again. The
/// rounds hand the frames back and forth between slabs of every class and
/// the large heap.
#[test]
fn allocate_many_size_aligns_on_sixteen_frames() {
    let mut h = heap_with_frames(FRAMES);
    let max = largest_block(&mut h);
    assert!(
        max.size() > (FRAMES - 1) * PAGE_SIZE,
        "the largest block ({max:?}) leaves a frame unused"
    );
    check(&h);
    let orders = [
        FreeOrder::Forward,
        FreeOrder::Backward,
        FreeOrder::InterleavedForward,
        FreeOrder::InterleavedBackward,
    ];
    for order in orders {
        for align_shift in 0..10 {
            for size in 1..=512 {
                let layout = Layout::from_size_align(size, 1 << align_shift).unwrap();
                let mut live = Vec::new();
                while let Some(p) = alloc(&mut h, layout) {
                    assert_eq!(p.as_ptr() as usize % layout.align(), 0);
                    live.push(p);
                }
                assert!(!live.is_empty(), "{layout:?} served nothing");
                check(&h);
                for p in order.apply(live) {
                    // SAFETY: live with `layout`.
                    unsafe { h.deallocate(p, layout) };
                }
                check(&h);
                let freed = h.stats();
                let p = alloc(&mut h, max).unwrap_or_else(|| {
                    panic!("{max:?} after {layout:?} freed {order:?}: {freed:?}")
                });
                // SAFETY: live with `max`.
                unsafe { h.deallocate(p, max) };
                check(&h);
            }
        }
    }
}
