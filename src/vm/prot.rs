//! What an area allows: read, write, execute, and whether ring 3 may.

use crate::paging::MapFlags;

bitflags::bitflags! {
    /// The protection of an area, as `mmap`'s `PROT_*` plus the user bit.
    /// Writable and executable together is refused (W^X).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Prot: u8 {
        /// Loads allowed. x86_64 cannot map a page write- or execute-only,
        /// so every mapped page is readable; an area without `READ` (and
        /// without the others: `PROT_NONE`) is never mapped.
        const READ = 1;
        /// Stores allowed.
        const WRITE = 1 << 1;
        /// Instruction fetches allowed.
        const EXEC = 1 << 2;
        /// Reachable from ring 3.
        const USER = 1 << 3;
    }
}

impl Prot {
    /// Read and write.
    pub const RW: Self = Self::READ.union(Self::WRITE);
    /// Read and execute.
    pub const RX: Self = Self::READ.union(Self::EXEC);

    /// Whether any access is allowed (not `PROT_NONE`).
    pub const fn accessible(self) -> bool {
        self.intersects(Self::READ.union(Self::WRITE).union(Self::EXEC))
    }

    /// Whether this protection breaks W^X.
    pub const fn is_write_exec(self) -> bool {
        self.contains(Self::WRITE.union(Self::EXEC))
    }

    /// The page flags of a page of this area; `writable` is false for a
    /// page that must fault on write (shared copy-on-write, the zero page).
    pub(crate) fn map_flags(self, writable: bool) -> MapFlags {
        let mut f = MapFlags::READ;
        if writable && self.contains(Self::WRITE) {
            f = f.writable();
        }
        if self.contains(Self::EXEC) {
            f = f.executable();
        }
        if self.contains(Self::USER) {
            f = f.user();
        }
        f
    }
}
