//! Several CPUs: mapping the local APIC, starting the application
//! processors (INIT, start-up, start-up through the local APIC) on stacks
//! the kernel maps, and running work on every CPU. Which CPU runs the
//! caller is [`crate::arch::cpus`]; TLB shootdown is
//! [`crate::arch::shootdown`].
//!
//! QEMU numbers APIC ids 0..N with `-smp N` and reports N through fw_cfg,
//! which is what [`boot_aps`] relies on (no ACPI tables are read).
//!
//! A started CPU loads its own GDT and TSS and the shared IDT, enables its
//! APIC and waits with `hlt` for work ([`run_on_all`]), with interrupts on
//! so that it answers shootdowns.

mod trampoline;

use crate::arch::cpu::{self, MAX_CPUS};
use crate::arch::cpus::{self, cpu_index, online, online_count, send_ipi};
use crate::arch::recover::{self, Outcome};
use crate::arch::{apic, shootdown};
use crate::mm::kernel_space::{self, CpuStack};
use crate::text::FixedStr;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use kmem::paging::MapFlags;
use kmem::smp::CpuSet;
use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

/// The IDT vector that wakes an idle CPU (it only needs an EOI).
pub const WAKE_VECTOR: u8 = 0xF1;

struct Cpu {
    /// Whether this CPU came up (set by the CPU itself).
    started: AtomicBool,
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
            started: AtomicBool::new(false),
            guard: AtomicU64::new(0),
            top: AtomicU64::new(0),
            ist_top: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            outcome: spin::Mutex::new(None),
        }
    }
}

static CPUS: [Cpu; MAX_CPUS] = [const { Cpu::new() }; MAX_CPUS];
/// Whether [`boot_aps`] ran.
static STARTED: AtomicBool = AtomicBool::new(false);
/// The kernel's PML4 (physical), loaded by each started CPU.
static KERNEL_CR3: AtomicU64 = AtomicU64::new(0);

static GENERATION: AtomicU64 = AtomicU64::new(0);
type Work = fn(usize, u64);
/// The work of the current generation, and the CPUs that run it (the
/// others only mark the generation finished).
static WORK: spin::Mutex<Option<(Work, u64, CpuSet)>> = spin::Mutex::new(None);

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
    apic::init(map_apic).map_err(SmpError::Apic)?;
    let bsp_id = apic::id();
    cpus::start_indexing(bsp_id);
    STARTED.store(true, Ordering::SeqCst);
    let result = start_others(wanted, bsp_id);
    x86_64::instructions::interrupts::enable();
    result.map(|()| online_count())
}

/// Maps the local APIC's register page at `virt`: uncached, never
/// executed, shared by all CPUs (global).
fn map_apic(phys: PhysAddr, virt: VirtAddr) -> Result<(), kmem::paging::PagingError> {
    let page = Page::<Size4KiB>::containing_address(virt);
    let frame = PhysFrame::containing_address(phys);
    let flags = MapFlags::READ_WRITE.no_cache().global();
    crate::mm::memory::with_memory(|m| {
        // SAFETY: the local APIC's MMIO page, which only the APIC driver reaches.
        unsafe { m.mapper.map(page, frame, flags, &mut m.frames) }
            .map(|flush| flush.flush(&mut m.mmu))
    })
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
        cpus::set_apic_id(cpu, Some(apic_id));
        trampoline::prepare(stack.top, ap_entry, cpu as u64);
        apic::send_init(apic_id);
        delay_us(10_000);
        for _ in 0..2 {
            apic::send_startup(apic_id, trampoline::startup_page());
            delay_us(200);
            if c.started.load(Ordering::SeqCst) {
                break;
            }
        }
        // Wait for it: the trampoline's data block is reused for the next.
        let mut waited = 0;
        while !c.started.load(Ordering::SeqCst) && waited < 1000 {
            delay_us(100);
            waited += 1;
        }
        if !c.started.load(Ordering::SeqCst) {
            cpus::set_apic_id(cpu, None);
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
    cpus::set_index(cpu);
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
    cpus::set_online(cpu);
    CPUS[cpu].started.store(true, Ordering::SeqCst);
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
            Some((f, arg, cpus)) if cpus.contains(cpu) => recover::protect(|| f(cpu, arg)),
            _ => Outcome::Returned,
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
    run(online().without(me), f, arg, || f(me, arg))
}

/// Runs `f(cpu, arg)` on CPU `cpu` (another online CPU) while this one runs
/// `main`, then waits for `f` to return (`main` tells it when to, through
/// whatever they share). `Err` as for [`run_on_all`].
pub fn run_beside(
    cpu: usize,
    f: Work,
    arg: u64,
    main: impl FnOnce(),
) -> Result<(), alloc::boxed::Box<CpuFailure>> {
    let mut target = CpuSet::empty();
    target.insert(cpu);
    run(target, f, arg, main)
}

/// Hands `f` to `targets` (online CPUs other than this one), runs `main`
/// here, and waits for every other CPU to finish the generation.
fn run(
    targets: CpuSet,
    f: Work,
    arg: u64,
    main: impl FnOnce(),
) -> Result<(), alloc::boxed::Box<CpuFailure>> {
    let others: CpuSet = online().without(cpu_index());
    wait_for(others, GENERATION.load(Ordering::SeqCst));
    *WORK.lock() = Some((f, arg, targets));
    let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    for cpu in others.iter() {
        send_ipi(cpu, WAKE_VECTOR);
    }
    main();
    wait_for(others, generation);
    for cpu in targets.iter() {
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
