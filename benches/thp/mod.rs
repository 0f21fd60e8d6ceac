//! Transparent huge pages in `cargo bench --bench vm`: a space touches a
//! 2 MiB-aligned 64 MiB area one store a page, as a CPU would (a walk of
//! the tables outside the last translation, one entry of TLB; a fault
//! wherever no translation allows the store), with huge pages on and off,
//! same emulated memory, interleaved trials. Ratios: faults and time with
//! huge pages / without (targets 1/100 and 0.5).

use std::time::{Duration, Instant};

use kmem::paging::PageTables;
use kmem::smp::Tlb;
use kmem::testing::huge_frames::SharedFrames;
use kmem::testing::mmu::RecordingMmu;
use kmem::testing::phys_mem::{EmulatedMemory, EmulatedPhysMem};
use kmem::vm::{FaultAccess, Prot, Vm, VmSpace};
use x86_64::structures::paging::PhysFrame;
use x86_64::{PhysAddr, VirtAddr};

const PAGE: u64 = 4096;
const BASE: u64 = 0x4000_0000;

/// Touches `bytes` with huge pages on or off; the faults taken, the time
/// of the touch, the page-table frames the space used.
fn touch(mem: &EmulatedMemory, bytes: u64, huge: bool) -> (u64, Duration, usize) {
    // Fresh frames each trial: runs come from the untouched part.
    let mut frames = SharedFrames::new(mem.frame_allocator());
    let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
    if huge {
        vm.set_huge_frames(Some(Box::new(frames.clone())));
    }
    let kernel: PageTables<EmulatedPhysMem<'_>> =
        PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let mut s = VmSpace::new_user(&kernel, &mut frames).unwrap();
    s.map_anonymous(Some(BASE), bytes, Prot::RW | Prot::USER)
        .unwrap();
    let mut mmu = RecordingMmu::new(PhysFrame::containing_address(PhysAddr::new(0)));
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut faults = 0;
    // A one-entry TLB: the last translation (its page, size and frame), so
    // a store walks the tables only outside it, as a CPU does.
    let mut cached: Option<(u64, u64, u64)> = None;
    let t = Instant::now();
    for p in 0..bytes / PAGE {
        let a = BASE + p * PAGE;
        let hit = cached.filter(|&(page, size, _)| page <= a && a < page + size);
        let pa = match hit {
            Some((page, _, frame)) => frame + (a - page),
            None => {
                let va = VirtAddr::new(a);
                let walk = |s: &VmSpace<EmulatedPhysMem<'_>>| {
                    s.mapper()
                        .translate(va)
                        .ok()
                        .filter(|t| t.access.writable)
                        .map(|t| (t.page.as_u64(), t.size.bytes(), t.frame.as_u64()))
                };
                let t = walk(&s).unwrap_or_else(|| {
                    faults += 1;
                    s.handle_fault(&vm, va, FaultAccess::write(true), &mut frames, &mut tlb)
                        .unwrap();
                    walk(&s).unwrap()
                });
                cached = Some(t);
                t.2 + (a - t.0)
            }
        };
        mem.write_u64(PhysAddr::new(pa), p);
    }
    let d = t.elapsed();
    let tables = s.usage(&vm).tables as usize;
    s.destroy(&vm, &mut frames, &mut tlb).unwrap();
    (faults, d, tables)
}

/// Prints the table rows and the two ratio lines.
pub fn run(quick: bool, trials: usize) {
    let bytes: u64 = if quick { 16 << 20 } else { 64 << 20 };
    // Room for the area, its tables and the runs' alignment.
    let mem = EmulatedMemory::new((bytes / PAGE) as usize + 2048);
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let (mut f_on, mut f_off, mut t_on, mut t_off) = (0, 0, 0, 0);
    for i in 0..trials {
        let mut go = |huge: bool| {
            let (f, d, t) = touch(&mem, bytes, huge);
            if huge {
                (f_on, t_on) = (f, t);
                on.push(d);
            } else {
                (f_off, t_off) = (f, t);
                off.push(d);
            }
        };
        if i % 2 == 0 {
            go(true);
            go(false);
        } else {
            go(false);
            go(true);
        }
    }
    let (d_on, d_off) = (super::median(on), super::median(off));
    let mb = bytes >> 20;
    println!("\ntransparent huge pages: touching {mb} MiB, one store a page (medians of {trials})");
    println!("| pages | faults | time | page-table frames |");
    println!("|---|---|---|---|");
    println!(
        "| 2 MiB (huge pages on) | {f_on} | {:.2} ms | {t_on} |",
        d_on.as_secs_f64() * 1e3
    );
    println!(
        "| 4 KiB (off) | {f_off} | {:.2} ms | {t_off} |",
        d_off.as_secs_f64() * 1e3
    );
    println!(
        "ratio thp_faults_vs_4k touch_{mb}m {:.4}",
        f_on as f64 / f_off as f64
    );
    println!(
        "ratio thp_time_vs_4k touch_{mb}m {:.2}",
        d_on.as_secs_f64() / d_off.as_secs_f64()
    );
}
