//! The invariant checker of page-table hierarchies, run after every step in tests and fuzzing
//! (needs `std`).

use core::fmt;
use std::collections::HashMap;
use std::vec::Vec;

use x86_64::structures::paging::PhysFrame;
use x86_64::{PhysAddr, VirtAddr};

use super::entry::{is_leaf, span, virt_addr, ADDR_MASK, HALF, LINEAR_MASK, PRESENT};
use super::page_tables::frame_of;
use super::visit::{walk, Slot, Step, Visitor};
use super::{LeafSize, PageTables, PhysMem};

/// A broken invariant of a page-table hierarchy (a kmem bug, never a caller error), with
/// where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingInvariantError {
    /// A table is reachable from two parent entries.
    SharedTable {
        /// The table.
        frame: PhysFrame,
        /// Start of the region of the first parent entry.
        first: VirtAddr,
        /// Start of the region of the second.
        second: VirtAddr,
    },
    /// A table with no entry in use is still linked (it should have been freed).
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
        /// The frame address in its entry.
        frame: PhysAddr,
    },
}

impl fmt::Display for PagingInvariantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::SharedTable {
                frame,
                first,
                second,
            } => write!(
                f,
                "page table {:#x} is linked from the entries of {:#x} and {:#x}",
                frame.start_address().as_u64(),
                first.as_u64(),
                second.as_u64()
            ),
            Self::EmptyTable { frame, level, addr } => write!(
                f,
                "empty level-{level} table {:#x} (covering {:#x}) is still linked",
                frame.start_address().as_u64(),
                addr.as_u64()
            ),
            Self::MisalignedLeaf { addr, size, frame } => write!(
                f,
                "the {size} page at {:#x} maps frame {:#x}, not aligned to its size",
                addr.as_u64(),
                frame.as_u64()
            ),
        }
    }
}

impl core::error::Error for PagingInvariantError {}

/// What the checker saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableReport {
    /// Every table frame, the PML4 first.
    pub tables: Vec<PhysFrame>,
    /// Leaf count per size: 4 KiB, 2 MiB, 1 GiB.
    pub leaves: [usize; 3],
}

impl<P: PhysMem> PageTables<P> {
    /// Checks: no table reachable from two parents, no empty table linked below the PML4
    /// (kernel-half PDPTs excepted: they are shared), huge frames aligned.
    pub fn check_invariants(&self) -> Result<(), PagingInvariantError> {
        self.table_report().map(|_| ())
    }

    /// Checks as [`check_invariants`](Self::check_invariants) and reports every table and the
    /// leaves per size.
    pub fn table_report(&self) -> Result<TableReport, PagingInvariantError> {
        let mut v = Checker {
            seen: HashMap::from([(self.root(), 0)]),
            report: TableReport {
                tables: Vec::from([self.pml4()]),
                leaves: [0; 3],
            },
        };
        walk(&mut &*self, &mut v, self.root(), 4, 0, LINEAR_MASK + 1)?;
        Ok(v.report)
    }
}

/// The checker's walk: every table once, every entry.
struct Checker {
    /// Each table seen, with the start of the region of its parent entry.
    seen: HashMap<u64, u64>,
    report: TableReport,
}

impl<P: PhysMem> Visitor<P, &PageTables<P>> for Checker {
    type Stop = PagingInvariantError;

    fn enter(&mut self, m: &mut &PageTables<P>, slot: &Slot) -> Result<Step, PagingInvariantError> {
        let (e, level, a) = (slot.entry, slot.level, slot.base());
        if e & PRESENT == 0 {
            return Ok(Step::Next);
        }
        if is_leaf(e, level) {
            if !(e & ADDR_MASK).is_multiple_of(span(level)) {
                return Err(PagingInvariantError::MisalignedLeaf {
                    addr: virt_addr(a),
                    size: LeafSize::from_level(level),
                    frame: PhysAddr::new_truncate(e & ADDR_MASK),
                });
            }
            self.report.leaves[usize::from(level) - 1] += 1;
            return Ok(Step::Next);
        }
        let child = e & ADDR_MASK;
        if let Some(&first) = self.seen.get(&child) {
            return Err(PagingInvariantError::SharedTable {
                frame: frame_of(child),
                first: virt_addr(first),
                second: virt_addr(a),
            });
        }
        self.seen.insert(child, a);
        self.report.tables.push(frame_of(child));
        let shared = level == 4 && a >= HALF;
        if !shared && m.is_empty_table(child) {
            return Err(PagingInvariantError::EmptyTable {
                frame: frame_of(child),
                level: level - 1,
                addr: virt_addr(a),
            });
        }
        Ok(Step::Descend(child))
    }
}
