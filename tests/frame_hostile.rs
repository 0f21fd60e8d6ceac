//! Hostile memory maps — overlapping, unaligned, zero-length, duplicated,
//! reversed, beyond 52 bits, wrapping, all reserved — give a correct
//! allocator or a typed error, never a panic.
//!
//! Documented long run: `PROPTEST_CASES=10000 cargo test --release --test frame_hostile`

use kmem::frame::{BitmapFrameAllocator, FrameError};
use kmem::memory_map::e820::E820Entry;
use kmem::memory_map::{MapError, MemoryMap, Region, RegionKind, PHYS_LIMIT};
use proptest::prelude::*;

const F: u64 = 4096;

fn e(addr: u64, size: u64, kind: u32) -> E820Entry {
    E820Entry { addr, size, kind }
}

/// The sanitizer's output invariants.
fn check_map<const N: usize>(map: &MemoryMap<N>) {
    let rs = map.regions();
    for r in rs {
        assert!(r.len > 0 && r.end() <= PHYS_LIMIT, "{r:?}");
    }
    for w in rs.windows(2) {
        assert!(w[0].end() <= w[1].start, "overlap or unsorted: {w:?}");
        assert!(
            !(w[0].end() == w[1].start && w[0].kind == w[1].kind),
            "unmerged: {w:?}"
        );
    }
    for u in map.usable() {
        assert!(u.start % F == 0 && u.len % F == 0 && u.len > 0);
    }
}

/// Builds an allocator when the metadata is small enough for a host test,
/// then allocates every frame, frees every frame, and checks the counts.
fn exercise<const N: usize>(map: &MemoryMap<N>) {
    check_map(map);
    if let Ok(plan) = BitmapFrameAllocator::plan(map) {
        let inside = map.usable().any(|u| {
            u.start <= plan.phys.as_u64() && plan.phys.as_u64() + plan.frames() * F <= u.end()
        });
        assert!(inside, "storage planned outside usable memory: {plan:?}");
    }
    let words = BitmapFrameAllocator::storage_words(map);
    if words > 1 << 16 {
        return;
    }
    let mut storage = vec![0; words];
    // SAFETY: the map's memory is this test's alone, handed out by this allocator only.
    let mut a = unsafe { BitmapFrameAllocator::new(map, &mut storage) }.unwrap();
    a.check_invariants().unwrap();
    let total = a.stats().total;
    let mut frames = Vec::new();
    while let Ok(f) = a.allocate() {
        frames.push(f);
    }
    assert_eq!(frames.len() as u64, total);
    for f in frames {
        // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
        unsafe { a.free(f) }.unwrap();
    }
    a.check_invariants().unwrap();
    assert_eq!(a.stats().free, total);
}

#[test]
fn named_hostile_maps() {
    let cases: &[&[E820Entry]] = &[
        &[
            e(0, 0x10000, 1),
            e(0x8000, 0x10000, 1),
            e(0x4000, 0x1000, 2),
        ], // overlapping
        &[e(0x123, 0x4567, 1), e(0x9999, 0x1, 1)], // unaligned
        &[e(0x1000, 0, 1), e(0, 0, 2)],            // zero-length
        &[e(0, 0x4000, 1), e(0, 0x4000, 1), e(0, 0x4000, 1)], // duplicated
        &[
            e(0x30000, 0x1000, 1),
            e(0x20000, 0x1000, 1),
            e(0x10000, 0x1000, 1),
        ], // reversed
        &[e(0, 0x100000, 2), e(0x100000, 0x100000, 4)], // all reserved
        &[e(PHYS_LIMIT - 2 * F, 2 * F, 1)],        // ends exactly at 2^52
        &[e(0, 0x10000, 1), e(1 << 51, 0x10000, 1)], // huge sparse span
        &[e(0, 0x10000, 7), e(0, 0x10000, 0xffff_ffff)], // unknown types
    ];
    for entries in cases {
        let map: MemoryMap = MemoryMap::from_e820(entries).unwrap();
        exercise(&map);
    }
    assert_eq!(
        MemoryMap::<8>::from_e820(&[e(PHYS_LIMIT - F, 2 * F, 1)]).unwrap_err(),
        MapError::BeyondPhysLimit {
            start: PHYS_LIMIT - F,
            len: 2 * F
        }
    );
    assert_eq!(
        MemoryMap::<8>::from_e820(&[e(u64::MAX, 2, 1)]).unwrap_err(),
        MapError::Wraps {
            start: u64::MAX,
            len: 2
        }
    );
    let many: Vec<E820Entry> = (0..20).map(|i| e(i * 2 * F, F, 1)).collect();
    assert_eq!(
        MemoryMap::<8>::from_e820(&many).unwrap_err(),
        MapError::TooManyRegions { capacity: 8 }
    );
}

#[test]
fn all_reserved_map_allocates_nothing() {
    let map: MemoryMap = MemoryMap::from_e820(&[e(0, 1 << 30, 2)]).unwrap();
    let mut storage = vec![0; BitmapFrameAllocator::storage_words(&map)];
    // SAFETY: the map's memory is this test's alone, handed out by this allocator only.
    let mut a = unsafe { BitmapFrameAllocator::new(&map, &mut storage) }.unwrap();
    assert!(matches!(a.allocate(), Err(FrameError::OutOfFrames { .. })));
    assert_eq!(a.stats().total, 0);
    assert!(matches!(
        BitmapFrameAllocator::plan(&map),
        Err(FrameError::NoRoomForMetadata { .. })
    ));
}

#[test]
fn top_frame_below_2_pow_52_is_not_managed() {
    let map: MemoryMap = MemoryMap::from_e820(&[e(PHYS_LIMIT - 2 * F, 2 * F, 1)]).unwrap();
    let mut storage = vec![0; BitmapFrameAllocator::storage_words(&map)];
    // SAFETY: the map's memory is this test's alone, handed out by this allocator only.
    let mut a = unsafe { BitmapFrameAllocator::new(&map, &mut storage) }.unwrap();
    let f = a.allocate().unwrap();
    assert_eq!(f.start_address().as_u64(), PHYS_LIMIT - 2 * F);
    assert!(a.allocate().is_err());
    let top = x86_64::structures::paging::PhysFrame::containing_address(x86_64::PhysAddr::new(
        PHYS_LIMIT - F,
    ));
    assert!(matches!(
        // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
        unsafe { a.free(top) },
        Err(FrameError::OutsideMap { .. })
    ));
}

#[test]
fn storage_too_small_is_typed() {
    let map: MemoryMap = MemoryMap::from_e820(&[e(0, 1 << 20, 1)]).unwrap();
    let need = BitmapFrameAllocator::storage_words(&map);
    let mut storage = vec![0; need - 1];
    // SAFETY: the map's memory is this test's alone, handed out by this allocator only.
    let err = unsafe { BitmapFrameAllocator::new(&map, &mut storage) }.unwrap_err();
    assert_eq!(
        err,
        FrameError::StorageTooSmall {
            needed: need,
            given: need - 1
        }
    );
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..0x100_0000,
        (PHYS_LIMIT - 0x10_0000)..(PHYS_LIMIT + 0x10_0000),
        (u64::MAX - 0x10_0000)..=u64::MAX,
        any::<u64>(),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..0x40_0000,
        Just(0),
        any::<u64>(),
        (u64::MAX - 0x1000)..=u64::MAX
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_e820_never_panics(entries in prop::collection::vec((addr(), size(), 0u32..8), 0..24)) {
        let entries: Vec<E820Entry> = entries.into_iter().map(|(a, s, k)| e(a, s, k)).collect();
        match MemoryMap::<16>::from_e820(&entries) {
            Ok(map) => exercise(&map),
            Err(MapError::TooManyRegions { capacity }) => prop_assert_eq!(capacity, 16),
            Err(MapError::Wraps { start, len }) => prop_assert!(start.checked_add(len).is_none()),
            Err(MapError::BeyondPhysLimit { start, len }) => prop_assert!(start + len > PHYS_LIMIT),
        }
    }

    #[test]
    fn sanitizing_is_order_independent(mut rs in prop::collection::vec((0u64..0x40_0000, 0u64..0x10_0000, 0usize..7), 0..12)) {
        let kinds = [RegionKind::Usable, RegionKind::AcpiReclaimable, RegionKind::Bootloader, RegionKind::Kernel,
            RegionKind::Reserved, RegionKind::AcpiNvs, RegionKind::Bad];
        let regions = |rs: &[(u64, u64, usize)]| rs.iter().map(|&(s, l, k)| Region::new(s, l, kinds[k])).collect::<Vec<_>>();
        let a: MemoryMap<64> = MemoryMap::from_regions(regions(&rs)).unwrap();
        rs.reverse();
        let b: MemoryMap<64> = MemoryMap::from_regions(regions(&rs)).unwrap();
        prop_assert_eq!(a.regions(), b.regions());
        exercise(&a);
    }
}
