//! Region kinds and physical regions.

/// Size of a physical frame, the unit the sanitizer trims usable memory to.
pub use crate::PAGE_SIZE as FRAME_SIZE;

/// First physical address past what x86_64 can address (52 bits).
pub use crate::PHYS_LIMIT;

/// What a physical region holds.
///
/// The declaration order is the overlap priority: where two regions overlap,
/// the later variant wins, so any non-usable kind beats [`RegionKind::Usable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RegionKind {
    /// Free RAM the frame allocator may hand out.
    Usable,
    /// ACPI tables; reclaimable once the kernel has parsed them.
    AcpiReclaimable,
    /// Memory the bootloader still uses (page tables, boot info).
    Bootloader,
    /// The kernel image or modules.
    Kernel,
    /// Reserved by firmware or by the caller.
    Reserved,
    /// ACPI non-volatile storage; must never be touched.
    AcpiNvs,
    /// Defective RAM.
    Bad,
}

impl RegionKind {
    /// Whether the frame allocator may hand out frames of this kind.
    pub const fn is_usable(self) -> bool {
        matches!(self, Self::Usable)
    }
}

impl core::fmt::Display for RegionKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.pad(match self {
            Self::Usable => "usable",
            Self::AcpiReclaimable => "ACPI reclaimable",
            Self::Bootloader => "bootloader",
            Self::Kernel => "kernel",
            Self::Reserved => "reserved",
            Self::AcpiNvs => "ACPI NVS",
            Self::Bad => "bad",
        })
    }
}

/// A physical region `[start, start + len)` of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the region holds.
    pub kind: RegionKind,
}

impl Region {
    /// A region from start, length and kind.
    pub const fn new(start: u64, len: u64, kind: RegionKind) -> Self {
        Self { start, len, kind }
    }

    /// One past the last byte (the map guarantees this does not overflow).
    pub const fn end(&self) -> u64 {
        self.start + self.len
    }
}
