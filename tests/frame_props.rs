//! Property tests: the frame allocator against a `BTreeSet` model over
//! random maps and random operation sequences, with the invariant checker
//! after every operation.
//!
//! Default case count is small so `cargo test` stays fast. Documented run:
//! `PROPTEST_CASES=10000 cargo test --release --test frame_props`

use std::collections::BTreeSet;

use kmem::frame::{BitmapFrameAllocator, FrameError, FrameStats};
use kmem::memory_map::{MemoryMap, Region, RegionKind};
use proptest::prelude::*;
use x86_64::structures::paging::PhysFrame;
use x86_64::PhysAddr;

const F: u64 = 4096;

const KINDS: [RegionKind; 7] = [
    RegionKind::Usable,
    RegionKind::AcpiReclaimable,
    RegionKind::Bootloader,
    RegionKind::Kernel,
    RegionKind::Reserved,
    RegionKind::AcpiNvs,
    RegionKind::Bad,
];

#[derive(Clone, Debug)]
enum Op {
    Alloc,
    Run {
        count: u64,
        align_shift: u32,
        below: Option<u64>,
    },
    FreeUsed(usize),
    FreeRange {
        start: u64,
        len: u64,
    },
    Reserve {
        start: u64,
        len: u64,
    },
}

/// Maps shrink under Miri, which runs the model about a thousand times slower.
const SCALE: u64 = if cfg!(miri) { 8 } else { 1 };

fn region() -> impl Strategy<Value = Region> {
    // Mostly usable, sometimes unaligned, within ~3000 frames of the base.
    (
        0u64..3000 * F / SCALE,
        0u64..1500 * F / SCALE,
        prop::bool::weighted(0.3),
        0usize..10,
    )
        .prop_map(|(start, len, unaligned, k)| {
            let kind = if k < 4 {
                RegionKind::Usable
            } else {
                KINDS[k - 3]
            };
            let (start, len) = if unaligned {
                (start | 0x123, len)
            } else {
                (start & !(F - 1), len & !(F - 1))
            };
            Region::new(start, len, kind)
        })
}

fn map_and_base() -> impl Strategy<Value = (Vec<Region>, u64)> {
    (
        prop::collection::vec(region(), 0..8),
        prop::sample::select(vec![0u64, 1, 63, 256, 1 << 18, (1 << 18) - 5]),
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Alloc),
        2 => (prop_oneof![1u64..20, 60u64..300, 500u64..1100], 0u32..10, prop::option::weighted(0.3, 0u64..4000))
            .prop_map(|(count, align_shift, below)| Op::Run { count, align_shift, below }),
        4 => any::<usize>().prop_map(Op::FreeUsed),
        1 => (0u64..4600, 1u64..80).prop_map(|(start, len)| Op::FreeRange { start, len }),
        1 => (0u64..4600, prop_oneof![1u64..3, 1u64..40]).prop_map(|(start, len)| Op::Reserve { start, len }),
    ]
}

/// Frame numbers wholly covered by usable regions and by no other kind,
/// computed byte-exactly and independently of the sanitizer.
fn model_usable(regions: &[Region]) -> BTreeSet<u64> {
    let lo = regions.iter().map(|r| r.start / F).min().unwrap_or(0);
    let hi = regions
        .iter()
        .map(|r| r.end().div_ceil(F))
        .max()
        .unwrap_or(0);
    (lo..hi)
        .filter(|&f| {
            let (a, b) = (f * F, f * F + F);
            let blocked = regions
                .iter()
                .any(|r| !r.kind.is_usable() && r.start < b && r.end() > a);
            let mut cover: Vec<(u64, u64)> = regions
                .iter()
                .filter(|r| r.kind.is_usable() && r.start < b && r.end() > a)
                .map(|r| (r.start.max(a), r.end().min(b)))
                .collect();
            cover.sort();
            let mut reach = a;
            for (s, e) in cover {
                if s > reach {
                    break;
                }
                reach = reach.max(e);
            }
            !blocked && reach >= b
        })
        .collect()
}

struct Model {
    usable: BTreeSet<u64>,
    free: BTreeSet<u64>,
    reserved: BTreeSet<u64>,
    used: Vec<u64>,
}

impl Model {
    fn stats(&self) -> FrameStats {
        let mut best = 0;
        let mut run = 0;
        let mut prev = None;
        for &f in &self.free {
            run = if prev == Some(f.wrapping_sub(1)) {
                run + 1
            } else {
                1
            };
            best = best.max(run);
            prev = Some(f);
        }
        FrameStats {
            total: self.usable.len() as u64,
            free: self.free.len() as u64,
            used: self.used.len() as u64,
            reserved: self.reserved.len() as u64,
            largest_free_run: best,
        }
    }

    fn lowest_run(&self, count: u64, align: u64, below: Option<u64>) -> Option<u64> {
        let limit = below.map_or(u64::MAX, |b| b / F);
        self.free
            .iter()
            .map(|&f| f.next_multiple_of(align))
            .find(|&s| {
                s.checked_add(count).is_some_and(|e| e <= limit)
                    && (s..s + count).all(|f| self.free.contains(&f))
            })
    }

    /// Whether `err` correctly names a frame in `[a, b)` in the state it claims.
    fn explains(&self, err: FrameError, a: u64, b: u64) -> bool {
        let number = |frame: PhysFrame| frame.start_address().as_u64() / F;
        let at = |frame: PhysFrame| Some(number(frame)).filter(|n| (a..b).contains(n));
        match err {
            FrameError::AlreadyFree { frame } => at(frame).is_some_and(|f| self.free.contains(&f)),
            FrameError::Reserved { frame } => at(frame).is_some_and(|f| self.reserved.contains(&f)),
            FrameError::InUse { frame } => at(frame).is_some_and(|f| self.used.contains(&f)),
            FrameError::OutsideMap { frame } => {
                // Either a non-usable frame in the range or the end of the span.
                at(frame).is_some_and(|f| !self.usable.contains(&f))
                    || (number(frame) <= b && self.usable.range(number(frame)..).next().is_none())
            }
            FrameError::ReservationTableFull { .. } => true,
            _ => false,
        }
    }
}

fn frame(n: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(n * F))
}

fn run_case(
    regions: Vec<Region>,
    base: u64,
    carve: bool,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let regions: Vec<Region> = regions
        .into_iter()
        .map(|r| Region::new(r.start + base * F, r.len, r.kind))
        .collect();
    let map: MemoryMap<64> = MemoryMap::from_regions(regions.iter().copied()).unwrap();
    let usable = model_usable(&regions);
    prop_assert_eq!(map.usable_bytes() / F, usable.len() as u64);
    let mut model = Model {
        free: usable.clone(),
        usable,
        reserved: BTreeSet::new(),
        used: Vec::new(),
    };

    let plan = BitmapFrameAllocator::plan(&map);
    let carve = carve && plan.is_ok();
    let mut buf = vec![
        0u64;
        if carve {
            plan.unwrap().words
        } else {
            BitmapFrameAllocator::storage_words(&map)
        }
    ];
    let mut a = if carve {
        let plan = plan.unwrap();
        for f in plan.phys.as_u64() / F..plan.phys.as_u64() / F + plan.frames() {
            prop_assert!(model.free.remove(&f), "carved a non-free frame");
            model.reserved.insert(f);
        }
        let phys_base = buf
            .as_mut_ptr()
            .cast::<u8>()
            .wrapping_sub(plan.phys.as_u64() as usize);
        // SAFETY: `buf` backs exactly the planned storage and outlives `a`.
        unsafe { BitmapFrameAllocator::init_carved(&map, phys_base) }.unwrap()
    } else {
        // SAFETY: the map's memory is this test's alone, handed out by this allocator only.
        unsafe { BitmapFrameAllocator::new(&map, &mut buf) }.unwrap()
    };
    a.check_invariants()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(a.stats(), model.stats());

    let origin = model.usable.first().copied().unwrap_or(base);
    for op in ops {
        match op {
            Op::Alloc => match a.allocate() {
                Ok(f) => {
                    let f = f.start_address().as_u64() / F;
                    prop_assert_eq!(Some(f), model.free.pop_first());
                    model.used.push(f);
                }
                Err(_) => prop_assert!(model.free.is_empty()),
            },
            Op::Run {
                count,
                align_shift,
                below,
            } => {
                let align = 1u64 << align_shift;
                let below = below.map(|b| (origin + b) * F);
                let expect = model.lowest_run(count, align, below);
                match a.allocate_contiguous(count, align * F, below) {
                    Ok(r) => {
                        let s = r.start.start_address().as_u64() / F;
                        prop_assert_eq!(Some(s), expect);
                        prop_assert_eq!(r.end - r.start, count);
                        for f in s..s + count {
                            model.free.remove(&f);
                            model.used.push(f);
                        }
                    }
                    Err(e) => {
                        prop_assert_eq!(expect, None);
                        let oom = matches!(e, FrameError::OutOfFrames { .. });
                        prop_assert!(oom);
                    }
                }
            }
            Op::FreeUsed(i) if !model.used.is_empty() => {
                let f = model.used.swap_remove(i % model.used.len());
                // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
                prop_assert_eq!(unsafe { a.free(frame(f)) }, Ok(()));
                model.free.insert(f);
            }
            Op::FreeUsed(_) => {}
            Op::FreeRange { start, len } => {
                let (s, e) = (origin + start, origin + start + len);
                let ok = (s..e).all(|f| model.used.contains(&f));
                let before = a.stats();
                // SAFETY: frames this test owns and no longer uses (the allocator's checks are what is tested).
                match unsafe { a.free_range(PhysFrame::range(frame(s), frame(e))) } {
                    Ok(()) => {
                        prop_assert!(ok);
                        model.used.retain(|f| !(s..e).contains(f));
                        model.free.extend(s..e);
                    }
                    Err(err) => {
                        prop_assert!(!ok, "refused a valid free: {:?}", err);
                        prop_assert!(model.explains(err, s, e), "wrong error {:?}", err);
                        prop_assert_eq!(a.stats(), before);
                    }
                }
            }
            Op::Reserve { start, len } => {
                let (s, e) = (origin + start, origin + start + len);
                let ok = (s..e).all(|f| model.free.contains(&f));
                let before = a.stats();
                match a.reserve(PhysFrame::range(frame(s), frame(e))) {
                    Ok(()) => {
                        prop_assert!(ok);
                        for f in s..e {
                            model.free.remove(&f);
                            model.reserved.insert(f);
                        }
                    }
                    Err(err) => {
                        let full = matches!(err, FrameError::ReservationTableFull { .. });
                        prop_assert!(!ok || full, "refused a valid reserve: {:?}", err);
                        prop_assert!(model.explains(err, s, e), "wrong error {:?}", err);
                        prop_assert_eq!(a.stats(), before);
                    }
                }
            }
        }
        a.check_invariants()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(a.stats(), model.stats());
    }

    // Nothing lost: allocate everything left, free everything used.
    let left = model.free.len();
    let mut got = 0;
    while let Ok(f) = a.allocate() {
        model.used.push(f.start_address().as_u64() / F);
        got += 1;
    }
    prop_assert_eq!(got, left);
    for f in model.used.drain(..) {
        // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
        prop_assert_eq!(unsafe { a.free(frame(f)) }, Ok(()));
        model.free.insert(f);
    }
    a.check_invariants()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(a.stats(), model.stats());
    prop_assert_eq!(a.stats().used, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn allocator_matches_model(
        (regions, base) in map_and_base(),
        carve in any::<bool>(),
        ops in prop::collection::vec(op(), 0..if cfg!(miri) { 24 } else { 120 }),
    ) {
        run_case(regions, base, carve, ops)?;
    }
}
