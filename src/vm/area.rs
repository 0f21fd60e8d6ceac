//! One area of an address space: a page-aligned range, its protection and
//! what backs it.

use super::object::ObjectId;
use super::Prot;
use x86_64::PhysAddr;

/// What backs an area's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AreaKind {
    /// Anonymous memory, zero-filled on demand: a first read maps the
    /// shared zero frame, a first write a private zeroed frame. Private
    /// frames are shared copy-on-write after a fork.
    Anonymous,
    /// Fixed physical memory (MMIO, a framebuffer): the area's first page
    /// maps `phys`, the next `phys + 4096`, and so on. Mapped when created;
    /// its frames are never freed by the address space, and a fork shares
    /// them as they are.
    Fixed {
        /// The frame behind the area's first page.
        phys: PhysAddr,
    },
    /// Never mapped: any access is a fault reported as a guard hit.
    Guard,
    /// A shared mapping of a memory object (`MAP_SHARED`,
    /// [`VmSpace::map_object`](super::VmSpace::map_object)): a page maps the
    /// object's one cached frame in every space, writes reach the object,
    /// a fork shares it as it is.
    Shared {
        /// The object.
        object: ObjectId,
        /// The page of the object the area's first page maps.
        offset: u64,
    },
    /// A private mapping of a memory object (`MAP_PRIVATE`): a read maps
    /// the object's cached frame read-only (the object's page, its writes
    /// through shared mappings included); the first write copies it into a
    /// frame of the space's own, which from then on is anonymous memory
    /// (shared copy-on-write after a fork, swapped under pressure); writes
    /// never reach the object.
    Private {
        /// The object.
        object: ObjectId,
        /// The page of the object the area's first page maps.
        offset: u64,
    },
}

impl AreaKind {
    /// Whether its pages are frames of the space's own (anonymous
    /// memory, or private copies of an object's pages).
    pub const fn is_private_memory(&self) -> bool {
        matches!(self, Self::Anonymous | Self::Private { .. })
    }
}

/// An area: `[start, end)`, page-aligned and non-empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// What accesses are allowed.
    pub prot: Prot,
    /// What backs it.
    pub kind: AreaKind,
    /// Locked in memory (`mlock`): its pages are faulted in when locked
    /// and reclaim never takes them.
    pub locked: bool,
}

impl Area {
    /// Its length in pages.
    pub const fn pages(&self) -> u64 {
        self.len() / 4096
    }

    /// Its length in bytes.
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether it is empty (never, for an area of an address space).
    pub const fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Whether reclaim may take its pages as anonymous memory (to swap):
    /// private memory, not locked.
    pub const fn pageable(&self) -> bool {
        self.kind.is_private_memory() && !self.locked
    }

    /// The object page the page at `addr` (inside) maps, for an area of an
    /// object.
    pub(crate) fn object_page(&self, addr: u64) -> Option<(ObjectId, u64)> {
        match self.kind {
            AreaKind::Shared { object, offset } | AreaKind::Private { object, offset } => {
                Some((object, offset + (addr - self.start) / 4096))
            }
            _ => None,
        }
    }

    /// Whether `addr` lies inside.
    pub const fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// The part `[a, b)` of this area (which must lie inside it), with a
    /// fixed area's physical address moved along.
    pub(crate) fn slice(&self, a: u64, b: u64) -> Self {
        debug_assert!(self.start <= a && a < b && b <= self.end);
        let kind = match self.kind {
            AreaKind::Fixed { phys } => AreaKind::Fixed {
                phys: phys + (a - self.start),
            },
            AreaKind::Shared { object, offset } => AreaKind::Shared {
                object,
                offset: offset + (a - self.start) / 4096,
            },
            AreaKind::Private { object, offset } => AreaKind::Private {
                object,
                offset: offset + (a - self.start) / 4096,
            },
            k => k,
        };
        Self {
            start: a,
            end: b,
            kind,
            ..*self
        }
    }

    /// Whether `next`, starting where this ends, can join this area: same
    /// protection, same lock, same kind, and for fixed memory a continuous
    /// physical range.
    pub(crate) fn joins(&self, next: &Self) -> bool {
        self.end == next.start
            && self.prot == next.prot
            && self.locked == next.locked
            && match (self.kind, next.kind) {
                (AreaKind::Fixed { phys: p }, AreaKind::Fixed { phys: q }) => p + self.len() == q,
                (
                    AreaKind::Shared {
                        object: o,
                        offset: p,
                    },
                    AreaKind::Shared {
                        object: n,
                        offset: q,
                    },
                )
                | (
                    AreaKind::Private {
                        object: o,
                        offset: p,
                    },
                    AreaKind::Private {
                        object: n,
                        offset: q,
                    },
                ) => o == n && p + self.pages() == q,
                (a, b) => a == b,
            }
    }
}
