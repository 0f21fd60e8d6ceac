//! Step 10: a workload four times the pageable RAM, swapped to the virtio disk.

use alloc::boxed::Box;
use kernel_demo::text::Size;
use kernel_demo::{arch::cpu, println};

pub fn demo_swap() {
    use kernel_demo::mm::swap_disk::VirtioSwap;
    use kernel_demo::overcommit;
    let (limit, pages) = (256u64, 1024u64);
    let before = overcommit::accounted_frames();
    let device: Box<dyn kmem::vm::SwapDevice + Send> = match VirtioSwap::find() {
        Some(d) => {
            println!(
                "virtio-blk swap disk: {} slots ({})",
                d.slots(),
                Size(d.slots() * 4096)
            );
            Box::new(d.locked())
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
        kernel_demo::dev::qemu::fatal(format_args!("swap teardown lost frames or slots"));
    }
}
