//! Step 12: six processes whose working sets shift, under one replacement
//! policy over every process, its reclaim worker on a CPU of its own; then
//! a runaway ended by the out-of-memory choice.

use alloc::boxed::Box;
use kernel_demo::mm::swap_disk::VirtioSwap;
use kernel_demo::workingsets::{self, PHASE, PROCESSES, SET};
use kernel_demo::{arch::cpu, println};

/// Frames pageable memory may hold, and swap slots (a partition of the disk).
const LIMIT: u64 = 40;
const SLOTS: u64 = 160;

fn device() -> Box<dyn kmem::vm::SwapDevice + Send> {
    match VirtioSwap::find() {
        Some(d) => Box::new(d.locked()),
        None => Box::new(kmem::vm::MemSwap::new(SLOTS)),
    }
}

pub fn demo_working_sets() {
    println!(
        "{PROCESSES} processes of {SET} pages over {LIMIT} frames, two hot at a time (97 % of the accesses), the roles changing every {PHASE} accesses, every page stamped and checked on each access; one replacement policy over every process, its worker run on a CPU of its own whenever free frames fall under the low watermark, faults reclaiming only under min"
    );
    let t0 = cpu::rdtsc();
    let r = workingsets::run(device(), LIMIT, SLOTS);
    let ms = |t: u64| cpu::tsc_per_ms().map_or(0, |p| t / p.max(1));
    let total: u64 = r.processes.iter().map(|p| p.faults).sum();
    println!("{total} faults in {} ms", ms(cpu::rdtsc() - t0));
    for (p, x) in r.processes.iter().enumerate() {
        println!(
            "  process {p}: {:>4} faults, {:>3} resident, {:>3} swapped",
            x.faults, x.usage.resident, x.usage.swapped
        );
    }
    let s = &r.stats;
    let on = match r.worker_cpu {
        Some(cpu) => alloc::format!("on CPU {cpu}"),
        None => alloc::string::String::from("between accesses (one CPU)"),
    };
    println!(
        "reclaim worker {on}: {} steps, {} us of CPU time; faults that reclaimed directly: {}; write-outs a write cancelled: {}; {} pages freed, {} scanned ({:.1} a page freed), {} page tables skipped unwalked; pswpout {} pswpin {}; working-set refaults {} (pages back while in the global policy's history)",
        r.worker_steps,
        cpu::tsc_per_ms().map_or(0, |p| r.worker_ticks * 1000 / p.max(1)),
        s.direct_reclaims,
        s.writeback_cancelled,
        s.reclaimed,
        s.scanned,
        s.scanned as f64 / s.reclaimed.max(1) as f64,
        s.tables_skipped,
        s.swap_outs,
        s.swap_ins,
        s.workingset_refaults
    );
    if let Some(c) = r.oom {
        println!(
            "runaway: {} pages written before a fault failed (frames and swap full); out-of-memory choice: process {} (badness {}: {} resident, {} swapped, {} page tables), ended; every other process's pages then checked, all as last written",
            r.runaway_pages, c.id, c.badness, c.usage.resident, c.usage.swapped, c.usage.tables
        );
    }
}
