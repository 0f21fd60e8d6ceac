//! Host unit tests of the frame allocator: bitmap word edges, tiny and empty
//! maps, exact counts, typed errors that change nothing, carving, interop.

use kmem::frame::{
    BitmapFrameAllocator, FrameError, FrameStats, LockedFrameAllocator, NoInterruptMask,
};
use kmem::memory_map::{MemoryMap, Region, RegionKind};
use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, PhysFrame, Size1GiB, Size2MiB, Size4KiB,
};
use x86_64::PhysAddr;

const F: u64 = 4096;

fn map(regions: &[(u64, u64, RegionKind)]) -> MemoryMap {
    MemoryMap::from_regions(regions.iter().map(|&(s, l, k)| Region::new(s, l, k))).unwrap()
}

fn usable(frames: u64) -> MemoryMap {
    map(&[(0, frames * F, RegionKind::Usable)])
}

fn frame(n: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(n * F))
}

/// Runs `f` on an allocator over `map` with host storage.
fn with_alloc<R>(map: &MemoryMap, f: impl FnOnce(&mut BitmapFrameAllocator<'_>) -> R) -> R {
    let mut storage = vec![0u64; BitmapFrameAllocator::storage_words(map)];
    // SAFETY: the map's memory is this test's alone, handed out by this allocator only.
    let mut a = unsafe { BitmapFrameAllocator::new(map, &mut storage) }.unwrap();
    a.check_invariants().unwrap();
    let r = f(&mut a);
    a.check_invariants().unwrap();
    r
}

/// Allocates every frame one at a time; returns them in order.
fn drain(a: &mut BitmapFrameAllocator<'_>) -> Vec<u64> {
    let mut out = Vec::new();
    while let Ok(f) = a.allocate() {
        out.push(f.start_address().as_u64() / F);
    }
    out
}

#[test]
fn word_edges_63_64_65() {
    for n in [63, 64, 65, 127, 128, 129] {
        with_alloc(&usable(n), |a| {
            let all = drain(a);
            assert_eq!(all, (0..n).collect::<Vec<_>>(), "n={n}");
            assert!(matches!(
                a.allocate(),
                Err(FrameError::OutOfFrames { frames: 1, .. })
            ));
            a.check_invariants().unwrap();
            for edge in [62, 63, 64].into_iter().filter(|&e| e < n) {
                // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
                unsafe { a.free(frame(edge)) }.unwrap();
                assert_eq!(a.allocate().unwrap(), frame(edge));
            }
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { a.free(frame(n - 1)) }.unwrap();
            assert_eq!(a.stats().largest_free_run, 1);
            assert_eq!(a.allocate().unwrap(), frame(n - 1), "last frame, n={n}");
        });
    }
}

#[test]
fn debug_summarizes_instead_of_dumping_storage() {
    with_alloc(&usable(1 << 20), |a| {
        let text = format!("{a:?}");
        assert!(text.contains("free: 1048576") && text.len() < 200, "{text}");
    });
}

#[test]
fn one_frame_map() {
    with_alloc(&map(&[(0x5000, F, RegionKind::Usable)]), |a| {
        assert_eq!(
            a.stats(),
            FrameStats {
                total: 1,
                free: 1,
                used: 0,
                reserved: 0,
                largest_free_run: 1
            }
        );
        let f = a.allocate().unwrap();
        assert_eq!(f, frame(5));
        assert!(a.allocate().is_err());
        assert_eq!(
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { a.free(frame(4)) },
            Err(FrameError::OutsideMap { frame: frame(4) })
        );
        assert_eq!(
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { a.free(frame(6)) },
            Err(FrameError::OutsideMap { frame: frame(6) })
        );
        // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
        unsafe { a.free(f) }.unwrap();
        assert_eq!(
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { a.free(f) },
            Err(FrameError::AlreadyFree { frame: frame(5) })
        );
    });
}

#[test]
fn empty_map_and_empty_allocator() {
    with_alloc(&MemoryMap::new(), |a| {
        assert_eq!(a.stats(), FrameStats::default());
        assert!(a.allocate().is_err());
        assert!(a.allocate_contiguous(1, F, None).is_err());
        assert_eq!(
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { a.free(frame(0)) },
            Err(FrameError::OutsideMap { frame: frame(0) })
        );
    });
    let mut e = BitmapFrameAllocator::empty();
    assert!(e.allocate().is_err());
    e.check_invariants().unwrap();
    assert!(matches!(
        BitmapFrameAllocator::plan(&MemoryMap::<4>::new()),
        Err(FrameError::NoRoomForMetadata { .. })
    ));
}

#[test]
fn allocate_all_free_all_counts_exact() {
    let m = map(&[
        (0, 0x9fc00, RegionKind::Usable),
        (0x10_0000, 0x80_0000, RegionKind::Usable),
        (0x20_0000, 0x1234, RegionKind::Kernel),
        (0x90_0000, 0x30_0000, RegionKind::Usable),
    ]);
    let expected = m.usable_bytes() / F;
    with_alloc(&m, |a| {
        let before = a.stats();
        assert_eq!(before.total, expected);
        let all = drain(a);
        assert_eq!(all.len() as u64, expected);
        assert_eq!(a.stats().used, expected);
        assert_eq!(a.stats().largest_free_run, 0);
        for &f in all.iter().rev() {
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { a.free(frame(f)) }.unwrap();
        }
        assert_eq!(a.stats(), before);
    });
}

#[test]
fn bad_frees_change_nothing() {
    let m = map(&[
        (0, 256 * F, RegionKind::Usable),
        (100 * F, 10 * F, RegionKind::Reserved),
    ]);
    with_alloc(&m, |a| {
        let f = a.allocate().unwrap();
        a.reserve(PhysFrame::range(frame(200), frame(202))).unwrap();
        let before = a.stats();
        assert_eq!(
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { a.free(frame(1)) },
            Err(FrameError::AlreadyFree { frame: frame(1) })
        );
        assert_eq!(
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { a.free(frame(105)) },
            Err(FrameError::OutsideMap { frame: frame(105) })
        );
        assert_eq!(
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { a.free(frame(201)) },
            Err(FrameError::Reserved { frame: frame(201) })
        );
        assert_eq!(
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { a.free(frame(300)) },
            Err(FrameError::OutsideMap { frame: frame(300) })
        );
        assert_eq!(
            // SAFETY: frames this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { a.free_range(PhysFrame::range(f, frame(3))) },
            Err(FrameError::AlreadyFree { frame: frame(1) })
        );
        assert_eq!(
            // SAFETY: frames this test owns and no longer uses (the allocator's checks are what is tested).
            unsafe { a.free_range(PhysFrame::range(f, f)) },
            Err(FrameError::ZeroFrames)
        );
        assert_eq!(a.stats(), before);
        assert!(!a.is_free(f));
        // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
        unsafe { a.free(f) }.unwrap();
    });
}

#[test]
fn release_puts_reservations_and_holes_into_service() {
    let m = map(&[
        (0, 256 * F, RegionKind::Usable),
        (100 * F, 10 * F, RegionKind::Reserved),
    ]);
    with_alloc(&m, |a| {
        let f = a.allocate().unwrap();
        a.reserve(PhysFrame::range(frame(200), frame(210))).unwrap();
        let before = a.stats();
        // Refused, changing nothing: free frames, allocated frames, a range
        // over a hole and free frames, outside the span, empty.
        let release = |a: &mut BitmapFrameAllocator<'_>, start: u64, end: u64| {
            // SAFETY: host bookkeeping only: no memory behind the frames.
            unsafe { a.release(PhysFrame::range(frame(start), frame(end))) }
        };
        let refused = [
            (50, 51, FrameError::NotReserved { frame: frame(50) }),
            (0, 1, FrameError::NotReserved { frame: frame(0) }),
            (108, 112, FrameError::NotReserved { frame: frame(110) }),
            (98, 102, FrameError::NotReserved { frame: frame(98) }),
            (300, 301, FrameError::OutsideMap { frame: frame(300) }),
            (5, 5, FrameError::ZeroFrames),
        ];
        assert_eq!(f, frame(0));
        for (start, end, err) in refused {
            assert_eq!(release(a, start, end), Err(err));
            a.check_invariants().unwrap();
            assert_eq!(a.stats(), before);
        }
        // The middle of a reservation (a split), then the middle of a hole.
        release(a, 203, 205).unwrap();
        a.check_invariants().unwrap();
        assert_eq!(a.stats().reserved, before.reserved - 2);
        assert_eq!(a.stats().free, before.free + 2);
        release(a, 102, 104).unwrap();
        a.check_invariants().unwrap();
        assert_eq!(a.stats().total, before.total + 2);
        assert_eq!(a.stats().free, before.free + 4);
        // Released frames are handed out and freed like any other.
        assert!(a.is_free(frame(102)) && a.is_free(frame(204)));
        // Twice is refused: they are in service now.
        assert_eq!(
            release(a, 102, 103),
            Err(FrameError::NotReserved { frame: frame(102) })
        );
        let got = drain(a);
        assert!(got.contains(&102) && got.contains(&103) && got.contains(&204));
        assert!(!got.contains(&101) && !got.contains(&200));
    });
}

#[test]
fn reserve_after_init() {
    with_alloc(&usable(1000), |a| {
        let f = a.allocate().unwrap();
        assert_eq!(
            a.reserve(PhysFrame::range(f, frame(5))),
            Err(FrameError::InUse { frame: frame(0) })
        );
        a.reserve(PhysFrame::range(frame(10), frame(20))).unwrap();
        a.reserve(PhysFrame::range(frame(20), frame(30))).unwrap();
        assert_eq!(
            a.reserve(PhysFrame::range(frame(25), frame(35))),
            Err(FrameError::Reserved { frame: frame(25) })
        );
        let s = a.stats();
        assert_eq!((s.reserved, s.used, s.free), (20, 1, 979));
        // Distinct reservations fill the table, then a typed error.
        let mut made = 0;
        let err = loop {
            let n = 100 + 2 * made;
            match a.reserve(PhysFrame::range(frame(n), frame(n + 1))) {
                Ok(()) => made += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, FrameError::ReservationTableFull { .. }));
        // No hole and no carved storage here: the table holds the merged
        // 10..30 entry, the unused storage slot, then the reservation slots.
        assert_eq!(made, kmem::frame::RESERVATION_SLOTS as u64);
        assert_eq!(a.stats().reserved, 20 + made);
    });
}

#[test]
fn contiguous_alignment_and_limits() {
    let m = map(&[(0x1000, 0x1_0000_0000, RegionKind::Usable)]); // 4 KiB .. 4 GiB + 4 KiB
    with_alloc(&m, |a| {
        let r = a.allocate_contiguous(512, 2 << 20, None).unwrap();
        assert_eq!(r.start.start_address().as_u64(), 2 << 20);
        assert_eq!(r.end - r.start, 512);
        let g = a.allocate_contiguous(3, 1 << 30, None).unwrap();
        assert_eq!(g.start.start_address().as_u64(), 1 << 30);
        let low = a.allocate_contiguous(16, F, Some(16 << 20)).unwrap();
        assert_eq!(low.start, frame(1));
        assert!(matches!(
            a.allocate_contiguous(5000, F, Some(16 << 20)),
            Err(FrameError::OutOfFrames { frames: 5000, .. })
        ));
        assert_eq!(
            a.allocate_contiguous(1, 3 * F, None),
            Err(FrameError::BadAlignment { align: 3 * F })
        );
        assert_eq!(
            a.allocate_contiguous(0, F, None),
            Err(FrameError::ZeroFrames)
        );
        assert!(a.allocate_contiguous(1, F, Some(0)).is_err());
        // [1 GiB, 2 GiB) is taken in part: whole GiBs at 2 and 3 GiB remain.
        let h = a.allocate_contiguous(1 << 18, 1 << 30, None).unwrap();
        assert_eq!(h.start.start_address().as_u64(), 2 << 30);
        let h2 = a.allocate_contiguous(1 << 18, 1 << 30, None).unwrap();
        assert_eq!(h2.start.start_address().as_u64(), 3 << 30);
        assert!(a.allocate_contiguous(1 << 18, 1 << 30, None).is_err());
        // SAFETY: frames this test owns and no longer uses (the allocator's checks are what is tested).
        unsafe { a.free_range(h) }.unwrap();
        // SAFETY: frames this test owns and no longer uses (the allocator's checks are what is tested).
        unsafe { a.free_range(h2) }.unwrap();
        // SAFETY: frames this test owns and no longer uses (the allocator's checks are what is tested).
        unsafe { a.free_range(r) }.unwrap();
    });
}

#[test]
fn x86_64_traits_for_all_sizes() {
    let m = map(&[(0, 0x8000_0000, RegionKind::Usable)]); // 2 GiB
    with_alloc(&m, |a| {
        let small: PhysFrame<Size4KiB> = a.allocate_frame().unwrap();
        let big: PhysFrame<Size2MiB> = a.allocate_frame().unwrap();
        let huge: PhysFrame<Size1GiB> = a.allocate_frame().unwrap();
        assert_eq!(big.start_address().as_u64(), 2 << 20);
        assert_eq!(huge.start_address().as_u64(), 1 << 30);
        let none: Option<PhysFrame<Size1GiB>> = a.allocate_frame();
        assert!(none.is_none());
        assert_eq!(a.stats().used, 1 + 512 + (1 << 18));
        // SAFETY: these frames came from this allocator and are unused.
        unsafe {
            a.deallocate_frame(huge);
            a.deallocate_frame(big);
            a.deallocate_frame(small);
            a.deallocate_frame(small); // a double free is ignored
        }
        assert_eq!(a.stats().used, 0);
    });
}

#[test]
fn carved_storage_is_reserved_and_only_storage_is_written() {
    let m = map(&[
        (0, 0x9f000, RegionKind::Usable),
        (0x10_0000, 0x200_0000, RegionKind::Usable),
    ]);
    let plan = BitmapFrameAllocator::plan(&m).unwrap();
    assert_eq!(
        plan.phys.as_u64(),
        16 << 20,
        "prefers memory at or above 16 MiB"
    );
    let mut buf = vec![0xdead_beefu64; plan.words];
    let base = buf
        .as_mut_ptr()
        .cast::<u8>()
        .wrapping_sub(plan.phys.as_u64() as usize);
    // SAFETY: `buf` backs exactly the planned storage range and outlives `a`.
    let mut a = unsafe { BitmapFrameAllocator::init_carved(&m, base) }.unwrap();
    a.check_invariants().unwrap();
    let s = a.stats();
    assert_eq!(s.reserved, plan.frames());
    assert_eq!(s.total, m.usable_bytes() / F);
    let all = drain(&mut a);
    let carved = plan.phys.as_u64() / F..plan.phys.as_u64() / F + plan.frames();
    assert!(all.iter().all(|f| !carved.contains(f)));
    assert_eq!(
        // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
        unsafe { a.free(frame(carved.start)) },
        Err(FrameError::Reserved {
            frame: frame(plan.phys.as_u64() / F)
        })
    );
    assert_eq!(all.len() as u64, s.free);
    a.check_invariants().unwrap();
}

#[test]
fn locked_wrapper_and_traits_through_it() {
    let m = usable(4096);
    let mut storage = vec![0u64; BitmapFrameAllocator::storage_words(&m)];
    let locked: LockedFrameAllocator<'_, NoInterruptMask> =
        // SAFETY: the map's memory is this test's alone, handed out by this allocator only.
        LockedFrameAllocator::new(unsafe { BitmapFrameAllocator::new(&m, &mut storage) }.unwrap());
    let f = locked.with(|a| a.allocate()).unwrap();
    let mut handle = &locked;
    let big: PhysFrame<Size2MiB> = handle.allocate_frame().unwrap();
    assert_eq!(big.start_address().as_u64(), 2 << 20);
    // SAFETY: `big` came from this allocator and is unused.
    unsafe { handle.deallocate_frame(big) };
    // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
    locked.with(|a| unsafe { a.free(f) }).unwrap();
    let old = locked.replace(BitmapFrameAllocator::empty());
    assert_eq!(old.stats().used, 0);
    assert!(locked.with(|a| a.allocate()).is_err());
}

#[test]
fn runs_skip_fragmented_words() {
    // Every 64-frame word but the last 8 has one used frame: the only
    // 512-frame 2 MiB-aligned run is at the very end.
    let n = 64 * 64 * 8;
    with_alloc(&usable(n), |a| {
        let all = drain(a);
        for &f in &all {
            if f % 64 != 7 || f >= n - 512 {
                // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
                unsafe { a.free(frame(f)) }.unwrap();
            }
        }
        let r = a.allocate_contiguous(512, 2 << 20, None).unwrap();
        assert_eq!(r.start, frame(n - 512));
        assert!(a.allocate_contiguous(64, 64 * F, None).is_err());
        assert_eq!(a.allocate_contiguous(63, F, None).unwrap().start, frame(8));
    });
}
