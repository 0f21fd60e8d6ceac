//! The README's "Use kmem in your kernel": a kernel booted by GRUB through
//! Multiboot2 adopts kmem's frames, paging and heap with the glue in
//! `kernel-demo/adopt/memory.rs` (the README's code, checked equal by a
//! host test), then runs blog_os's paging code on kmem's mapper.
// kmem-vm: mem=128M boot=grub
#![no_std]
#![no_main]

extern crate alloc;

#[path = "../adopt/memory.rs"]
mod memory;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use kernel_demo::boot::{self, Protocol, DIRECT_MAP};
use kmem::paging::{OffsetPhysMem, PageTables, X86Mapper};
use kmem::x86_64::structures::paging::mapper::Translate;
use kmem::x86_64::structures::paging::{
    FrameAllocator, Mapper as _, Page, PageTableFlags, PhysFrame, Size4KiB,
};
use kmem::x86_64::{PhysAddr, VirtAddr};
use memory::{FRAMES, MAPPER};

/// Runs the README's `init_memory` once, with what this kernel's boot code knows.
fn ready() {
    static DONE: kmem::spin::Once<()> = kmem::spin::Once::new();
    DONE.call_once(|| {
        let info = boot::info();
        // SAFETY: GRUB's information is reserved below and stays in the direct map.
        let mbi = unsafe {
            multiboot2::BootInformation::load(
                boot::phys_to_virt(info.boot_info_addr).cast::<multiboot2::BootInformationHeader>(),
            )
        }
        .expect("Multiboot2 information");
        let (image_start, image_end) = info.kernel_image();
        let mut reserved = [
            (0, 1 << 20),
            (image_start, image_end - image_start),
            (0, 0),
            (0, 0),
            (0, 0),
        ];
        reserved[2..].copy_from_slice(&info.boot_data());
        // SAFETY: once (in `call_once`); the boot code maps all RAM at
        // DIRECT_MAP and set EFER.NXE; the heap's slot 384 is reached by no
        // table of the boot tables' aliased identity/direct-map PDPT.
        unsafe { memory::init_memory(&mbi, VirtAddr::new(DIRECT_MAP), &reserved) }
            .expect("init_memory");
    });
}

fn free_frames() -> u64 {
    FRAMES.with(|f| f.stats().free)
}

/// blog_os's `create_example_mapping`, unchanged.
fn create_example_mapping(
    page: Page,
    mapper: &mut impl kmem::x86_64::structures::paging::Mapper<Size4KiB>,
    frame_allocator: &mut impl FrameAllocator<Size4KiB>,
) {
    let frame = PhysFrame::containing_address(PhysAddr::new(0xb8000));
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    // SAFETY: blog_os's example: the VGA text buffer, used by nothing else here.
    let map_to_result = unsafe { mapper.map_to(page, frame, flags, frame_allocator) };
    map_to_result.expect("map_to failed").flush();
}

kernel_demo::test_kernel! {
    own_heap;

    /// GRUB booted the kernel; the frames came from its Multiboot2 map.
    fn booted_by_grub_with_its_memory_map() {
        ready();
        assert_eq!(boot::info().protocol, Protocol::Multiboot2);
        let total = FRAMES.with(|f| f.stats().total);
        assert!(total > (100 << 20) / 4096 && total <= (128 << 20) / 4096, "{total} frames");
    }

    /// Box, Vec and BTreeMap live on kmem's heap, fed by FRAMES through MAPPER.
    fn the_heap_serves_collections() {
        ready();
        let before = free_frames();
        let squares: Vec<u64> = (0..200_000).map(|i| i * i).collect();
        assert!(free_frames() + 300 < before, "the heap took frames to grow");
        let mut words = BTreeMap::new();
        for w in "the quick brown fox jumps over the lazy dog the end".split(' ') {
            *words.entry(alloc::string::String::from(w)).or_insert(0) += 1;
        }
        assert_eq!(words["the"], 3);
        assert_eq!(squares[199_999], 199_999 * 199_999);
        let boxed = alloc::boxed::Box::new([7u8; 100]);
        assert_eq!(boxed.iter().map(|&b| b as u32).sum::<u32>(), 700);
    }

    /// Freed heap memory goes back to the frame allocator (up to the heap's
    /// hysteresis of 512 KiB plus slab spans).
    fn the_heap_gives_frames_back() {
        ready();
        let before = free_frames();
        let big: Vec<u8> = alloc::vec![1; 8 << 20];
        assert!(free_frames() + 2048 <= before);
        assert_eq!(big.iter().map(|&b| b as usize).sum::<usize>(), 8 << 20);
        drop(big);
        let after = free_frames();
        assert!(after + 200 >= before, "free frames {before} -> {after}");
    }

    /// Frames never come from the low 1 MiB, the kernel image or GRUB's data.
    fn reserved_ranges_are_never_handed_out() {
        ready();
        let mut taken = Vec::with_capacity(40_000);
        while let Some(frame) = FRAMES.with(|f| f.allocate().ok()) {
            taken.push(frame);
        }
        let (image_start, image_end) = boot::info().kernel_image();
        let bad = |a: u64| a < 1 << 20 || (image_start..image_end).contains(&a)
            || boot::info().boot_data().iter().any(|&(s, l)| (s..s + l).contains(&a));
        let wrong = taken.iter().filter(|f| bad(f.start_address().as_u64())).count();
        let n = taken.len();
        for frame in taken {
            // SAFETY: a frame this test owns and no longer uses (the allocator's checks are what is tested).
            FRAMES.with(|f| unsafe { f.free(frame) }).expect("free");
        }
        assert!(n > 20_000, "{n} frames");
        assert_eq!(wrong, 0);
    }

    /// blog_os's `translate_addr` works on the active mapper (x86_64's `Translate`).
    fn translate_addr_on_the_active_tables() {
        ready();
        static PROBE: u64 = 42;
        let virt = VirtAddr::from_ptr(&PROBE);
        let phys = MAPPER.get().expect("mapper").lock().translate_addr(virt).expect("mapped");
        let (image_start, image_end) = boot::info().kernel_image();
        assert!((image_start..image_end).contains(&phys.as_u64()));
        // SAFETY: reading the probe's frame through the direct map.
        let through_direct_map = unsafe { *boot::phys_to_virt(phys.as_u64()).cast::<u64>() };
        assert_eq!(through_direct_map, 42);
    }

    /// blog_os's `create_example_mapping` runs unchanged on kmem's mapper.
    fn create_example_mapping_on_kmem() {
        ready();
        let before = free_frames();
        // SAFETY: RAM is mapped at DIRECT_MAP for good.
        let phys = unsafe { OffsetPhysMem::new(VirtAddr::new(DIRECT_MAP)) };
        let mut frames = &FRAMES;
        let mut mapper = X86Mapper::new(PageTables::new_empty(phys, &mut frames).expect("pml4"));
        let page = Page::containing_address(VirtAddr::new(0xdeadbeaf000));
        create_example_mapping(page, &mut mapper, &mut frames);
        assert_eq!(
            mapper.translate_addr(VirtAddr::new(0xdeadbeaf8a0)),
            Some(PhysAddr::new(0xb88a0))
        );
        let (frame, flush) = mapper.unmap(page).expect("unmap");
        flush.flush();
        assert_eq!(frame.start_address().as_u64(), 0xb8000);
        let (pml4, _) = mapper.into_inner(&mut frames).into_parts();
        // SAFETY: the hierarchy is empty again and was never active.
        unsafe { kmem::x86_64::structures::paging::FrameDeallocator::deallocate_frame(&mut frames, pml4) };
        assert_eq!(free_frames(), before, "tables and the PML4 are back");
    }
}
