//! Step 9: ring-3 processes, each in its own `kmem::vm` address space.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use kernel_demo::mm::memory::{self};
use kernel_demo::{arch::cpu, println};
use x86_64::VirtAddr;

/// `secret`: a kernel data address a process tries to read; `kernel_text`:
/// a kernel function a process tries to jump to (both must be refused).
pub fn demo_processes(secret: u64, kernel_text: u64) {
    use kernel_demo::user::process::{
        self as proc, End, Process, HEAP_BASE, STACK_PAGES, STACK_TOP,
    };
    use kernel_demo::user::programs::Program;
    use kmem::vm::FaultAccess;
    let (smep, smap) = proc::enable_smep_smap();
    println!("SMEP {smep}, SMAP {smap}: the kernel cannot run or (without stac) touch user pages");
    let free0 = memory::FRAMES.with(|f| f.stats().free);
    let guard = STACK_TOP - (STACK_PAGES + 1) * 4096;
    let spawn = |pid, program, arg| {
        Process::spawn(pid, program, arg)
            .unwrap_or_else(|e| kernel_demo::dev::qemu::fatal(format_args!("spawn: {e}")))
    };
    let procs = alloc::vec![
        spawn(1, Program::Tag, 0x1111),
        spawn(2, Program::Tag, 0x2222),
        spawn(3, Program::Fork, 0x7777),
        spawn(4, Program::Read, secret),
        spawn(5, Program::Jump, kernel_text),
        spawn(6, Program::Write, 0x5000_0000),
        spawn(7, Program::Write, guard),
    ];
    println!(
        "{} processes, each its own address space: code at {:#x} (R+X), heap at {HEAP_BASE:#x} and stack below {STACK_TOP:#x} (RW, demand-zero, guard page below)",
        procs.len(),
        proc::CODE_BASE
    );
    print_layout(spawn(8, Program::Tag, 0));
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
            proc::with_tlb(|tlb| p.space.handle_fault(vm, a, write, frames, tlb))
                .expect("demand zero");
        }
    });
    let t1 = cpu::rdtsc();
    let child =
        proc::with_vm(|vm| proc::with_tlb(|tlb| p.space.fork(vm, frames, tlb))).expect("fork");
    let t2 = cpu::rdtsc();
    let cow = FaultAccess {
        present: true,
        ..write
    };
    proc::with_vm(|vm| {
        for i in 0..n {
            let a = VirtAddr::new(HEAP_BASE + i * 4096);
            proc::with_tlb(|tlb| child.handle_fault(vm, a, cow, frames, tlb))
                .expect("copy on write");
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
    proc::with_vm(|vm| {
        proc::with_tlb(|tlb| {
            child.destroy(vm, frames, tlb).map_err(|(_, e)| e)?;
            p.space.destroy(vm, frames, tlb).map_err(|(_, e)| e)
        })
    })
    .unwrap_or_else(|e| kernel_demo::dev::qemu::fatal(format_args!("destroy: {e}")));
    let s = proc::vm_stats();
    println!(
        "vm counters: {} faults: {} zero-filled, {} zero-page maps, {} copied on write, {} write access regained, {} spurious, {} refused; {} frames shared now",
        s.faults, s.zero_fills, s.zero_page_maps, s.cow_copies, s.cow_reuses, s.spurious, s.protection_faults, s.shared_frames
    );
    let free1 = memory::FRAMES.with(|f| f.stats().free);
    println!("free frames before the processes {free0}, after {free1} (the difference is heap growth and the zero frame)");
}

/// A process's layout: its areas, and where chosen addresses go (above
/// 64 KiB, top-down from a top lowered by the TSC as the kernel's entropy).
fn print_layout(mut p: kernel_demo::user::process::Process) {
    use kernel_demo::user::process as proc;
    use kmem::vm::{Prot, UserLayout, USER_RANGE};
    let default_top = UserLayout::for_range(USER_RANGE.0, USER_RANGE.1).top;
    let top = p
        .space
        .randomize(cpu::rdtsc().wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let place = |r: Result<u64, kmem::vm::VmError>| {
        r.unwrap_or_else(|e| kernel_demo::dev::qemu::fatal(format_args!("mmap: {e}")))
    };
    let a = place(p.space.map_anonymous(None, 0x4000, Prot::RW | Prot::USER));
    let b = place(
        p.space
            .map_anonymous(Some(0x1234), 0x1000, Prot::READ | Prot::USER),
    );
    let min = p.space.layout().min_addr;
    println!(
        "layout of pid {}: chosen addresses in {min:#x}..{top:#x} (at least 64 KiB; the top lowered at random from {default_top:#x}); mmap(none, 16 KiB) -> {a:#x}; mmap(hint 0x1234, 4 KiB) -> {b:#x} (below 64 KiB: not taken)",
        p.pid
    );
    for area in p.space.areas() {
        println!(
            "  {:#014x}..{:#014x}  {:?} {:?}",
            area.start, area.end, area.prot, area.kind
        );
    }
    proc::with_vm(|vm| proc::with_tlb(|tlb| p.space.destroy(vm, &mut &memory::FRAMES, tlb)))
        .unwrap_or_else(|(_, e)| kernel_demo::dev::qemu::fatal(format_args!("destroy: {e}")));
}
