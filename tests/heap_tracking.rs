//! The `tracking` feature: misuse is reported and refused, leaks are listed.
//! Run: `cargo test --features tracking --test heap_tracking`.
#![cfg(feature = "tracking")]

use core::alloc::Layout;
use kmem::heap::tracking::{Allocation, TrackingError};
use kmem::heap::Heap;
use kmem::testing::arena::ArenaPageSource;

fn heap() -> Heap<ArenaPageSource> {
    let arena = ArenaPageSource::new(4 << 20);
    let (start, len) = arena.range();
    // SAFETY: the arena's range belongs to this heap alone.
    unsafe { Heap::new(arena, start, len) }.unwrap()
}

#[test]
fn double_free_is_reported_and_ignored() {
    let mut h = heap();
    let l = Layout::from_size_align(40, 8).unwrap();
    let p = h.allocate(l).unwrap();
    // SAFETY: live with `l`.
    unsafe { h.deallocate(p, l) };
    let before = h.stats();
    // SAFETY: deliberately wrong: the tracker must catch it.
    unsafe { h.deallocate(p, l) };
    let errs: Vec<_> = h.tracker().errors().collect();
    assert_eq!(
        errs,
        [TrackingError::DoubleFree {
            addr: p.as_ptr() as usize
        }]
    );
    assert_eq!(h.stats(), before, "the bad free changed nothing");
    h.check_invariants().unwrap();
}

#[test]
fn foreign_free_and_wrong_layout_are_reported() {
    let mut h = heap();
    let l = Layout::from_size_align(3000, 16).unwrap();
    let p = h.allocate(l).unwrap();
    let mut local = 0u64;
    let foreign = core::ptr::NonNull::from(&mut local).cast::<u8>();
    // SAFETY: deliberately wrong: the tracker must catch it.
    unsafe { h.deallocate(foreign, Layout::new::<u64>()) };
    let wrong = Layout::from_size_align(2000, 16).unwrap();
    // SAFETY: deliberately wrong layout.
    unsafe { h.deallocate(p, wrong) };
    let errs: Vec<_> = h.tracker().errors().collect();
    assert_eq!(
        errs[0],
        TrackingError::ForeignFree {
            addr: foreign.as_ptr() as usize
        }
    );
    assert!(matches!(
        errs[1],
        TrackingError::WrongLayout {
            size: 2000,
            align: 16,
            ..
        }
    ));
    assert_eq!(h.stats().live_allocs, 1, "wrong-layout free refused");
    // SAFETY: live with `l`.
    unsafe { h.deallocate(p, l) };
    assert_eq!(h.stats().live_allocs, 0);
    h.check_invariants().unwrap();
}

#[test]
fn leak_report_lists_outstanding_allocations() {
    let mut h = heap();
    let keep = Layout::from_size_align(24, 8).unwrap();
    let leaked = h
        .allocate(Layout::from_size_align(100, 32).unwrap())
        .unwrap();
    let p = h.allocate(keep).unwrap();
    // SAFETY: live with `keep`.
    unsafe { h.deallocate(p, keep) };
    let leaks: Vec<_> = h.tracker().leaks().collect();
    assert_eq!(
        leaks,
        [Allocation {
            addr: leaked.as_ptr() as usize,
            size: 100,
            align: 32
        }]
    );
}

#[test]
fn write_after_free_is_caught_on_reuse() {
    let mut h = heap();
    let l = Layout::from_size_align(64, 8).unwrap();
    let p = h.allocate(l).unwrap();
    // SAFETY: live with `l`.
    unsafe { h.deallocate(p, l) };
    // SAFETY: deliberately wrong: write into the freed (still mapped) object.
    unsafe { p.as_ptr().add(20).write(7) };
    let q = h.allocate(l).unwrap();
    assert_eq!(q, p, "the magazine hands the same object back");
    let errs: Vec<_> = h.tracker().errors().collect();
    assert_eq!(
        errs,
        [TrackingError::UseAfterFree {
            addr: p.as_ptr() as usize,
            offset: 20
        }]
    );
}

#[test]
fn realloc_keeps_the_record_current() {
    let mut h = heap();
    let l = Layout::from_size_align(5000, 8).unwrap();
    let p = h.allocate(l).unwrap();
    // SAFETY: live with `l`.
    let q = unsafe { h.reallocate(p, l, 20_000) }.unwrap();
    let leaks: Vec<_> = h.tracker().leaks().collect();
    assert_eq!(
        leaks,
        [Allocation {
            addr: q.as_ptr() as usize,
            size: 20_000,
            align: 8
        }]
    );
    // SAFETY: live with the new layout.
    unsafe { h.deallocate(q, Layout::from_size_align(20_000, 8).unwrap()) };
    assert_eq!(h.tracker().error_count(), 0);
    assert_eq!(h.tracker().leaks().count(), 0);
}
