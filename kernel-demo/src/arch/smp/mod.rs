//! Several CPUs: starting the application processors (INIT, start-up,
//! start-up through the local APIC), which CPU runs the caller, running
//! work on every CPU, and TLB shootdown ([`shootdown`]).
//!
//! CPUs get dense indices: 0 is the boot CPU, the others count up in the
//! order they started. A CPU finds its index with `rdtscp` (each writes
//! its index to `IA32_TSC_AUX`) or, without it, by its APIC id. QEMU
//! numbers APIC ids 0..N with `-smp N` and reports N through fw_cfg, which
//! is what [`boot_aps`] relies on (no ACPI tables are read).
//!
//! A started CPU loads its own GDT and TSS and the shared IDT, enables its
//! APIC and waits with `hlt` for work ([`run_on_all`]), with interrupts on
//! so that it answers shootdowns.

pub mod shootdown;
mod trampoline;

use crate::arch::recover::{self, Outcome};
use crate::arch::{apic, cpu};
use crate::mm::kernel_space::{self, CpuStack};
use crate::text::FixedStr;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use kmem::smp::{CpuLocal, CpuSet};
use x86_64::registers::model_specific::Msr;

pub use crate::arch::cpu::MAX_CPUS;
/// The IDT vector that wakes an idle CPU (it only needs an EOI).
pub const WAKE_VECTOR: u8 = 0xF1;

const IA32_TSC_AUX: u32 = 0xC000_0103;
const NO_APIC_ID: u32 = u32::MAX;

struct Cpu {
    apic_id: AtomicU32,
    online: AtomicBool,
    /// The kernel stack's guard page and top; the double-fault stack's top.
    guard: AtomicU64,
    top: AtomicU64,
    ist_top: AtomicU64,
    /// The last work generation this CPU finished.
    finished: AtomicU64,
    outcome: spin::Mutex<Option<(Outcome, FixedStr<512>)>>,
}

impl Cpu {
    const fn new() -> Self {
        Self {
            apic_id: AtomicU32::new(NO_APIC_ID),
            online: AtomicBool::new(false),
            guard: AtomicU64::new(0),
            top: AtomicU64::new(0),
            ist_top: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            outcome: spin::Mutex::new(None),
        }
    }
}

static CPUS: [Cpu; MAX_CPUS] = [const { Cpu::new() }; MAX_CPUS];
/// CPUs online, the boot CPU included.
static ONLINE: AtomicUsize = AtomicUsize::new(1);
/// Whether [`boot_aps`] set up the per-CPU index (before: always CPU 0).
static STARTED: AtomicBool = AtomicBool::new(false);
static RDTSCP: AtomicBool = AtomicBool::new(false);
/// The kernel's PML4 (physical), loaded by each started CPU.
static KERNEL_CR3: AtomicU64 = AtomicU64::new(0);

static GENERATION: AtomicU64 = AtomicU64::new(0);
type Work = fn(usize, u64);
static WORK: spin::Mutex<Option<(Work, u64)>> = spin::Mutex::new(None);

/// The index of the CPU running the caller: 0 on the boot CPU and before
/// [`boot_aps`].
#[inline]
pub fn cpu_index() -> usize {
    if !STARTED.load(Ordering::Relaxed) {
        return 0;
    }
    if RDTSCP.load(Ordering::Relaxed) {
        let mut aux = 0u32;
        // SAFETY: rdtscp is supported (checked in `boot_aps`); it only reads.
        unsafe { core::arch::x86_64::__rdtscp(&mut aux) };
        return aux as usize;
    }
    let id = apic::id();
    CPUS.iter()
        .position(|c| c.apic_id.load(Ordering::Relaxed) == id)
        .unwrap_or_else(|| panic!("APIC id {id} belongs to no known CPU"))
}

/// How many CPUs are online (1 before [`boot_aps`]).
pub fn online_count() -> usize {
    ONLINE.load(Ordering::SeqCst)
}

/// The CPUs online: the targets of a kernel-half shootdown.
pub fn online() -> CpuSet {
    let mut set = CpuSet::empty();
    for (i, c) in CPUS.iter().enumerate() {
        if i == 0 || c.online.load(Ordering::SeqCst) {
            set.insert(i);
        }
    }
    set
}

/// The stacks of CPU `cpu` (`None` for the boot CPU and CPUs not started).
pub fn stack_of(cpu: usize) -> Option<CpuStack> {
    let c = CPUS.get(cpu).filter(|_| cpu != 0)?;
    let top = c.top.load(Ordering::SeqCst);
    (top != 0).then(|| CpuStack {
        guard: c.guard.load(Ordering::SeqCst),
        top,
        ist_top: c.ist_top.load(Ordering::SeqCst),
    })
}

/// The APIC id of CPU `cpu`.
pub fn apic_id_of(cpu: usize) -> Option<u32> {
    let id = CPUS.get(cpu)?.apic_id.load(Ordering::SeqCst);
    (id != NO_APIC_ID).then_some(id)
}

/// Sends `vector` to CPU `cpu` (no effect for an unknown CPU).
pub fn send_ipi(cpu: usize, vector: u8) {
    if let Some(id) = apic_id_of(cpu) {
        apic::send_ipi(id, vector);
    }
}

/// The kernel's [`CpuLocal`]: [`cpu_index`], and `cli`/`sti` around `f`.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelCpu;

impl CpuLocal for KernelCpu {
    #[inline]
    fn cpu_id(&self) -> usize {
        cpu_index()
    }

    #[inline]
    fn without_interrupts<R>(&self, f: impl FnOnce() -> R) -> R {
        x86_64::instructions::interrupts::without_interrupts(f)
    }
}

/// Whether an IDT vector is a device or inter-processor interrupt (not an
/// exception, not the system call).
pub(crate) fn is_interrupt_vector(vector: u64) -> bool {
    (0x20..=0xFF).contains(&vector) && vector != u64::from(crate::arch::trap::vector::SYSCALL)
}

/// Handles an interrupt on this CPU (called by the IDT dispatcher).
pub(crate) fn interrupt(vector: u8) {
    match vector {
        shootdown::SHOOTDOWN_VECTOR => {
            shootdown::serve_pending();
            apic::eoi();
        }
        apic::SPURIOUS_VECTOR => {} // no EOI for spurious interrupts
        _ => apic::eoi(),
    }
}

/// Why the other CPUs could not be started.
#[derive(Debug)]
pub enum SmpError {
    /// The local APIC is unusable.
    Apic(apic::ApicError),
    /// The trampoline's low pages are not in the direct map.
    NoLowMemory,
    /// A CPU's stacks could not be mapped.
    Stack(kmem::Error),
    /// The CPU with this APIC id did not come online.
    NoAnswer(u32),
}

impl fmt::Display for SmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Apic(e) => write!(f, "local APIC: {e:?}"),
            Self::NoLowMemory => f.write_str("the trampoline pages are not in the direct map"),
            Self::Stack(e) => write!(f, "CPU stack: {e:?}"),
            Self::NoAnswer(id) => write!(f, "the CPU with APIC id {id} did not start"),
        }
    }
}

fn delay_us(us: u64) {
    let per_ms = cpu::tsc_per_ms().unwrap_or(1_000_000);
    let end = cpu::rdtsc() + per_ms * us / 1000;
    while cpu::rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Masks both legacy PICs: with interrupts enabled, only the local APIC
/// (IPIs) may interrupt.
fn mask_pic() {
    use x86_64::instructions::port::Port;
    // SAFETY: writing the interrupt mask registers of the 8259 PICs only
    // masks their lines.
    unsafe {
        Port::<u8>::new(0x21).write(0xFF);
        Port::<u8>::new(0xA1).write(0xFF);
    }
}

/// Starts the other CPUs QEMU was given (at most `max` CPUs in all, at
/// most [`MAX_CPUS`]), then enables interrupts on this CPU; returns how
/// many CPUs are online. Needs the kernel's address space and heap. Later
/// calls return the count without starting anything.
pub fn boot_aps(max: usize) -> Result<usize, SmpError> {
    if STARTED.load(Ordering::SeqCst) {
        return Ok(online_count());
    }
    let wanted = usize::from(crate::dev::qemu::cpu_count().unwrap_or(1))
        .min(max)
        .min(MAX_CPUS);
    mask_pic();
    apic::init().map_err(SmpError::Apic)?;
    let rdtscp = core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 27) != 0;
    if rdtscp {
        // SAFETY: TSC_AUX exists with rdtscp (checked); only rdtscp reads it.
        unsafe { Msr::new(IA32_TSC_AUX).write(0) };
    }
    RDTSCP.store(rdtscp, Ordering::SeqCst);
    let bsp_id = apic::id();
    CPUS[0].apic_id.store(bsp_id, Ordering::SeqCst);
    CPUS[0].online.store(true, Ordering::SeqCst);
    STARTED.store(true, Ordering::SeqCst);
    let result = start_others(wanted, bsp_id);
    x86_64::instructions::interrupts::enable();
    result.map(|()| online_count())
}

fn start_others(wanted: usize, bsp_id: u32) -> Result<(), SmpError> {
    if wanted <= 1 {
        return Ok(());
    }
    let (pml4, low_mapped) = crate::mm::memory::with_memory(|m| {
        let low = (trampoline::TRAMPOLINE..trampoline::TRAMPOLINE + 0x4000)
            .step_by(4096)
            .all(|p| {
                m.mapper
                    .translate(x86_64::VirtAddr::new(crate::boot::DIRECT_MAP + p))
                    .is_ok()
            });
        (m.mapper.pml4().start_address().as_u64(), low)
    });
    if !low_mapped {
        return Err(SmpError::NoLowMemory);
    }
    KERNEL_CR3.store(pml4, Ordering::SeqCst);
    // SAFETY: 0x8000..0xC000 is in the reserved low 1 MiB (never handed
    // out), in the direct map (checked), and no CPU runs the trampoline.
    unsafe { trampoline::install(pml4) };
    let ids = (0..=254u32).filter(|&id| id != bsp_id);
    for (cpu, apic_id) in (1..wanted).zip(ids) {
        let stack = kernel_space::map_cpu_stack(cpu).map_err(SmpError::Stack)?;
        let c = &CPUS[cpu];
        c.guard.store(stack.guard, Ordering::SeqCst);
        c.top.store(stack.top, Ordering::SeqCst);
        c.ist_top.store(stack.ist_top, Ordering::SeqCst);
        c.apic_id.store(apic_id, Ordering::SeqCst);
        trampoline::prepare(stack.top, ap_entry, cpu as u64);
        apic::send_init(apic_id);
        delay_us(10_000);
        for _ in 0..2 {
            apic::send_startup(apic_id, trampoline::startup_page());
            delay_us(200);
            if c.online.load(Ordering::SeqCst) {
                break;
            }
        }
        // Wait for it: the trampoline's data block is reused for the next.
        let mut waited = 0;
        while !c.online.load(Ordering::SeqCst) && waited < 1000 {
            delay_us(100);
            waited += 1;
        }
        if !c.online.load(Ordering::SeqCst) {
            c.apic_id.store(NO_APIC_ID, Ordering::SeqCst);
            return Err(SmpError::NoAnswer(apic_id));
        }
    }
    Ok(())
}

/// Where a started CPU enters Rust, on its own stack, on the trampoline's
/// page tables (whose kernel half is the kernel's).
extern "C" fn ap_entry(cpu: u64) -> ! {
    let cpu = cpu as usize;
    let pml4 = x86_64::structures::paging::PhysFrame::containing_address(x86_64::PhysAddr::new(
        KERNEL_CR3.load(Ordering::SeqCst),
    ));
    // First, so that `cpu_index` (recovery slots, shootdown acks) is this
    // CPU's from here on, not the boot CPU's.
    if RDTSCP.load(Ordering::SeqCst) {
        // SAFETY: rdtscp and TSC_AUX exist (checked on the boot CPU, same
        // CPU model); only rdtscp reads it.
        unsafe { Msr::new(IA32_TSC_AUX).write(cpu as u64) };
    }
    // A target of every shootdown before it can cache a kernel translation
    // of its own; it answers by polling until its interrupts are on.
    shootdown::join(cpu);
    let mut mmu = kmem::paging::X86Mmu;
    // SAFETY: the kernel's tables map everything this CPU uses: its code,
    // statics, its stack (kernel half, shared with the trampoline tables).
    unsafe { kmem::paging::Mmu::set_cr3(&mut mmu, pml4) };
    // Global entries survive a CR3 load: drop what the trampoline's walks cached.
    kmem::paging::Mmu::flush_all(&mut mmu);
    shootdown::serve_pending();
    cpu::init();
    crate::arch::gdt::init_ap(cpu, CPUS[cpu].ist_top.load(Ordering::SeqCst));
    shootdown::serve_pending();
    crate::arch::interrupts::init_ap();
    apic::enable();
    shootdown::serve_pending();
    CPUS[cpu]
        .finished
        .store(GENERATION.load(Ordering::SeqCst), Ordering::SeqCst);
    CPUS[cpu].online.store(true, Ordering::SeqCst);
    ONLINE.fetch_add(1, Ordering::SeqCst);
    idle(cpu)
}

/// Runs the work [`run_on_all`] hands out; sleeps in between.
fn idle(cpu: usize) -> ! {
    let me = &CPUS[cpu];
    loop {
        x86_64::instructions::interrupts::disable();
        let generation = GENERATION.load(Ordering::SeqCst);
        if me.finished.load(Ordering::SeqCst) == generation {
            // `sti; hlt`: an IPI after the check still wakes us (the
            // interrupt shadow of sti covers the hlt).
            x86_64::instructions::interrupts::enable_and_hlt();
            continue;
        }
        x86_64::instructions::interrupts::enable();
        let work = *WORK.lock();
        let outcome = match work {
            Some((f, arg)) => recover::protect(|| f(cpu, arg)),
            None => Outcome::Returned,
        };
        *me.outcome.lock() = Some((outcome, recover::panic_message()));
        me.finished.store(generation, Ordering::SeqCst);
    }
}

/// A CPU whose share of [`run_on_all`] faulted or panicked.
pub struct CpuFailure {
    /// The CPU's index.
    pub cpu: usize,
    /// How its work ended.
    pub outcome: Outcome,
    /// Its panic message (for [`Outcome::Panicked`]).
    pub message: FixedStr<512>,
}

impl fmt::Debug for CpuFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for CpuFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.outcome {
            Outcome::Faulted(fault) => write!(f, "CPU {}: {fault}", self.cpu),
            Outcome::Panicked => write!(f, "CPU {} panicked: {}", self.cpu, &*self.message),
            Outcome::Returned => write!(f, "CPU {} returned", self.cpu),
        }
    }
}

/// Runs `f(cpu, arg)` on every online CPU at once (the caller's CPU too)
/// and waits for all. The
/// other CPUs run it inside [`recover::protect`]: the first one that
/// faulted or panicked is reported; this CPU's own share faults or panics
/// as any code does.
pub fn run_on_all(f: Work, arg: u64) -> Result<(), alloc::boxed::Box<CpuFailure>> {
    let me = cpu_index();
    let others: CpuSet = online().without(me);
    wait_for(others, GENERATION.load(Ordering::SeqCst));
    *WORK.lock() = Some((f, arg));
    let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    for cpu in others.iter() {
        send_ipi(cpu, WAKE_VECTOR);
    }
    f(me, arg);
    wait_for(others, generation);
    for cpu in others.iter() {
        if let Some((outcome, message)) = CPUS[cpu].outcome.lock().take() {
            if !matches!(outcome, Outcome::Returned) {
                return Err(alloc::boxed::Box::new(CpuFailure {
                    cpu,
                    outcome,
                    message,
                }));
            }
        }
    }
    Ok(())
}

fn wait_for(cpus: CpuSet, generation: u64) {
    for cpu in cpus.iter() {
        while CPUS[cpu].finished.load(Ordering::SeqCst) < generation {
            shootdown::serve_pending();
            core::hint::spin_loop();
        }
    }
}
