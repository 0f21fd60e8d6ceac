//! TLB shootdown: a flush performed here and, in one IPI round, on every
//! other CPU that may cache the changed translations.

use super::CpuSet;
use crate::paging::{Flush, Mmu};

/// The kernel's inter-processor TLB invalidation: send the request to some
/// CPUs (IPIs) and wait until every one has acknowledged.
///
/// A kernel implements it with a shared request (the [`Flush`], cloned) and
/// an IPI vector whose handler runs `request.clone().flush(&mut X86Mmu)` and
/// acknowledges. While it waits it should serve requests aimed at its own
/// CPU, or run with interrupts enabled, so that two CPUs shooting at each
/// other do not deadlock.
///
/// # Safety
/// [`shoot`](Self::shoot) returns only after every CPU in `targets` has
/// performed the invalidation `flush` describes (each page's `invlpg`, or
/// a full flush including global entries, as [`Flush::flush`] does) on
/// itself. Frames unmapped before the call, page tables included, are
/// recycled as soon as it returns ([`DeferredFrees`](super::DeferredFrees)).
pub unsafe trait TlbShootdown {
    /// Invalidates `flush` on every CPU of `targets` (never the calling
    /// CPU, never empty) and waits for their acknowledgements.
    fn shoot(&mut self, targets: CpuSet, flush: &Flush);
}

// SAFETY: forwards to `T`, which makes the promise.
unsafe impl<T: TlbShootdown + ?Sized> TlbShootdown for &mut T {
    fn shoot(&mut self, targets: CpuSet, flush: &Flush) {
        (**self).shoot(targets, flush);
    }
}

/// Proof that a flush was done on every CPU it had to be done on; what
/// [`DeferredFrees::complete`](super::DeferredFrees::complete) makes and uses.
#[must_use = "frames unmapped before the shootdown may now be released"]
#[derive(Debug, PartialEq, Eq)]
pub struct Acked {
    cpus: CpuSet,
    rounds: u32,
}

impl Acked {
    pub(crate) const fn new(cpus: CpuSet, rounds: u32) -> Self {
        Self { cpus, rounds }
    }

    /// Nothing needed invalidating.
    pub(crate) const fn nothing() -> Self {
        Self::new(CpuSet::empty(), 0)
    }

    /// The other CPUs that acknowledged.
    pub fn cpus(&self) -> CpuSet {
        self.cpus
    }

    /// IPI rounds taken: 0 (nothing to flush, or no other CPU) or 1.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }
}

impl Flush {
    /// This flush and `other` as one token (one shootdown round for both):
    /// batch the tokens of single-page operations before shooting.
    pub fn combine(mut self, other: Flush) -> Flush {
        self.merge(other);
        self
    }

    /// Performs the flush on this CPU (through `mmu`) and, in one round for
    /// the whole batch, on the other CPUs of `cpus` (an
    /// [`ActiveCpus::snapshot`](super::ActiveCpus::snapshot) taken after the
    /// entries changed; every CPU for kernel-half changes).
    ///
    /// ```
    /// # #[cfg(feature = "testing")]
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use kmem::smp::{CpuSet, TlbShootdown};
    /// use kmem::paging::Flush;
    /// use kmem::testing::mmu::RecordingMmu;
    /// use x86_64::{structures::paging::PhysFrame, PhysAddr};
    /// struct Ipis(usize);
    /// // SAFETY: a test double: no other CPU exists, none can hold a translation.
    /// unsafe impl TlbShootdown for Ipis {
    ///     fn shoot(&mut self, _: CpuSet, _: &Flush) { self.0 += 1 }
    /// }
    /// let mut ipis = Ipis(0);
    /// let mut mmu = RecordingMmu::new(PhysFrame::containing_address(PhysAddr::new(0)));
    /// let acked = Flush::none().shoot(&mut mmu, 0, CpuSet::first(4), &mut ipis);
    /// assert_eq!((acked.rounds(), ipis.0), (0, 0)); // nothing to flush: no IPI
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "testing"))]
    /// # fn main() {}
    /// ```
    pub fn shoot<M, T>(self, mmu: &mut M, this_cpu: usize, cpus: CpuSet, shootdown: &mut T) -> Acked
    where
        M: Mmu + ?Sized,
        T: TlbShootdown + ?Sized,
    {
        let others = cpus.without(this_cpu);
        if self.is_empty() {
            return Acked {
                cpus: CpuSet::empty(),
                rounds: 0,
            };
        }
        let rounds = if others.is_empty() {
            0
        } else {
            shootdown.shoot(others, &self);
            1
        };
        self.flush(mmu);
        Acked {
            cpus: others,
            rounds,
        }
    }
}
