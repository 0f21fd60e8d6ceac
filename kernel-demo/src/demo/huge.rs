//! Step 14: huge pages for user memory: a 64 MiB aligned area touched with
//! 4 KiB pages, then with transparent huge pages.

use kernel_demo::huge::touch;
use kernel_demo::text::Size;
use kernel_demo::{arch::cpu, dev::qemu, println};

pub fn demo_huge() {
    let bytes = 64u64 << 20;
    let before = kernel_demo::overcommit::accounted_frames();
    let small = touch(bytes, false);
    let huge = touch(bytes, true);
    let us = |t: u64| cpu::tsc_per_ms().map_or(0, |per| t * 1000 / per.max(1));
    println!(
        "touching {} one store a page: 4 KiB pages {} faults, {} page-table frames, {} us; transparent huge pages {} faults ({} of them 2 MiB), {} page-table frames, {} us",
        Size(bytes),
        small.faults,
        small.tables,
        us(small.ticks),
        huge.faults,
        huge.huge_faults,
        huge.tables,
        us(huge.ticks)
    );
    println!(
        "ratio faults {:.4}, time {:.2} (huge / 4 KiB)",
        huge.faults as f64 / small.faults.max(1) as f64,
        huge.ticks as f64 / small.ticks.max(1) as f64
    );
    let after = kernel_demo::overcommit::accounted_frames();
    if before != after || huge.huge_faults != bytes >> 21 {
        qemu::fatal(format_args!(
            "huge pages: frames {before} -> {after}, {} huge faults",
            huge.huge_faults
        ));
    }
}
