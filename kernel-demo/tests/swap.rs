//! kmem::vm swap on real paging (the CPU sets the Accessed and Dirty bits
//! the reclaim scan reads; TLB entries are flushed as pages leave): a
//! workload four times the frames anonymous memory may hold, every page
//! carrying a checksum verified on each read, first over an in-memory
//! device, then over the virtio-blk swap disk; the raw disk measured side
//! by side in the same boot.
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

    /// The virtio-blk disk is found and holds 64 MiB of slots.
    fn virtio_disk_is_found() {
        let d = VirtioSwap::find().expect("a virtio-blk disk (q35, -device virtio-blk-pci)");
        assert_eq!(d.slots(), 64 << 20 >> 12);
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
}
