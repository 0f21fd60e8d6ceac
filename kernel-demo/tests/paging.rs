//! kmem::paging on real x86_64 paging: aliases, protection faults (write,
//! instruction fetch, unmapped), huge pages, table reclamation, and a
//! second address space switched to and back.
// kmem-vm: mem=128M
#![no_std]
#![no_main]

use kernel_demo::boot::phys_to_virt;
use kernel_demo::mm::memory::with_memory;
use kernel_demo::testing::{Expect, PageFaultErrorCode as Pf};
use kmem::paging::{AddressSpace, LeafSize, MapFlags, Mmu, PagingError};
use x86_64::structures::paging::{Page, PhysFrame, Size1GiB, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

/// PML4 slot 288: unused by the boot tables, so each test builds tables.
const AREA: u64 = 0xFFFF_9000_0000_0000;
/// Addresses each test owns inside AREA (2 MiB apart: separate tables).
const ALIAS_A: u64 = AREA;
const ALIAS_B: u64 = AREA + 0x20_0000;
const READ_ONLY: u64 = AREA + 0x40_0000;
const NO_EXEC: u64 = AREA + 0x60_0000;
const UNMAPPED: u64 = AREA + 0x80_0000;
const HUGE: u64 = AREA + 0x4000_0000;
const GIANT: u64 = AREA + 0x40_0000_0000;
/// A user-half address, identity-mapped in the boot tables.
const USER: u64 = 0x4000_0000;

fn page(addr: u64) -> Page<Size4KiB> {
    Page::containing_address(VirtAddr::new(addr))
}

/// The frame count with AREA's PDPT in place. Kernel-half PDPTs are kept
/// when they empty (other address spaces share them), so the first mapping
/// in AREA takes one table frame that never comes back; take it up front.
fn free_frames() -> u64 {
    with_memory(|m| {
        let probe = page(AREA + 0x7f_0000_0000);
        let frame = PhysFrame::containing_address(PhysAddr::new(0x100_0000));
        // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
        unsafe { m.mapper.map(probe, frame, MapFlags::READ, &mut m.frames) }
            .expect("probe")
            .ignore();
        // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
        unsafe { m.mapper.unmap(probe, &mut m.frames) }
            .expect("unmap probe")
            .1
            .flush(&mut m.mmu);
        assert!(m.mapper.translate(probe.start_address()).is_err());
        m.free_frames()
    })
}

/// Maps one fresh frame at `addr` with `flags`; returns the frame.
fn map_fresh(addr: u64, flags: MapFlags) -> PhysFrame {
    with_memory(|m| {
        let frame = m.frames.with(|f| f.allocate()).expect("a frame");
        // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
        unsafe { m.mapper.map(page(addr), frame, flags, &mut m.frames) }
            .expect("map")
            .flush(&mut m.mmu);
        frame
    })
}

fn read(addr: u64) -> u64 {
    // SAFETY: the callers map `addr` first (or expect the fault).
    unsafe { (addr as *const u64).read_volatile() }
}

fn write(addr: u64, value: u64) {
    // SAFETY: the callers map `addr` writable first (or expect the fault).
    unsafe { (addr as *mut u64).write_volatile(value) }
}

kernel_demo::test_kernel! {
    /// One frame at two virtual addresses: a write through either shows
    /// through the other and through the direct map; unmapping both gives
    /// every table frame back.
    fn alias_shows_writes_both_ways() {
        let free_before = free_frames();
        let frame = map_fresh(ALIAS_A, MapFlags::READ_WRITE);
        with_memory(|m| {
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            unsafe { m.mapper.map(page(ALIAS_B), frame, MapFlags::READ_WRITE, &mut m.frames) }.expect("alias").ignore();
        });
        write(ALIAS_A, 0x1111);
        assert_eq!(read(ALIAS_B), 0x1111);
        write(ALIAS_B + 8, 0x2222);
        assert_eq!(read(ALIAS_A + 8), 0x2222);
        let direct = phys_to_virt(frame.start_address().as_u64()).cast::<u64>();
        // SAFETY: the frame is ours and in the direct map.
        assert_eq!(unsafe { direct.add(1).read_volatile() }, 0x2222);
        with_memory(|m| {
            for a in [ALIAS_A, ALIAS_B] {
                // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
                let (f, flush) = unsafe { m.mapper.unmap(page(a), &mut m.frames) }.expect("unmap");
                flush.flush(&mut m.mmu);
                assert_eq!(f, frame);
            }
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            m.frames.with(|f| unsafe { f.free(frame) }).expect("free");
            assert_eq!(m.free_frames(), free_before, "table frames not returned");
        });
    }

    /// W+X is refused with a typed error and nothing is mapped.
    fn write_execute_refused() {
        with_memory(|m| {
            let free = m.free_frames();
            let frame = PhysFrame::containing_address(PhysAddr::new(0x100_0000));
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            let err = unsafe { m
                .mapper
                .map(page(AREA + 0x1_0000_0000), frame, MapFlags::READ_WRITE.executable(), &mut m.frames) }
                .expect_err("W+X must be refused");
            assert!(matches!(err, PagingError::WriteExecute { .. }), "{err:?}");
            assert!(m.mapper.translate(VirtAddr::new(AREA + 0x1_0000_0000)).is_err());
            assert_eq!(m.free_frames(), free);
        });
    }

    /// Read-only after protect: reads work, a write faults (present, write).
    #[should_fault(Expect::page_fault().at(READ_ONLY).with(Pf::CAUSED_BY_WRITE.union(Pf::PROTECTION_VIOLATION)))]
    fn write_to_read_only_faults() {
        map_fresh(READ_ONLY, MapFlags::READ_WRITE);
        write(READ_ONLY, 7);
        with_memory(|m| {
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            unsafe { m.mapper.protect(page(READ_ONLY), MapFlags::READ) }.expect("protect").flush(&mut m.mmu);
            let t = m.mapper.translate(VirtAddr::new(READ_ONLY)).expect("mapped");
            assert!(!t.access.writable);
        });
        assert_eq!(read(READ_ONLY), 7);
        write(READ_ONLY, 8);
    }

    /// Code runs from an executable page; after protect to NX, calling it
    /// faults as an instruction fetch.
    #[should_fault(Expect::page_fault().at(NO_EXEC).with(Pf::INSTRUCTION_FETCH.union(Pf::PROTECTION_VIOLATION)))]
    fn execute_non_executable_faults() {
        let frame = map_fresh(NO_EXEC, MapFlags::READ_EXEC);
        // `mov eax, 42; ret`, written through the direct map.
        let code = [0xb8, 42, 0, 0, 0, 0xc3];
        let dst = phys_to_virt(frame.start_address().as_u64());
        // SAFETY: the frame is ours and in the direct map.
        unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), dst, code.len()) };
        // SAFETY: the page holds the function above and is executable.
        let f: extern "C" fn() -> u32 = unsafe { core::mem::transmute(NO_EXEC as usize) };
        assert_eq!(f(), 42);
        // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
        with_memory(|m| unsafe { m.mapper.protect(page(NO_EXEC), MapFlags::READ) }.expect("protect").flush(&mut m.mmu));
        f();
    }

    /// After unmap (and its flush), a read faults: not present.
    #[should_fault(Expect::page_fault().at(UNMAPPED).without(Pf::PROTECTION_VIOLATION.union(Pf::CAUSED_BY_WRITE)))]
    fn read_after_unmap_faults() {
        map_fresh(UNMAPPED, MapFlags::READ_WRITE);
        write(UNMAPPED, 3);
        assert_eq!(read(UNMAPPED), 3);
        with_memory(|m| {
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            let (frame, flush) = unsafe { m.mapper.unmap(page(UNMAPPED), &mut m.frames) }.expect("unmap");
            flush.flush(&mut m.mmu);
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            m.frames.with(|f| unsafe { f.free(frame) }).expect("free");
        });
        read(UNMAPPED);
    }

    /// A 2 MiB-aligned range gets 2 MiB pages; a partial unmap splits one;
    /// unmapping the rest returns every table frame.
    fn huge_pages_split_and_reclaim() {
        let free = free_frames();
        with_memory(|m| {
            let run = m.frames.with(|f| f.allocate_contiguous(1024, 2 << 20, None)).expect("4 MiB run");
            let phys = run.start.start_address();
            let free_after_run = m.free_frames();
            let virt = VirtAddr::new(HUGE);
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            unsafe { m.mapper.map_range(virt, phys, 4 << 20, MapFlags::READ_WRITE, &mut m.frames) }.expect("map").flush(&mut m.mmu);
            let t = m.mapper.translate(virt + 0x1000u64).expect("mapped");
            assert_eq!(t.size, LeafSize::Size2MiB);
            write(HUGE + 0x20_0010, 0xfeed);
            // SAFETY: the run is ours and in the direct map.
            let direct = unsafe { phys_to_virt(phys.as_u64() + 0x20_0010).cast::<u64>().read_volatile() };
            assert_eq!(direct, 0xfeed);
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            unsafe { m.mapper.unmap_range(virt, 0x1000, &mut m.frames) }.expect("split").flush(&mut m.mmu);
            assert!(m.mapper.translate(virt).is_err());
            let t = m.mapper.translate(virt + 0x1000u64).expect("rest of the split page");
            assert_eq!((t.size, t.phys), (LeafSize::Size4KiB, phys + 0x1000u64));
            assert_eq!(read(HUGE + 0x20_0010), 0xfeed);
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            unsafe { m.mapper.unmap_range(virt, 4 << 20, &mut m.frames) }.expect("unmap").flush(&mut m.mmu);
            assert_eq!(m.free_frames(), free_after_run, "table frames not returned");
            // SAFETY: frames this test owns and no longer uses (the allocator's checks are what is tested).
            m.frames.with(|f| unsafe { f.free_range(run) }).expect("free run");
            assert_eq!(m.free_frames(), free);
        });
    }

    /// A 1 GiB page maps the first GiB of RAM read-only (when the CPU has
    /// 1 GiB pages); reads agree with the direct map.
    fn gigabyte_page_reads_ram() {
        if !kernel_demo::arch::cpu::has_1gib_pages() {
            return;
        }
        let free = free_frames();
        with_memory(|m| {
            let frame = PhysFrame::<Size1GiB>::containing_address(PhysAddr::new(0));
            let giant = Page::containing_address(VirtAddr::new(GIANT));
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            unsafe { m.mapper.map(giant, frame, MapFlags::READ, &mut m.frames) }.expect("map 1 GiB").flush(&mut m.mmu);
            let (image, _) = kernel_demo::boot::info().kernel_image();
            // SAFETY: both addresses map the same RAM, read-only here.
            let (a, b) = unsafe {
                ((GIANT + image) as *const u64).read_volatile();
                (((GIANT + image) as *const u64).read_volatile(), phys_to_virt(image).cast::<u64>().read_volatile())
            };
            assert_eq!(a, b);
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            let (_, flush) = unsafe { m.mapper.unmap(giant, &mut m.frames) }.expect("unmap");
            flush.flush(&mut m.mmu);
            assert_eq!(m.free_frames(), free);
        });
    }

    /// unmap_range of 4 MiB in 4 KiB pages gives back its page tables: the
    /// frame count proves it.
    fn unmap_range_returns_table_frames() {
        let free = free_frames();
        with_memory(|m| {
            let virt = VirtAddr::new(AREA + 0x2_0000_0000);
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            unsafe { m.mapper
                .map_range_with(virt, PhysAddr::new(0x100_0000), 4 << 20, MapFlags::READ, LeafSize::Size4KiB, &mut m.frames) }
                .expect("map")
                .flush(&mut m.mmu);
            let tables = free - m.free_frames();
            assert!(tables >= 3, "4 MiB of 4 KiB pages needs a PD and two PTs at least, took {tables}");
            assert_eq!(m.mapper.translate(virt + 0x3f_f000u64).expect("last page").phys, PhysAddr::new(0x13f_f000));
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            unsafe { m.mapper.unmap_range(virt, 4 << 20, &mut m.frames) }.expect("unmap").flush(&mut m.mmu);
            assert_eq!(m.free_frames(), free, "{tables} table frames taken, not all returned");
        });
    }

    /// A new address space shares the kernel half: the kernel keeps running
    /// after the switch, sees its own user mapping there, switches back, and
    /// destroying the space returns every frame.
    fn address_space_switch_and_back() {
        with_memory(|m| {
            let free = m.free_frames();
            let boot_pml4 = m.mmu.cr3();
            let mut space = AddressSpace::new(m.mapper, &mut m.frames).expect("new space");
            let frame = m.frames.with(|f| f.allocate()).expect("frame");
            // SAFETY: a user-half edit.
            let user_half = unsafe { space.mapper_mut() };
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            unsafe { user_half.map(page(USER), frame, MapFlags::READ_WRITE, &mut m.frames) }.expect("map").ignore();
            // SAFETY: the new space shares the kernel half (code, stack,
            // statics, direct map); it lives until after we switch back.
            unsafe { space.switch(&mut m.mmu) };
            assert_eq!(m.mmu.cr3(), space.pml4());
            write(USER, 0xabcd);
            assert_eq!(read(USER), 0xabcd);
            // SAFETY: back to the boot tables, which map everything in use.
            unsafe { m.mmu.set_cr3(boot_pml4) };
            // SAFETY: the frame is ours and in the direct map.
            let seen = unsafe { phys_to_virt(frame.start_address().as_u64()).cast::<u64>().read_volatile() };
            assert_eq!(seen, 0xabcd);
            let boot_view = m.mapper.translate(VirtAddr::new(USER)).expect("identity map");
            assert_eq!(boot_view.phys, PhysAddr::new(USER), "the user mapping leaked into the boot space");
            // SAFETY: it ran on this CPU only, back on the boot tables now; its
            // one mapped frame was allocated for it.
            let stats = unsafe { space.destroy(&m.mmu, &mut m.frames, true) }.map_err(|(_, e)| e).expect("destroy");
            assert_eq!(stats.mapped_frames, 1);
            assert!(stats.tables >= 4, "{stats:?}");
            assert_eq!(m.free_frames(), free, "frames of the address space not returned");
        });
    }
}
