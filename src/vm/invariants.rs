//! The invariant checker of the virtual-memory layer, and its error.

use core::fmt;

use x86_64::structures::paging::PhysFrame;
use x86_64::{PhysAddr, VirtAddr};

use super::{AreaKind, Prot, Vm, VmSpace};
use crate::paging::{LeafSize, PhysMem};

/// A broken invariant of an address space (a kmem bug, never a caller error), with the
/// data that was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmInvariantError {
    /// An area is empty, or starts before the end of the one below it.
    AreaOrder {
        /// Its start.
        start: u64,
        /// Its end.
        end: u64,
    },
    /// An area leaves the managed range.
    AreaOutOfRange {
        /// Its start.
        start: u64,
        /// Its end.
        end: u64,
    },
    /// Two touching areas that join were left apart.
    UnmergedAreas {
        /// The start of the second.
        start: u64,
    },
    /// A page is mapped outside every area.
    PageOutsideAreas {
        /// The page.
        page: VirtAddr,
    },
    /// A page is mapped in a guard area.
    PageInGuard {
        /// The page.
        page: VirtAddr,
    },
    /// A page of a shared object area maps a frame other than the one
    /// its object caches for it.
    NotTheCachedFrame {
        /// The page.
        page: VirtAddr,
        /// The frame it maps.
        frame: PhysFrame,
    },
    /// A huge page is mapped in an area.
    HugePage {
        /// The page.
        page: VirtAddr,
        /// Its size.
        size: LeafSize,
    },
    /// A page is writable in an area without `WRITE`.
    WritableInReadOnly {
        /// The page.
        page: VirtAddr,
    },
    /// A page is executable in an area without `EXEC`.
    ExecutableInNoExec {
        /// The page.
        page: VirtAddr,
    },
    /// A page is reachable from ring 3 in an area without `USER`.
    UserInKernelArea {
        /// The page.
        page: VirtAddr,
    },
    /// A frame shared after a fork, or the zero frame, is mapped writable.
    SharedWritable {
        /// The page.
        page: VirtAddr,
        /// The frame.
        frame: PhysFrame,
    },
    /// A page of a fixed area maps another frame than the area says.
    WrongFixedFrame {
        /// The page.
        page: VirtAddr,
        /// The frame it maps.
        frame: PhysAddr,
        /// The frame the area places there.
        expected: PhysAddr,
    },
    /// A swapped-out page lies outside anonymous memory.
    SwappedOutsideAnonymous {
        /// The page.
        page: VirtAddr,
    },
    /// A swapped-out page names a swap slot that is free.
    FreeSwapSlot {
        /// The page.
        page: VirtAddr,
        /// Its entry, naming the slot.
        entry: u64,
    },
}

impl fmt::Display for VmInvariantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("virtual-memory invariant broken: ")?;
        match *self {
            Self::AreaOrder { start, end } => write!(
                f,
                "area [{start:#x}, {end:#x}) is empty or overlaps the one below"
            ),
            Self::AreaOutOfRange { start, end } => {
                write!(f, "area [{start:#x}, {end:#x}) leaves the managed range")
            }
            Self::UnmergedAreas { start } => {
                write!(f, "the area at {start:#x} joins the one below but is apart")
            }
            Self::PageOutsideAreas { page } => {
                write!(f, "page {:#x} is mapped outside every area", page.as_u64())
            }
            Self::PageInGuard { page } => {
                write!(f, "page {:#x} is mapped in a guard area", page.as_u64())
            }
            Self::NotTheCachedFrame { page, frame } => write!(
                f,
                "page {:#x} of a shared object area maps {:#x}, not its cached frame",
                page.as_u64(),
                frame.start_address().as_u64()
            ),
            Self::HugePage { page, size } => {
                write!(f, "a {size} page is mapped at {:#x}", page.as_u64())
            }
            Self::WritableInReadOnly { page } => write!(
                f,
                "page {:#x} is writable in a read-only area",
                page.as_u64()
            ),
            Self::ExecutableInNoExec { page } => write!(
                f,
                "page {:#x} is executable in a no-execute area",
                page.as_u64()
            ),
            Self::UserInKernelArea { page } => {
                write!(
                    f,
                    "page {:#x} is a user page in a kernel area",
                    page.as_u64()
                )
            }
            Self::SharedWritable { page, frame } => write!(
                f,
                "page {:#x} maps shared frame {:#x} (or the zero page) writable",
                page.as_u64(),
                frame.start_address().as_u64()
            ),
            Self::WrongFixedFrame {
                page,
                frame,
                expected,
            } => write!(
                f,
                "fixed page {:#x} maps frame {:#x}, not {:#x}",
                page.as_u64(),
                frame.as_u64(),
                expected.as_u64()
            ),
            Self::SwappedOutsideAnonymous { page } => write!(
                f,
                "swapped-out page {:#x} lies outside anonymous memory",
                page.as_u64()
            ),
            Self::FreeSwapSlot { page, entry } => write!(
                f,
                "swapped-out page {:#x} names a free slot (entry {entry:#x})",
                page.as_u64()
            ),
        }
    }
}

impl core::error::Error for VmInvariantError {}

impl<P: PhysMem> VmSpace<P> {
    /// The layer's invariant for this space: the areas are consistent, and
    /// every mapped page lies in a non-guard area, is 4 KiB if anonymous,
    /// never writable when shared or the zero page, never more permissive
    /// than its area, and maps its object's cached frame in a shared
    /// object area. Reports the first broken one.
    pub fn check_invariants(&self, vm: &Vm) -> Result<(), VmInvariantError> {
        self.areas.check()?;
        let (lo, hi) = self.areas.bounds();
        let mut err = Ok(());
        let mut fail = |e| {
            if err.is_ok() {
                err = Err(e);
            }
        };
        let mapper = self.mapper.lock();
        mapper.for_each_leaf_in(VirtAddr::new_truncate(lo), hi - lo, |leaf| {
            let (page, a) = (leaf.page, leaf.page.as_u64());
            let Some(area) = self.areas.find(a) else {
                return fail(VmInvariantError::PageOutsideAreas { page });
            };
            if area.kind == AreaKind::Guard {
                fail(VmInvariantError::PageInGuard { page });
            }
            // A huge page lies in anonymous memory, whole (areas may
            // have split around it since: an unlock).
            let huge_ok = leaf.size == LeafSize::Size2MiB
                && (a..a + super::huge::HUGE).step_by(4096).all(|p| {
                    self.areas
                        .find(p)
                        .is_some_and(|x| x.kind == AreaKind::Anonymous)
                });
            if leaf.size != LeafSize::Size4KiB && !huge_ok {
                fail(VmInvariantError::HugePage {
                    page,
                    size: leaf.size,
                });
            }
            let frame = PhysFrame::containing_address(leaf.frame);
            let access = leaf.access;
            if access.writable && !area.prot.contains(Prot::WRITE) {
                fail(VmInvariantError::WritableInReadOnly { page });
            }
            if access.executable && !area.prot.contains(Prot::EXEC) {
                fail(VmInvariantError::ExecutableInNoExec { page });
            }
            if access.user && !area.prot.contains(Prot::USER) {
                fail(VmInvariantError::UserInKernelArea { page });
            }
            // A private area's page on its object's cached frame is
            // read-only until its first write copies it.
            let cached = matches!(area.kind, AreaKind::Private { .. })
                && super::objects::cached_page(vm, area, a, frame).is_some();
            if area.kind.is_private_memory()
                && access.writable
                && (frame == vm.zero_frame() || vm.share_count(frame) > 1 || cached)
            {
                fail(VmInvariantError::SharedWritable { page, frame });
            }
            if let (AreaKind::Shared { .. }, Some((id, index))) = (area.kind, area.object_page(a)) {
                if vm.object(id).and_then(|o| o.frame_of(index)) != Some(frame) {
                    fail(VmInvariantError::NotTheCachedFrame { page, frame });
                }
            }
            if let AreaKind::Fixed { phys } = area.kind {
                let expected = phys + (a - area.start);
                if leaf.frame != expected {
                    fail(VmInvariantError::WrongFixedFrame {
                        page,
                        frame: leaf.frame,
                        expected,
                    });
                }
            }
        });
        mapper.for_each_soft_entry(VirtAddr::new_truncate(lo), hi - lo, |page, entry| {
            let anonymous = self
                .areas
                .find(page.as_u64())
                .is_some_and(|a| a.kind.is_private_memory());
            if !anonymous {
                fail(VmInvariantError::SwappedOutsideAnonymous { page });
            }
            if !vm.swap_holds(entry) {
                fail(VmInvariantError::FreeSwapSlot { page, entry });
            }
        });
        err
    }
}
