//! Unit tests of the large-object heap: carving, merging, bins, growth and the checker.

use super::block::block_of;
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
    unsafe { l.deallocate(a) };
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
    unsafe { l.deallocate(short) };
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
        unsafe { l.deallocate(p) };
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
        l.deallocate(a);
    }
    assert_eq!(l.check(), Ok((0, 1)), "the gap came back with the block");
    // A 4 KiB alignment needs a gap of 4 KiB - GRANULE: a free block of its own.
    let b = l.allocate(100, 4096).unwrap();
    assert!((b.as_ptr() as usize).is_multiple_of(4096));
    assert_eq!(l.check(), Ok((1, 2)));
    // SAFETY: `b` is live.
    unsafe { l.deallocate(b) };
    assert_eq!(l.check(), Ok((0, 1)));
}
