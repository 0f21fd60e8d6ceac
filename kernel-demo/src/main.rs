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
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use kernel_demo::arch::interrupts;
use kernel_demo::arch::recover::{protect, Outcome};
use kernel_demo::arch::trap::{vector, Fault};
use kernel_demo::boot;
use kernel_demo::mm::heap::{self as kheap, HEAP};
use kernel_demo::mm::kernel_space::{self, BuildReport, STACK_GUARD, STACK_TOP};
use kernel_demo::mm::memory::{self, with_memory};
use kernel_demo::text::Size;
use kernel_demo::{arch::cpu, boot::image, dev::qemu, println};
use kmem::paging::{AddressSpace, MapFlags};
use x86_64::structures::paging::{Page, Size4KiB};
use x86_64::VirtAddr;

mod demo_smp;

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
    memory::init().unwrap_or_else(|e| kernel_demo::fatal(format_args!("{e}")));
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
        .unwrap_or_else(|e| kernel_demo::fatal(format_args!("kernel space: {e:?}")));
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
        .unwrap_or_else(|e| kernel_demo::fatal(format_args!("boot memory: {e}")));
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
        kernel_demo::fatal(format_args!("the identity map is still there"));
    }

    step("4. the heap (kmem::heap as #[global_allocator])");
    // Built in place: its ~240 KiB of state (with tracking) never touches
    // the 128 KiB kernel stack.
    kheap::init().unwrap_or_else(|e| kernel_demo::fatal(format_args!("heap: {e}")));
    T_HEAP.store(cpu::rdtsc(), Ordering::Relaxed);
    demo_allocations();

    step("5. heap growth and shrink");
    demo_growth();

    step("6. a second address space");
    demo_address_space();

    step("7. page faults, caught and recovered");
    demo_faults();

    step("8. W^X audit of the live page tables");
    audit_wx();

    step("9. user processes (kmem::vm: areas, demand paging, copy-on-write fork)");
    demo_processes();

    step("10. swap: four times the RAM given to pageable memory (kmem::vm on a virtio disk)");
    demo_swap();

    step("11. several CPUs (kmem::smp: per-CPU caches, TLB shootdown by IPI)");
    demo_smp::run();

    step("12. summary");
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
            Err(e) => kernel_demo::fatal(format_args!("address space: {e:?}")),
        };
        let frame = m.frames.with(|f| f.allocate()).expect("a frame");
        let page = Page::<Size4KiB>::containing_address(user);
        space
            .mapper_mut()
            .map(page, frame, MapFlags::READ_WRITE.user(), &mut m.frames)
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
        match space.destroy(&m.mmu, &mut m.frames, true) {
            Ok(stats) => println!(
                "destroyed: {} table frames and {} mapped frame returned; user page visible in kernel space: {in_kernel}",
                stats.tables, stats.mapped_frames
            ),
            Err((_, e)) => kernel_demo::fatal(format_args!("destroy: {e:?}")),
        }
        println!(
            "free frames {free0} -> {} (equal: {})",
            m.free_frames(),
            m.free_frames() == free0
        );
    });
}

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
        m.mapper
            .map(page, frame, MapFlags::READ_WRITE, &mut m.frames)
            .map(|f| f.flush(&mut m.mmu))
            .is_ok()
    })
}

fn report(what: &str, outcome: Outcome) {
    match outcome {
        Outcome::Faulted(fault) => println!("{what}: caught {fault}"),
        Outcome::Returned => kernel_demo::fatal(format_args!("{what}: no fault")),
        Outcome::Panicked => kernel_demo::fatal(format_args!("{what}: panicked")),
    }
}

fn demo_faults() {
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
            let (frame, flush) = m.mapper.unmap(page, &mut m.frames).expect("unmap");
            flush.flush(&mut m.mmu);
            m.frames.with(|f| f.free(frame)).expect("free");
        }
        (before, m.free_frames())
    });
    println!("demand pages unmapped and their frames freed: free frames {before} -> {after}");

    // Protect read-only, then write: the fault is reported, the demo goes on.
    let target = Box::leak(Box::new([0u64; 512]));
    let addr = target.as_ptr() as u64;
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(addr));
    with_memory(|m| {
        m.mapper
            .protect(page, MapFlags::READ)
            .expect("protect")
            .flush(&mut m.mmu)
    });
    // SAFETY: deliberately faults; `protect` catches it.
    report(
        "write to a read-only heap page",
        protect(|| unsafe { (addr as *mut u64).write_volatile(1) }),
    );
    with_memory(|m| {
        m.mapper
            .protect(page, MapFlags::READ_WRITE.global())
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
        m.mapper
            .map(
                Page::<Size4KiB>::containing_address(lone),
                frame,
                MapFlags::READ,
                &mut m.frames,
            )
            .expect("map")
            .ignore();
        let (frame, flush) = m
            .mapper
            .unmap(Page::<Size4KiB>::containing_address(lone), &mut m.frames)
            .expect("unmap");
        flush.flush(&mut m.mmu);
        m.frames.with(|f| f.free(frame)).expect("free");
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

fn demo_processes() {
    use kernel_demo::user::process::{
        self as proc, End, Process, HEAP_BASE, STACK_PAGES, STACK_TOP,
    };
    use kernel_demo::user::programs::Program;
    use kmem::vm::FaultAccess;
    let (smep, smap) = proc::enable_smep_smap();
    println!("SMEP {smep}, SMAP {smap}: the kernel cannot run or (without stac) touch user pages");
    let free0 = memory::FRAMES.with(|f| f.stats().free);
    let secret = &raw const T_ENTRY as u64;
    let guard = STACK_TOP - (STACK_PAGES + 1) * 4096;
    let spawn = |pid, program, arg| {
        Process::spawn(pid, program, arg)
            .unwrap_or_else(|e| kernel_demo::fatal(format_args!("spawn: {e}")))
    };
    let procs = alloc::vec![
        spawn(1, Program::Tag, 0x1111),
        spawn(2, Program::Tag, 0x2222),
        spawn(3, Program::Fork, 0x7777),
        spawn(4, Program::Read, secret),
        spawn(5, Program::Jump, main as *const () as u64),
        spawn(6, Program::Write, 0x5000_0000),
        spawn(7, Program::Write, guard),
    ];
    println!(
        "{} processes, each its own address space: code at {:#x} (R+X), heap at {HEAP_BASE:#x} and stack below {STACK_TOP:#x} (RW, demand-zero, guard page below)",
        procs.len(),
        proc::CODE_BASE
    );
    let what = [
        "",
        "tag 0x1111",
        "tag 0x2222",
        "fork parent",
        "reads kernel memory",
        "jumps into kernel text",
        "writes an unmapped address",
        "writes its stack guard page",
        "fork child",
    ];
    for (pid, reports, end) in proc::run_all(procs) {
        let name = what.get(pid as usize).copied().unwrap_or("?");
        let reports: Vec<String> = reports.iter().map(|r| format!("{r:#x}")).collect();
        let end = match end {
            End::Exited(code) => format!("exited with {code}"),
            End::Killed(e) => format!("ENDED: {e}"),
            End::Crashed(f) => format!("ENDED: {f}"),
        };
        println!(
            "  pid {pid} ({name}): reported [{}], {end}",
            reports.join(", ")
        );
    }
    println!("  (pids 1 and 2 read the same heap address and saw their own tags; after the fork, parent and child saw their own writes)");
    // The cost of one demand-zero and one copy-on-write fault, as the
    // kernel resolves them (no ring change), under QEMU.
    let mut p = spawn(9, Program::Tag, 0);
    let n = 64u64;
    let write = FaultAccess::write(true);
    let frames = &mut &memory::FRAMES;
    let t0 = cpu::rdtsc();
    proc::with_vm(|vm| {
        for i in 0..n {
            let a = VirtAddr::new(HEAP_BASE + i * 4096);
            p.space
                .handle_fault(vm, a, write, frames)
                .expect("demand zero")
                .flush
                .ignore();
        }
    });
    let t1 = cpu::rdtsc();
    let (mut child, flush) = proc::with_vm(|vm| p.space.fork(vm, frames)).expect("fork");
    flush.ignore(); // not active
    let t2 = cpu::rdtsc();
    let cow = FaultAccess {
        present: true,
        ..write
    };
    proc::with_vm(|vm| {
        for i in 0..n {
            let a = VirtAddr::new(HEAP_BASE + i * 4096);
            child
                .handle_fault(vm, a, cow, frames)
                .expect("copy on write")
                .flush
                .ignore();
        }
    });
    let t3 = cpu::rdtsc();
    let ns = |ticks: u64| cpu::tsc_per_ms().map_or(0, |t| ticks * 1_000_000 / t / n);
    println!(
        "fault cost (TSC, {n} faults each): demand-zero {} ticks (~{} ns), copy-on-write {} ticks (~{} ns); fork of {n} touched pages {} ticks",
        (t1 - t0) / n,
        ns(t1 - t0),
        (t3 - t2) / n,
        ns(t3 - t2),
        t2 - t1
    );
    let x86 = &kmem::paging::X86Mmu;
    proc::with_vm(|vm| {
        child.destroy(vm, frames, x86).map_err(|(_, e)| e)?;
        p.space.destroy(vm, frames, x86).map_err(|(_, e)| e)
    })
    .unwrap_or_else(|e| kernel_demo::fatal(format_args!("destroy: {e}")));
    let s = proc::vm_stats();
    println!(
        "vm counters: {} faults: {} zero-filled, {} zero-page maps, {} copied on write, {} write access regained, {} spurious, {} refused; {} frames shared now",
        s.faults, s.zero_fills, s.zero_page_maps, s.cow_copies, s.cow_reuses, s.spurious, s.protection_faults, s.shared_frames
    );
    let free1 = memory::FRAMES.with(|f| f.stats().free);
    println!("free frames before the processes {free0}, after {free1} (the difference is heap growth and the zero frame)");
}

fn demo_swap() {
    use kernel_demo::dev::virtio::VirtioSwap;
    use kernel_demo::overcommit;
    let (limit, pages) = (256u64, 1024u64);
    let before = overcommit::accounted_frames();
    let device: Box<dyn kmem::vm::SwapDevice + Send> = match VirtioSwap::find() {
        Some(d) => {
            println!(
                "virtio-blk swap disk: {} slots ({})",
                kmem::vm::SwapDevice::slots(&d),
                Size(kmem::vm::SwapDevice::slots(&d) * 4096)
            );
            Box::new(d)
        }
        None => {
            println!("no virtio-blk disk (KMEM_SWAP=0?): swapping to memory instead");
            Box::new(kmem::vm::MemSwap::new(4 * pages))
        }
    };
    println!(
        "pageable memory limited to {limit} frames ({}); the workload touches {pages} pages ({}) in sequential, random and hot-set passes, every page checksummed and verified on each read",
        Size(limit * 4096),
        Size(pages * 4096)
    );
    let t0 = cpu::rdtsc();
    let r = overcommit::run(device, limit, pages);
    let ms = cpu::tsc_per_ms().map_or(0, |t| (cpu::rdtsc() - t0) / t);
    let s = r.stats;
    println!("all {pages} pages verified on every read; {ms} ms");
    println!(
        "vmstat: pgfault {} pgmajfault {} pswpin {} pswpout {} pgscan {} pgsteal {} refaults {} zero-elided {} swap-cache hits {} readahead {}",
        s.faults, s.major_faults, s.swap_ins, s.swap_outs, s.scanned, s.reclaimed, s.refaults, s.zero_elided, s.swap_cache_hits, s.readahead
    );
    println!(
        "before teardown: {} frames resident, {} of {} slots in use, {} pages clean in the swap cache",
        s.resident_frames, s.swap_slots_used, s.swap_slots, s.swap_cached
    );
    let after = overcommit::accounted_frames();
    let slots = kernel_demo::user::process::vm_stats().swap_slots_used;
    println!(
        "after teardown: frames {before} -> {after} ({}), swap slots in use {slots}",
        if before == after { "all back" } else { "LOST" }
    );
    if before != after || slots != 0 {
        kernel_demo::fatal(format_args!("swap teardown lost frames or slots"));
    }
}

fn audit_wx() {
    let (mut bad, mut exec) = (0usize, 0usize);
    let census = with_memory(|m| {
        m.mapper.for_each_leaf(|leaf| {
            let a = leaf.access;
            if a.writable && a.executable {
                bad += 1;
                println!("  W+X: {:#x} ({:?})", leaf.page, leaf.size);
            }
            exec += usize::from(a.executable);
        })
    });
    let total: usize = census.leaves.iter().sum();
    println!(
        "{total} leaves in {} tables walked: {exec} executable, {bad} writable+executable",
        census.tables
    );
    if bad != 0 {
        kernel_demo::fatal(format_args!("W^X audit failed"));
    }
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
