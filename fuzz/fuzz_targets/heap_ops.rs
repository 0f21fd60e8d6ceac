//! Drives the heap with fuzzer-chosen operations against a shadow model.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run heap_ops -- -max_total_time=300`
//! (needs `cargo install cargo-fuzz`). After every operation the invariant
//! checker runs and the model checks alignment, no overlap and fill bytes;
//! at the end everything is freed, live must be 0 and one allocation of the
//! whole heap must succeed. Built with `tracking`, so any misuse the heap
//! detects (overlap above all) fails the run too.
#![no_main]

use core::alloc::Layout;
use core::ptr::NonNull;
use kmem::heap::{Heap, PAGE_SIZE};
use kmem::testing::arena::ArenaPageSource;
use libfuzzer_sys::fuzz_target;

struct Live {
    ptr: NonNull<u8>,
    layout: Layout,
    fill: u8,
}

fn check_fill(a: &Live, n: usize) {
    // SAFETY: the block is live and at least `n` bytes long.
    let bytes = unsafe { core::slice::from_raw_parts(a.ptr.as_ptr(), n) };
    assert!(bytes.iter().all(|&b| b == a.fill), "fill broken in {:?}", a.layout);
}

fn size_of(sel: u8, lo: u8, hi: u8) -> usize {
    let raw = usize::from(u16::from_le_bytes([lo, hi]));
    match sel % 4 {
        0 => raw % 64,
        1 => raw % 1100,
        2 => raw % 20_000,
        _ => raw * 4,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut arena = ArenaPageSource::new(2 << 20);
    if let Some(&limit) = data.first() {
        if limit < 32 {
            arena.set_frame_limit(64 + usize::from(limit) * 8);
        }
    }
    let (start, len) = arena.range();
    // SAFETY: the arena's range belongs to this heap alone.
    let mut heap = unsafe { Heap::new(arena, start, len) }.unwrap();
    let mut live: Vec<Live> = Vec::new();
    let mut fill = 0u8;
    for op in data.chunks_exact(4) {
        fill = fill.wrapping_add(1).max(1);
        match op[0] % 3 {
            0 => {
                let size = size_of(op[0] >> 2, op[1], op[2]);
                let align = 1usize << (op[3] % 14);
                let layout = Layout::from_size_align(size, align).unwrap();
                if let Ok(ptr) = heap.allocate(layout) {
                    assert_eq!(ptr.as_ptr() as usize % align, 0);
                    // SAFETY: fresh block of `size` bytes.
                    unsafe { ptr.as_ptr().write_bytes(fill, size) };
                    live.push(Live { ptr, layout, fill });
                }
            }
            1 if !live.is_empty() => {
                let a = live.swap_remove(usize::from(op[1]) % live.len());
                check_fill(&a, a.layout.size());
                // SAFETY: live with this layout.
                unsafe { heap.deallocate(a.ptr, a.layout) };
            }
            2 if !live.is_empty() => {
                let i = usize::from(op[3]) % live.len();
                let new_size = size_of(op[0] >> 2, op[1], op[2]);
                let a = &live[i];
                // SAFETY: live with this layout.
                if let Ok(p) = unsafe { heap.reallocate(a.ptr, a.layout, new_size) } {
                    let moved = Live {
                        ptr: p,
                        layout: Layout::from_size_align(new_size, a.layout.align()).unwrap(),
                        fill: a.fill,
                    };
                    check_fill(&moved, a.layout.size().min(new_size));
                    // SAFETY: the block holds `new_size` bytes.
                    unsafe { p.as_ptr().write_bytes(moved.fill, new_size) };
                    live[i] = moved;
                }
            }
            _ => {}
        }
        heap.check_invariants().unwrap();
        assert_eq!(heap.tracker().error_count(), 0, "{:?}", heap.tracker().errors().collect::<Vec<_>>());
        let mut spans: Vec<(usize, usize)> =
            live.iter().map(|a| (a.ptr.as_ptr() as usize, a.layout.size().max(1))).collect();
        spans.sort_unstable();
        assert!(spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "overlap");
    }
    for a in live.drain(..) {
        check_fill(&a, a.layout.size());
        // SAFETY: live with this layout.
        unsafe { heap.deallocate(a.ptr, a.layout) };
    }
    heap.trim();
    heap.check_invariants().unwrap();
    assert_eq!(heap.stats().live_bytes, 0);
    assert_eq!(heap.tracker().leaks().count(), 0);
    let (lo, top) = heap.bounds();
    let whole = Layout::from_size_align(top - lo - 2 * PAGE_SIZE, 8).unwrap();
    if data.first().is_none_or(|&l| l >= 32) {
        let p = heap.allocate(whole).expect("whole-heap allocation after drain");
        // SAFETY: just allocated.
        unsafe { heap.deallocate(p, whole) };
    }
});
