//! Step 7: page faults caught and recovered (demand paging by a hook,
//! writes to read-only pages, execution of data, use after unmap).

use alloc::boxed::Box;
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel_demo::arch::interrupts;
use kernel_demo::arch::recover::{protect, Outcome};
use kernel_demo::arch::trap::{vector, Fault};
use kernel_demo::boot;
use kernel_demo::mm::memory::with_memory;
use kernel_demo::println;
use kmem::paging::MapFlags;
use x86_64::structures::paging::{Page, Size4KiB};
use x86_64::VirtAddr;

/// Where the fault hook maps pages on demand (PML4 slot 416).
const DEMAND: u64 = 0xFFFF_D000_0000_0000;
const DEMAND_PAGES: u64 = 4;
static DEMAND_FAULTS: AtomicUsize = AtomicUsize::new(0);

/// Repairs a not-present fault inside the demand region by mapping a
/// zeroed frame; the faulting instruction then runs again.
fn demand_hook(fault: &Fault) -> bool {
    let in_region = (DEMAND..DEMAND + DEMAND_PAGES * 4096).contains(&fault.addr);
    if fault.vector != vector::PAGE_FAULT || !in_region || fault.error_code & 1 != 0 {
        return false;
    }
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(fault.addr));
    with_memory(|m| {
        let Ok(frame) = m.frames.with(|f| f.allocate()) else {
            return false;
        };
        // SAFETY: the frame is ours, reached through the direct map.
        unsafe { boot::phys_to_virt(frame.start_address().as_u64()).write_bytes(0, 4096) };
        DEMAND_FAULTS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: a zeroed, fresh frame at a page of the demand-paged demo window.
        unsafe {
            m.mapper
                .map(page, frame, MapFlags::READ_WRITE, &mut m.frames)
        }
        .map(|f| f.flush(&mut m.mmu))
        .is_ok()
    })
}

fn report(what: &str, outcome: Outcome) {
    match outcome {
        Outcome::Faulted(fault) => println!("{what}: caught {fault}"),
        Outcome::Returned => kernel_demo::dev::qemu::fatal(format_args!("{what}: no fault")),
        Outcome::Panicked => kernel_demo::dev::qemu::fatal(format_args!("{what}: panicked")),
    }
}

pub fn demo_faults() {
    // Demand paging: the handler repairs the fault and the write retries.
    interrupts::set_fault_hook(Some(demand_hook));
    let mut sum = 0;
    for i in 0..DEMAND_PAGES {
        let p = (DEMAND + i * 4096 + 8 * i) as *mut u64;
        // SAFETY: the fault hook maps the page on first touch.
        unsafe { p.write_volatile(i + 1) };
        // SAFETY: mapped now.
        sum += unsafe { p.read_volatile() };
    }
    interrupts::set_fault_hook(None);
    println!(
        "demand paging: wrote {DEMAND_PAGES} unmapped pages at {DEMAND:#x}; {} page faults repaired by the handler, values sum {sum}",
        DEMAND_FAULTS.load(Ordering::SeqCst)
    );
    let (before, after) = with_memory(|m| {
        let before = m.free_frames();
        for i in 0..DEMAND_PAGES {
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(DEMAND + i * 4096));
            // SAFETY: the demo's demand pages, which nothing uses any more.
            let (frame, flush) = unsafe { m.mapper.unmap(page, &mut m.frames) }.expect("unmap");
            flush.flush(&mut m.mmu);
            // SAFETY: the page's only mapping is gone and flushed (one CPU runs here).
            m.frames.with(|f| unsafe { f.free(frame) }).expect("free");
        }
        (before, m.free_frames())
    });
    println!("demand pages unmapped and their frames freed: free frames {before} -> {after}");

    // Protect read-only, then write: the fault is reported, the demo goes on.
    let target = Box::leak(Box::new([0u64; 512]));
    let addr = target.as_ptr() as u64;
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(addr));
    with_memory(|m| {
        // SAFETY: a leaked heap object's page, made read-only to show the fault; the
        // write that follows is caught.
        unsafe { m.mapper.protect(page, MapFlags::READ) }
            .expect("protect")
            .flush(&mut m.mmu)
    });
    // SAFETY: deliberately faults; `protect` catches it.
    report(
        "write to a read-only heap page",
        protect(|| unsafe { (addr as *mut u64).write_volatile(1) }),
    );
    with_memory(|m| {
        // SAFETY: the same page back to the heap's rights.
        unsafe { m.mapper.protect(page, MapFlags::READ_WRITE.global()) }
            .expect("protect")
            .flush(&mut m.mmu)
    });

    // Execute from the heap (non-executable), and write to kernel text.
    let code = Box::new([0xc3u8; 8]);
    let code_addr = code.as_ptr() as usize;
    report(
        "call into the heap",
        protect(|| {
            // SAFETY: deliberately faults on the fetch: the heap is NX.
            let f: extern "C" fn() = unsafe { core::mem::transmute(code_addr) };
            f();
        }),
    );
    let text = demo_faults as fn() as usize;
    // SAFETY: deliberately faults: kernel text is read-only.
    report(
        "write to kernel text",
        protect(|| unsafe { (text as *mut u8).write_volatile(0x90) }),
    );
    // Unmap a page, then read it.
    let free_before = with_memory(|m| m.free_frames());
    let lone = VirtAddr::new(DEMAND);
    with_memory(|m| {
        let frame = m.frames.with(|f| f.allocate()).expect("frame");
        // SAFETY: a fresh frame, read-only, at the demo window.
        unsafe {
            m.mapper.map(
                Page::<Size4KiB>::containing_address(lone),
                frame,
                MapFlags::READ,
                &mut m.frames,
            )
        }
        .expect("map")
        .ignore();
        // SAFETY: that page, which nothing uses: the read after it faults, as shown.
        let (frame, flush) = unsafe {
            m.mapper
                .unmap(Page::<Size4KiB>::containing_address(lone), &mut m.frames)
        }
        .expect("unmap");
        flush.flush(&mut m.mmu);
        // SAFETY: the page's only mapping is gone and flushed (one CPU runs here).
        m.frames.with(|f| unsafe { f.free(frame) }).expect("free");
    });
    // SAFETY: deliberately faults: just unmapped.
    report(
        "read after unmap",
        protect(|| unsafe {
            core::hint::black_box((lone.as_u64() as *const u64).read_volatile());
        }),
    );
    println!(
        "every fault was reported and the demo went on (frames {} -> {})",
        free_before,
        with_memory(|m| m.free_frames())
    );
    // SAFETY: `target` was leaked above and its page is writable again.
    unsafe { drop(Box::from_raw(target)) };
}
