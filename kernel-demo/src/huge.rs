//! Huge pages for user memory on real paging: a space touches a 2 MiB-aligned
//! area one store a page, kernel-mode through the fault hook
//! ([`in_space`]), with `kmem::vm`'s transparent huge pages on or off; the
//! faults it took, its page-table frames and the time, then every word
//! checked and the space destroyed.

use crate::arch::cpu;
use crate::mm::memory::{HugeRuns, FRAMES};
use crate::overcommit::{empty_space, in_space};
use crate::user::process::{configure_vm, with_tlb, with_vm};
use alloc::boxed::Box;
use kmem::vm::Prot;

/// Where the area is (2 MiB-aligned).
const BASE: u64 = 0x4000_0000;

/// What one touch measured.
#[derive(Debug, Clone, Copy)]
pub struct Touch {
    /// Faults taken.
    pub faults: u64,
    /// Of them, 2 MiB first faults.
    pub huge_faults: u64,
    /// Page-table frames of the space (PML4 included) once touched.
    pub tables: u64,
    /// TSC ticks of the touch.
    pub ticks: u64,
}

/// Touches `bytes` (a multiple of 2 MiB) one store a page, with huge pages
/// on (`huge`) or off; checks every word, destroys the space.
pub fn touch(bytes: u64, huge: bool) -> Touch {
    if huge {
        configure_vm(|vm| vm.set_huge_frames(Some(Box::new(HugeRuns))));
    }
    let before = with_vm(|vm| vm.stats());
    let mut space = empty_space();
    space
        .map_anonymous(Some(BASE), bytes, Prot::RW)
        .expect("the area");
    let pages = bytes / 4096;
    let (space, ticks) = in_space(space, || {
        let t0 = cpu::rdtsc();
        for p in 0..pages {
            // SAFETY: the area of the active space; a fault maps the page.
            unsafe { ((BASE + p * 4096) as *mut u64).write_volatile(p ^ 0x5a5a) };
        }
        let ticks = cpu::rdtsc() - t0;
        for p in 0..pages {
            // SAFETY: as above.
            let w = unsafe { ((BASE + p * 4096) as *const u64).read_volatile() };
            assert_eq!(w, p ^ 0x5a5a, "page {p}");
        }
        ticks
    });
    let after = with_vm(|vm| vm.stats());
    let tables = with_vm(|vm| space.usage(vm)).tables;
    with_vm(|vm| with_tlb(|tlb| space.destroy(vm, &mut &FRAMES, tlb)))
        .map_err(|e| e.1)
        .expect("teardown");
    if huge {
        configure_vm(|vm| vm.set_huge_frames(None));
    }
    Touch {
        faults: after.faults - before.faults,
        huge_faults: after.huge_faults - before.huge_faults,
        tables,
        ticks,
    }
}
