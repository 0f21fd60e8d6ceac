//! Fault injection: the frame source fails at the k-th allocation, for every k, during range
//! operations. A failed operation must leave tables (byte for byte), translations and frame
//! counts exactly as before; the first k that succeeds is exactly the number of frames needed.
//!
//! Miri (clean; small case counts, the tests shrink their sizes under `cfg(miri)`):
//! `MIRIFLAGS="-Zmiri-permissive-provenance -Zmiri-disable-isolation" PROPTEST_CASES=2 \
//!  cargo +nightly miri test --features testing --test paging_diff --test paging_faults --test paging_api`
//! (permissive provenance: `OffsetPageTable` turns integers into pointers; isolation off:
//! proptest's failure persistence.)

use kmem::paging::{LeafSize, MapFlags, PageTables, PagingError};
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use x86_64::{PhysAddr, VirtAddr};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

type M<'a> = PageTables<EmulatedPhysMem<'a>>;

#[derive(Debug, PartialEq, Eq)]
struct State {
    tables: Vec<(u64, Vec<u64>)>,
    allocated: Vec<u64>,
    translations: Vec<Option<(u64, LeafSize, u64)>>,
}

fn state(mem: &EmulatedMemory, m: &M, a: &EmulatedFrameAllocator, probes: &[u64]) -> State {
    let report = m.table_report().expect("invariants");
    let tables = report
        .tables
        .iter()
        .map(|f| {
            let p = f.start_address();
            (
                p.as_u64(),
                (0..512).map(|i| mem.read_u64(p + i * 8)).collect(),
            )
        })
        .collect();
    let allocated = a
        .allocated_frames()
        .iter()
        .map(|f| f.start_address().as_u64())
        .collect();
    let translations = probes
        .iter()
        .map(|&v| {
            m.translate(VirtAddr::new(v))
                .ok()
                .map(|t| (t.phys.as_u64(), t.size, t.flags.bits()))
        })
        .collect();
    State {
        tables,
        allocated,
        translations,
    }
}

/// A populated address space: a 1 GiB page, 2 MiB pages, scattered 4 KiB pages, in both halves.
fn populate(m: &mut M, a: &mut EmulatedFrameAllocator) {
    let rw = MapFlags::READ_WRITE;
    let maps: [(u64, u64, u64); 6] = [
        (G1, 8 * G1, G1),                           // one 1 GiB page
        (2 * G1, 16 * G1, 4 * M2),                  // four 2 MiB pages
        (2 * G1 + 8 * M2 + 5 * K4, 0x5000, 3 * K4), // 4 KiB pages in a partial table
        (0xffff_8000_0000_0000, 0, G1 + M2 + K4),   // 1 GiB + 2 MiB + 4 KiB
        (0xffff_ffff_8000_0000, 0x10_0000, 6 * K4),
        (0x7fff_ffe0_0000, 0x20_0000, M2), // the last 2 MiB of the lower half
    ];
    for (v, p, len) in maps {
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map_range(VirtAddr::new(v), PhysAddr::new(p), len, rw, a) }
            .unwrap()
            .ignore();
    }
}

fn probes() -> Vec<u64> {
    let mut v = Vec::new();
    for base in [
        G1,
        2 * G1,
        3 * G1,
        0xffff_8000_0000_0000,
        0xffff_ffff_8000_0000,
        0x7fff_ffe0_0000,
    ] {
        for off in [0, K4, M2 - K4, M2, 8 * M2 + 5 * K4, 9 * M2, G1 / 2, G1 - K4] {
            if let Ok(a) = VirtAddr::try_new(base + off) {
                v.push(a.as_u64());
            }
        }
    }
    v
}

type Op = fn(&mut M, &mut EmulatedFrameAllocator) -> Result<(), PagingError>;

/// Runs `op` with the k-th allocation failing, for k = 0, 1, ... until it succeeds.
fn every_k(name: &str, op: Op) -> u64 {
    let probes = probes();
    for k in 0.. {
        let mem = EmulatedMemory::new(128);
        let mut a = mem.frame_allocator();
        let mut m = PageTables::new_empty(mem.phys_mem(), &mut a).unwrap();
        populate(&mut m, &mut a);
        let before = state(&mem, &m, &a, &probes);
        a.fail_after(k);
        match op(&mut m, &mut a) {
            Ok(()) => {
                a.clear_failure();
                assert!(
                    state(&mem, &m, &a, &probes) != before,
                    "{name}: success changed nothing"
                );
                return k;
            }
            Err(e) => {
                assert!(
                    matches!(e, PagingError::OutOfFrames { obtained, .. } if obtained as u64 == k),
                    "{name} k={k}: {e:?}"
                );
                assert_eq!(
                    state(&mem, &m, &a, &probes),
                    before,
                    "{name}: failure at k={k} changed the state"
                );
            }
        }
    }
    unreachable!()
}

#[test]
fn map_range_rolls_back_at_every_k() {
    // 3 GiB + 6 MiB + 12 KiB at 4 GiB - 4 KiB: 4 KiB, then 2 MiB, then 1 GiB pages, and back.
    let needed = every_k("map mixed", |m, a| {
        let v = VirtAddr::new(4 * G1 - K4);
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe {
            m.map_range(
                v,
                PhysAddr::new(32 * G1 - K4),
                3 * G1 + 6 * M2 + 3 * K4,
                MapFlags::READ,
                a,
            )
        }
        .map(|f| f.ignore())
    });
    // [4G-4K, 4G): the 1 GiB region 3 has no table yet: PD + PT; then 1 GiB pages need
    // nothing; the tail needs a PD and a PT. The PDPT exists.
    assert_eq!(needed, 4);
    let needed = every_k("map 4k into new pml4 slot", |m, a| {
        let v = VirtAddr::new(0x0000_4000_0000_0000);
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe {
            m.map_range_with(
                v,
                PhysAddr::new(0),
                4 * M2,
                MapFlags::READ,
                LeafSize::Size4KiB,
                a,
            )
        }
        .map(|f| f.ignore())
    });
    assert_eq!(needed, 2 + 4, "PDPT + PD + four PTs");
}

#[test]
fn map_range_conflict_changes_nothing() {
    let probes = probes();
    let mem = EmulatedMemory::new(128);
    let mut a = mem.frame_allocator();
    let mut m = PageTables::new_empty(mem.phys_mem(), &mut a).unwrap();
    populate(&mut m, &mut a);
    let before = state(&mem, &m, &a, &probes);
    // Ends on the first of the existing 4 KiB pages at 2G + 8*2M + 5*4K.
    let v = VirtAddr::new(2 * G1 + 4 * M2);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let err = unsafe { m.map_range(v, PhysAddr::new(0), 4 * M2 + 6 * K4, MapFlags::READ, &mut a) }
        .unwrap_err();
    assert_eq!(
        err,
        PagingError::AlreadyMapped {
            addr: VirtAddr::new(2 * G1 + 8 * M2 + 5 * K4),
            frame: PhysAddr::new(0x5000),
            size: LeafSize::Size4KiB
        }
    );
    assert_eq!(state(&mem, &m, &a, &probes), before);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let err = unsafe {
        m.map_range(
            VirtAddr::new(G1 + G1 / 2),
            PhysAddr::new(0),
            K4,
            MapFlags::READ,
            &mut a,
        )
    }
    .unwrap_err();
    assert_eq!(
        err,
        PagingError::HugePageInTheWay {
            addr: VirtAddr::new(G1),
            frame: PhysAddr::new(8 * G1),
            size: LeafSize::Size1GiB
        }
    );
    assert_eq!(state(&mem, &m, &a, &probes), before);
}

#[test]
fn unmap_range_splitting_rolls_back_at_every_k() {
    // Cuts 4 KiB out of the middle of the 1 GiB page: 1 GiB -> 2 MiB (PD) -> 4 KiB (PT).
    let needed = every_k("unmap middle of 1G", |m, a| {
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.unmap_range(VirtAddr::new(G1 + G1 / 2), K4, a) }.map(|f| f.ignore())
    });
    assert_eq!(needed, 2);
    // Both edges of a 1 GiB + 2 MiB + 4 KiB direct map cut at 4 KiB granularity.
    let needed = every_k("unmap both edges", |m, a| {
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.unmap_range(VirtAddr::new(0xffff_8000_0000_0000 + K4), G1 + M2 - K4, a) }
            .map(|f| f.ignore())
    });
    assert_eq!(
        needed, 2,
        "the 1 GiB page splits into a PD, its first 2 MiB into a PT"
    );
}

#[test]
fn protect_range_splitting_rolls_back_at_every_k() {
    let needed = every_k("protect across 2M pages", |m, a| {
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe {
            m.protect_range(
                VirtAddr::new(2 * G1 + M2 - K4),
                2 * M2 + 2 * K4,
                MapFlags::READ,
                a,
            )
        }
        .map(|f| f.ignore())
    });
    assert_eq!(needed, 2, "two 2 MiB pages cut at one edge each");
}
