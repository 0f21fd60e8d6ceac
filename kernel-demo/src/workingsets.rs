//! Six processes whose working sets shift, over a frame limit below their
//! sum, on a swap device: every process an address space of its own, two
//! hot at a time while the others idle, then the roles change, under one
//! policy over every space (`kmem::vm::global`). The reclaim worker runs on
//! a CPU of its own whenever the watermarks ask (between accesses on this
//! CPU when it is the only one); faults reclaim directly only below the
//! `min` watermark. Then a runaway process
//! fills memory and swap until a fault fails; `kmem::vm::oom` picks it, it
//! is ended, and the others' pages still hold what they last wrote.
//! (Reclaiming each space alone is compared with this in the host tests
//! and the swap bench.)
//!
//! Accesses are kernel-mode reads and writes into the running process's
//! space (CR3 switched per quantum), faulting into `kmem::vm` through the
//! fault hook on real paging: the CPU sets the Accessed bits the policy
//! harvests.

use crate::arch::interrupts;
use crate::arch::trap::{vector, Fault};
use crate::mm::memory::{with_memory, FRAMES};
use crate::user::process::{configure_vm, with_tlb, with_vm};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use kmem::paging::{AddressSpace, Mmu, OffsetPhysMem, X86Mmu};
use kmem::vm::oom::{choose_victim, OomCandidate, OomChoice, SpaceUsage};
use kmem::vm::replace::ClockPro;
use kmem::vm::{FaultAccess, FaultOutcome, Prot, SwapDevice, SwapIoError, VmSpace, USER_RANGE};
use x86_64::VirtAddr;

/// Where each process's memory is (the same address in every space).
const BASE: u64 = 0x2000_0000;
/// Processes (the runaway comes on top).
pub const PROCESSES: usize = 6;
/// Pages of each process.
pub const SET: u64 = 16;
/// Processes hot at a time.
const HOT: usize = 2;
/// Accesses of one phase.
pub const PHASE: u64 = 500;
/// Accesses a hot process makes in a row.
const QUANTUM: u64 = 8;

type Space = VmSpace<OffsetPhysMem>;

/// The spaces (the process table: faults and the worker read it, ending a
/// process writes it), the running one's index, and faults per process.
static SPACES: spin::RwLock<Vec<Space>> = spin::RwLock::new(Vec::new());
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static FAULTS: [AtomicU64; PROCESSES + 1] = [const { AtomicU64::new(0) }; PROCESSES + 1];
/// The reclaim worker's steps and TSC ticks, and the signal that ends it.
static WORKER_STEPS: AtomicU64 = AtomicU64::new(0);
static WORKER_TICKS: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
/// The worker's CPU, and whether it sleeps (`hlt`) waiting to be woken.
static WORKER_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);
static ASLEEP: AtomicBool = AtomicBool::new(false);

fn hook(f: &Fault) -> bool {
    if f.vector != vector::PAGE_FAULT {
        return false;
    }
    let Some(spaces) = SPACES.try_read() else {
        return false;
    };
    let running = RUNNING.load(Ordering::Relaxed);
    let Some(space) = spaces.get(running) else {
        return false;
    };
    let access = FaultAccess::from_error_code(f.error_code);
    let addr = VirtAddr::new_truncate(f.addr);
    // With the process table: below `min` the fault reclaims over every process.
    let r = with_vm(|vm| {
        with_tlb(|tlb| space.handle_fault_global(vm, &spaces[..], addr, access, &mut &FRAMES, tlb))
    });
    if matches!(r, Ok(FaultOutcome::ZeroFilled | FaultOutcome::SwappedIn)) {
        FAULTS[running].fetch_add(1, Ordering::Relaxed);
    }
    if with_vm(|vm| vm.needs_reclaim()) {
        wake_worker();
    }
    r.is_ok()
}

/// Wakes the worker if it sleeps (kswapd's wake-up: memory fell under
/// `low`, or the run is over).
fn wake_worker() {
    if ASLEEP.swap(false, Ordering::SeqCst) {
        crate::arch::cpus::send_ipi(WORKER_CPU.load(Ordering::Relaxed), crate::smp::WAKE_VECTOR);
    }
}

/// A swap partition: the first `slots` slots of a device.
struct Partition {
    inner: Box<dyn SwapDevice + Send>,
    slots: u64,
}

impl SwapDevice for Partition {
    fn slots(&self) -> u64 {
        self.slots.min(self.inner.slots())
    }
    fn write(&self, first: u64, pages: &[&[u8; 4096]]) -> Result<(), SwapIoError> {
        self.inner.write(first, pages)
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

/// What one process held and did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessReport {
    /// Faults that brought a page in (first touches and swap-ins).
    pub faults: u64,
    /// What its space held at the end of the phases.
    pub usage: SpaceUsage,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Per process.
    pub processes: [ProcessReport; PROCESSES],
    /// The CPU the reclaim worker ran on (`None`: between accesses, on
    /// this one).
    pub worker_cpu: Option<usize>,
    /// Steps of the reclaim worker.
    pub worker_steps: u64,
    /// TSC ticks the reclaim worker ran.
    pub worker_ticks: u64,
    /// The out-of-memory choice.
    pub oom: Option<OomChoice>,
    /// Pages of the runaway when its fault failed.
    pub runaway_pages: u64,
    /// The vm counters over the phases (reclaim's pages scanned, tables
    /// skipped and pages freed among them).
    pub stats: kmem::vm::VmStats,
}

/// The value page `page` of process `p` holds at version `v`.
fn stamp(p: usize, page: u64, v: u64) -> u64 {
    ((p as u64) << 48) ^ (page << 24) ^ v.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Makes process `p`'s space (of `spaces`) the running one: this CPU
/// leaves the previous space's CPU set and enters `p`'s before loading it.
fn switch_to(spaces: &[Space], p: usize) {
    let cpu = crate::arch::cpus::cpu_index();
    if let Some(old) = spaces.get(RUNNING.load(Ordering::Relaxed)) {
        old.cpus().leave(cpu);
    }
    RUNNING.store(p, Ordering::Relaxed);
    spaces[p].cpus().enter(cpu);
    // SAFETY: every space shares the kernel half; the kernel's tables come
    // back at the end of `run`.
    unsafe { X86Mmu.set_cr3(spaces[p].pml4()) };
}

/// Back to the kernel's own tables, leaving the running space's CPU set.
fn switch_to_kernel(spaces: &[Space], kernel: x86_64::structures::paging::PhysFrame) {
    // SAFETY: the kernel's own tables map everything the kernel uses.
    unsafe { X86Mmu.set_cr3(kernel) };
    if let Some(old) = spaces.get(RUNNING.load(Ordering::Relaxed)) {
        old.cpus().leave(crate::arch::cpus::cpu_index());
    }
    RUNNING.store(usize::MAX, Ordering::Relaxed);
}

/// One access: checks the page's two stamps against the last version
/// written (if any), then writes the next version.
fn access(p: usize, page: u64, versions: &mut [u64]) {
    let at = (BASE + page * 4096) as *mut u64;
    let slot = &mut versions[p * SET as usize + page as usize];
    if *slot != 0 {
        let want = stamp(p, page, *slot);
        // SAFETY: process `p`'s space is running; faults map the page.
        let (head, tail) = unsafe { (at.read_volatile(), at.add(511).read_volatile()) };
        assert_eq!((head, tail), (want, want), "process {p} page {page}");
    }
    *slot += 1;
    let v = stamp(p, page, *slot);
    // SAFETY: as above.
    unsafe {
        at.write_volatile(v);
        at.add(511).write_volatile(v);
    }
}

/// Runs the reclaim worker while the watermarks ask for it (on the CPU
/// that accesses memory, when it is the only one).
fn worker() {
    if with_vm(|vm| vm.needs_reclaim()) {
        worker_locked(&SPACES.read());
    }
}

/// The reclaim worker on a CPU of its own: it reclaims while the
/// watermarks ask, sleeps (`hlt`) until a fault wakes it, and ends when
/// [`STOP`] is set.
fn reclaim_worker(cpu: usize, _arg: u64) {
    use x86_64::instructions::interrupts;
    WORKER_CPU.store(cpu, Ordering::Relaxed);
    let wanted = || STOP.load(Ordering::SeqCst) || with_vm(|vm| vm.needs_reclaim());
    loop {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        if with_vm(|vm| vm.needs_reclaim()) {
            worker_locked(&SPACES.read());
            continue;
        }
        // Announce the sleep, then look again: a waker that changed memory
        // before our look sees the flag and sends the IPI, which `sti; hlt`
        // takes even when it comes between the look and the `hlt`.
        interrupts::disable();
        ASLEEP.store(true, Ordering::SeqCst);
        if wanted() {
            ASLEEP.store(false, Ordering::SeqCst);
            interrupts::enable();
            continue;
        }
        interrupts::enable_and_hlt();
        ASLEEP.store(false, Ordering::SeqCst);
    }
}

/// Every process fills its set, then the phases: two hot processes make
/// 97 % of the accesses, in turns of a quantum; the rest go to the idle
/// ones at random. With `inline_worker`, the worker runs before each access.
fn shift(versions: &mut [u64], inline_worker: bool) {
    let mut rng = 0x5eed_cafe_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let touch = |p: usize, page: u64, versions: &mut [u64]| {
        if inline_worker {
            worker();
        }
        access(p, page, versions);
    };
    for p in 0..PROCESSES {
        switch_to(&SPACES.read(), p);
        for page in 0..SET {
            touch(p, page, versions);
        }
    }
    for phase in 0..(PROCESSES / HOT) as u64 {
        let first = (phase as usize * HOT) % PROCESSES;
        let mut k = 0;
        while k < PHASE {
            let (p, n) = if next() % 100 < 3 {
                let idle = (first + HOT + (next() as usize % (PROCESSES - HOT))) % PROCESSES;
                (idle, 1)
            } else {
                (first + (k / QUANTUM) as usize % HOT, QUANTUM)
            };
            switch_to(&SPACES.read(), p);
            for _ in 0..n {
                // Zipf-like: most accesses to the first pages of the set.
                let r = next() % (SET * SET);
                let page = SET - 1 - r.isqrt().min(SET - 1);
                touch(p, page, versions);
            }
            k += n;
        }
    }
}

/// Runs the six processes over `limit` frames and `slots` slots of
/// `device`, then the runaway. Panics on any wrong value; every frame and
/// slot comes back.
pub fn run(device: Box<dyn SwapDevice + Send>, limit: u64, slots: u64) -> Report {
    with_vm(|_| {});
    configure_vm(|vm| {
        vm.set_frame_limit(Some(limit));
        vm.set_watermarks(None);
        vm.set_global_policy(Box::new(ClockPro::new(limit as usize)));
        let partition = Partition {
            inner: device,
            slots,
        };
        assert!(
            vm.attach_swap(Box::new(partition)).is_ok(),
            "no swap in use"
        );
    });
    for f in &FAULTS {
        f.store(0, Ordering::Relaxed);
    }
    {
        let mut spaces = SPACES.write();
        for p in 0..=PROCESSES {
            let tables =
                with_memory(|m| AddressSpace::new(m.mapper, &mut m.frames)).expect("a PML4");
            let mut s = VmSpace::with_mapper(tables.into_mapper(), USER_RANGE.0, USER_RANGE.1)
                .map_err(|(_, e)| e)
                .expect("a new space maps nothing in its user half");
            let pages = if p == PROCESSES { 1 << 20 } else { SET };
            s.map_anonymous(Some(BASE), pages * 4096, Prot::RW)
                .expect("the process's area");
            s.join_global(p as u16)
                .expect("process ids stay below 0xffff");
            spaces.push(s);
        }
    }
    let before = with_vm(|vm| vm.stats());
    let kernel = X86Mmu.cr3();
    RUNNING.store(usize::MAX, Ordering::Relaxed);
    interrupts::set_fault_hook(Some(hook));
    let mut versions = alloc::vec![0u64; PROCESSES * SET as usize];
    WORKER_STEPS.store(0, Ordering::Relaxed);
    WORKER_TICKS.store(0, Ordering::Relaxed);
    // The worker gets a CPU of its own when there is one.
    let me = crate::arch::cpus::cpu_index();
    let worker_cpu = crate::arch::cpus::online().without(me).iter().next();
    match worker_cpu {
        Some(cpu) => {
            STOP.store(false, Ordering::Release);
            let phases = || {
                shift(&mut versions, false);
                STOP.store(true, Ordering::SeqCst);
                wake_worker();
            };
            if let Err(e) = crate::smp::run_beside(cpu, reclaim_worker, 0, phases) {
                panic!("the reclaim worker: {e}");
            }
        }
        None => shift(&mut versions, true),
    }
    let after = with_vm(|vm| vm.stats());
    let stats = kmem::vm::VmStats {
        // The policy's count, not an event counter of the vm.
        workingset_refaults: after.workingset_refaults - before.workingset_refaults,
        ..after.since(before)
    };
    let mut processes = [ProcessReport::default(); PROCESSES];
    for (p, r) in processes.iter_mut().enumerate() {
        r.faults = FAULTS[p].load(Ordering::Relaxed);
        r.usage = with_vm(|vm| SPACES.read()[p].usage(vm));
    }
    // The runaway: it writes pages until a fault fails.
    let mut runaway_pages = 0u64;
    let oom = {
        interrupts::set_fault_hook(None);
        let spaces = SPACES.read();
        switch_to(&spaces, PROCESSES);
        let runaway = &spaces[PROCESSES];
        loop {
            worker_locked(&spaces);
            let at = VirtAddr::new(BASE + runaway_pages * 4096);
            let r = with_vm(|vm| {
                with_tlb(|tlb| {
                    runaway.handle_fault(vm, at, FaultAccess::write(false), &mut &FRAMES, tlb)
                })
            });
            match r {
                Ok(FaultOutcome::InTransit) => continue,
                Ok(_) => {
                    // SAFETY: the runaway's space is running; the fault mapped the page.
                    unsafe { (at.as_u64() as *mut u64).write_volatile(runaway_pages + 1) };
                    runaway_pages += 1;
                }
                Err(_) => break,
            }
        }
        let choice = choose_victim(
            spaces.iter().enumerate().map(|(p, s)| OomCandidate {
                id: p as u64,
                usage: with_vm(|vm| s.usage(vm)),
                adjust: 0,
            }),
            limit + slots,
        );
        switch_to_kernel(&spaces, kernel);
        drop(spaces);
        interrupts::set_fault_hook(Some(hook));
        choice
    };
    // End the chosen process (the runaway), then check every other
    // process's pages: each still holds its last version.
    if let Some(choice) = oom {
        assert_eq!(
            choice.id, PROCESSES as u64,
            "the runaway is chosen: {choice:?}"
        );
        let victim = SPACES.write().remove(choice.id as usize);
        with_vm(|vm| with_tlb(|tlb| victim.destroy(vm, &mut &FRAMES, tlb)))
            .map_err(|e| e.1)
            .expect("ending the chosen process");
    }
    for p in 0..PROCESSES {
        switch_to(&SPACES.read(), p);
        for page in 0..SET {
            worker();
            access(p, page, &mut versions);
        }
    }
    interrupts::set_fault_hook(None);
    switch_to_kernel(&SPACES.read(), kernel);
    for s in core::mem::take(&mut *SPACES.write()) {
        with_vm(|vm| with_tlb(|tlb| s.destroy(vm, &mut &FRAMES, tlb)))
            .map_err(|e| e.1)
            .expect("teardown");
    }
    configure_vm(|vm| {
        vm.set_frame_limit(None);
        drop(vm.take_global_policy());
        let after = vm.stats();
        assert_eq!(
            (after.resident_frames, after.swap_slots_used),
            (0, 0),
            "{after:?}"
        );
        drop(vm.detach_swap().expect("no slot in use"));
    });
    Report {
        processes,
        worker_cpu,
        worker_steps: WORKER_STEPS.load(Ordering::Relaxed),
        worker_ticks: WORKER_TICKS.load(Ordering::Relaxed),
        oom,
        runaway_pages,
        stats,
    }
}

/// One run of the worker over `spaces` (the process table, read): steps
/// until `high` frames are free or nothing more can be freed.
fn worker_locked(spaces: &[Space]) {
    let t0 = crate::arch::cpu::rdtsc();
    while with_vm(|vm| vm.needs_reclaim()) {
        WORKER_STEPS.fetch_add(1, Ordering::Relaxed);
        let freed = with_vm(|vm| with_tlb(|tlb| vm.reclaim_step(spaces, &mut &FRAMES, tlb)));
        if !matches!(freed, Ok(n) if n > 0) {
            break;
        }
    }
    WORKER_TICKS.fetch_add(crate::arch::cpu::rdtsc() - t0, Ordering::Relaxed);
}
