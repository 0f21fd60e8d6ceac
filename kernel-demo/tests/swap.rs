//! kmem::vm swap on real paging (the CPU sets the Accessed and Dirty bits
//! the reclaim scan reads; TLB entries are flushed as pages leave): a
//! workload four times the frames anonymous memory may hold, every page
//! carrying a checksum verified on each read, first over an in-memory
//! device, then over the virtio-blk swap disk; the raw disk measured side
//! by side in the same boot. Then memory managed over several processes:
//! global reclaim and the out-of-memory choice, frames shared after a fork
//! evicted from both sharers, locked pages under pressure, and madvise.
// kmem-vm: mem=128M swap=64M
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use kernel_demo::mm::swap_disk::VirtioSwap;
use kernel_demo::overcommit;
use kernel_demo::println;
use kmem::vm::MemSwap;

kernel_demo::test_kernel! {
    setup = kernel_demo::mm::kernel_space::enter;

    /// 256 pages over 64 frames and an in-memory device.
    fn overcommit_over_memory() {
        let r = overcommit::run(Box::new(MemSwap::new(1024)), 64, 256);
        println!("\n    {:?}", r.stats);
        assert!(r.stats.swap_outs >= 256 && r.stats.swap_ins >= 256, "{:?}", r.stats);
        assert!(r.stats.swap_cache_hits > 0 && r.stats.readahead > 0, "{:?}", r.stats);
        assert_eq!(r.frames_lost, 0);
    }

    /// The same over a compressed cache (a pool of 16 frames' worth) in
    /// front of the in-memory device, on real paging: half the pages
    /// compress and stay in RAM, every page reads back (checked inside),
    /// the device gets fewer writes than pages went out, and the pool is
    /// empty once the space is gone.
    fn overcommit_over_a_compressed_cache() {
        let z = alloc::sync::Arc::new(kmem::vm::Zswap::new(MemSwap::new(1024), 16 * 4096).unwrap());
        let r = overcommit::run(Box::new(z.clone()), 64, 256);
        let st = z.stats();
        println!("\n    {st:?}");
        assert!(st.stored > 0 && st.rejected > 0 && st.loads > 0, "{st:?}");
        assert!(st.device_writes < r.stats.swap_outs, "{st:?} {:?}", r.stats);
        assert_eq!((st.pool_pages, st.pool_bytes), (0, 0));
        assert_eq!(r.frames_lost, 0);
    }

    /// The virtio-blk disk is found and holds 64 MiB of slots.
    fn virtio_disk_is_found() {
        let d = VirtioSwap::find().expect("a virtio-blk disk (q35, -device virtio-blk-pci)");
        assert_eq!(d.slots(), 64 << 20 >> 12);
    }

    /// A file of 64 pages at the end of the disk mapped shared over 16
    /// frames (no swap): every page read, every other one rewritten,
    /// synced, read back after eviction, checked on the disk after close
    /// (inside `files::run`); every frame back.
    fn a_file_on_the_disk_through_the_page_cache() {
        let before = overcommit::accounted_frames();
        let d = VirtioSwap::find().expect("the disk");
        let first = d.slots() - 64;
        let r = kernel_demo::files::run(alloc::sync::Arc::new(d.locked()), first, 64, 16);
        println!("\n    {:?}", r.object);
        assert!(r.object.reads > 64, "evicted pages read again: {:?}", r.object);
        assert!(r.object.writes >= 32 && r.synced > 0, "{r:?}");
        assert!(r.vm.object_evictions >= 48, "{:?}", r.vm);
        assert_eq!(r.checked_on_disk, 64);
        assert_eq!(overcommit::accounted_frames(), before);
    }

    /// 1024 pages over 256 frames on the disk; clustered write-out against
    /// raw 64 KiB writes, swap-in faults against raw 4 KiB reads.
    fn overcommit_over_the_disk() {
        let before = overcommit::accounted_frames();
        let mut raw = VirtioSwap::find().expect("the disk");
        let t = |f: &mut dyn FnMut()| {
            let t0 = kernel_demo::arch::cpu::rdtsc();
            f();
            kernel_demo::arch::cpu::rdtsc() - t0
        };
        // Raw 64 KiB sequential writes, 4 MiB in all.
        let writes = t(&mut || {
            for i in 0..64 {
                assert!(raw.raw_write(8192 + i * 16, 16));
            }
        });
        let raw_write_tpp = writes / (64 * 16); // ticks per page
        // Raw random 4 KiB reads: median of 64.
        let mut reads: alloc::vec::Vec<u64> = (0..64u64)
            .map(|i| t(&mut || assert!(raw.raw_read(8192 + (i * 37) % 1024, 1))))
            .collect();
        reads.sort_unstable();
        let raw_read = reads[32];
        let r = overcommit::run(Box::new(raw.locked()), 256, 1024);
        let swap_tpp = r.write_ticks / r.written.max(1);
        println!("\n    {:?}", r.stats);
        println!(
            "    raw 64 KiB writes {} ticks/page, swap-out writes {} ticks/page ({:.0} % of raw throughput); raw 4 KiB read median {} ticks, swap-in fault median {} ticks ({:.2}x)",
            raw_write_tpp,
            swap_tpp,
            raw_write_tpp as f64 * 100.0 / swap_tpp.max(1) as f64,
            raw_read,
            r.swap_in_median,
            r.swap_in_median as f64 / raw_read.max(1) as f64
        );
        assert!(r.stats.swap_outs >= 1024 && r.stats.swap_ins >= 1024, "{:?}", r.stats);
        // The device's own frames (queue, bounce buffer) went with it.
        assert_eq!(overcommit::accounted_frames(), before);
    }

    /// A trace replayed by the kernel on real paging (the CPU sets the
    /// Accessed bits the policy harvests) faults exactly as often as the
    /// host simulator says, for CLOCK, CLOCK-Pro and the adaptive duel.
    fn replayed_trace_matches_the_simulator() {
        use kmem::vm::replace::{sim, Adaptive, Clock, ClockPro, ReplacementPolicy};
        let mut rng = 0x5eed_1234_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let trace: alloc::vec::Vec<u64> = (0..3000)
            .map(|i| match i / 1000 {
                0 => i % 40,                                               // a loop over 40 pages
                1 => if next() % 10 < 7 { next() % 16 } else { 16 + next() % 64 }, // skewed
                _ => 100 + next() % 40,                                    // a new working set
            })
            .collect();
        let limit = 32;
        type MakePolicy = fn() -> Box<dyn ReplacementPolicy + Send>;
        let policies: [(&str, MakePolicy); 3] = [
            ("clock", || Box::new(Clock::new(32))),
            ("clock-pro", || Box::new(ClockPro::new(32))),
            ("adaptive", || Box::new(Adaptive::new(32))),
        ];
        for (name, make) in policies {
            let ids: alloc::vec::Vec<u64> = trace.iter().map(|&p| (0x2000_0000 >> 12) + p).collect();
            let expected = sim::replay_harvested(&mut *make(), &ids).faults;
            let kernel = overcommit::replay(&trace, limit, make(), Box::new(MemSwap::new(512)));
            println!("\n    {name}: kernel {kernel} faults, simulator {expected}");
            assert_eq!(kernel, expected, "{name}");
        }
    }

    /// Six processes with shifting working sets under one policy over all
    /// of them, then a runaway: it is the one chosen and ended, every other
    /// page reads back as last written (checked inside), every frame and
    /// slot comes back.
    fn global_reclaim_and_the_oom_choice() {
        let before = overcommit::accounted_frames();
        let r = kernel_demo::workingsets::run(Box::new(MemSwap::new(160)), 40, 160);
        let faults: u64 = r.processes.iter().map(|p| p.faults).sum();
        println!("\n    {faults} faults, worker {} steps, {:?}", r.worker_steps, r.oom);
        let choice = r.oom.expect("a victim");
        assert_eq!(choice.id, kernel_demo::workingsets::PROCESSES as u64);
        assert!(r.runaway_pages > 40, "the runaway filled frames and swap first");
        // Six sets of 16 pages first-touched, then two sets at a time: well
        // under one fault per access (1500 accesses in the phases).
        assert!(faults < 500, "{faults} faults");
        assert!(r.worker_steps > 0);
        assert_eq!(overcommit::accounted_frames(), before);
    }

    /// A parent and its child after a fork: the worker evicts the frames
    /// they share from both at once (one slot each), both read every page
    /// back, and a write by the child leaves the parent's copy alone.
    fn shared_frames_evicted_from_both_sharers() {
        let before = overcommit::accounted_frames();
        control::shared_after_fork();
        assert_eq!(overcommit::accounted_frames(), before);
    }

    /// Locked pages stay resident while 48 more pages pass through 16
    /// frames; DontNeed drops pages (they read back as zeros), PageOut
    /// writes pages out now (they read back as written).
    fn locked_pages_and_advice_on_real_paging() {
        let before = overcommit::accounted_frames();
        control::locked_and_advised();
        assert_eq!(overcommit::accounted_frames(), before);
    }
}

/// Kernel-mode access to user address spaces, faulting into `kmem::vm`
/// through the fault hook, for the memory-control tests.
mod control {
    use alloc::boxed::Box;
    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicUsize, Ordering};
    use kernel_demo::arch::interrupts;
    use kernel_demo::arch::trap::{vector, Fault};
    use kernel_demo::mm::memory::{with_memory, FRAMES};
    use kernel_demo::user::process::{configure_vm, with_tlb, with_vm};
    use kmem::paging::{AddressSpace, Mmu, OffsetPhysMem, X86Mmu};
    use kmem::vm::global::Watermarks;
    use kmem::vm::replace::Clock;
    use kmem::vm::{Advice, FaultAccess, MemSwap, Prot, VmSpace, USER_RANGE};
    use x86_64::VirtAddr;

    type Space = VmSpace<OffsetPhysMem>;
    const BASE: u64 = 0x3000_0000;

    static SPACES: spin::Mutex<Vec<Space>> = spin::Mutex::new(Vec::new());
    static RUNNING: AtomicUsize = AtomicUsize::new(usize::MAX);

    fn hook(f: &Fault) -> bool {
        if f.vector != vector::PAGE_FAULT {
            return false;
        }
        let Some(spaces) = SPACES.try_lock() else {
            return false;
        };
        let Some(space) = spaces.get(RUNNING.load(Ordering::Relaxed)) else {
            return false;
        };
        let access = FaultAccess::from_error_code(f.error_code);
        let addr = VirtAddr::new_truncate(f.addr);
        with_vm(|vm| with_tlb(|tlb| space.handle_fault(vm, addr, access, &mut &FRAMES, tlb)))
            .is_ok()
    }

    fn new_space(pages: u64) -> Space {
        let tables = with_memory(|m| AddressSpace::new(m.mapper, &mut m.frames)).expect("a PML4");
        let mut s = VmSpace::with_mapper(tables.into_mapper(), USER_RANGE.0, USER_RANGE.1)
            .map_err(|(_, e)| e)
            .expect("an empty user half");
        s.map_anonymous(Some(BASE), pages * 4096, Prot::RW)
            .expect("an area");
        s
    }

    /// Makes space `i` the running one (leaving the previous one's CPU set).
    fn run(i: usize) {
        let spaces = SPACES.lock();
        let cpu = kernel_demo::arch::cpus::cpu_index();
        if let Some(old) = spaces.get(RUNNING.load(Ordering::Relaxed)) {
            old.cpus().leave(cpu);
        }
        spaces[i].cpus().enter(cpu);
        RUNNING.store(i, Ordering::Relaxed);
        // SAFETY: the space shares the kernel half; `finish` switches back.
        unsafe { X86Mmu.set_cr3(spaces[i].pml4()) };
    }

    fn write(page: u64, value: u64) {
        // SAFETY: the running space maps the area; a fault maps the page.
        unsafe { ((BASE + page * 4096) as *mut u64).write_volatile(value) };
    }

    fn read(page: u64) -> u64 {
        // SAFETY: as in `write`.
        unsafe { ((BASE + page * 4096) as *const u64).read_volatile() }
    }

    fn start(limit: u64, slots: u64, global: bool) -> x86_64::structures::paging::PhysFrame {
        with_vm(|_| {});
        configure_vm(|vm| {
            vm.set_frame_limit(Some(limit));
            if global {
                vm.set_global_policy(Box::new(Clock::new(limit as usize)));
                vm.set_watermarks(Some(Watermarks {
                    min: 0,
                    low: 0,
                    high: 0,
                }));
            }
            assert!(vm.attach_swap(Box::new(MemSwap::new(slots))).is_ok());
        });
        interrupts::set_fault_hook(Some(hook));
        X86Mmu.cr3()
    }

    fn finish(kernel: x86_64::structures::paging::PhysFrame) {
        interrupts::set_fault_hook(None);
        // SAFETY: the kernel's own tables.
        unsafe { X86Mmu.set_cr3(kernel) };
        let mut spaces = SPACES.lock();
        if let Some(old) = spaces.get(RUNNING.swap(usize::MAX, Ordering::Relaxed)) {
            old.cpus().leave(kernel_demo::arch::cpus::cpu_index());
        }
        for s in spaces.drain(..) {
            with_vm(|vm| with_tlb(|tlb| s.destroy(vm, &mut &FRAMES, tlb)))
                .map_err(|e| e.1)
                .expect("teardown");
        }
        configure_vm(|vm| {
            vm.set_frame_limit(None);
            vm.set_watermarks(None);
            drop(vm.take_global_policy());
            let s = vm.stats();
            assert_eq!((s.resident_frames, s.swap_slots_used), (0, 0), "{s:?}");
            drop(vm.detach_swap().expect("no slot in use"));
        });
    }

    pub fn shared_after_fork() {
        let kernel = start(64, 64, true);
        let mut parent = new_space(16);
        parent.join_global(1).unwrap();
        SPACES.lock().push(parent);
        run(0);
        for p in 0..8 {
            write(p, 100 + p);
        }
        // The fork write-protects the parent's pages on this CPU too.
        let mut child = {
            let mut spaces = SPACES.lock();
            with_vm(|vm| with_tlb(|tlb| spaces[0].fork(vm, &mut &FRAMES, tlb))).expect("fork")
        };
        child.join_global(2).unwrap();
        SPACES.lock().push(child);
        let shared = with_vm(|vm| vm.stats().shared_frames);
        assert_eq!(shared, 8);
        let freed = {
            let spaces = SPACES.lock();
            let table: Vec<&Space> = spaces.iter().collect();
            with_vm(|vm| with_tlb(|tlb| vm.reclaim_global(&table[..], 8, &mut &FRAMES, tlb)))
                .expect("reclaim")
        };
        let s = with_vm(|vm| vm.stats());
        assert_eq!(
            (freed, s.shared_frames, s.swap_slots_used),
            (8, 0, 8),
            "{s:?}"
        );
        for i in [0, 1] {
            run(i);
            for p in 0..8 {
                assert_eq!(read(p), 100 + p, "space {i} page {p}");
            }
        }
        write(0, 7); // the child (running)
        assert_eq!(read(0), 7);
        run(0);
        assert_eq!(read(0), 100);
        finish(kernel);
    }

    pub fn locked_and_advised() {
        let kernel = start(16, 128, false);
        SPACES.lock().push(new_space(64));
        run(0);
        for p in 0..8 {
            write(p, 200 + p);
        }
        {
            let mut spaces = SPACES.lock();
            with_vm(|vm| with_tlb(|tlb| spaces[0].lock(BASE, 4 * 4096, vm, &mut &FRAMES, tlb)))
                .expect("lock");
        }
        for p in 8..56 {
            write(p, 200 + p);
        }
        let resident_locked = {
            let spaces = SPACES.lock();
            (0..4).all(|p| {
                spaces[0]
                    .mapper()
                    .translate(VirtAddr::new(BASE + p * 4096))
                    .is_ok()
            })
        };
        assert!(resident_locked, "a locked page was reclaimed");
        for p in 0..56 {
            assert_eq!(read(p), 200 + p, "page {p}");
        }
        let (dropped, out) = {
            let mut spaces = SPACES.lock();
            let s = &mut spaces[0];
            let dropped = with_vm(|vm| {
                with_tlb(|tlb| {
                    s.advise(
                        BASE + 4 * 4096,
                        4 * 4096,
                        Advice::DontNeed,
                        vm,
                        &mut &FRAMES,
                        tlb,
                    )
                })
            })
            .expect("dontneed");
            let out = with_vm(|vm| {
                with_tlb(|tlb| {
                    s.advise(
                        BASE + 8 * 4096,
                        48 * 4096,
                        Advice::PageOut,
                        vm,
                        &mut &FRAMES,
                        tlb,
                    )
                })
            })
            .expect("pageout");
            (dropped, out)
        };
        assert_eq!(dropped, 4, "frames or slots of pages 4..8 given back");
        kernel_demo::println!("\n    dontneed gave back {dropped}, pageout wrote {out}");
        for p in 4..8 {
            assert_eq!(read(p), 0, "page {p} after DontNeed");
        }
        for p in 8..56 {
            assert_eq!(read(p), 200 + p, "page {p} after PageOut");
        }
        finish(kernel);
    }
}
