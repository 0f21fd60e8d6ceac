//! The invariant checker run after every step in tests and fuzzing (needs `std`).

use std::collections::HashMap;
use std::vec::Vec;

use x86_64::structures::paging::PhysFrame;
use x86_64::VirtAddr;

use super::entry::{is_leaf, span, virt_addr, ADDR_MASK, ENTRIES, HALF, PRESENT};
use super::mapper::frame_of;
use super::{LeafSize, Mapper, PhysMem};

/// A broken invariant, with where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvariantViolation {
    /// A table is reachable from two parent entries.
    SharedTable {
        /// The table.
        frame: PhysFrame,
        /// Start of the region of the first parent entry.
        first: VirtAddr,
        /// Start of the region of the second.
        second: VirtAddr,
    },
    /// A table with no present entry is still linked (it should have been freed).
    EmptyTable {
        /// The table.
        frame: PhysFrame,
        /// Its level (1 = page table).
        level: u8,
        /// Start of the region it covers.
        addr: VirtAddr,
    },
    /// A huge leaf whose frame is not aligned to its size.
    MisalignedLeaf {
        /// The page.
        addr: VirtAddr,
        /// Its size.
        size: LeafSize,
    },
}

/// What the checker saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableReport {
    /// Every table frame, the PML4 first.
    pub tables: Vec<PhysFrame>,
    /// Leaf count per size: 4 KiB, 2 MiB, 1 GiB.
    pub leaves: [usize; 3],
}

impl<P: PhysMem> Mapper<P> {
    /// Checks: no table reachable from two parents, no empty table linked below the PML4
    /// (kernel-half PDPTs excepted: they are shared), huge frames aligned.
    pub fn check_invariants(&self) -> Result<TableReport, InvariantViolation> {
        let mut seen = HashMap::new();
        let mut report = TableReport::default();
        report.tables.push(self.pml4());
        seen.insert(self.root(), 0u64);
        self.check_table(self.root(), 4, 0, &mut seen, &mut report)?;
        Ok(report)
    }

    fn check_table(
        &self,
        table: u64,
        level: u8,
        base: u64,
        seen: &mut HashMap<u64, u64>,
        report: &mut TableReport,
    ) -> Result<(), InvariantViolation> {
        for i in 0..ENTRIES {
            let e = self.read(table, i);
            let a = base + i as u64 * span(level);
            if e & PRESENT == 0 {
                continue;
            }
            if is_leaf(e, level) {
                if !(e & ADDR_MASK).is_multiple_of(span(level)) {
                    let (addr, size) = (virt_addr(a), LeafSize::from_level(level));
                    return Err(InvariantViolation::MisalignedLeaf { addr, size });
                }
                report.leaves[level as usize - 1] += 1;
                continue;
            }
            let child = e & ADDR_MASK;
            if let Some(&first) = seen.get(&child) {
                let (frame, first, second) = (frame_of(child), virt_addr(first), virt_addr(a));
                return Err(InvariantViolation::SharedTable {
                    frame,
                    first,
                    second,
                });
            }
            seen.insert(child, a);
            report.tables.push(frame_of(child));
            let shared = level == 4 && a >= HALF;
            if !shared && self.is_empty_table(child) {
                let (frame, level, addr) = (frame_of(child), level - 1, virt_addr(a));
                return Err(InvariantViolation::EmptyTable { frame, level, addr });
            }
            self.check_table(child, level - 1, a, seen, report)?;
        }
        Ok(())
    }
}
