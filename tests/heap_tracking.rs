//! The `tracking` feature: misuse is reported and refused, leaks are listed.
//! Run: `cargo test --features tracking --test heap_tracking`.
#![cfg(feature = "tracking")]

use core::alloc::Layout;
use core::ptr::NonNull;
use kmem::heap::tracking::{Allocation, TrackerStats, TrackingError, TRACK_CAPACITY};
use kmem::heap::Heap;
use kmem::testing::arena::ArenaPageSource;
use std::collections::HashSet;

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

/// Frees `p` twice and checks the second free is reported as a double free
/// and changed nothing; then makes two more allocations and checks none
/// returns a live address. Returns how many of the two succeeded.
fn second_free_is_refused(
    h: &mut Heap<ArenaPageSource>,
    live: &mut HashSet<usize>,
    p: NonNull<u8>,
    l: Layout,
) -> usize {
    // SAFETY: live with `l`.
    unsafe { h.deallocate(p, l) };
    live.remove(&(p.as_ptr() as usize));
    let before = h.stats();
    let errors = h.tracker().error_count();
    // SAFETY: deliberately wrong: the tracker must catch it.
    unsafe { h.deallocate(p, l) };
    assert_eq!(
        h.tracker().errors().last(),
        Some(TrackingError::DoubleFree {
            addr: p.as_ptr() as usize
        })
    );
    assert_eq!(h.tracker().error_count(), errors + 1);
    assert_eq!(h.stats(), before, "the double free changed nothing");
    let mut made = 0;
    for _ in 0..2 {
        let Ok(q) = h.allocate(l) else { break };
        assert!(
            live.insert(q.as_ptr() as usize),
            "{q:p} handed out while live"
        );
        made += 1;
    }
    made
}

#[test]
fn double_free_is_caught_past_the_table_capacity() {
    let mut h = heap();
    let l = Layout::from_size_align(16, 8).unwrap();
    let ptrs: Vec<_> = (0..=TRACK_CAPACITY)
        .map(|_| h.allocate(l).unwrap())
        .collect();
    let mut live: HashSet<_> = ptrs.iter().map(|p| p.as_ptr() as usize).collect();
    assert_eq!(second_free_is_refused(&mut h, &mut live, ptrs[0], l), 2);
    assert_eq!(h.tracker().error_count(), 1);
    h.check_invariants().unwrap();
}

/// The heap filled with 8-byte objects until it runs out (over 400 000
/// live): every double free is still caught (the heap being full, only the
/// first allocation after it can succeed), and the leak report lists every
/// live allocation.
#[test]
fn double_free_is_caught_with_the_heap_full_of_small_objects() {
    let mut h = heap();
    let l = Layout::from_size_align(8, 8).unwrap();
    let mut ptrs = Vec::new();
    while let Ok(p) = h.allocate(l) {
        ptrs.push(p);
    }
    assert!(ptrs.len() > 50 * TRACK_CAPACITY, "{}", ptrs.len());
    let mut live: HashSet<_> = ptrs.iter().map(|p| p.as_ptr() as usize).collect();
    for i in [0, ptrs.len() / 2, ptrs.len() - 1] {
        assert_eq!(second_free_is_refused(&mut h, &mut live, ptrs[i], l), 1);
    }
    assert_eq!(h.tracker().error_count(), 3);
    h.check_invariants().unwrap();
    let leaks: HashSet<_> = h.tracker().leaks().map(|a| a.addr).collect();
    assert_eq!(leaks, live, "the leak report lists every live allocation");
    for addr in live {
        // SAFETY: live with `l`.
        unsafe { h.deallocate(NonNull::new(addr as *mut u8).unwrap(), l) };
    }
    assert_eq!(h.tracker().error_count(), 3);
    assert_eq!(h.tracker().leaks().count(), 0);
    assert_eq!(h.stats().live_allocs, 0);
    h.check_invariants().unwrap();
}

/// Blocks made after the table filled are known by address: a block moved
/// by realloc (backward, into its freed neighbour) is known at its new
/// address, its free is accepted, and a second free is caught.
#[test]
fn realloc_past_the_table_capacity_keeps_the_address() {
    let mut h = heap();
    let small = Layout::from_size_align(16, 8).unwrap();
    let ptrs: Vec<_> = (0..TRACK_CAPACITY)
        .map(|_| h.allocate(small).unwrap())
        .collect();
    let l = Layout::from_size_align(5000, 8).unwrap();
    let [a, b, c] = [(); 3].map(|_| h.allocate(l).unwrap());
    // SAFETY: live with `l`.
    unsafe { h.deallocate(a, l) };
    // SAFETY: live with `l`; `c` keeps it from growing forward.
    let q = unsafe { h.reallocate(b, l, 9000) }.unwrap();
    assert_eq!(q, a, "moved backward into the freed block");
    assert_eq!(h.tracker().error_count(), 0);
    assert_eq!(h.tracker().stats().address_only, 2);
    let unrecorded: Vec<_> = h
        .tracker()
        .leaks()
        .filter(|a| !a.layout_recorded())
        .map(|a| a.addr)
        .collect();
    assert_eq!(unrecorded, [q.as_ptr() as usize, c.as_ptr() as usize]);
    let mut live: HashSet<_> = ptrs.iter().map(|p| p.as_ptr() as usize).collect();
    live.insert(c.as_ptr() as usize);
    let moved = Layout::from_size_align(9000, 8).unwrap();
    assert_eq!(second_free_is_refused(&mut h, &mut live, q, moved), 2);
    // SAFETY: deliberately wrong: `b` moved to `q`.
    unsafe { h.deallocate(b, l) };
    assert_eq!(
        h.tracker().errors().last(),
        Some(TrackingError::DoubleFree {
            addr: b.as_ptr() as usize
        })
    );
    assert_eq!(h.tracker().error_count(), 2);
    h.check_invariants().unwrap();
}

/// With the table full and the page source out of frames for the live
/// bitmap, allocations go unseen: the tracker says so (a `Saturated` error,
/// `saturated()`, its stats), lets their frees through, and catches double
/// frees again once they are all freed. Which frame limit starves the
/// bitmap depends on where the arena lies, so limits are tried in turn up
/// to the first that does.
#[test]
fn saturation_is_reported_and_recovers() {
    let l = Layout::from_size_align(8, 8).unwrap();
    let mut saturated = false;
    for frames in 22..120 {
        let mut arena = ArenaPageSource::new(4 << 20);
        arena.set_frame_limit(frames);
        let (start, len) = arena.range();
        // SAFETY: the arena's range belongs to this heap alone.
        let mut h = unsafe { Heap::new(arena, start, len) }.unwrap();
        let mut ptrs = Vec::new();
        while let Ok(p) = h.allocate(l) {
            ptrs.push(p);
        }
        let t = h.tracker().stats();
        let live = h.stats().live_allocs;
        assert_eq!(t.recorded + t.address_only + t.unseen, live, "{t:?}");
        let seen: HashSet<_> = h.tracker().leaks().map(|a| a.addr).collect();
        assert_eq!(seen.len(), live - t.unseen, "{t:?}");
        if t.unseen == 0 {
            assert!(!h.tracker().saturated());
            assert_eq!(h.tracker().error_count(), 0);
            continue;
        }
        saturated = true;
        assert!(h.tracker().saturated());
        let first_unseen = ptrs
            .iter()
            .map(|p| p.as_ptr() as usize)
            .find(|a| !seen.contains(a))
            .unwrap();
        let errors: Vec<_> = h.tracker().errors().collect();
        assert_eq!(errors, [TrackingError::Saturated { addr: first_unseen }]);
        for &p in ptrs.iter().rev() {
            // SAFETY: live with `l`.
            unsafe { h.deallocate(p, l) };
        }
        assert_eq!(h.stats().live_allocs, 0, "every free went through");
        assert_eq!(
            h.tracker().stats(),
            TrackerStats {
                recorded: 0,
                address_only: 0,
                unseen: 0,
                unchecked: t.unseen,
                bitmap_pages: t.bitmap_pages,
            }
        );
        assert!(!h.tracker().saturated());
        assert_eq!(h.tracker().leaks().count(), 0);
        h.check_invariants().unwrap();
        let p = h.allocate(l).unwrap();
        let mut live = HashSet::from([p.as_ptr() as usize]);
        assert_eq!(second_free_is_refused(&mut h, &mut live, p, l), 2);
        break;
    }
    assert!(saturated, "no frame limit starved the bitmap");
}
