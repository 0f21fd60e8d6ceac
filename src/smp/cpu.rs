//! The CPU seam: which CPU runs the caller, and how to keep its interrupt
//! handlers out.

use core::marker::PhantomData;

use crate::frame::InterruptMask;

/// What the per-CPU caches need from the kernel about the running CPU.
///
/// Not an `unsafe` trait: each CPU's cache has its own lock, so an index
/// that is wrong, shared or stale (the thread migrated) costs speed only.
/// For the common path to take no contended lock, give each CPU a distinct
/// index below the cache's `MAX_CPUS` (larger ones wrap around).
pub trait CpuLocal {
    /// Index of the CPU running the caller (e.g. read from `gs:` or the
    /// local APIC id mapped to a dense index).
    fn cpu_id(&self) -> usize;

    /// Runs `f` with this CPU's interrupts masked, restoring the previous
    /// state after (`cli`/`sti` in a kernel, nothing on the host).
    fn without_interrupts<R>(&self, f: impl FnOnce() -> R) -> R;
}

impl<T: CpuLocal + ?Sized> CpuLocal for &T {
    #[inline(always)]
    fn cpu_id(&self) -> usize {
        (**self).cpu_id()
    }

    #[inline(always)]
    fn without_interrupts<R>(&self, f: impl FnOnce() -> R) -> R {
        (**self).without_interrupts(f)
    }
}

/// One CPU (index 0) whose interrupts are masked by `M`: for early boot,
/// before the other CPUs run, or a uniprocessor kernel.
///
/// ```
/// use kmem::frame::NoInterruptMask;
/// use kmem::smp::{CpuLocal, UniCpu};
/// let cpu = UniCpu::<NoInterruptMask>::new();
/// assert_eq!(cpu.without_interrupts(|| cpu.cpu_id()), 0);
/// ```
#[derive(Debug)]
pub struct UniCpu<M: InterruptMask>(PhantomData<fn() -> M>);

impl<M: InterruptMask> UniCpu<M> {
    /// The CPU (`const`, for statics).
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<M: InterruptMask> Default for UniCpu<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: InterruptMask> CpuLocal for UniCpu<M> {
    #[inline(always)]
    fn cpu_id(&self) -> usize {
        0
    }

    #[inline(always)]
    fn without_interrupts<R>(&self, f: impl FnOnce() -> R) -> R {
        M::without_interrupts(f)
    }
}
