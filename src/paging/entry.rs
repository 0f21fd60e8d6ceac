//! Raw entry bits and level geometry, shared by the walker, translation and the range engine.
//!
//! Addresses inside the engine are 48-bit "linear" values (sign bits stripped) so a range
//! ending at the top of the upper half never overflows.

use x86_64::VirtAddr;

pub(crate) const PRESENT: u64 = 1;
pub(crate) const WRITABLE: u64 = 1 << 1;
pub(crate) const USER: u64 = 1 << 2;
/// Set by the CPU on any access through a leaf (and on tables walked).
pub(crate) const ACCESSED: u64 = 1 << 5;
/// Set by the CPU on a write through a leaf.
pub(crate) const DIRTY: u64 = 1 << 6;
/// The bits the CPU sets in a leaf, which every rewrite of a live leaf keeps.
pub(crate) const ACCESSED_DIRTY: u64 = ACCESSED | DIRTY;
pub(crate) const HUGE: u64 = 1 << 7;
pub(crate) const NX: u64 = 1 << 63;
pub(crate) const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Flags of an entry that points to a table: effective permissions are decided by the leaf.
pub(crate) const TABLE_FLAGS: u64 = PRESENT | WRITABLE;
pub(crate) const ENTRIES: usize = 512;
pub(crate) const LINEAR_MASK: u64 = (1 << 48) - 1;
pub(crate) const HALF: u64 = 1 << 47;

/// Bytes covered by one entry of a table at `level` (1 = page table .. 4 = PML4).
#[inline(always)]
pub(crate) const fn span(level: u8) -> u64 {
    1u64 << (12 + 9 * (level as u32 - 1))
}

/// Index of `va` in the table at `level`.
#[inline(always)]
pub(crate) const fn index(va: u64, level: u8) -> usize {
    ((va >> (12 + 9 * (level as u32 - 1))) & 511) as usize
}

/// Whether a present entry at `level` maps memory rather than pointing to a table.
#[inline(always)]
pub(crate) const fn is_leaf(entry: u64, level: u8) -> bool {
    level == 1 || (level < 4 && entry & HUGE != 0)
}

/// The canonical address of a 48-bit linear address.
#[inline(always)]
pub(crate) const fn canonical(va: u64) -> u64 {
    (((va << 16) as i64) >> 16) as u64
}

/// The canonical virtual address of a 48-bit linear address.
#[inline(always)]
pub(crate) const fn virt_addr(lin: u64) -> VirtAddr {
    VirtAddr::new_truncate(lin)
}

/// Leaf bits for a page at `level` from leaf flags (which never contain HUGE).
#[inline(always)]
pub(crate) const fn leaf_bits(flags: u64, level: u8) -> u64 {
    if level > 1 {
        flags | HUGE
    } else {
        flags
    }
}
