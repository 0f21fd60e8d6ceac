//! Mapping flags with safe defaults: non-executable unless asked, W+X only by explicit opt-in.

use x86_64::structures::paging::PageTableFlags;
use x86_64::VirtAddr;

use super::PagingError;

/// Leaf flags for a mapping. Starts read-only and non-executable; every widening is explicit.
///
/// ```
/// use kmem::paging::MapFlags;
/// let data = MapFlags::READ.writable();
/// let code = MapFlags::READ.executable();
/// assert!(data.is_writable() && !data.is_executable());
/// assert!(code.is_executable() && !code.is_writable());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapFlags {
    pte: PageTableFlags,
    allow_write_exec: bool,
}

/// Bits a caller may set on a leaf; the mapper owns PRESENT and HUGE_PAGE.
const CALLER_BITS: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::HUGE_PAGE)
    .complement();

impl MapFlags {
    /// Present, read-only, non-executable, supervisor-only.
    pub const READ: Self = Self {
        pte: PageTableFlags::PRESENT.union(PageTableFlags::NO_EXECUTE),
        allow_write_exec: false,
    };
    /// Present, writable, non-executable.
    pub const READ_WRITE: Self = Self::READ.writable();
    /// Present, read-only, executable.
    pub const READ_EXEC: Self = Self::READ.executable();

    /// Takes raw leaf flags literally (a missing NO_EXECUTE means executable). PRESENT is
    /// implied; HUGE_PAGE is chosen by the mapper. W+X is still refused without the opt-in.
    pub const fn from_pte(flags: PageTableFlags) -> Self {
        Self {
            pte: flags
                .intersection(CALLER_BITS)
                .union(PageTableFlags::PRESENT),
            allow_write_exec: false,
        }
    }
    const fn with(self, bits: PageTableFlags) -> Self {
        Self {
            pte: self.pte.union(bits),
            ..self
        }
    }
    /// Adds write permission.
    pub const fn writable(self) -> Self {
        self.with(PageTableFlags::WRITABLE)
    }
    /// Removes NO_EXECUTE.
    pub const fn executable(self) -> Self {
        Self {
            pte: self.pte.difference(PageTableFlags::NO_EXECUTE),
            ..self
        }
    }
    /// Makes the mapping reachable from ring 3.
    pub const fn user(self) -> Self {
        self.with(PageTableFlags::USER_ACCESSIBLE)
    }
    /// Keeps the TLB entry across CR3 switches (kernel mappings).
    pub const fn global(self) -> Self {
        self.with(PageTableFlags::GLOBAL)
    }
    /// Uncached (device memory).
    pub const fn no_cache(self) -> Self {
        self.with(PageTableFlags::NO_CACHE)
    }
    /// Write-through caching.
    pub const fn write_through(self) -> Self {
        self.with(PageTableFlags::WRITE_THROUGH)
    }
    /// The explicit opt-in that lets a mapping be writable and executable at once.
    pub const fn allow_write_exec(self) -> Self {
        Self {
            allow_write_exec: true,
            ..self
        }
    }
    /// Whether the mapping is writable.
    pub const fn is_writable(self) -> bool {
        self.pte.contains(PageTableFlags::WRITABLE)
    }
    /// Whether the mapping is executable.
    pub const fn is_executable(self) -> bool {
        !self.pte.contains(PageTableFlags::NO_EXECUTE)
    }
    /// The leaf flags that will be written (without HUGE_PAGE).
    pub const fn pte_flags(self) -> PageTableFlags {
        self.pte
    }
    /// The leaf bits, or `WriteExecute` when W+X lacks the opt-in.
    pub(crate) fn checked_bits(self, addr: VirtAddr) -> Result<u64, PagingError> {
        if self.is_writable() && self.is_executable() && !self.allow_write_exec {
            return Err(PagingError::WriteExecute { addr });
        }
        Ok(self.pte.bits())
    }
}

impl From<PageTableFlags> for MapFlags {
    fn from(flags: PageTableFlags) -> Self {
        Self::from_pte(flags)
    }
}
