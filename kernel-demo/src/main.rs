//! The kmem demo kernel: boots under QEMU (PVH, or GRUB and Multiboot2), lets kmem build its
//! frame allocator, its own address space and its heap, shows each layer
//! at work on real x86_64 paging, and exits with status 0.
//!
//! `KMEM_MEM=32M|128M|4G|16G cargo run` picks the RAM size, `KMEM_SMP=N`
//! the number of CPUs (default 4).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel_demo::boot;
use kernel_demo::mm::heap::{self as kheap, HEAP};
use kernel_demo::mm::kernel_space::{self, BuildReport, STACK_GUARD, STACK_TOP};
use kernel_demo::mm::memory::{self, with_memory};
use kernel_demo::text::Size;
use kernel_demo::{arch::cpu, boot::image, dev::qemu, println};
use kmem::paging::{AddressSpace, MapFlags};
use x86_64::structures::paging::{Page, Size4KiB};
use x86_64::VirtAddr;

mod demo;

kernel_demo::entry_point!(main);

/// TSC at each milestone, for the closing summary.
static T_ENTRY: AtomicU64 = AtomicU64::new(0);
static T_FRAMES: AtomicU64 = AtomicU64::new(0);
static T_SPACE: AtomicU64 = AtomicU64::new(0);
static T_HEAP: AtomicU64 = AtomicU64::new(0);
static REPORT: spin::Once<BuildReport> = spin::Once::new();

fn step(title: &str) {
    let t0 = T_ENTRY.load(Ordering::Relaxed);
    let ms = cpu::tsc_per_ms().map(|per_ms| (cpu::rdtsc() - t0) * 10 / per_ms);
    println!();
    match ms {
        Some(t) => println!("== {title}  [t = {}.{} ms]", t / 10, t % 10),
        None => println!("== {title}"),
    }
}

fn main() -> ! {
    T_ENTRY.store(cpu::rdtsc(), Ordering::Relaxed);
    let info = boot::info();
    println!(
        "kmem demo kernel: {} of RAM, command line {:?}",
        Size(info.usable_bytes()),
        info.cmdline()
    );

    step(match boot::info().protocol {
        boot::Protocol::Pvh => "1. memory map (PVH, as QEMU gave it)",
        boot::Protocol::Multiboot2 => "1. memory map (Multiboot2, as GRUB gave it)",
    });
    info.print_memory_map();

    step("2. frame allocator (kmem::frame)");
    memory::init().unwrap_or_else(|e| kernel_demo::dev::qemu::fatal(format_args!("{e}")));
    T_FRAMES.store(cpu::rdtsc(), Ordering::Relaxed);
    let (image_start, image_end) = info.kernel_image();
    println!("reserved: low 1 MiB, kernel image {image_start:#x}..{image_end:#x}, boot data");
    memory::FRAMES.with(|f| {
        let s = f.stats();
        println!(
            "frames: {} total, {} free, {} reserved, largest free run {}; metadata {} ({} bits/frame)",
            s.total,
            s.free,
            s.reserved,
            Size(s.largest_free_run * 4096),
            Size(f.metadata_bytes()),
            f.metadata_bytes() * 8 / s.total.max(1)
        );
    });

    step("3. the kernel's own address space (kmem::paging)");
    let (kernel, report) = kernel_space::build(info)
        .unwrap_or_else(|e| kernel_demo::dev::qemu::fatal(format_args!("kernel space: {e:?}")));
    REPORT.call_once(|| report);
    let c = report.census;
    println!(
        "direct map of {} at {:#x}: {} Mcycles",
        Size(report.direct_bytes),
        boot::DIRECT_MAP,
        report.direct_cycles / 1_000_000
    );
    println!(
        "leaves: {} x 4 KiB, {} x 2 MiB, {} x 1 GiB; {} page-table frames",
        c.leaves[0], c.leaves[1], c.leaves[2], c.tables
    );
    for seg in image::segments() {
        let perm = match (seg.writable, seg.executable) {
            (_, true) => "read+execute",
            (true, _) => "read+write, no-execute",
            _ => "read-only, no-execute",
        };
        println!(
            "kernel {:<9} {:#x}..{:#x} {perm}",
            seg.name, seg.start, seg.end
        );
    }
    println!(
        "kernel stack {:#x}..{STACK_TOP:#x}, guard page at {STACK_GUARD:#x}",
        STACK_GUARD + 4096
    );
    // SAFETY: `kernel` was built by `kernel_space::build` for this kernel.
    let released = unsafe { kernel_space::activate(kernel) }
        .unwrap_or_else(|e| kernel_demo::dev::qemu::fatal(format_args!("boot memory: {e}")));
    let (boot_start, boot_end) = info.boot_segment();
    println!(
        "boot segment {boot_start:#x}..{boot_end:#x} (entry code, boot GDT, boot page tables) given back: {released} frames, {}",
        Size(released * 4096)
    );
    T_SPACE.store(cpu::rdtsc(), Ordering::Relaxed);
    // SAFETY: the kernel space is active and its stack unused.
    unsafe { kernel_space::run_on_kernel_stack(after_switch) }
}

extern "C" fn after_switch() -> ! {
    let here = 0u8;
    println!(
        "CR3 switched; running on the kernel stack (a local at {:#x})",
        &here as *const u8 as u64
    );
    let identity = with_memory(|m| m.mapper.translate(VirtAddr::new(0x20_0000)).is_ok());
    println!("boot identity map dropped: {}", !identity);
    if identity {
        kernel_demo::dev::qemu::fatal(format_args!("the identity map is still there"));
    }

    step("4. the heap (kmem::heap as #[global_allocator])");
    // Built in place: its ~240 KiB of state (with tracking) never touches
    // the 128 KiB kernel stack.
    kheap::init().unwrap_or_else(|e| kernel_demo::dev::qemu::fatal(format_args!("heap: {e}")));
    T_HEAP.store(cpu::rdtsc(), Ordering::Relaxed);
    demo_allocations();

    step("5. heap growth and shrink");
    demo_growth();

    step("6. a second address space");
    demo_address_space();

    step("7. page faults, caught and recovered");
    demo::faults::demo_faults();

    step("8. W^X audit of the live page tables");
    demo::audit::audit_wx();

    step("9. user processes (kmem::vm: areas, demand paging, copy-on-write fork)");
    demo::processes::demo_processes(&raw const T_ENTRY as u64, main as *const () as u64);

    step("10. swap: four times the RAM given to pageable memory (kmem::vm on a virtio disk)");
    demo::swap::demo_swap();

    step("11. several CPUs (kmem::smp: per-CPU caches, TLB shootdown by IPI)");
    demo::smp::run();

    step("12. working sets that shift between processes (kmem::vm::global, oom)");
    demo::workingsets::demo_working_sets();

    step("13. memory objects (kmem::vm: shared anonymous memory, a file through the page cache)");
    demo::objects::demo_objects();

    step("14. huge pages for user memory (kmem::vm transparent huge pages)");
    demo::huge::demo_huge();

    step("15. summary");
    summary();
    println!();
    println!("demo done");
    qemu::exit(qemu::ExitCode::Success)
}

fn heap_line() {
    let s = HEAP.stats().expect("heap initialised");
    println!(
        "heap: {} live in {} allocations, peak {}, {} pages held ({} slab, {} large, {} cached)",
        Size(s.live_bytes as u64),
        s.live_allocs,
        Size(s.peak_bytes as u64),
        s.pages_held,
        s.slab_pages,
        s.large_pages,
        s.cached_pages
    );
}

fn demo_allocations() {
    let boxed = Box::new([1u64, 2, 3, 5, 8, 13]);
    println!(
        "Box<[u64; 6]> at {:p}: sum {}",
        boxed.as_ptr(),
        boxed.iter().sum::<u64>()
    );
    let squares: Vec<u64> = (0..10_000u64).map(|i| i * i).collect();
    println!(
        "Vec of {} squares, last {}",
        squares.len(),
        squares[squares.len() - 1]
    );
    let mut words: BTreeMap<String, usize> = BTreeMap::new();
    for w in "the frame allocator feeds the mapper and the mapper feeds the heap".split(' ') {
        *words.entry(String::from(w)).or_default() += 1;
    }
    let greeting = format!("{} distinct words, 'the' x{}", words.len(), words["the"]);
    println!("BTreeMap<String, usize>: {greeting}");
    heap_line();
}

fn demo_growth() {
    kheap::trim();
    let frames0 = with_memory(|m| m.free_frames());
    let pages0 = HEAP.stats().map_or(0, |s| s.pages_held);
    // A quarter of the free memory, at most 2 MiB (a large-object request,
    // mapped page by page): fits every RAM size, and keeps the demo short.
    let bytes = ((frames0 * 4096 / 4) as usize).min(2 << 20);
    let big = alloc::vec![0x5au8; bytes];
    let frames1 = with_memory(|m| m.free_frames());
    let pages1 = HEAP.stats().map_or(0, |s| s.pages_held);
    println!(
        "allocated {} : heap {pages0} -> {pages1} pages, free frames {frames0} -> {frames1}",
        Size(bytes as u64)
    );
    let ok = big.iter().step_by(4096).all(|&b| b == 0x5a);
    drop(big);
    kheap::trim();
    let frames2 = with_memory(|m| m.free_frames());
    let pages2 = HEAP.stats().map_or(0, |s| s.pages_held);
    println!(
        "freed and trimmed: heap {pages1} -> {pages2} pages, free frames {frames1} -> {frames2}"
    );
    println!(
        "contents intact: {ok}; frames back: {} of {}",
        frames2.saturating_sub(frames1),
        frames0 - frames1
    );
}

fn demo_address_space() {
    let user = VirtAddr::new(0x40_0000);
    let value = Box::new(0x00da_7a5b_a5e5_u64);
    with_memory(|m| {
        let free0 = m.free_frames();
        let kernel_pml4 = m.mapper.pml4();
        let mut space = match AddressSpace::new(m.mapper, &mut m.frames) {
            Ok(space) => space,
            Err(e) => kernel_demo::dev::qemu::fatal(format_args!("address space: {e:?}")),
        };
        let frame = m.frames.with(|f| f.allocate()).expect("a frame");
        let page = Page::<Size4KiB>::containing_address(user);
        // SAFETY: a user-half edit (the kernel half stays the kernel mapper's).
        let user_half = unsafe { space.mapper_mut() };
        // SAFETY: a frame allocated for this space alone, at a user page.
        unsafe { user_half.map(page, frame, MapFlags::READ_WRITE.user(), &mut m.frames) }
            .expect("map")
            .ignore();
        println!(
            "created: PML4 {:#x}, kernel half shared, user page {user:#x} -> {:#x}",
            space.pml4().start_address(),
            frame.start_address()
        );
        // SAFETY: the space shares the kernel half; it outlives the switch.
        unsafe { space.switch(&mut m.mmu) };
        // SAFETY: the page was just mapped in the active space.
        unsafe { (user.as_u64() as *mut u64).write_volatile(*value) };
        // SAFETY: as above.
        let seen = unsafe { (user.as_u64() as *const u64).read_volatile() };
        // SAFETY: back to the kernel's own tables.
        unsafe { kmem::paging::Mmu::set_cr3(&mut m.mmu, kernel_pml4) };
        println!("switched to it, wrote and read {seen:#x} at {user:#x} (heap value, kernel code), switched back");
        let in_kernel = m.mapper.translate(user).is_ok();
        // SAFETY: it ran on this CPU only, which loaded the kernel's tables
        // again; its one mapped frame was allocated for it above.
        match unsafe { space.destroy(&m.mmu, &mut m.frames, true) } {
            Ok(stats) => println!(
                "destroyed: {} table frames and {} mapped frame returned; user page visible in kernel space: {in_kernel}",
                stats.tables, stats.mapped_frames
            ),
            Err((_, e)) => kernel_demo::dev::qemu::fatal(format_args!("destroy: {e:?}")),
        }
        println!(
            "free frames {free0} -> {} (equal: {})",
            m.free_frames(),
            m.free_frames() == free0
        );
    });
}

fn summary() {
    let info = boot::info();
    let map = memory::memory_map(info).expect("map");
    println!("memory map after sanitizing and reservations:");
    println!("{:>18}  {:>18}  {:>10}  kind", "start", "end", "size");
    for r in map.regions() {
        println!(
            "{:#018x}  {:#018x}  {:>10}  {:?}",
            r.start,
            r.end(),
            Size(r.len),
            r.kind
        );
    }
    let tables = with_memory(|m| m.mapper.for_each_leaf(|_| {}).tables as u64);
    let stats = memory::FRAMES.with(|f| f.stats());
    let heap = HEAP.stats().expect("heap");
    println!(
        "frames: {} total ({} of them the released boot segment) | {} page tables | {} heap | {} kernel stack | {} other used | {} free | {} reserved",
        stats.total,
        memory::boot_frames_released(),
        tables,
        heap.pages_held,
        kernel_space::STACK_PAGES,
        stats.used.saturating_sub(tables + heap.pages_held as u64 + kernel_space::STACK_PAGES),
        stats.free,
        stats.reserved
    );
    {
        // First, before the summary allocates anything itself.
        let guard = HEAP.lock();
        let tracker = guard.heap().expect("heap").tracker();
        let leaks = tracker.leaks().count();
        println!(
            "leak report: {leaks} outstanding allocations, {} misuse reports",
            tracker.error_count()
        );
        for a in tracker.leaks().take(8) {
            println!("  {:#x}: {} bytes, align {}", a.addr, a.size, a.align);
        }
    }
    heap_line();
    match heap.fragmentation_percent() {
        Some(p) => println!("heap held/live: {p}%"),
        None => println!("heap held/live: nothing live"),
    }
    println!(
        "heap failures {}; allocations since boot {}",
        heap.failures, heap.total_allocs
    );
    let t0 = T_ENTRY.load(Ordering::Relaxed);
    let now = cpu::rdtsc();
    let per_ms = cpu::tsc_per_ms().unwrap_or(1_000_000);
    let us = |cycles: u64| cycles * 1000 / per_ms;
    let since = |t: &AtomicU64| us(t.load(Ordering::Relaxed) - t0);
    let direct = REPORT.get().map_or(0, |r| us(r.direct_cycles));
    println!(
        "timings (us from entry, TSC {} MHz): frames {} | address space {} (direct map of {}: {direct}) | heap ready {} | end {}",
        per_ms / 1000,
        since(&T_FRAMES),
        since(&T_SPACE),
        Size(REPORT.get().map_or(0, |r| r.direct_bytes)),
        since(&T_HEAP),
        us(now - t0)
    );
    let used = stats.total - stats.free;
    let width = 50u64;
    let filled = (used * width).div_ceil(stats.total.max(1));
    let bar: String = (0..width)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    println!(
        "memory [{bar}] {} used of {}",
        Size(used * 4096),
        Size(stats.total * 4096)
    );
}
