//! A recording `Mmu` for host tests: remembers CR3 writes and flushes.

use std::vec::Vec;

use x86_64::structures::paging::PhysFrame;
use x86_64::VirtAddr;

use crate::paging::Mmu;

/// One privileged operation, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmuOp {
    /// CR3 was written.
    SetCr3(PhysFrame),
    /// One page was invalidated.
    Invlpg(VirtAddr),
    /// The whole TLB was flushed.
    FlushAll,
}

/// An [`Mmu`] that executes nothing and records everything.
#[derive(Debug, Clone)]
pub struct RecordingMmu {
    cr3: PhysFrame,
    ops: Vec<MmuOp>,
}

impl RecordingMmu {
    /// Starts with `cr3` as the active top-level table.
    pub fn new(cr3: PhysFrame) -> Self {
        Self {
            cr3,
            ops: Vec::new(),
        }
    }

    /// Everything recorded, oldest first.
    pub fn ops(&self) -> &[MmuOp] {
        &self.ops
    }

    /// Forgets the record.
    pub fn clear(&mut self) {
        self.ops.clear();
    }

    /// Number of `invlpg`s recorded.
    pub fn invlpg_count(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o, MmuOp::Invlpg(_)))
            .count()
    }

    /// Number of full flushes recorded.
    pub fn flush_all_count(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o, MmuOp::FlushAll))
            .count()
    }
}

// SAFETY: a host double: no CPU translates through it, so there is no TLB
// entry to keep; it records what kmem asked for.
unsafe impl Mmu for RecordingMmu {
    fn cr3(&self) -> PhysFrame {
        self.cr3
    }

    unsafe fn set_cr3(&mut self, pml4: PhysFrame) {
        self.cr3 = pml4;
        self.ops.push(MmuOp::SetCr3(pml4));
    }

    fn invlpg(&mut self, addr: VirtAddr) {
        self.ops.push(MmuOp::Invlpg(addr));
    }

    fn flush_all(&mut self) {
        self.ops.push(MmuOp::FlushAll);
    }
}
