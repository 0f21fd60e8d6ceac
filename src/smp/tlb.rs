//! What an operation needs to invalidate the translations it removed: this
//! CPU's MMU, its index, and the kernel's IPI shootdown for the others.

use super::{Acked, ActiveCpus, CpuSet, TlbShootdown};
use crate::paging::{Flush, Mmu};
use x86_64::structures::paging::PhysFrame;

/// The TLB side of an operation that removes, downgrades or repoints
/// translations of an address space (`kmem::vm`'s munmap, mprotect, fork,
/// copy-on-write, reclaim): such an operation invalidates the translations
/// on every CPU that may cache them, and only then frees what they
/// reached. One per call, made from the running CPU's state.
///
/// ```
/// # #[cfg(feature = "testing")]
/// # fn main() {
/// use kmem::smp::{CpuSet, Tlb, TlbShootdown};
/// use kmem::paging::Flush;
/// use kmem::testing::mmu::RecordingMmu;
/// use x86_64::{structures::paging::PhysFrame, PhysAddr};
///
/// struct Ipis(u32);
/// // SAFETY: a test double: the other CPUs are imaginary and cache nothing.
/// unsafe impl TlbShootdown for Ipis {
///     fn shoot(&mut self, _: CpuSet, _: &Flush) { self.0 += 1 }
/// }
/// let mut mmu = RecordingMmu::new(PhysFrame::containing_address(PhysAddr::new(0)));
/// let mut ipis = Ipis(0);
/// let mut tlb = Tlb::new(&mut mmu, 0, &mut ipis);
/// assert_eq!(tlb.cpu(), 0);
/// # }
/// # #[cfg(not(feature = "testing"))]
/// # fn main() {}
/// ```
pub struct Tlb<'a> {
    mmu: &'a mut dyn Mmu,
    cpu: usize,
    /// `None` on a kernel with one CPU.
    ipis: Option<&'a mut dyn TlbShootdown>,
    rounds: u64,
}

impl core::fmt::Debug for Tlb<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tlb")
            .field("cpu", &self.cpu)
            .field("rounds", &self.rounds)
            .finish_non_exhaustive()
    }
}

impl<'a> Tlb<'a> {
    /// This CPU (index `cpu`, MMU `mmu`) and the kernel's shootdown.
    pub fn new(mmu: &'a mut dyn Mmu, cpu: usize, ipis: &'a mut dyn TlbShootdown) -> Self {
        Self {
            mmu,
            cpu,
            ipis: Some(ipis),
            rounds: 0,
        }
    }

    /// A kernel with one CPU (index 0): local flushes only.
    ///
    /// # Panics
    /// An operation panics if the space names another CPU as active (a
    /// shootdown this context cannot send) rather than leave its TLB stale.
    pub fn uniprocessor(mmu: &'a mut dyn Mmu) -> Self {
        Self {
            mmu,
            cpu: 0,
            ipis: None,
            rounds: 0,
        }
    }

    /// The running CPU's index.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// The MMU of the running CPU.
    pub fn mmu(&mut self) -> &mut dyn Mmu {
        self.mmu
    }

    /// IPI rounds sent through this context so far.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// Invalidates `flush` on every CPU that may cache the space rooted at
    /// `pml4` (those in `cpus`, and this one when it has the space loaded)
    /// and returns once all of them have: what it reached may be reused.
    pub(crate) fn invalidate(&mut self, flush: Flush, pml4: PhysFrame, cpus: &ActiveCpus) -> Acked {
        if flush.is_empty() {
            return Acked::nothing();
        }
        let set = cpus.snapshot();
        let here = self.loaded_here(pml4, set);
        let others = set.without(self.cpu);
        let mut rounds = 0;
        if !others.is_empty() {
            let Some(ipis) = self.ipis.as_mut() else {
                panic!("a uniprocessor Tlb cannot reach CPUs {others:?}");
            };
            ipis.shoot(others, &flush);
            self.rounds += 1;
            rounds = 1;
        }
        if here {
            flush.flush(&mut *self.mmu);
        }
        Acked::new(others, rounds)
    }

    /// Invalidates `flush` on this CPU only: for a translation that
    /// became more permissive (other CPUs at worst take a spurious fault).
    pub(crate) fn invalidate_local(&mut self, flush: Flush, pml4: PhysFrame, cpus: &ActiveCpus) {
        if !flush.is_empty() && self.loaded_here(pml4, cpus.snapshot()) {
            flush.flush(&mut *self.mmu);
        }
    }

    /// Whether this CPU may cache the space rooted at `pml4`: it is in the
    /// space's set `set`, or has the space loaded.
    fn loaded_here(&mut self, pml4: PhysFrame, set: CpuSet) -> bool {
        set.contains(self.cpu) || self.mmu.cr3() == pml4
    }
}
