//! The emulated TLB (`kmem::testing::tlb`) against kmem's own page tables: it keeps what it
//! cached until the flush that drops it, so each test here fails against a model that
//! walks the tables on every access.
//!
//! Run: `cargo test --features testing --test tlb_emul`.

use kmem::paging::{Flush, LeafSize, MapFlags, Mmu, PageTables};
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use kmem::testing::tlb::{AccessKind, InvlpgScope, TlbCpu};
use x86_64::structures::idt::PageFaultErrorCode as Code;
use x86_64::structures::paging::{FrameAllocator, PageTableFlags, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

type Tables<'m> = PageTables<EmulatedPhysMem<'m>>;

/// A 2 MiB-aligned region of the lower half.
const R: u64 = 0x4000_0000;
const MIB2: u64 = 2 << 20;

fn setup(mem: &EmulatedMemory) -> (EmulatedFrameAllocator, Tables<'_>) {
    let mut frames = mem.frame_allocator();
    let m = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    (frames, m)
}

fn map(
    m: &mut Tables<'_>,
    frames: &mut EmulatedFrameAllocator,
    va: u64,
    pa: u64,
    len: u64,
    flags: MapFlags,
) {
    // A new mapping over non-present entries needs no flush: the TLB never caches those.
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.map_range(VirtAddr::new(va), PhysAddr::new(pa), len, flags, frames) }
        .unwrap()
        .ignore();
}

fn read(cpu: &mut TlbCpu, m: &Tables<'_>, va: u64) -> Result<u64, Code> {
    touch(cpu, m, va, AccessKind::Read, false)
}

fn write(cpu: &mut TlbCpu, m: &Tables<'_>, va: u64) -> Result<u64, Code> {
    touch(cpu, m, va, AccessKind::Write, false)
}

/// One access: the physical address reached, or the fault's error code.
fn touch(
    cpu: &mut TlbCpu,
    m: &Tables<'_>,
    va: u64,
    kind: AccessKind,
    user: bool,
) -> Result<u64, Code> {
    cpu.access(m.phys_mem(), VirtAddr::new(va), kind, user)
        .map(|pa| pa.as_u64())
        .map_err(|f| f.error_code())
}

fn frame(pa: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(pa))
}

/// The leaf flags kmem's tables hold for `va`.
fn leaf_flags(m: &Tables<'_>, va: u64) -> PageTableFlags {
    m.translate(VirtAddr::new(va)).unwrap().flags
}

/// Entry of `va` in the table at `level` (4 = PML4) stored in `table`.
fn entry(mem: &EmulatedMemory, table: PhysFrame, va: u64, level: u32) -> PageTableFlags {
    let i = (va >> (12 + 9 * (level - 1))) & 511;
    PageTableFlags::from_bits_retain(mem.read_u64(table.start_address() + i * 8))
}

#[test]
fn a_cached_translation_outlives_an_unmap_until_its_invlpg() {
    let mem = EmulatedMemory::new(32);
    let (mut frames, mut m) = setup(&mem);
    let mut cpu = TlbCpu::new(m.pml4());
    let va = R + 0x3000;
    map(
        &mut m,
        &mut frames,
        va,
        0x8000_3000,
        4096,
        MapFlags::READ_WRITE,
    );
    assert_eq!(read(&mut cpu, &m, va + 8), Ok(0x8000_3008));

    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let flush = unsafe { m.unmap_range(VirtAddr::new(va), 4096, &mut frames) }.unwrap();
    assert!(m.translate(VirtAddr::new(va)).is_err());
    assert_eq!(
        read(&mut cpu, &m, va + 8),
        Ok(0x8000_3008),
        "served by the stale entry"
    );
    assert_eq!(cpu.stats().hits, 1);

    flush.flush(&mut cpu);
    let fault = cpu.access(m.phys_mem(), VirtAddr::new(va), AccessKind::Read, false);
    let fault = fault.unwrap_err();
    assert!(!fault.present && !fault.write && !fault.user);
    assert_eq!(fault.error_code(), Code::empty());
    assert_eq!(fault.addr, VirtAddr::new(va));
}

/// Maps two pages in the 2 MiB region at `R` and one in the next region (which keeps the
/// page directory alive), has `cpu` cache the first, then unmaps the whole region at `R`:
/// kmem frees its page table. Returns that frame and the flush kmem asked for.
fn free_a_cached_page_table(
    frames: &mut EmulatedFrameAllocator,
    m: &mut Tables<'_>,
    cpu: &mut TlbCpu,
) -> (PhysFrame, Flush) {
    map(
        m,
        frames,
        R + 0x1000,
        0x8000_1000,
        4096,
        MapFlags::READ_WRITE,
    );
    map(
        m,
        frames,
        R + 0x5000,
        0x8000_5000,
        4096,
        MapFlags::READ_WRITE,
    );
    map(m, frames, R + MIB2, 0x9000_0000, 4096, MapFlags::READ_WRITE);
    assert!(read(cpu, m, R + 0x1000).is_ok());
    let before = frames.allocated_frames();
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let flush = unsafe { m.unmap_range(VirtAddr::new(R), MIB2, frames) }.unwrap();
    let freed: Vec<_> = before
        .into_iter()
        .filter(|&f| !frames.is_allocated(f))
        .collect();
    assert_eq!(
        freed.len(),
        1,
        "only the page table of the region: {freed:?}"
    );
    assert!(
        cpu.holds_frame(freed[0]),
        "the cached PDE still points to it"
    );
    (freed[0], flush)
}

#[test]
fn a_freed_page_table_is_walked_until_an_invlpg_in_its_range() {
    let mem = EmulatedMemory::new(32);
    let (mut frames, mut m) = setup(&mem);
    let mut cpu = TlbCpu::new(m.pml4());
    let (table, flush) = free_a_cached_page_table(&mut frames, &mut m, &mut cpu);

    // The frame gets a new owner, who writes what looks like a present entry into it.
    assert_eq!(frames.allocate_frame(), Some(table));
    let forged = 0xdead_b000 | (PageTableFlags::PRESENT | PageTableFlags::WRITABLE).bits();
    mem.write_u64(
        table.start_address() + (((R + 0x5000) >> 12) & 511) * 8,
        forged,
    );
    assert!(m.translate(VirtAddr::new(R + 0x5000)).is_err());
    // The CPU reaches the forged entry through its cached PDE.
    assert_eq!(read(&mut cpu, &m, R + 0x5008), Ok(0xdead_b008));
    assert_eq!(cpu.last_walk(), [table, frame(0xdead_b000)]);

    // Address scope: an invlpg outside the region keeps the stale PDE ...
    cpu.invlpg(VirtAddr::new(R + MIB2));
    assert!(cpu.holds_frame(table));
    // ... one anywhere inside drops it.
    cpu.invlpg(VirtAddr::new(R + 0x10_0000));
    assert!(!cpu.holds_frame(table));
    // The leaf it produced is a leaf of its own, gone only with kmem's flush (which names it).
    assert_eq!(read(&mut cpu, &m, R + 0x5008), Ok(0xdead_b008));
    flush.flush(&mut cpu);
    let fault = read(&mut cpu, &m, R + 0x5008);
    assert_eq!(fault, Err(Code::empty()), "the PDE in memory is clear");
    assert!(!cpu.last_walk().contains(&table));
}

#[test]
fn with_the_sdm_scope_any_invlpg_drops_the_freed_page_table() {
    let mem = EmulatedMemory::new(32);
    let (mut frames, mut m) = setup(&mem);
    let mut cpu = TlbCpu::new(m.pml4()).with_scope(InvlpgScope::AllStructures);
    let (table, flush) = free_a_cached_page_table(&mut frames, &mut m, &mut cpu);
    cpu.invlpg(VirtAddr::new(R + MIB2));
    assert!(!cpu.holds_frame(table));
    // The cached leaf is not a paging-structure entry: only its own invlpg drops it.
    assert_eq!(read(&mut cpu, &m, R + 0x1000), Ok(0x8000_1000));
    flush.flush(&mut cpu);
    assert!(read(&mut cpu, &m, R + 0x1000).is_err());
}

#[test]
fn a_walk_through_a_stale_pde_faults_and_the_fault_drops_it() {
    let mem = EmulatedMemory::new(32);
    let (mut frames, mut m) = setup(&mem);
    let mut cpu = TlbCpu::new(m.pml4());
    let (table, _flush) = free_a_cached_page_table(&mut frames, &mut m, &mut cpu);
    // The freed table was left zeroed: the walk through it finds nothing present.
    assert_eq!(read(&mut cpu, &m, R + 0x5000), Err(Code::empty()));
    assert_eq!(cpu.last_walk(), [table], "read the freed table");
    assert!(
        !cpu.holds_frame(table),
        "a fault drops the entries of its address"
    );
    // The next walk of the region starts at CR3 and stops at the cleared PDE.
    assert!(read(&mut cpu, &m, R + 0x6000).is_err());
    assert_eq!(cpu.last_walk().len(), 3);
    assert!(!cpu.last_walk().contains(&table));
}

#[test]
fn a_write_through_a_clean_cached_entry_sets_dirty_in_memory() {
    let mem = EmulatedMemory::new(32);
    let (mut frames, mut m) = setup(&mem);
    let mut cpu = TlbCpu::new(m.pml4());
    let va = R + 0x1000;
    map(
        &mut m,
        &mut frames,
        va,
        0x8000_1000,
        4096,
        MapFlags::READ_WRITE,
    );
    assert!(read(&mut cpu, &m, va).is_ok());
    assert!(!leaf_flags(&m, va).contains(PageTableFlags::DIRTY));
    assert!(!cpu.cached(VirtAddr::new(va)).unwrap().dirty);

    assert_eq!(write(&mut cpu, &m, va + 16), Ok(0x8000_1010));
    assert!(leaf_flags(&m, va).contains(PageTableFlags::DIRTY));
    assert!(cpu.cached(VirtAddr::new(va)).unwrap().dirty);
    let stats = cpu.stats();
    assert_eq!(
        (stats.misses, stats.walks, stats.hits),
        (1, 2, 0),
        "{stats:?}"
    );
    // Now dirty in the TLB: later writes need no walk.
    assert!(write(&mut cpu, &m, va).is_ok());
    assert_eq!((cpu.stats().walks, cpu.stats().hits), (2, 1));

    // A clean cached entry whose page was unmapped without a flush: the write's walk
    // finds nothing.
    let other = R + 0x2000;
    map(
        &mut m,
        &mut frames,
        other,
        0x8000_2000,
        4096,
        MapFlags::READ_WRITE,
    );
    assert!(read(&mut cpu, &m, other).is_ok());
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let _stale = unsafe { m.unmap_range(VirtAddr::new(other), 4096, &mut frames) }.unwrap();
    assert!(read(&mut cpu, &m, other).is_ok(), "reads still hit");
    assert_eq!(write(&mut cpu, &m, other), Err(Code::CAUSED_BY_WRITE));
}

#[test]
fn a_stale_dirty_entry_writes_to_a_page_made_read_only_but_a_clean_one_faults() {
    let mem = EmulatedMemory::new(32);
    let (mut frames, mut m) = setup(&mem);
    let mut cpu = TlbCpu::new(m.pml4());
    let (dirty, clean) = (R + 0x1000, R + 0x2000);
    map(
        &mut m,
        &mut frames,
        dirty,
        0x8000_1000,
        0x2000,
        MapFlags::READ_WRITE,
    );
    assert!(write(&mut cpu, &m, dirty).is_ok());
    assert!(read(&mut cpu, &m, clean).is_ok());
    let ro = MapFlags::READ;
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let flush_dirty =
        unsafe { m.protect_range(VirtAddr::new(dirty), 4096, ro, &mut frames) }.unwrap();
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let _flush_clean =
        unsafe { m.protect_range(VirtAddr::new(clean), 4096, ro, &mut frames) }.unwrap();

    // What a real CPU does with a stale writable, dirty entry: the write goes through.
    assert_eq!(write(&mut cpu, &m, dirty), Ok(0x8000_1000));
    // A clean one must set Dirty, walks, and finds the page read-only.
    let fault = cpu.access(m.phys_mem(), VirtAddr::new(clean), AccessKind::Write, false);
    let fault = fault.unwrap_err();
    assert!(fault.present && fault.write);
    assert_eq!(
        fault.error_code(),
        Code::PROTECTION_VIOLATION | Code::CAUSED_BY_WRITE
    );
    assert!(
        cpu.cached(VirtAddr::new(clean)).is_none(),
        "the fault dropped it"
    );
    assert!(!leaf_flags(&m, clean).contains(PageTableFlags::DIRTY));

    flush_dirty.flush(&mut cpu);
    let code = write(&mut cpu, &m, dirty);
    assert_eq!(
        code,
        Err(Code::PROTECTION_VIOLATION | Code::CAUSED_BY_WRITE)
    );
}

#[test]
fn first_accesses_set_accessed_on_every_level_and_dirty_on_writes_only() {
    let mem = EmulatedMemory::new(32);
    let (mut frames, mut m) = setup(&mem);
    let mut cpu = TlbCpu::new(m.pml4());
    let (w, r) = (R + 0x1000, R + 0x2000);
    map(
        &mut m,
        &mut frames,
        w,
        0x8000_1000,
        0x2000,
        MapFlags::READ_WRITE,
    );
    let a = PageTableFlags::ACCESSED;
    let d = PageTableFlags::DIRTY;
    assert!(!leaf_flags(&m, w).intersects(a | d));

    assert!(write(&mut cpu, &m, w).is_ok());
    let walk = cpu.last_walk().to_vec();
    assert_eq!(
        walk.len(),
        5,
        "PML4, PDPT, PD, page table, the page: {walk:?}"
    );
    assert_eq!(walk[0], m.pml4());
    for (table, level) in walk[..4].iter().zip((1..=4).rev()) {
        let e = entry(&mem, *table, w, level);
        assert!(e.contains(a), "level {level}: {e:?}");
        assert_eq!(e.contains(d), level == 1, "level {level}: {e:?}");
    }
    assert!(read(&mut cpu, &m, r).is_ok());
    assert_eq!(
        cpu.last_walk(),
        [walk[3], frame(0x8000_2000)],
        "from the cached PDE"
    );
    let flags = leaf_flags(&m, r);
    assert!(flags.contains(a) && !flags.contains(d), "{flags:?}");
}

#[test]
fn set_cr3_and_flush_all_drop_everything() {
    let mem = EmulatedMemory::new(32);
    let (mut frames, mut m) = setup(&mem);
    let mut cpu = TlbCpu::new(m.pml4());
    map(
        &mut m,
        &mut frames,
        R,
        0x8000_0000,
        0x3000,
        MapFlags::READ_WRITE,
    );
    map(
        &mut m,
        &mut frames,
        R + (1 << 30),
        0x9000_0000,
        0x1000,
        MapFlags::READ,
    );
    fn touch_all(cpu: &mut TlbCpu, m: &Tables<'_>) {
        for va in [R, R + 0x1000, R + 0x2000, R + (1 << 30)] {
            assert!(read(cpu, m, va).is_ok());
        }
        // A PML4E, two PDPTEs and two PDEs.
        assert_eq!((cpu.leaf_count(), cpu.structure_count()), (4, 5));
    }
    touch_all(&mut cpu, &m);
    cpu.flush_all();
    assert_eq!((cpu.leaf_count(), cpu.structure_count()), (0, 0));
    assert!(!cpu.holds_frame(frame(0x8000_0000)));
    assert_eq!(cpu.stats().flushes, 1);

    touch_all(&mut cpu, &m);
    let empty = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    // SAFETY: an emulated CPU runs no code through its tables.
    unsafe { cpu.set_cr3(empty.pml4()) };
    assert_eq!(cpu.cr3(), empty.pml4());
    assert_eq!((cpu.leaf_count(), cpu.structure_count()), (0, 0));
    assert_eq!(read(&mut cpu, &empty, R), Err(Code::empty()));
    assert_eq!(cpu.last_walk(), [empty.pml4()]);
    assert_eq!(cpu.stats().flushes, 2);
}

#[test]
fn holds_frame_sees_leaf_and_table_frames() {
    let mem = EmulatedMemory::new(32);
    let (mut frames, mut m) = setup(&mem);
    let mut cpu = TlbCpu::new(m.pml4());
    let va = R + 0x7000;
    map(
        &mut m,
        &mut frames,
        va,
        0x8000_7000,
        4096,
        MapFlags::READ_WRITE,
    );
    assert!(!cpu.holds_frame(frame(0x8000_7000)));
    assert!(read(&mut cpu, &m, va).is_ok());
    let walk = cpu.last_walk().to_vec();
    assert_eq!(walk[4], frame(0x8000_7000));
    for &f in &walk {
        assert!(cpu.holds_frame(f), "{f:?}");
    }
    for &table in &walk[..4] {
        assert!(frames.is_allocated(table), "{table:?}");
    }
    assert!(!cpu.holds_frame(frame(0x8000_8000)));
    assert!(!cpu.holds_frame(frame(0x8000_6000)));

    cpu.invlpg(VirtAddr::new(va));
    assert!(cpu.holds_frame(m.pml4()), "CR3 is in use while loaded");
    for &f in &walk[1..] {
        assert!(!cpu.holds_frame(f), "{f:?}");
    }
}

#[test]
fn a_2mib_leaf_is_cached_once_and_any_invlpg_inside_drops_it() {
    let mem = EmulatedMemory::new(32);
    let (mut frames, mut m) = setup(&mem);
    let mut cpu = TlbCpu::new(m.pml4());
    let pa = 0x8020_0000;
    map(&mut m, &mut frames, R, pa, MIB2, MapFlags::READ_WRITE);
    assert_eq!(read(&mut cpu, &m, R + 0x1234), Ok(pa + 0x1234));
    assert_eq!(cpu.last_walk().len(), 4, "PML4, PDPT, PD, the page");
    let leaf = cpu.cached(VirtAddr::new(R + 0x1f_f000)).unwrap();
    assert_eq!(leaf.size, LeafSize::Size2MiB);
    assert_eq!(
        (leaf.page, leaf.frame),
        (VirtAddr::new(R), PhysAddr::new(pa))
    );
    assert!(cpu.holds_frame(frame(pa + 0x1f_f000)));
    assert!(!cpu.holds_frame(frame(pa + MIB2)));
    assert_eq!(read(&mut cpu, &m, R + 0x1f_fff8), Ok(pa + 0x1f_fff8));
    assert_eq!(cpu.stats().hits, 1);

    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    let flush = unsafe { m.unmap_range(VirtAddr::new(R), MIB2, &mut frames) }.unwrap();
    assert_eq!(flush.pages().collect::<Vec<_>>(), [VirtAddr::new(R)]);
    assert_eq!(read(&mut cpu, &m, R + 0x8_0000), Ok(pa + 0x8_0000), "stale");
    cpu.invlpg(VirtAddr::new(R + 0x1a_b000));
    assert!(cpu.cached(VirtAddr::new(R)).is_none());
    assert!(!cpu.holds_frame(frame(pa)));
    assert_eq!(read(&mut cpu, &m, R + 0x8_0000), Err(Code::empty()));
}

#[test]
fn faults_carry_the_x86_error_code() {
    let mem = EmulatedMemory::new(32);
    let (mut frames, mut m) = setup(&mem);
    let mut cpu = TlbCpu::new(m.pml4());
    let (kernel, user) = (R + 0x1000, R + 0x2000);
    map(
        &mut m,
        &mut frames,
        kernel,
        0x8000_1000,
        4096,
        MapFlags::READ_WRITE,
    );
    let user_code = MapFlags::READ.user().executable();
    map(&mut m, &mut frames, user, 0x8000_2000, 4096, user_code);
    let (p, w, u, i) = (
        Code::PROTECTION_VIOLATION,
        Code::CAUSED_BY_WRITE,
        Code::USER_MODE,
        Code::INSTRUCTION_FETCH,
    );

    // Cached by a supervisor read, refused to CPL 3 from the cache without a walk.
    assert!(read(&mut cpu, &m, kernel).is_ok());
    let walks = cpu.stats().walks;
    assert_eq!(
        touch(&mut cpu, &m, kernel, AccessKind::Read, true),
        Err(p | u)
    );
    assert_eq!(cpu.stats().walks, walks);
    assert!(cpu.last_walk().is_empty());
    assert_eq!(
        touch(&mut cpu, &m, kernel, AccessKind::Exec, false),
        Err(p | i)
    );
    assert_eq!(
        touch(&mut cpu, &m, kernel, AccessKind::Write, true),
        Err(p | w | u)
    );
    // CR0.WP: the supervisor may not write a read-only page either.
    assert_eq!(write(&mut cpu, &m, user), Err(p | w));
    assert_eq!(
        touch(&mut cpu, &m, user, AccessKind::Exec, true),
        Ok(0x8000_2000)
    );
    assert_eq!(read(&mut cpu, &m, user), Ok(0x8000_2000), "SMAP is off");
    assert_eq!(
        touch(&mut cpu, &m, R + 0x3000, AccessKind::Exec, true),
        Err(u | i)
    );
    assert_eq!(cpu.stats().faults, 5);
}
