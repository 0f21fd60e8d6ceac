//! Host stand-ins for the SMP seams: threads as CPUs, a recording shootdown.

use core::cell::Cell;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::boxed::Box;
use std::vec::Vec;

use crate::paging::Flush;
use crate::smp::{CpuLocal, CpuSet, TlbShootdown};

std::thread_local! {
    static CPU: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);

/// Host threads as CPUs: each thread gets an index, from
/// [`HostCpu::pin`] or else the next free one on first use; interrupts
/// are not masked (host code has none).
///
/// ```
/// use kmem::smp::CpuLocal;
/// use kmem::testing::smp::HostCpu;
/// HostCpu::pin(5);
/// assert_eq!(HostCpu.cpu_id(), 5);
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct HostCpu;

impl HostCpu {
    /// Makes the calling thread CPU `cpu`.
    pub fn pin(cpu: usize) {
        CPU.with(|c| c.set(cpu));
    }
}

impl CpuLocal for HostCpu {
    #[inline(always)]
    fn cpu_id(&self) -> usize {
        CPU.with(|c| {
            let id = c.get();
            if id != usize::MAX {
                return id;
            }
            let id = NEXT_CPU.fetch_add(1, Ordering::Relaxed);
            c.set(id);
            id
        })
    }

    #[inline(always)]
    fn without_interrupts<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

type Check<'a> = Box<dyn FnMut(CpuSet, &Flush) + 'a>;

/// A [`TlbShootdown`] that records every round and runs a check in it (in
/// the place where the other CPUs would flush and acknowledge), e.g. that
/// no frame being shot down was recycled yet.
#[derive(Default)]
pub struct RecordingShootdown<'a> {
    rounds: Vec<(CpuSet, Flush)>,
    check: Option<Check<'a>>,
}

impl<'a> RecordingShootdown<'a> {
    /// Records only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records, and runs `check` in each round before "acknowledging".
    pub fn with_check(check: impl FnMut(CpuSet, &Flush) + 'a) -> Self {
        Self {
            rounds: Vec::new(),
            check: Some(Box::new(check)),
        }
    }

    /// Every round: the CPUs targeted and what they were told to flush.
    pub fn rounds(&self) -> &[(CpuSet, Flush)] {
        &self.rounds
    }
}

// SAFETY: host "CPUs" other than the caller are threads with no TLB of
// their own: there is nothing to invalidate on them.
unsafe impl TlbShootdown for RecordingShootdown<'_> {
    fn shoot(&mut self, targets: CpuSet, flush: &Flush) {
        if let Some(check) = &mut self.check {
            check(targets, flush);
        }
        self.rounds.push((targets, flush.clone()));
    }
}
