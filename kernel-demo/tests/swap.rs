//! kmem::vm swap on real paging: the CPU sets the Accessed and Dirty bits
//! the reclaim scan reads, TLB entries are flushed as pages leave. A space
//! four times larger than the frames anonymous memory may hold, every page
//! carrying a checksum verified on each read, over an in-memory swap
//! device; then teardown returns every frame and slot.
// kmem-vm: mem=128M
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use kernel_demo::interrupts::{self, vector, Fault};
use kernel_demo::memory::{with_memory, FRAMES};
use kernel_demo::process::with_vm;
use kmem::paging::{AddressSpace, Mmu, OffsetPhysMem, X86Mmu};
use kmem::vm::{FaultAccess, MemSwap, Prot, VmSpace, USER_RANGE};
use x86_64::VirtAddr;

/// The space whose faults the hook resolves.
static ACTIVE: spin::Mutex<Option<VmSpace<OffsetPhysMem>>> = spin::Mutex::new(None);

/// Kernel-mode faults on the test space go to kmem::vm.
fn hook(f: &Fault) -> bool {
    if f.vector != vector::PAGE_FAULT {
        return false;
    }
    let Some(mut guard) = ACTIVE.try_lock() else {
        return false;
    };
    let Some(space) = guard.as_mut() else {
        return false;
    };
    let access = FaultAccess::from_error_code(f.error_code);
    match with_vm(|vm| space.handle_fault(vm, VirtAddr::new_truncate(f.addr), access, &mut &FRAMES))
    {
        Ok(r) => {
            r.flush.flush(&mut X86Mmu);
            true
        }
        Err(_) => false,
    }
}

/// Free frames plus the frames the heap holds (its tracker's included)
/// plus the kernel's page tables (the heap's growth adds some).
fn accounted() -> u64 {
    let heap = kernel_demo::heap::HEAP.lock();
    let h = heap.as_ref().expect("heap");
    let held = h.stats().pages_held as u64 + h.tracker().stats().bitmap_pages as u64;
    drop(heap);
    let tables = with_memory(|m| m.mapper.for_each_leaf(|_| {}).tables as u64);
    FRAMES.with(|f| f.stats().free) + held + tables
}

const LIMIT: u64 = 64;
const PAGES: u64 = 4 * LIMIT;
const BASE: u64 = 0x2000_0000;

fn word(page: u64, pass: u64, i: u64) -> u64 {
    (page << 32) ^ (pass << 20) ^ i.wrapping_mul(0x9e37_79b9)
}

/// Fills a page with its pattern and a checksum in the last word.
fn write_page(page: u64, pass: u64) {
    let p = (BASE + page * 4096) as *mut u64;
    let mut sum = 0u64;
    for i in 0..511 {
        let w = word(page, pass, i);
        sum = sum.wrapping_add(w);
        // SAFETY: the test space is active; faults map the page.
        unsafe { p.add(i as usize).write_volatile(w) };
    }
    // SAFETY: as above.
    unsafe { p.add(511).write_volatile(sum) };
}

/// Checks a page's checksum; returns the pass that wrote it.
fn check_page(page: u64, pass: u64) {
    let p = (BASE + page * 4096) as *const u64;
    let mut sum = 0u64;
    for i in 0..511 {
        // SAFETY: the test space is active; faults map the page.
        let w = unsafe { p.add(i as usize).read_volatile() };
        assert_eq!(w, word(page, pass, i), "page {page} word {i}");
        sum = sum.wrapping_add(w);
    }
    // SAFETY: as above.
    assert_eq!(
        unsafe { p.add(511).read_volatile() },
        sum,
        "page {page} checksum"
    );
}

kernel_demo::test_kernel! {
    setup = kernel_demo::kernel_space::enter;

    /// Sequential, random and hot-set passes over four times the frames
    /// anonymous memory may hold; every read checked; everything back.
    fn overcommit_four_times_with_checksums() {
        with_vm(|_| {}); // the zero frame, made on first use
        let free0 = accounted();
        with_vm(|vm| {
            vm.set_frame_limit(Some(LIMIT));
            assert!(vm.attach_swap(Box::new(MemSwap::new(4 * PAGES))).is_ok());
        });
        let tables = with_memory(|m| AddressSpace::new(m.mapper, &mut m.frames)).unwrap();
        let mut space = VmSpace::with_mapper(tables.into_mapper(), USER_RANGE.0, USER_RANGE.1);
        space.map_anonymous(Some(BASE), PAGES * 4096, Prot::RW).unwrap();
        let pml4 = space.pml4();
        *ACTIVE.lock() = Some(space);
        let kernel = X86Mmu.cr3();
        // SAFETY: the space shares the kernel half; switched back below.
        unsafe { X86Mmu.set_cr3(pml4) };
        interrupts::set_fault_hook(Some(hook));
        let mut last = [u64::MAX; PAGES as usize];
        let mut rng = 0x1234_5678_9abc_def1u64;
        for pass in 0..6u64 {
            for k in 0..PAGES {
                let page = match pass {
                    0 | 1 => k,
                    2 | 3 => {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng % PAGES
                    }
                    _ => k % (LIMIT / 2),
                };
                if last[page as usize] != u64::MAX && k % 2 == 0 {
                    check_page(page, last[page as usize]);
                } else {
                    write_page(page, pass);
                    last[page as usize] = pass;
                }
            }
        }
        interrupts::set_fault_hook(None);
        // SAFETY: back to the kernel's own tables.
        unsafe { X86Mmu.set_cr3(kernel) };
        let space = ACTIVE.lock().take().unwrap();
        let st = with_vm(|vm| vm.stats());
        kernel_demo::println!();
        kernel_demo::println!("    {st:?}");
        assert!(st.resident_frames <= LIMIT, "{st:?}");
        assert!(st.swap_outs >= PAGES && st.swap_ins >= PAGES, "{st:?}");
        with_vm(|vm| space.destroy(vm, &mut &FRAMES, &X86Mmu)).map_err(|e| e.1).unwrap();
        let st = with_vm(|vm| {
            vm.set_frame_limit(None);
            let st = vm.stats();
            assert!(vm.detach_swap().is_some());
            st
        });
        assert_eq!((st.resident_frames, st.swap_slots_used, st.swap_cached), (0, 0, 0), "{st:?}");
        // Every frame is back (free, or held by the heap that carried the
        // in-memory device).
        assert_eq!(accounted(), free0);
    }
}
