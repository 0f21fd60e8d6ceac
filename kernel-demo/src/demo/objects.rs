//! Step 13: memory objects: two processes talking through a shared
//! anonymous mapping, and a file on the virtio disk mapped through the
//! page cache.

use alloc::sync::Arc;
use kernel_demo::dev::qemu;
use kernel_demo::text::Size;
use kernel_demo::{arch::cpu, println};

/// Where the shared mapping is in the processes.
const SHARED: u64 = 0x5000_0000;

pub fn demo_objects() {
    shared_anonymous();
    file();
}

/// A process maps a shared anonymous page and forks; the child's message
/// reaches the parent through it, while their private heaps diverge.
fn shared_anonymous() {
    use kernel_demo::mm::memory::{direct_map, FRAMES};
    use kernel_demo::user::process::{self as proc, with_vm, End, Process};
    use kernel_demo::user::programs::Program;
    use kmem::vm::Prot;
    let object = with_vm(|vm| vm.create_shared_anonymous(4096))
        .unwrap_or_else(|e| qemu::fatal(format_args!("shared object: {e}")));
    let mut p = Process::spawn(1, Program::Share, SHARED)
        .unwrap_or_else(|e| qemu::fatal(format_args!("spawn: {e}")));
    let rw = Prot::RW | Prot::USER;
    with_vm(|vm| {
        p.space
            .map_object(vm, Some(SHARED), 4096, rw, object, 0, true)
    })
    .unwrap_or_else(|e| qemu::fatal(format_args!("map_object: {e}")));
    let done = proc::run_all(alloc::vec![p]);
    let reports = |pid: u64| {
        done.iter()
            .find(|d| d.0 == pid)
            .map(|d| (d.1.clone(), d.2))
            .unwrap_or_else(|| qemu::fatal(format_args!("pid {pid} missing")))
    };
    let ((parent, pend), (child, cend)) = (reports(1), reports(2));
    let hex = |v: &[u64]| {
        v.iter()
            .map(|x| alloc::format!("{x:#x}"))
            .collect::<alloc::vec::Vec<_>>()
            .join(", ")
    };
    println!(
        "pid 1 maps a shared anonymous page at {SHARED:#x}, writes 0x7a9 there and in its heap, forks; the child (pid 2) reports [{}] read there, leaves 0x5a4ed beside it and writes its heap ({cend:?}); the parent reports [{}]: the child's message, and its own heap untouched by the child's copy-on-write ({pend:?})",
        hex(&child),
        hex(&parent)
    );
    if child != [0x7a9] || parent != [0x5a4ed, 0x7a9] || !matches!(pend, End::Exited(0)) {
        qemu::fatal(format_args!("the shared mapping did not carry the message"));
    }
    let cpu = kernel_demo::arch::cpus::cpu_index();
    with_vm(|vm| vm.close_object(object, &direct_map(), cpu, &mut &FRAMES))
        .unwrap_or_else(|e| qemu::fatal(format_args!("close: {e}")));
}

/// A file of 64 pages at the end of the virtio disk, mapped shared over 16
/// frames.
fn file() {
    use kernel_demo::files;
    use kernel_demo::mm::swap_disk::VirtioSwap;
    // Before the driver takes its DMA buffers, given back with the disk.
    let before = kernel_demo::overcommit::accounted_frames();
    let Some(disk) = VirtioSwap::find() else {
        println!("no virtio-blk disk (KMEM_SWAP=0?): no file to map");
        return;
    };
    let (pages, limit) = (64u64, 16u64);
    let first = disk.slots() - pages;
    let disk = Arc::new(disk.locked());
    let t0 = cpu::rdtsc();
    let r = files::run(disk, first, pages, limit);
    let ms = cpu::tsc_per_ms().map_or(0, |t| (cpu::rdtsc() - t0) / t);
    println!(
        "a file of {pages} pages ({}) at disk page {first}, mapped shared over {limit} frames: every page read, every other one rewritten, msync wrote {}, all read back ({} faults; {} pages read from the disk, {} written back, {} left the cache); after close, all {} pages checked on the disk; {ms} ms",
        Size(pages * 4096),
        r.synced,
        r.vm.faults,
        r.object.reads,
        r.object.writes,
        r.vm.object_evictions,
        r.checked_on_disk
    );
    let after = kernel_demo::overcommit::accounted_frames();
    if before != after || r.object.reads <= pages || r.synced == 0 {
        qemu::fatal(format_args!(
            "the file step lost frames ({before} -> {after}) or evicted nothing"
        ));
    }
}
