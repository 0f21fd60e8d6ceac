//! The whole stack, as the demo builds it: kmem's frames, kmem's own kernel
//! address space (direct map, W^X image, guarded stack, no identity map)
//! and the kmem heap as `#[global_allocator]`. Protection faults, the W^X
//! audit, address spaces, and the heap's workloads, growth, shrink, OOM
//! and leak report.
// kmem-vm: mem=128M mem=4G
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::Layout;
use kernel_demo::boot::image::segments;
use kernel_demo::mm::heap::HEAP;
use kernel_demo::mm::kernel_space::{enter, STACK_GUARD};
use kernel_demo::mm::memory::with_memory;
use kernel_demo::testing::{Expect, PageFaultErrorCode as Pf};
use kmem::paging::{AddressSpace, MapFlags};
use x86_64::structures::paging::frame::PhysFrameRange;
use x86_64::structures::paging::Page;
use x86_64::VirtAddr;

fn heap_pages() -> usize {
    HEAP.stats().expect("heap initialised").pages_held
}

fn free_frames() -> u64 {
    with_memory(|m| m.free_frames())
}

/// Overflows the stack: each frame keeps 1 KiB alive across the call.
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let buf = core::hint::black_box([depth as u8; 1024]);
    recurse(depth + 1) + u64::from(buf[7])
}

kernel_demo::test_kernel! {
    setup = enter;

    /// The identity map is gone: low addresses are unmapped.
    fn identity_map_dropped() {
        with_memory(|m| {
            assert!(m.mapper.translate(VirtAddr::new(0x20_0000)).is_err());
            assert!(m.mapper.translate(VirtAddr::new(0x1000)).is_err());
        });
    }

    /// The boot segment (boot page tables, entry code, boot GDT) is back in
    /// the frame allocator: counted as usable, not as a hole or reserved.
    fn boot_segment_released() {
        let (start, end) = kernel_demo::boot::info().boot_segment();
        let frames = (end - start) / 4096;
        // 64 boot page directories alone take 64 frames.
        assert!(frames > 64, "boot segment of {frames} frames");
        assert_eq!(kernel_demo::mm::memory::boot_frames_released(), frames);
        let map = kernel_demo::mm::memory::memory_map(kernel_demo::boot::info()).unwrap();
        let usable: u64 = map
            .regions()
            .iter()
            .filter(|r| r.kind == kmem::memory_map::RegionKind::Usable)
            .map(|r| r.len / 4096)
            .sum();
        let total = kernel_demo::mm::memory::FRAMES.with(|f| f.stats().total);
        assert_eq!(total, usable + frames);
    }

    /// Reading a low physical address as virtual faults: nothing is there.
    #[should_fault(Expect::page_fault().at(0x20_0000).without(Pf::PROTECTION_VIOLATION))]
    fn low_memory_read_faults() {
        // SAFETY: deliberately faults.
        core::hint::black_box(unsafe { (0x20_0000 as *const u64).read_volatile() });
    }

    /// No live mapping is both writable and executable, and the text
    /// section is executable but not writable.
    fn wx_audit_finds_none() {
        let text = segments()[0];
        let (mut wx, mut text_ok, mut leaves) = (0, 0, 0);
        with_memory(|m| {
            m.mapper.for_each_leaf(|leaf| {
                leaves += 1;
                let a = leaf.access;
                wx += usize::from(a.writable && a.executable);
                if text.contains_addr(leaf.page.as_u64()) {
                    text_ok += usize::from(a.executable && !a.writable);
                }
            });
        });
        assert_eq!(wx, 0, "writable+executable mappings found");
        assert_eq!(text_ok as u64, text.len() / 4096, "text pages not R+X");
        assert!(leaves > 100);
    }

    /// Writing to kernel text faults (present, write).
    #[should_fault(Expect::page_fault().with(Pf::CAUSED_BY_WRITE.union(Pf::PROTECTION_VIOLATION)))]
    fn write_to_kernel_text_faults() {
        let text = wx_audit_finds_none as fn() as usize as *mut u8;
        // SAFETY: deliberately faults: text is read-only.
        unsafe { text.write_volatile(0xcc) };
    }

    /// Code placed on the heap cannot run: the heap is non-executable.
    #[should_fault(Expect::page_fault().with(Pf::INSTRUCTION_FETCH.union(Pf::PROTECTION_VIOLATION)))]
    fn execute_from_heap_faults() {
        let code = Box::new([0xc3u8; 16]); // `ret`
        // SAFETY: deliberately faults on the fetch: heap pages are NX.
        let f: extern "C" fn() = unsafe { core::mem::transmute(code.as_ptr()) };
        f();
    }

    /// Running off the kernel stack hits the guard page; the page fault
    /// cannot be delivered on that stack, so the CPU raises a double fault,
    /// handled on its own IST stack.
    #[should_fault(Expect::double_fault())]
    fn stack_guard_page_hit() {
        with_memory(|m| assert!(m.mapper.translate(VirtAddr::new(STACK_GUARD)).is_err()));
        core::hint::black_box(recurse(0));
    }

    /// Box, Vec, String and BTreeMap work on the kmem heap.
    fn collections_work() {
        let b = Box::new(0x1234_5678u64);
        assert_eq!(*b, 0x1234_5678);
        let v: Vec<u32> = (0..10_000).collect();
        assert_eq!(v.iter().map(|&x| u64::from(x)).sum::<u64>(), 9_999 * 10_000 / 2);
        let mut s = String::new();
        for i in 0..200 {
            s.push_str(if i % 2 == 0 { "km" } else { "em" });
        }
        assert_eq!(s.len(), 400);
        let mut map = BTreeMap::new();
        for i in 0..2_000u32 {
            map.insert(i.wrapping_mul(2_654_435_761), i);
        }
        assert_eq!(map.len(), 2_000);
        assert_eq!(map.values().map(|&v| u64::from(v)).sum::<u64>(), 1_999 * 2_000 / 2);
    }

    /// 40 MiB of boxes over time, at most 1 MiB live: the heap reuses
    /// memory instead of growing to the total.
    fn many_boxes_over_time_reuse_memory() {
        let mut live: Vec<Box<[u8; 1024]>> = Vec::with_capacity(1024);
        for round in 0..40u32 {
            for i in 0..1024u32 {
                live.push(Box::new([(round ^ i) as u8; 1024]));
            }
            assert!(live.iter().enumerate().all(|(i, b)| b[1000] == (round ^ i as u32) as u8));
            live.clear();
        }
        let held = heap_pages() * 4096;
        assert!(held < 4 << 20, "heap holds {held} bytes after 40 MiB of churn");
    }

    /// The heap grows past its initial size, and gives the frames back
    /// when the memory is freed and trimmed.
    fn heap_grows_and_shrinks() {
        kernel_demo::mm::heap::trim();
        let (frames0, pages0) = (free_frames(), heap_pages());
        let big: Vec<u64> = (0..(2u64 << 20)).collect(); // 16 MiB
        assert_eq!(big[123_456], 123_456);
        let (frames1, pages1) = (free_frames(), heap_pages());
        assert!(pages1 >= pages0 + 4096, "heap did not grow: {pages0} -> {pages1} pages");
        assert!(frames1 + 4096 <= frames0, "frames not taken: {frames0} -> {frames1}");
        drop(big);
        kernel_demo::mm::heap::trim();
        let (frames2, pages2) = (free_frames(), heap_pages());
        assert!(pages2 <= pages0 + 1, "heap did not shrink: {pages0} -> {pages1} -> {pages2} pages");
        assert!(frames2 + 1 >= frames0, "frames not returned: {frames0} -> {frames1} -> {frames2}");
    }

    /// A request larger than RAM returns null; nothing is lost and the
    /// heap keeps working. Most frames are taken away in 2 MiB runs first,
    /// so the heap runs dry after a few hundred pages instead of after
    /// mapping all of RAM page by page (minutes under TCG at -m 4G).
    fn out_of_memory_returns_null() {
        let mut hog: Vec<PhysFrameRange> = Vec::with_capacity(16_384);
        kernel_demo::mm::heap::trim();
        with_memory(|m| {
            for (run, keep) in [(512, 0), (1, 64)] {
                while hog.len() < hog.capacity() && m.free_frames() > keep {
                    match m.frames.with(|f| f.allocate_contiguous(run, 4096, None)) {
                        Ok(run) => hog.push(run),
                        Err(_) => break,
                    }
                }
            }
        });
        let (frames0, stats0) = (free_frames(), HEAP.stats().expect("heap"));
        assert!(frames0 <= 64, "{frames0} frames left");
        let huge = Layout::from_size_align(32 << 30, 4096).expect("layout");
        // Called on the heap itself, not through `alloc::alloc`: the
        // compiler may assume a global-allocator allocation it can elide
        // succeeded.
        // SAFETY: a valid non-zero layout.
        let p = unsafe { core::alloc::GlobalAlloc::alloc(&HEAP, huge) };
        assert!(p.is_null(), "a 32 GiB allocation succeeded");
        kernel_demo::mm::heap::trim();
        let stats1 = HEAP.stats().expect("heap");
        assert_eq!(free_frames(), frames0, "frames lost by the failed allocation");
        assert_eq!((stats1.live_bytes, stats1.live_allocs), (stats0.live_bytes, stats0.live_allocs));
        assert_eq!(stats1.failures, stats0.failures + 1);
        with_memory(|m| {
            for run in hog.drain(..) {
                // SAFETY: frames this test owns and no longer uses (the allocator's checks are what is tested).
                m.frames.with(|f| unsafe { f.free_range(run) }).expect("free run");
            }
        });
        let v = alloc::vec![7u8; 100_000];
        assert!(v.iter().all(|&b| b == 7));
        let heap = HEAP.lock();
        heap.heap().expect("heap").check_invariants().expect("heap invariants");
    }

    /// The leak report lists a deliberately leaked allocation.
    fn leak_report_finds_leak() {
        let leaked: &'static mut [u8; 77] = Box::leak(Box::new([1u8; 77]));
        let addr = leaked.as_ptr() as usize;
        let heap = HEAP.lock();
        let found = heap
            .heap()
            .expect("heap")
            .tracker()
            .leaks()
            .any(|a| a.addr == addr && a.size == 77 && a.align == 1);
        assert!(found, "leaked allocation at {addr:#x} not reported");
    }

    /// A second address space shares the kernel half (code, stack, heap,
    /// direct map), is switched to and back, and its destruction returns
    /// every frame.
    fn address_space_frames_returned() {
        let user = VirtAddr::new(0x40_0000);
        let heap_box = Box::new(99u64);
        with_memory(|m| {
            let free = m.free_frames();
            let kernel_pml4 = m.mapper.pml4();
            let mut space = AddressSpace::new(m.mapper, &mut m.frames).expect("space");
            let frame = m.frames.with(|f| f.allocate()).expect("frame");
            // SAFETY: a user-half edit.
            let user_half = unsafe { space.mapper_mut() };
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            unsafe { user_half.map(Page::containing_address(user), frame, MapFlags::READ_WRITE, &mut m.frames) }.expect("map").ignore();
            // SAFETY: the space shares the kernel half and outlives the switch.
            unsafe { space.switch(&mut m.mmu) };
            // SAFETY: mapped just above, in the active space.
            unsafe { (user.as_u64() as *mut u64).write_volatile(*heap_box) };
            // SAFETY: as above.
            let seen = unsafe { (user.as_u64() as *const u64).read_volatile() };
            // SAFETY: back to the kernel's own tables.
            unsafe { kmem::paging::Mmu::set_cr3(&mut m.mmu, kernel_pml4) };
            assert_eq!(seen, 99);
            // SAFETY: it ran on this CPU only, back on the kernel's tables now;
            // its one mapped frame was allocated for it.
            unsafe { space.destroy(&m.mmu, &mut m.frames, true) }.map_err(|(_, e)| e).expect("destroy");
            assert_eq!(m.free_frames(), free, "address space frames not returned");
        });
    }
}
