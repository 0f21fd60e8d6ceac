//! Step 10: a workload four times the pageable RAM, swapped to the virtio disk.

use alloc::boxed::Box;
use kernel_demo::text::Size;
use kernel_demo::{arch::cpu, println};

pub fn demo_swap() {
    use kernel_demo::mm::swap_disk::VirtioSwap;
    use kernel_demo::overcommit;
    let (limit, pages) = (128u64, 512u64);
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
    compressed(limit, pages, &r, ms);
}

/// The same workload with a compressed cache (`kmem::vm::Zswap`, a pool
/// of a quarter of the frame limit) in front of the same disk.
fn compressed(limit: u64, pages: u64, plain: &kernel_demo::overcommit::Report, plain_ms: u64) {
    use alloc::sync::Arc;
    use kernel_demo::mm::swap_disk::VirtioSwap;
    use kernel_demo::overcommit;
    use kmem::vm::Zswap;
    let pool = limit as usize * 4096 / 4;
    let disk: Box<dyn kmem::vm::SwapDevice + Send> = match VirtioSwap::find() {
        Some(d) => Box::new(d.locked()),
        None => Box::new(kmem::vm::MemSwap::new(4 * pages)),
    };
    let Some(z) = Zswap::new(disk, pool) else {
        println!("no heap for the compressed cache's table: skipped");
        return;
    };
    let z = Arc::new(z);
    let t0 = cpu::rdtsc();
    let r = overcommit::run(Box::new(z.clone()), limit, pages);
    let ms = cpu::tsc_per_ms().map_or(0, |t| (cpu::rdtsc() - t0) / t);
    let st = z.stats();
    let us = |ticks: u64| cpu::tsc_per_ms().map_or(0, |t| ticks * 1000 / t.max(1));
    println!(
        "with a compressed cache of {} in front of the disk (half the pages compress): {} stored, {} rejected, {} written back; disk writes {} -> {}, disk reads {} -> {}; median swap-in fault {} us -> {} us; {} ms -> {} ms",
        Size(pool as u64),
        st.stored,
        st.rejected,
        st.written_back,
        plain.written,
        st.device_writes,
        plain.stats.swap_ins,
        st.device_reads,
        us(plain.swap_in_median),
        us(r.swap_in_median),
        plain_ms,
        ms
    );
    if r.frames_lost != 0 || st.pool_pages != 0 {
        kernel_demo::dev::qemu::fatal(format_args!(
            "the compressed run lost frames or kept pool pages"
        ));
    }
}
