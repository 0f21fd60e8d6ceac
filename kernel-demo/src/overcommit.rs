//! Kernel-mode workloads in a `kmem::vm` space ([`in_space`]), and the
//! first of them: a workload larger than the frames anonymous memory may hold, over a
//! swap device: sequential, random and hot-set passes, every page carrying
//! a checksum verified on every read; then teardown with every frame and
//! slot back. Kernel-mode accesses fault into `kmem::vm` through the fault
//! hook, on real paging (the CPU sets the Accessed and Dirty bits).

use crate::arch::interrupts;
use crate::arch::trap::{vector, Fault};
use crate::mm::memory::{with_memory, FRAMES};
use crate::user::process::{configure_vm, with_tlb, with_vm};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use kmem::paging::{AddressSpace, Mmu, OffsetPhysMem, X86Mmu};
use kmem::vm::{
    FaultAccess, FaultOutcome, Prot, SwapDevice, SwapIoError, VmSpace, VmStats, USER_RANGE,
};
use x86_64::VirtAddr;

/// Where the workload's memory is.
const BASE: u64 = 0x2000_0000;

/// The space whose kernel-mode faults the hook resolves.
static ACTIVE: spin::Mutex<Option<VmSpace<OffsetPhysMem>>> = spin::Mutex::new(None);
/// TSC cost of each swap-in fault while recording (the random passes).
static SWAP_IN_TICKS: spin::Mutex<Option<Vec<u64>>> = spin::Mutex::new(None);

fn hook(f: &Fault) -> bool {
    if f.vector != vector::PAGE_FAULT {
        return false;
    }
    let Some(mut guard) = ACTIVE.try_lock() else {
        return false;
    };
    let Some(space) = guard.as_mut() else {
        return false;
    };
    let access = FaultAccess::from_error_code(f.error_code);
    let t0 = crate::arch::cpu::rdtsc();
    let addr = VirtAddr::new_truncate(f.addr);
    let r = with_vm(|vm| with_tlb(|tlb| space.handle_fault(vm, addr, access, &mut &FRAMES, tlb)));
    let ticks = crate::arch::cpu::rdtsc() - t0;
    match r {
        Ok(outcome) => {
            if outcome == FaultOutcome::SwappedIn {
                if let Some(v) = SWAP_IN_TICKS.try_lock().as_mut().and_then(|g| g.as_mut()) {
                    v.push(ticks);
                }
            }
            true
        }
        Err(_) => false,
    }
}

/// Word `i` of page `page` written in pass `pass`: every other page
/// text-like (a few words repeating, which compresses), the rest spread.
fn word(page: u64, pass: u64, i: u64) -> u64 {
    if page.is_multiple_of(2) {
        (page << 32) ^ (pass << 20) ^ (i % 5)
    } else {
        (page << 32) ^ (pass << 20) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

fn write_page(page: u64, pass: u64) {
    let p = (BASE + page * 4096) as *mut u64;
    let mut sum = 0u64;
    for i in 0..511 {
        let w = word(page, pass, i);
        sum = sum.wrapping_add(w);
        // SAFETY: the workload's space is active; faults map the page.
        unsafe { p.add(i as usize).write_volatile(w) };
    }
    // SAFETY: as above.
    unsafe { p.add(511).write_volatile(sum) };
}

fn check_page(page: u64, pass: u64) {
    let p = (BASE + page * 4096) as *const u64;
    let mut sum = 0u64;
    for i in 0..511 {
        // SAFETY: the workload's space is active; faults map the page.
        let w = unsafe { p.add(i as usize).read_volatile() };
        assert_eq!(w, word(page, pass, i), "page {page} word {i}");
        sum = sum.wrapping_add(w);
    }
    // SAFETY: as above.
    let stored = unsafe { p.add(511).read_volatile() };
    assert_eq!(stored, sum, "page {page} checksum");
}

/// Free frames, frames the heap holds (its tracker's included) and the
/// kernel's page tables: what must be the same before and after.
pub fn accounted_frames() -> u64 {
    let heap = crate::mm::heap::HEAP.lock();
    let h = heap.heap().expect("heap");
    let held = h.stats().pages_held as u64 + h.tracker().stats().bitmap_pages as u64;
    drop(heap);
    let tables = with_memory(|m| m.mapper.for_each_leaf(|_| {}).tables as u64);
    FRAMES.with(|f| f.stats().free) + held + tables
}

/// TSC ticks spent in device writes during a run, and pages written.
static WRITE_TICKS: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Times a device's writes.
struct Timed {
    inner: Box<dyn SwapDevice + Send>,
}

/// What the workload measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The vm counters after the passes.
    pub stats: VmStats,
    /// TSC ticks in device writes, and pages written by them.
    pub write_ticks: u64,
    /// Pages written.
    pub written: u64,
    /// Median TSC ticks of a swap-in fault in the random passes.
    pub swap_in_median: u64,
    /// Frames lost (0 when everything came back).
    pub frames_lost: i64,
}

impl SwapDevice for Timed {
    fn slots(&self) -> u64 {
        self.inner.slots()
    }
    fn write(&self, first: u64, pages: &[&[u8; 4096]]) -> Result<(), SwapIoError> {
        let t0 = crate::arch::cpu::rdtsc();
        let r = self.inner.write(first, pages);
        WRITE_TICKS.fetch_add(crate::arch::cpu::rdtsc() - t0, Ordering::Relaxed);
        WRITTEN.fetch_add(pages.len() as u64, Ordering::Relaxed);
        r
    }
    fn read(&self, first: u64, pages: &mut [&mut [u8; 4096]]) -> Result<(), SwapIoError> {
        self.inner.read(first, pages)
    }
    fn discard(&self, slot: u64) {
        self.inner.discard(slot);
    }
    fn copy_in_ram(&self, slot: u64) -> bool {
        self.inner.copy_in_ram(slot)
    }
}

/// Runs `pages` pages over `limit` frames on `device`; panics on any
/// wrong byte. Returns the measures.
pub fn run(device: Box<dyn SwapDevice + Send>, limit: u64, pages: u64) -> Report {
    with_vm(|_| {}); // the zero frame, made on first use
    let before = accounted_frames();
    WRITE_TICKS.store(0, Ordering::Relaxed);
    WRITTEN.store(0, Ordering::Relaxed);
    let timed = Timed { inner: device };
    configure_vm(|vm| {
        vm.set_frame_limit(Some(limit));
        assert!(
            vm.attach_swap(Box::new(timed)).is_ok(),
            "no other swap device in use"
        );
    });
    let mut space = empty_space();
    space
        .map_anonymous(Some(BASE), pages * 4096, Prot::RW)
        .expect("the workload's area");
    let (space, recorded) = in_space(space, || passes(limit, pages));
    let stats = with_vm(|vm| vm.stats());
    with_vm(|vm| with_tlb(|tlb| space.destroy(vm, &mut &FRAMES, tlb)))
        .map_err(|e| e.1)
        .expect("teardown");
    let mut ticks = recorded.unwrap_or_default();
    ticks.sort_unstable();
    let swap_in_median = ticks.get(ticks.len() / 2).copied().unwrap_or(0);
    drop(ticks);
    configure_vm(|vm| {
        vm.set_frame_limit(None);
        let after = vm.stats();
        assert_eq!(
            (
                after.resident_frames,
                after.swap_slots_used,
                after.swap_cached
            ),
            (0, 0, 0),
            "{after:?}"
        );
        drop(vm.detach_swap().expect("no slot in use"));
    });
    let frames_lost = before as i64 - accounted_frames() as i64;
    Report {
        stats,
        write_ticks: WRITE_TICKS.load(Ordering::Relaxed),
        written: WRITTEN.load(Ordering::Relaxed),
        swap_in_median,
        frames_lost,
    }
}

/// The six passes over `pages` pages (in the active space): sequential,
/// random (swap-in faults timed), then a hot set of half the limit.
/// Returns the timed faults' ticks.
fn passes(limit: u64, pages: u64) -> Option<Vec<u64>> {
    let mut last = alloc::vec![u64::MAX; pages as usize];
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut recorded = None;
    for pass in 0..6u64 {
        // Swap-in faults are timed in the random passes.
        if pass == 2 {
            *SWAP_IN_TICKS.lock() = Some(Vec::new());
        }
        if pass == 4 {
            recorded = SWAP_IN_TICKS.lock().take();
        }
        for k in 0..pages {
            let page = match pass {
                0 | 1 => k,
                2 | 3 => {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % pages
                }
                _ => k % (limit / 2),
            };
            if last[page as usize] != u64::MAX && k % 2 == 0 {
                check_page(page, last[page as usize]);
            } else {
                write_page(page, pass);
                last[page as usize] = pass;
            }
        }
    }
    recorded
}

/// A new address space sharing the kernel half, its user half empty.
pub fn empty_space() -> VmSpace<OffsetPhysMem> {
    let tables = with_memory(|m| AddressSpace::new(m.mapper, &mut m.frames)).expect("a PML4");
    VmSpace::with_mapper(tables.into_mapper(), USER_RANGE.0, USER_RANGE.1)
        .map_err(|(_, e)| e)
        .expect("a new address space maps nothing in its user half")
}

/// Runs `f` with `space` loaded on this CPU, its kernel-mode faults
/// resolved through `kmem::vm` (the fault hook); hands the space back
/// with `f`'s result.
pub fn in_space<R>(
    space: VmSpace<OffsetPhysMem>,
    f: impl FnOnce() -> R,
) -> (VmSpace<OffsetPhysMem>, R) {
    let pml4 = space.pml4();
    *ACTIVE.lock() = Some(space);
    let kernel = X86Mmu.cr3();
    // SAFETY: the space shares the kernel half; switched back below.
    unsafe { X86Mmu.set_cr3(pml4) };
    interrupts::set_fault_hook(Some(hook));
    let r = f();
    interrupts::set_fault_hook(None);
    // SAFETY: back to the kernel's own tables.
    unsafe { X86Mmu.set_cr3(kernel) };
    let space = ACTIVE.lock().take().expect("the space set above");
    (space, r)
}

/// Replays `trace` (page numbers) as kernel writes over `limit` frames,
/// one page reclaimed per fault and no readahead, with `policy` choosing
/// the victims; returns the faults that brought a page in (first touches
/// and swap-ins), to compare with `kmem::vm::replace::sim::replay_harvested`.
pub fn replay(
    trace: &[u64],
    limit: u64,
    policy: Box<dyn kmem::vm::replace::ReplacementPolicy + Send>,
    device: Box<dyn SwapDevice + Send>,
) -> u64 {
    let pages = trace.iter().max().map_or(1, |&m| m + 1);
    configure_vm(|vm| {
        vm.set_frame_limit(Some(limit));
        vm.set_reclaim(Some(1), 1);
        assert!(
            vm.attach_swap(device).is_ok(),
            "no other swap device in use"
        );
    });
    let mut space = empty_space();
    space.set_policy(policy);
    space
        .map_anonymous(Some(BASE), pages * 4096, Prot::RW)
        .expect("the trace's area");
    let before = with_vm(|vm| vm.stats());
    let (space, ()) = in_space(space, || {
        for (i, &p) in trace.iter().enumerate() {
            // SAFETY: the trace's space is active; faults map the page.
            unsafe { ((BASE + p * 4096) as *mut u64).write_volatile(i as u64) };
        }
    });
    let after = with_vm(|vm| vm.stats());
    with_vm(|vm| with_tlb(|tlb| space.destroy(vm, &mut &FRAMES, tlb)))
        .map_err(|e| e.1)
        .expect("teardown");
    configure_vm(|vm| {
        vm.set_frame_limit(None);
        vm.set_reclaim(None, 8);
        drop(vm.detach_swap().expect("no slot in use"));
    });
    (after.zero_fills - before.zero_fills) + (after.major_faults - before.major_faults)
}
