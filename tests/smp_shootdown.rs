//! TLB shootdown on the host: one IPI round per batch, and frames (page
//! tables included) recycled only after every CPU acknowledged.
//!
//! Run: `cargo test --test smp_shootdown`.

use std::cell::Cell;

use kmem::frame::{BitmapFrameAllocator, LockedFrameAllocator, NoInterruptMask};
use kmem::memory_map::{MemoryMap, Region, RegionKind};
use kmem::paging::{Flush, MapFlags, PageTables};
use kmem::smp::{ActiveCpus, CpuSet, DeferredFrees, PerCpuFrames, UniCpu};
use kmem::testing::mmu::{MmuOp, RecordingMmu};
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use kmem::testing::smp::RecordingShootdown;
use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

fn shared(ram: &EmulatedMemory) -> LockedFrameAllocator<'static, NoInterruptMask> {
    let (start, end) = (ram.start().as_u64(), ram.end().as_u64());
    let map: MemoryMap =
        MemoryMap::from_regions([Region::new(start, end - start, RegionKind::Usable)]).unwrap();
    let storage = vec![0u64; BitmapFrameAllocator::storage_words(&map)].leak();
    let map = Box::leak(Box::new(map));
    // SAFETY: the map's memory is this test's alone, handed out by this allocator only.
    LockedFrameAllocator::new(unsafe { BitmapFrameAllocator::new(map, storage) }.unwrap())
}

fn only(cpu: usize) -> CpuSet {
    let mut set = CpuSet::empty();
    set.insert(cpu);
    set
}

fn used(frames: &LockedFrameAllocator<'_, NoInterruptMask>) -> u64 {
    frames.with(|a| a.stats().used)
}

/// Unmapping a range that empties page tables: the tables go back to the
/// allocator only after the one shootdown round, which reached every other
/// CPU of the address space.
#[test]
fn range_unmap_frees_tables_after_the_acks() {
    let ram = EmulatedMemory::new(256);
    let frames = shared(&ram);
    let mut source = &frames;
    let mut m = PageTables::new_empty(ram.phys_mem(), &mut source).unwrap();
    // 4 MiB of 4 KiB pages (the physical side is not 2 MiB aligned), two page tables.
    let virt = VirtAddr::new(0x4000_1000);
    let len = 4 << 20;
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe {
        m.map_range(
            virt,
            PhysAddr::new(0x8000_1000),
            len,
            MapFlags::READ_WRITE,
            &mut source,
        )
    }
    .unwrap()
    .ignore();
    let before = used(&frames);
    assert!(before >= 5, "PML4, PDPT, PD, page tables: {before}");

    let space = ActiveCpus::new();
    [0, 1, 3].into_iter().for_each(|c| space.enter(c));
    let rounds = Cell::new(0);
    let mut ipis = RecordingShootdown::with_check(|cpus, flush| {
        // The other CPUs have not acknowledged yet: nothing was recycled.
        assert_eq!(used(&frames), before, "a table was freed before the acks");
        assert_eq!(cpus.iter().collect::<Vec<_>>(), [0, 3]);
        assert!(flush.is_full(), "a 1024-page range is one full flush");
        rounds.set(rounds.get() + 1);
    });
    let mut deferred = DeferredFrees::<_, 16>::new(&mut source);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let flush = unsafe { m.unmap_range(virt, len, &mut deferred) }.unwrap();
    let held = deferred.len();
    assert!(held >= 3, "page tables, PD and PDPT emptied: {held}");
    assert_eq!(used(&frames), before);

    let mut mmu = RecordingMmu::new(m.pml4());
    let report = deferred.complete(flush, &mut mmu, 1, space.snapshot(), &mut ipis);
    assert_eq!(rounds.get(), 1, "one IPI round for the whole range");
    assert_eq!(
        (report.released, report.leaked, report.rounds),
        (held, 0, 1)
    );
    assert_eq!(report.acked.iter().collect::<Vec<_>>(), [0, 3]);
    assert_eq!(mmu.ops(), [MmuOp::FlushAll], "flushed locally too");
    assert_eq!(used(&frames), before - held as u64);
    assert_eq!(used(&frames), 1, "only the PML4 is left");
}

/// Single-page unmaps batched into one token: one round, every page
/// invalidated, and the leaf frames (from per-CPU caches) recycled only
/// after it.
#[test]
fn batched_page_unmaps_one_round_leaf_frames_after_the_acks() {
    let ram = EmulatedMemory::new(256);
    let frames = shared(&ram);
    let cache: PerCpuFrames<'_, '_, _, _, 4> =
        PerCpuFrames::new(&frames, UniCpu::<NoInterruptMask>::new());
    let mut source = &cache;
    let mut m = PageTables::new_empty(ram.phys_mem(), &mut source).unwrap();
    let pages: Vec<Page<Size4KiB>> = (0..8)
        .map(|i| Page::containing_address(VirtAddr::new(0x10_0000 + i * 0x1000)))
        .collect();
    for &p in &pages {
        let leaf = cache.allocate().unwrap();
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map(p, leaf, MapFlags::READ_WRITE, &mut source) }
            .unwrap()
            .ignore();
    }
    let cached_before = cache.stats().cached;

    let mut ipis = RecordingShootdown::with_check(|_, flush| {
        assert_eq!(
            cache.stats().cached,
            cached_before,
            "a frame was recycled before the acks"
        );
        assert_eq!(flush.pages().count(), 8);
    });
    let mut deferred = DeferredFrees::<_, 32>::new(&mut source);
    let mut flush = Flush::none();
    for &p in &pages {
        // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        let (leaf, f) = unsafe { m.unmap(p, &mut deferred) }.unwrap();
        // SAFETY: the leaf frame was just unmapped; `flush` covers it.
        unsafe { deferred.defer(leaf) }.unwrap();
        flush = flush.combine(f);
    }
    assert_eq!(deferred.len(), 8 + 3, "the leaves, then PT, PD and PDPT");
    let mut mmu = RecordingMmu::new(m.pml4());
    let report = deferred.complete(flush, &mut mmu, 2, CpuSet::first(4), &mut ipis);
    assert_eq!(ipis.rounds().len(), 1);
    assert_eq!(ipis.rounds()[0].0, CpuSet::first(4).without(2));
    assert_eq!(mmu.invlpg_count(), 8);
    assert_eq!(report.released, 11);
    assert_eq!(cache.stats().cached, cached_before + 11);
}

/// Fresh page tables over `ram` with one read-only page mapped at 2 MiB.
fn one_page_mapped(
    ram: &EmulatedMemory,
) -> (
    EmulatedFrameAllocator,
    PageTables<EmulatedPhysMem<'_>>,
    Page<Size4KiB>,
) {
    let mut frames = ram.frame_allocator();
    let mut m = PageTables::new_empty(ram.phys_mem(), &mut frames).unwrap();
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(0x20_0000));
    let frame = PhysFrame::containing_address(PhysAddr::new(0x5000));
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.map(page, frame, MapFlags::READ, &mut frames) }
        .unwrap()
        .ignore();
    (frames, m, page)
}

/// No other CPU in the set: a local flush and no IPI; nothing to flush:
/// neither.
#[test]
fn local_only_and_empty_flushes_send_no_ipi() {
    let ram = EmulatedMemory::new(64);
    let (mut frames, mut m, page) = one_page_mapped(&ram);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let (_, flush) = unsafe { m.unmap(page, &mut frames) }.unwrap();
    let mut mmu = RecordingMmu::new(m.pml4());
    let mut ipis = RecordingShootdown::new();
    let acked = flush.shoot(&mut mmu, 5, only(5), &mut ipis);
    assert_eq!((acked.rounds(), acked.cpus()), (0, CpuSet::empty()));
    assert_eq!(mmu.invlpg_count(), 1);
    let acked = Flush::none().shoot(&mut mmu, 0, CpuSet::first(8), &mut ipis);
    assert_eq!(acked.rounds(), 0);
    assert!(ipis.rounds().is_empty());
    assert_eq!(mmu.ops().len(), 1);
}

/// A deferred-free queue that overflows never recycles what did not fit.
#[test]
fn deferred_overflow_leaks_instead_of_recycling() {
    let ram = EmulatedMemory::new(64);
    let (mut frames, mut m, page) = one_page_mapped(&ram);
    let in_use = frames.in_use();
    let mut deferred = DeferredFrees::<_, 1>::new(&mut frames);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let (_, flush) = unsafe { m.unmap(page, &mut deferred) }.unwrap();
    let mut mmu = RecordingMmu::new(m.pml4());
    let report = deferred.complete(
        flush,
        &mut mmu,
        0,
        CpuSet::first(2),
        &mut RecordingShootdown::new(),
    );
    assert_eq!((report.released, report.leaked), (1, 2));
    assert_eq!(frames.in_use(), in_use - 1);
}

/// `ActiveCpus` from several threads at once.
#[test]
fn active_cpus_concurrent_enter_leave() {
    let space = ActiveCpus::new();
    std::thread::scope(|s| {
        for t in 0..4 {
            let space = &space;
            s.spawn(move || {
                for cpu in (t..256).step_by(4) {
                    for _ in 0..100 {
                        space.enter(cpu);
                        assert!(space.snapshot().contains(cpu));
                        space.leave(cpu);
                    }
                    if cpu % 3 == 0 {
                        space.enter(cpu);
                    }
                }
            });
        }
    });
    let expected: Vec<usize> = (0..256).filter(|c| c % 3 == 0).collect();
    assert_eq!(space.snapshot().iter().collect::<Vec<_>>(), expected);
}
