//! The framework's own checks on real hardware semantics: boot info,
//! expected faults of each kind, and recovery between tests.
// kmem-vm: mem=128M
#![no_std]
#![no_main]

use kernel_demo::testing::{Expect, PageFaultErrorCode as Pf};
use kernel_demo::{arch::cpu, boot};

/// Canonical, far above the boot identity map: never mapped.
const UNMAPPED: u64 = 0x0000_1000_0000_0000;

kernel_demo::test_kernel! {
    /// QEMU's map has usable RAM near the requested size, above 1 MiB.
    fn memory_map_is_sane() {
        let info = boot::info();
        let usable = info.usable_bytes();
        assert!(usable > 100 << 20 && usable <= 128 << 20, "usable {usable:#x}");
        assert!(info.regions().iter().any(|r| r.start >= 1 << 20 && r.kind == kmem::memory_map::RegionKind::Usable));
    }

    /// The kernel image lies in usable RAM above 1 MiB.
    fn kernel_image_in_ram() {
        let (start, end) = boot::info().kernel_image();
        assert!(start >= 1 << 20 && end > start);
        let covered = boot::info()
            .regions()
            .iter()
            .any(|r| r.kind == kmem::memory_map::RegionKind::Usable && r.start <= start && end <= r.start + r.len);
        assert!(covered, "image {start:#x}..{end:#x} not inside one usable region");
    }

    /// Writing to an unmapped address faults with the write bit set.
    #[should_fault(Expect::page_fault().at(UNMAPPED).with(Pf::CAUSED_BY_WRITE).without(Pf::PROTECTION_VIOLATION))]
    fn write_to_unmapped_faults() {
        // SAFETY: deliberately faults; the framework catches it.
        unsafe { (UNMAPPED as *mut u64).write_volatile(0x5a5a) };
    }

    /// Reading an unmapped address faults without the write bit.
    #[should_fault(Expect::page_fault().at(UNMAPPED + 8).without(Pf::CAUSED_BY_WRITE))]
    fn read_of_unmapped_faults() {
        // SAFETY: deliberately faults; the framework catches it.
        let v = unsafe { ((UNMAPPED + 8) as *const u64).read_volatile() };
        core::hint::black_box(v);
    }

    /// Jumping to an unmapped address faults as an instruction fetch.
    #[should_fault(Expect::page_fault().at(UNMAPPED + 0x1000).with(Pf::INSTRUCTION_FETCH))]
    fn execute_unmapped_faults() {
        assert!(cpu::has_nx(), "the fetch bit is reported only with NX enabled");
        // SAFETY: deliberately faults on the fetch; the framework catches it.
        let f: extern "C" fn() = unsafe { core::mem::transmute(UNMAPPED as usize + 0x1000) };
        f();
    }

    /// After recovery from faults, the stack and registers still work.
    fn state_survives_recovery() {
        let v: [u64; 64] = core::array::from_fn(|i| i as u64 * 3);
        let sum: u64 = core::hint::black_box(&v).iter().sum();
        assert_eq!(sum, 3 * 63 * 64 / 2);
    }

    /// The kernel runs in the higher half; its sections are page-aligned,
    /// in order, W^X, and end where the physical image ends.
    fn image_sections_are_w_xor_x() {
        use kernel_demo::boot::image::{segments, KERNEL_OFFSET};
        let here = image_sections_are_w_xor_x as fn() as usize as u64;
        assert!(here >= KERNEL_OFFSET, "code at {here:#x}");
        let segs = segments();
        assert_eq!(segs.iter().filter(|s| s.executable).count(), 1);
        assert!(segs.iter().all(|s| !(s.writable && s.executable)));
        assert!(segs.iter().all(|s| s.start % 4096 == 0 && s.end % 4096 == 0 && !s.is_empty()));
        assert!(segs.windows(2).all(|w| w[0].end <= w[1].start));
        assert!(segs[0].contains_addr(here));
        let (_, phys_end) = boot::info().kernel_image();
        assert_eq!(segs[2].end - KERNEL_OFFSET, phys_end);
    }

    /// The command line reaches the kernel (the runner passes a filter only
    /// when asked, so an empty one is fine) and parses as key=value words.
    fn cmdline_is_copied() {
        let info = boot::info();
        if let Some(f) = info.cmdline_arg("filter") {
            assert!(info.cmdline().contains(f));
        }
        let (_, cmdline_len) = info.boot_data()[2];
        assert!(info.cmdline().len() as u64 <= cmdline_len);
    }

    /// The time-stamp counter moves forward.
    fn tsc_advances() {
        let a = cpu::rdtsc();
        let b = cpu::rdtsc();
        assert!(b > a);
    }
}
