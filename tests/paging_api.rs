//! Host tests of the mapper API: effective permissions against an independent software
//! walker, typed errors, W^X policy, flush tokens, table reclamation, huge-page splits and
//! address spaces.
//!
//! Miri (clean; small case counts, the tests shrink their sizes under `cfg(miri)`):
//! `MIRIFLAGS="-Zmiri-permissive-provenance -Zmiri-disable-isolation" PROPTEST_CASES=2 \
//!  cargo +nightly miri test --features testing --test paging_diff --test paging_faults --test paging_api`
//! (permissive provenance: `OffsetPageTable` turns integers into pointers; isolation off:
//! proptest's failure persistence.)

use kmem::paging::{
    AddressSpace, Flush, LeafSize, MapFlags, Mmu, PageTables, PagingError, FLUSH_THRESHOLD,
};
use kmem::testing::mmu::{MmuOp, RecordingMmu};
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use x86_64::structures::paging::{
    Page, PageTableFlags as F, PhysFrame, Size1GiB, Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

fn setup(frames: usize) -> EmulatedMemory {
    EmulatedMemory::new(frames)
}

fn mapper<'a>(
    mem: &'a EmulatedMemory,
    a: &mut EmulatedFrameAllocator,
) -> PageTables<EmulatedPhysMem<'a>> {
    PageTables::new_empty(mem.phys_mem(), a).unwrap()
}

/// An independent walker: reads raw entries, combines W/U by AND and NX by OR.
fn soft_walk(mem: &EmulatedMemory, pml4: PhysFrame, va: u64) -> Option<(u64, bool, bool, bool)> {
    let mut table = pml4.start_address().as_u64();
    let (mut w, mut u, mut nx) = (true, true, false);
    for level in (1..=4u32).rev() {
        let idx = (va >> (12 + 9 * (level - 1))) & 511;
        let e = mem.read_u64(PhysAddr::new(table + idx * 8));
        if e & 1 == 0 {
            return None;
        }
        w &= e & 2 != 0;
        u &= e & 4 != 0;
        nx |= e >> 63 != 0;
        if level == 1 || (level < 4 && e & 0x80 != 0) {
            let size = 1u64 << (12 + 9 * (level - 1));
            let phys = (e & ADDR & !(size - 1)) + (va & (size - 1));
            return Some((phys, w, u, !nx));
        }
        table = e & ADDR;
    }
    None
}

#[test]
fn effective_permissions_match_a_software_walker() {
    let mem = setup(256);
    let mut a = mem.frame_allocator();
    let mut m = mapper(&mem, &mut a);
    let flag_sets = [
        MapFlags::READ,
        MapFlags::READ_WRITE,
        MapFlags::READ_EXEC,
        MapFlags::READ_WRITE.user(),
        MapFlags::READ_EXEC.user(),
    ];
    let mut vas = Vec::new();
    for (i, f) in flag_sets.iter().enumerate() {
        let i = i as u64;
        for (v, len) in [(i * G1, K4), (i * G1 + M2, M2), (0x100 * G1 + i * G1, G1)] {
            // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            unsafe {
                m.map_range(
                    VirtAddr::new(v),
                    PhysAddr::new(64 * G1 + v),
                    len,
                    *f,
                    &mut a,
                )
            }
            .unwrap()
            .ignore();
            vas.push(v);
        }
    }
    // Restrict at upper levels behind the mapper's back: clear W in a PDPT entry, set NX in a
    // PML4 entry, clear U in a PD entry.
    let pml4 = m.pml4().start_address().as_u64();
    let pdpt = mem.read_u64(PhysAddr::new(pml4)) & ADDR;
    let e = mem.read_u64(PhysAddr::new(pdpt + 3 * 8));
    mem.write_u64(PhysAddr::new(pdpt + 3 * 8), e & !2);
    let e = mem.read_u64(PhysAddr::new(pml4));
    mem.write_u64(PhysAddr::new(pml4), e | 1 << 63);
    let pd4 = mem.read_u64(PhysAddr::new(pdpt + 4 * 8)) & ADDR;
    let e = mem.read_u64(PhysAddr::new(pd4));
    mem.write_u64(PhysAddr::new(pd4), e & !4);
    let mut checked = 0;
    for v in vas.iter().flat_map(|&v| [v, v + K4 / 2, v + 3 * K4]) {
        let soft = soft_walk(&mem, m.pml4(), v);
        let ours = m.translate(VirtAddr::new(v)).ok();
        match (soft, ours) {
            (None, None) => {}
            (Some((p, w, u, x)), Some(t)) => {
                assert_eq!(
                    (
                        t.phys.as_u64(),
                        t.access.writable,
                        t.access.user,
                        t.access.executable
                    ),
                    (p, w, u, x),
                    "{v:#x}"
                );
                checked += 1;
            }
            other => panic!("{v:#x}: {other:?}"),
        }
    }
    assert!(checked >= 30);
    // The forged restrictions are visible: nothing in PML4 entry 0 is executable now.
    assert!(
        !m.translate(VirtAddr::new(2 * G1))
            .unwrap()
            .access
            .executable
    );
    assert!(!m.translate(VirtAddr::new(3 * G1)).unwrap().access.writable);
    assert!(!m.translate(VirtAddr::new(4 * G1)).unwrap().access.user);
}

#[test]
fn write_exec_needs_the_opt_in() {
    let mem = setup(16);
    let mut a = mem.frame_allocator();
    let mut m = mapper(&mem, &mut a);
    let v = VirtAddr::new(0x40_0000);
    let wx = MapFlags::READ_WRITE.executable();
    let page = Page::<Size4KiB>::containing_address(v);
    let frame = PhysFrame::containing_address(PhysAddr::new(0x1000));
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map(page, frame, wx, &mut a) },
        Err(PagingError::WriteExecute { addr: v })
    );
    assert_eq!(a.in_use(), 1, "nothing allocated for a refused map");
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map(page, frame, F::PRESENT.union(F::WRITABLE).into(), &mut a) },
        Err(PagingError::WriteExecute { addr: v })
    );
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.map(page, frame, MapFlags::READ_WRITE, &mut a) }
        .unwrap()
        .ignore();
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.protect(page, wx) },
        Err(PagingError::WriteExecute { addr: v })
    );
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.protect_range(v, K4, wx, &mut a) },
        Err(PagingError::WriteExecute { addr: v })
    );
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.protect(page, wx.allow_write_exec()) }
        .unwrap()
        .ignore();
    let t = m.translate(v).unwrap();
    assert!(t.access.writable && t.access.executable);
    assert!(!MapFlags::READ.is_executable(), "non-executable by default");
}

#[test]
fn bad_arguments_are_typed_errors() {
    let mem = setup(64);
    let mut a = mem.frame_allocator();
    let mut m = mapper(&mem, &mut a);
    let f = MapFlags::READ;
    let p = PhysAddr::new(0);
    let v = |x| VirtAddr::new(x);
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map_range(v(0x1001), p, K4, f, &mut a) },
        Err(PagingError::MisalignedVirtAddr {
            addr: VirtAddr::new(0x1001),
            align: K4
        })
    );
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map_range(v(0x1000), p, 5, f, &mut a) },
        Err(PagingError::MisalignedLength { len: 5, align: K4 })
    );
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map_range(v(0x1000), p, 0, f, &mut a) },
        Err(PagingError::InvalidLength { len: 0 })
    );
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map_range(v(0x1000), PhysAddr::new(0x10), K4, f, &mut a) },
        Err(PagingError::MisalignedPhysAddr {
            addr: PhysAddr::new(0x10),
            align: K4
        })
    );
    let top = 0x7fff_ffff_f000;
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map_range(v(top), p, 2 * K4, f, &mut a) },
        Err(PagingError::NonCanonical { addr: top + 2 * K4 })
    );
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.unmap_range(v(0xffff_ffff_ffff_f000), 2 * K4, &mut a) },
        Err(PagingError::NonCanonical { addr: K4 })
    );
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map_range(v(0x1000), PhysAddr::new((1 << 52) - K4), 2 * K4, f, &mut a) },
        Err(PagingError::InvalidLength { len: 2 * K4 })
    );
    assert_eq!(
        m.translate(v(0x1000)),
        Err(PagingError::NotMapped { addr: v(0x1000) })
    );
    assert_eq!(a.in_use(), 1);
    // Conflicts carry the data.
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.map_range(v(G1), PhysAddr::new(4 * G1), G1, f, &mut a) }
        .unwrap()
        .ignore();
    let huge = PagingError::HugePageInTheWay {
        addr: v(G1),
        frame: PhysAddr::new(4 * G1),
        size: LeafSize::Size1GiB,
    };
    let page4 = Page::<Size4KiB>::containing_address(v(G1 + M2));
    let frame4 = PhysFrame::containing_address(PhysAddr::new(0));
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    assert_eq!(unsafe { m.map(page4, frame4, f, &mut a) }, Err(huge));
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.unmap(page4, &mut a) }.map(|(f, t)| (f, t.is_empty())),
        Err(huge)
    );
    let page1 = Page::<Size1GiB>::containing_address(v(G1));
    let frame1 = PhysFrame::containing_address(PhysAddr::new(8 * G1));
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map(page1, frame1, f, &mut a) },
        Err(PagingError::AlreadyMapped {
            addr: v(G1),
            frame: PhysAddr::new(4 * G1),
            size: LeafSize::Size1GiB
        })
    );
    // A table where an exact 2 MiB page was asked for.
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.map_range(v(2 * G1 + K4), p, K4, f, &mut a) }
        .unwrap()
        .ignore();
    let page2 = Page::<Size2MiB>::containing_address(v(2 * G1));
    let frame2 = PhysFrame::containing_address(PhysAddr::new(0));
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map(page2, frame2, f, &mut a) },
        Err(PagingError::TableInTheWay {
            addr: v(2 * G1),
            size: LeafSize::Size2MiB
        })
    );
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.unmap(page2, &mut a) }.map(|_| ()),
        Err(PagingError::TableInTheWay {
            addr: v(2 * G1),
            size: LeafSize::Size2MiB
        })
    );
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let out = unsafe { m.map_range(v(3 * G1), p, 3 * K4, f, &mut a.clone_exhausted()) };
    assert!(
        matches!(
            out,
            Err(PagingError::OutOfFrames {
                needed: 2,
                obtained: 0
            })
        ),
        "{out:?}"
    );
    m.check_invariants().unwrap();
}

trait Exhausted {
    fn clone_exhausted(&self) -> Self;
}
impl Exhausted for EmulatedFrameAllocator {
    fn clone_exhausted(&self) -> Self {
        let mut c = self.clone();
        c.fail_after(0);
        c
    }
}

#[test]
fn range_ops_flush_once_with_a_threshold() {
    let mem = setup(64);
    let mut a = mem.frame_allocator();
    let mut m = mapper(&mem, &mut a);
    let mut mmu = RecordingMmu::new(m.pml4());
    let v = VirtAddr::new(0x1000_0000);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let t = unsafe {
        m.map_range_with(
            v,
            PhysAddr::new(0),
            512 * K4,
            MapFlags::READ,
            LeafSize::Size4KiB,
            &mut a,
        )
    }
    .unwrap();
    assert!(
        t.is_empty(),
        "mapping over non-present entries needs no flush"
    );
    t.flush(&mut mmu);
    assert!(mmu.ops().is_empty());
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let t = unsafe { m.protect_range(v, 8 * K4, MapFlags::READ_WRITE, &mut a) }.unwrap();
    t.flush(&mut mmu);
    let expect: Vec<_> = (0..8).map(|i| MmuOp::Invlpg(v + i * K4)).collect();
    assert_eq!(mmu.ops(), &expect[..]);
    mmu.clear();
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.unmap_range(v, (FLUSH_THRESHOLD as u64 + 1) * K4, &mut a) }
        .unwrap()
        .flush(&mut mmu);
    assert_eq!(mmu.ops(), &[MmuOp::FlushAll]);
    mmu.clear();
    // A split of a 2 MiB page: the old huge entry is invalidated once.
    let h = VirtAddr::new(0x4000_0000);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.map_range(h, PhysAddr::new(0x20_0000), M2, MapFlags::READ, &mut a) }
        .unwrap()
        .ignore();
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.unmap_range(h + 3 * K4, K4, &mut a) }
        .unwrap()
        .flush(&mut mmu);
    assert_eq!(mmu.ops(), &[MmuOp::Invlpg(h + 3 * K4)]);
    let page = Page::<Size4KiB>::containing_address(h);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let (frame, t) = unsafe { m.unmap(page, &mut a) }.unwrap();
    assert_eq!(frame.start_address(), PhysAddr::new(0x20_0000));
    assert_eq!(t.pages().collect::<Vec<_>>(), vec![h]);
    t.ignore();
    let _ = Flush::none();
}

#[test]
fn unmap_range_returns_table_frames() {
    // 1 GiB natively; 16 MiB under Miri (same code paths, fewer entries).
    let len = if cfg!(miri) { 8 * M2 } else { G1 };
    let pts = (len / M2) as usize;
    let mem = setup(1024);
    let mut a = mem.frame_allocator();
    let mut m = mapper(&mem, &mut a);
    let v = VirtAddr::new(0x80_0000_0000);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe {
        m.map_range_with(
            v,
            PhysAddr::new(0),
            len,
            MapFlags::READ_WRITE,
            LeafSize::Size4KiB,
            &mut a,
        )
    }
    .unwrap()
    .ignore();
    assert_eq!(
        a.in_use(),
        1 + 1 + 1 + pts,
        "PML4 + PDPT + PD + one PT per 2 MiB"
    );
    assert_eq!(m.table_report().unwrap().leaves, [pts * 512, 0, 0]);
    // Half: half the PTs freed, the PD stays.
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.unmap_range(v, len / 2, &mut a) }
        .unwrap()
        .ignore();
    assert_eq!(a.in_use(), 1 + 1 + 1 + pts / 2);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.unmap_range(v + len / 2, len / 2, &mut a) }
        .unwrap()
        .ignore();
    assert_eq!(a.in_use(), 1, "everything but the PML4 went back");
    assert_eq!(m.table_report().unwrap().tables, vec![m.pml4()]);
    // Single-page unmaps reclaim too.
    let page = Page::<Size4KiB>::containing_address(v);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe {
        m.map(
            page,
            PhysFrame::containing_address(PhysAddr::new(0)),
            MapFlags::READ,
            &mut a,
        )
    }
    .unwrap()
    .ignore();
    assert_eq!(a.in_use(), 4);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.unmap(page, &mut a) }.unwrap().1.ignore();
    assert_eq!(a.in_use(), 1);
    // Kernel-half PDPTs stay (shared with other address spaces).
    let k = VirtAddr::new(0xffff_8000_0000_0000);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.map_range(k, PhysAddr::new(0), K4, MapFlags::READ, &mut a) }
        .unwrap()
        .ignore();
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.unmap_range(k, K4, &mut a) }.unwrap().ignore();
    assert_eq!(a.in_use(), 2, "PML4 + the kernel PDPT");
    m.check_invariants().unwrap();
}

#[test]
fn splitting_preserves_the_rest_of_a_huge_page() {
    let mem = setup(64);
    let mut a = mem.frame_allocator();
    let mut m = mapper(&mem, &mut a);
    let v = VirtAddr::new(G1);
    let flags = MapFlags::READ_WRITE.global();
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.map_range(v, PhysAddr::new(5 * G1), G1, flags, &mut a) }
        .unwrap()
        .ignore();
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.protect_range(v + G1 / 2 + 7 * K4, K4, MapFlags::READ, &mut a) }
        .unwrap()
        .ignore();
    let changed = m.translate(v + G1 / 2 + 7 * K4).unwrap();
    assert_eq!(
        (changed.size, changed.access.writable),
        (LeafSize::Size4KiB, false)
    );
    for off in [
        0,
        K4,
        G1 / 2,
        G1 / 2 + 6 * K4,
        G1 / 2 + 8 * K4,
        G1 / 2 + M2,
        G1 - K4,
    ] {
        let t = m.translate(v + off).unwrap();
        assert_eq!(t.phys, PhysAddr::new(5 * G1 + off));
        assert!(t.access.writable && t.flags.contains(F::GLOBAL), "{off:#x}");
    }
    assert_eq!(
        m.translate(v + G1 / 2 + 8 * K4).unwrap().size,
        LeafSize::Size4KiB
    );
    assert_eq!(m.translate(v + G1 - K4).unwrap().size, LeafSize::Size2MiB);
    assert_eq!(m.table_report().unwrap().leaves, [512, 511, 0]);
}

#[test]
fn address_spaces_share_the_kernel_half() {
    let mem = setup(if cfg!(miri) { 1100 } else { 2048 });
    let mut a = mem.frame_allocator();
    let mut kernel = mapper(&mem, &mut a);
    let kv = VirtAddr::new(0xffff_8000_0000_0000);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { kernel.map_range(kv, PhysAddr::new(0), 4 * M2, MapFlags::READ_WRITE, &mut a) }
        .unwrap()
        .ignore();
    let mut mmu = RecordingMmu::new(kernel.pml4());
    let mut space = AddressSpace::new(&kernel, &mut a).unwrap();
    assert_eq!(
        space.mapper().translate(kv + 5u64).unwrap().phys,
        PhysAddr::new(5)
    );
    // User mappings are private; huge user frames come from the allocator so destroy can free them.
    let huge = a.allocate_contiguous(512, M2).unwrap();
    let uv = VirtAddr::new(0x40_0000);
    let user = MapFlags::READ_WRITE.user();
    // SAFETY: user-half edits only.
    let user_half = unsafe { space.mapper_mut() };
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { user_half.map_range(uv, huge, M2, user, &mut a) }
        .unwrap()
        .ignore();
    let small = a.allocate_contiguous(3, K4).unwrap();
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { user_half.map_range(uv + 2 * M2, small, 3 * K4, user, &mut a) }
        .unwrap()
        .ignore();
    assert!(kernel.translate(uv).is_err());
    assert!(space.mapper().translate(uv).unwrap().access.user);
    // Kernel mappings made later under an existing PML4 entry are seen by both.
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { kernel.map_range(kv + G1, PhysAddr::new(0x1000), K4, MapFlags::READ, &mut a) }
        .unwrap()
        .ignore();
    assert!(space.mapper().translate(kv + G1).is_ok());
    // SAFETY: the recording MMU only records.
    unsafe { space.switch(&mut mmu) };
    assert_eq!(mmu.ops(), &[MmuOp::SetCr3(space.pml4())]);
    assert!(space.is_active(&mmu));
    // SAFETY: one (recorded) CPU; the frames mapped are this space's alone,
    // allocated above for it.
    let space = match unsafe { space.destroy(&mmu, &mut a, true) } {
        Err((space, PagingError::AddressSpaceActive { pml4 })) => {
            assert_eq!(pml4, space.pml4().start_address());
            space
        }
        other => panic!("{other:?}"),
    };
    // SAFETY: as above.
    unsafe { mmu.set_cr3(kernel.pml4()) };
    let before_destroy = a.in_use();
    // SAFETY: as above.
    let stats = unsafe { space.destroy(&mmu, &mut a, true) }.unwrap();
    assert_eq!(stats.tables, 1 + 1 + 1 + 1, "PML4, PDPT, PD, one PT");
    assert_eq!(stats.mapped_frames, 512 + 3);
    assert_eq!(
        a.in_use(),
        before_destroy - stats.tables - stats.mapped_frames
    );
    // The kernel is intact.
    assert_eq!(kernel.translate(kv + 5u64).unwrap().phys, PhysAddr::new(5));
    let report = kernel.table_report().unwrap();
    let mut tables = report.tables.clone();
    tables.sort();
    assert_eq!(
        tables,
        a.allocated_frames(),
        "exactly the kernel's tables remain allocated"
    );
}

#[test]
#[cfg_attr(miri, ignore = "256 table frames: too slow under Miri")]
fn prefilled_kernel_half_propagates_later_kernel_mappings() {
    let mem = setup(600);
    let mut a = mem.frame_allocator();
    let mut kernel = mapper(&mem, &mut a);
    let mut failing = a.clone();
    failing.fail_after(10);
    let err = kernel.prefill_kernel_half(&mut failing).unwrap_err();
    assert_eq!(
        err,
        PagingError::OutOfFrames {
            needed: 256,
            obtained: 10
        }
    );
    assert_eq!(failing.in_use(), 1);
    assert_eq!(kernel.prefill_kernel_half(&mut a), Ok(256));
    assert_eq!(kernel.prefill_kernel_half(&mut a), Ok(0));
    let space = AddressSpace::new(&kernel, &mut a).unwrap();
    // A kernel mapping made after the address space was created, in a fresh 512 GiB slot.
    let kv = VirtAddr::new(0xffff_ff80_0000_0000);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { kernel.map_range(kv, PhysAddr::new(0x7000), K4, MapFlags::READ, &mut a) }
        .unwrap()
        .ignore();
    assert_eq!(
        space.mapper().translate(kv).unwrap().phys,
        PhysAddr::new(0x7000)
    );
    kernel.check_invariants().unwrap();
    space.mapper().check_invariants().unwrap();
}

#[test]
fn forged_misaligned_huge_page_is_refused() {
    let mem = setup(16);
    let mut a = mem.frame_allocator();
    let mut m = mapper(&mem, &mut a);
    // SAFETY: deliberately misaligned for 2 MiB: the mapper must refuse it.
    let frame =
        unsafe { PhysFrame::<Size2MiB>::from_start_address_unchecked(PhysAddr::new(0x1000)) };
    let page = Page::<Size2MiB>::containing_address(VirtAddr::new(0x20_0000));
    assert_eq!(
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map(page, frame, MapFlags::READ, &mut a) },
        Err(PagingError::MisalignedPhysAddr {
            addr: PhysAddr::new(0x1000),
            align: M2
        })
    );
    assert_eq!(a.in_use(), 1);
}

/// `x86_64::Translate` on kmem's mapper answers as `OffsetPageTable` does
/// over the same tables, for 4 KiB, 2 MiB and 1 GiB leaves and holes.
#[test]
fn translate_trait_matches_offset_page_table() {
    use x86_64::structures::paging::mapper::Translate;
    use x86_64::structures::paging::{OffsetPageTable, PageTable};
    let mem = EmulatedMemory::new(64);
    let mut frames = mem.frame_allocator();
    let mut m = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let rw = MapFlags::READ_WRITE;
    for (va, pa, len) in [
        (0x40_0000u64, 0x9000u64, 0x3000u64),
        (0x4000_0000, 0x4000_0000, 0x20_0000),
        (0x80_0000_0000, 0x8000_0000, 0x4000_0000),
    ] {
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map_range(VirtAddr::new(va), PhysAddr::new(pa), len, rw, &mut frames) }
            .unwrap()
            .ignore();
    }
    let pml4 = m.pml4().start_address().as_u64();
    // SAFETY: the emulated memory maps physical address p at host address p
    // (offset 0); the PML4 is ours and nothing else writes it meanwhile.
    let table = unsafe { &mut *(pml4 as *mut PageTable) };
    // SAFETY: as above.
    let peer = unsafe { OffsetPageTable::new(table, VirtAddr::zero()) };
    use x86_64::structures::paging::mapper::{MappedFrame, TranslateResult};
    let size = |addr: u64| match Translate::translate(&m, VirtAddr::new(addr)) {
        TranslateResult::Mapped {
            frame: MappedFrame::Size4KiB(_),
            ..
        } => 1,
        TranslateResult::Mapped {
            frame: MappedFrame::Size2MiB(_),
            ..
        } => 2,
        TranslateResult::Mapped {
            frame: MappedFrame::Size1GiB(_),
            ..
        } => 3,
        _ => 0,
    };
    assert_eq!(
        [
            size(0x40_1000),
            size(0x4000_0000),
            size(0x80_0000_0000),
            size(0x7000_0000)
        ],
        [1, 2, 3, 0]
    );
    for addr in [
        0x40_0000u64,
        0x40_1234,
        0x40_3000,
        0x4000_0000,
        0x401f_fff8,
        0x80_0000_0000,
        0x80_3fff_f000,
        0x7000_0000,
    ] {
        let a = VirtAddr::new(addr);
        // TranslateResult has no PartialEq: compare its Debug form.
        assert_eq!(
            format!("{:?}", Translate::translate(&m, a)),
            format!("{:?}", peer.translate(a)),
            "{addr:#x}"
        );
    }
}

/// `translate_addr` (the lean walk) agrees with `translate` on mapped and
/// unmapped addresses, over 4 KiB, 2 MiB and 1 GiB pages.
#[test]
fn translate_addr_agrees_with_translate() {
    let mem = EmulatedMemory::new(64);
    let mut a = mem.frame_allocator();
    let mut m = PageTables::new_empty(mem.phys_mem(), &mut a).unwrap();
    let maps = [
        (0x40_0000u64, 0x1000_0000u64, 3 * K4),
        (0x4000_0000, 0x2000_0000, 2 * M2),
        (0x80_0000_0000, 0x4000_0000, G1),
    ];
    for &(v, p, len) in &maps {
        // SAFETY: tables no CPU uses; the frames are numbers no Rust object uses.
        unsafe {
            m.map_range(
                VirtAddr::new(v),
                PhysAddr::new(p),
                len,
                MapFlags::READ,
                &mut a,
            )
        }
        .unwrap()
        .ignore();
    }
    let probes = [
        0x40_0000u64,
        0x40_1234,
        0x40_2fff,
        0x40_3000,
        0x4000_0000,
        0x4012_3456,
        0x403f_ffff,
        0x4040_0000,
        0x80_0000_0000,
        0x80_3fff_fff8,
        0x80_4000_0000,
        0x1000,
    ];
    for v in probes {
        let va = VirtAddr::new(v);
        assert_eq!(
            m.translate_addr(va),
            m.translate(va).ok().map(|t| t.phys),
            "{v:#x}"
        );
    }
}
