//! An emulated TLB for host tests: one CPU's leaf and paging-structure caches, dropped only
//! by the flushes the code under test performs (Intel SDM vol. 3, 4.10).
//!
//! A model that walks the tables on every access sees every edit at once and so cannot
//! catch a missing shootdown; this one keeps using what it cached (stale table pointers
//! included) until `invlpg`, a full flush or a CR3 write drops it. The cache is unbounded,
//! the strictest choice: an entry stays until flushed. Not modelled: PCIDs, global pages
//! (every CR3 write drops everything), SMEP/SMAP; CR0.WP and EFER.NXE are on.

use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::BTreeMap;
use std::vec::Vec;

use x86_64::structures::idt::PageFaultErrorCode;
use x86_64::structures::paging::{PageTableFlags as F, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use super::phys_mem::EmulatedPhysMem;
use crate::paging::{Access, LeafSize, Mmu, PhysMem};

const PRESENT: u64 = F::PRESENT.bits();
const ACCESSED: u64 = F::ACCESSED.bits();
const DIRTY: u64 = F::DIRTY.bits();
const HUGE: u64 = F::HUGE_PAGE.bits();
/// The bits ANDed over a path (W and U); NX is ORed apart.
const PATH_BITS: u64 = F::WRITABLE.bits() | F::USER_ACCESSIBLE.bits();
const NX: u64 = F::NO_EXECUTE.bits();
/// Bit 12 of a huge leaf is PAT, not address: the frame starts above it.
const HUGE_PAT: u64 = 1 << 12;

/// What an access does with the byte it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// A data read.
    Read,
    /// A data write: needs W, sets Dirty.
    Write,
    /// An instruction fetch: needs NX clear on every level.
    Exec,
}

/// Which paging-structure-cache entries `invlpg` drops besides the address's leaves.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum InvlpgScope {
    /// Only those that translate the address: the least the SDM allows code to rely on,
    /// so a stale table in another range stays visible.
    #[default]
    Address,
    /// All of them, as the SDM specifies for INVLPG (for the current PCID).
    AllStructures,
}

/// A page fault the emulated CPU raised; the address's cached entries are already dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbFault {
    /// The faulting address (CR2).
    pub addr: VirtAddr,
    /// A protection or reserved-bit fault; clear when an entry was not present.
    pub present: bool,
    /// The access was a write.
    pub write: bool,
    /// The access was made at CPL 3.
    pub user: bool,
    /// The access was an instruction fetch.
    pub exec: bool,
    /// An entry had a reserved bit set (PS in a PML4E, a misaligned huge frame).
    pub reserved: bool,
}

impl TlbFault {
    /// The error code the CPU would push for this fault.
    pub fn error_code(&self) -> PageFaultErrorCode {
        let mut code = PageFaultErrorCode::empty();
        code.set(PageFaultErrorCode::PROTECTION_VIOLATION, self.present);
        code.set(PageFaultErrorCode::CAUSED_BY_WRITE, self.write);
        code.set(PageFaultErrorCode::USER_MODE, self.user);
        code.set(PageFaultErrorCode::MALFORMED_TABLE, self.reserved);
        code.set(PageFaultErrorCode::INSTRUCTION_FETCH, self.exec);
        code
    }
}

/// A cached leaf translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedLeaf {
    /// Start of the page.
    pub page: VirtAddr,
    /// Size of the page.
    pub size: LeafSize,
    /// Start of the frame it maps.
    pub frame: PhysAddr,
    /// Permissions over the whole path, as cached.
    pub access: Access,
    /// Whether the leaf entry had Dirty set when cached: a write through a clean entry
    /// walks again to set it.
    pub dirty: bool,
}

/// Counters of one emulated CPU.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TlbStats {
    /// Accesses served by a cached leaf without a walk.
    pub hits: u64,
    /// Accesses that found no usable cached leaf.
    pub misses: u64,
    /// Table walks, those that set Dirty through a clean cached leaf included.
    pub walks: u64,
    /// `invlpg`s, full flushes and CR3 writes.
    pub flushes: u64,
    /// Page faults raised.
    pub faults: u64,
}

/// A cached PML4E, PDPTE or PDE: the next table and the permissions down to it.
#[derive(Debug, Clone, Copy)]
struct Structure {
    table: PhysFrame,
    and: u64,
    nx: u64,
}

/// One emulated CPU's TLB and paging-structure caches, an [`Mmu`] for the code under test.
///
/// ```
/// use kmem::paging::{MapFlags, PageTables};
/// use kmem::testing::phys_mem::EmulatedMemory;
/// use kmem::testing::tlb::{AccessKind, TlbCpu};
/// use x86_64::{PhysAddr, VirtAddr};
///
/// let mem = EmulatedMemory::new(16);
/// let mut frames = mem.frame_allocator();
/// let mut m = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
/// let mut cpu = TlbCpu::new(m.pml4());
/// let va = VirtAddr::new(0x4000_0000);
/// // SAFETY: example tables, mapping frames no Rust object uses.
/// unsafe { m.map_range(va, PhysAddr::new(0x8000_0000), 4096, MapFlags::READ, &mut frames) }.unwrap().ignore();
/// assert!(cpu.access(m.phys_mem(), va, AccessKind::Read, false).is_ok());
/// // SAFETY: example tables, mapping frames no Rust object uses.
/// let flush = unsafe { m.unmap_range(va, 4096, &mut frames) }.unwrap();
/// // Until the flush, the CPU still translates through what it cached.
/// assert!(cpu.access(m.phys_mem(), va, AccessKind::Read, false).is_ok());
/// flush.flush(&mut cpu);
/// assert!(cpu.access(m.phys_mem(), va, AccessKind::Read, false).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct TlbCpu {
    cr3: PhysFrame,
    scope: InvlpgScope,
    /// Keyed by (level, linear address >> the level's page shift), as an entry is found.
    leaves: BTreeMap<(u8, u64), CachedLeaf>,
    /// Keyed like `leaves`, by the level of the cached entry (4 = PML4E .. 2 = PDE).
    structures: BTreeMap<(u8, u64), Structure>,
    last_walk: Vec<PhysFrame>,
    stats: TlbStats,
}

impl TlbCpu {
    /// An empty TLB with `cr3` loaded and [`InvlpgScope::Address`].
    pub fn new(cr3: PhysFrame) -> Self {
        Self {
            cr3,
            scope: InvlpgScope::default(),
            leaves: BTreeMap::new(),
            structures: BTreeMap::new(),
            last_walk: Vec::new(),
            stats: TlbStats::default(),
        }
    }

    /// The same CPU with `invlpg` dropping paging-structure entries as `scope` says.
    pub fn with_scope(self, scope: InvlpgScope) -> Self {
        Self { scope, ..self }
    }

    /// Translates `va` for an access of `kind` (at CPL 3 when `user`) as the MMU would: a
    /// cached leaf if it allows the access, else a walk from the deepest cached table, stale
    /// or not, that sets Accessed (and Dirty for a write) in memory and fills the caches.
    ///
    /// Takes emulated memory because a stale table pointer may name any frame by now, and
    /// the emulated memory bounds-checks every frame it is handed.
    pub fn access(
        &mut self,
        phys: &EmulatedPhysMem<'_>,
        va: VirtAddr,
        kind: AccessKind,
        user: bool,
    ) -> Result<PhysAddr, TlbFault> {
        self.last_walk.clear();
        let lin = linear(va);
        let result = match self.lookup(lin) {
            Some((key, leaf)) if allows(leaf.access, kind, user) => {
                if kind == AccessKind::Write && !leaf.dirty {
                    // The CPU must set Dirty in memory, so it walks again: a fault if the
                    // entry is no longer present or writable.
                    self.leaves.remove(&key);
                    self.walk(phys, lin, kind, user)
                } else {
                    self.stats.hits += 1;
                    Ok(leaf.frame + (lin & (leaf.size.bytes() - 1)))
                }
            }
            // A cached entry that forbids the access faults without a walk: SDM 4.10.4.3
            // allows this or a walk, and faulting is the stricter model.
            Some(_) => Err(Cause::Protection),
            None => {
                self.stats.misses += 1;
                self.walk(phys, lin, kind, user)
            }
        };
        match result {
            Ok(pa) => {
                self.last_walk.push(PhysFrame::containing_address(pa));
                Ok(pa)
            }
            Err(cause) => {
                // A page fault drops the entries that would translate the faulting address.
                self.invalidate(lin, false);
                self.stats.faults += 1;
                Err(TlbFault {
                    addr: va,
                    present: cause != Cause::NotPresent,
                    write: kind == AccessKind::Write,
                    user,
                    exec: kind == AccessKind::Exec,
                    reserved: cause == Cause::Reserved,
                })
            }
        }
    }

    /// Walks the paging structures for `va` and caches every table entry on the way, as a
    /// CPU may do speculatively at any time, even when no page below is present (SDM
    /// vol. 3, 4.10.3.1); never faults, sets no Accessed bit, caches no leaf. A test uses it
    /// to hold a page table that only swap entries keep alive.
    pub fn speculate(&mut self, phys: &EmulatedPhysMem<'_>, va: VirtAddr) {
        let lin = linear(va);
        let (mut level, mut table, mut and, mut nx) = self.walk_start(lin);
        while level > 1 {
            let e = entry(phys, table, index(lin, level)).load(Ordering::SeqCst);
            if e & PRESENT == 0 || e & HUGE != 0 {
                return;
            }
            (and, nx) = (and & e, nx | (e & NX));
            table = self.cache_structure(lin, level, e, and, nx);
            level -= 1;
        }
    }

    /// Caches the paging-structure entry `e` met at `level` on the way to
    /// `lin` (with the rights `and`, `nx` accumulated down to it); returns
    /// the table it points to.
    fn cache_structure(&mut self, lin: u64, level: u8, e: u64, and: u64, nx: u64) -> PhysFrame {
        // Bits 12..52: truncating drops NX and the protection key.
        let table = PhysFrame::containing_address(PhysAddr::new_truncate(e));
        self.structures
            .insert(key(lin, level), Structure { table, and, nx });
        table
    }

    /// The frames the last access went through: each table its walk read (none on a TLB
    /// hit), then the 4 KiB frame it reached (none on a fault). A harness checks that none
    /// of them is free.
    pub fn last_walk(&self) -> &[PhysFrame] {
        &self.last_walk
    }

    /// Whether anything cached still uses `frame`: a leaf mapping it, a paging-structure
    /// entry pointing to it as a table, or CR3. Freeing such a frame is the bug to catch.
    pub fn holds_frame(&self, frame: PhysFrame) -> bool {
        let addr = frame.start_address();
        frame == self.cr3
            || self.structures.values().any(|s| s.table == frame)
            || self
                .leaves
                .values()
                .any(|l| addr >= l.frame && addr < l.frame + l.size.bytes())
    }

    /// The cached leaf an access to `va` would use, if any.
    pub fn cached(&self, va: VirtAddr) -> Option<CachedLeaf> {
        self.lookup(linear(va)).map(|(_, leaf)| leaf)
    }

    /// Number of cached leaves.
    pub fn leaf_count(&self) -> usize {
        self.leaves.len()
    }

    /// Number of cached PML4Es, PDPTEs and PDEs.
    pub fn structure_count(&self) -> usize {
        self.structures.len()
    }

    /// The counters so far.
    pub fn stats(&self) -> TlbStats {
        self.stats
    }

    /// The smallest cached leaf covering `lin`, with its key: a CPU holding two sizes for
    /// one address (a remap without flush) may use either, and this one is deterministic.
    fn lookup(&self, lin: u64) -> Option<((u8, u64), CachedLeaf)> {
        (1..=3).find_map(|level| {
            let key = key(lin, level);
            self.leaves.get(&key).map(|leaf| (key, *leaf))
        })
    }

    /// Walks the tables for `lin`, starting below the deepest cached paging-structure entry.
    fn walk(
        &mut self,
        phys: &EmulatedPhysMem<'_>,
        lin: u64,
        kind: AccessKind,
        user: bool,
    ) -> Result<PhysAddr, Cause> {
        self.stats.walks += 1;
        let (mut level, mut table, mut and, mut nx) = self.walk_start(lin);
        loop {
            self.last_walk.push(table);
            let slot = entry(phys, table, index(lin, level));
            let e = slot.load(Ordering::SeqCst);
            if e & PRESENT == 0 {
                return Err(Cause::NotPresent);
            }
            if level == 4 && e & HUGE != 0 {
                return Err(Cause::Reserved);
            }
            (and, nx) = (and & e, nx | (e & NX));
            // Bits 12..52: truncating drops NX and the protection key, aligning the flags.
            let addr = PhysAddr::new_truncate(e).align_down(4096u64).as_u64();
            if level > 1 && e & HUGE == 0 {
                slot.fetch_or(ACCESSED, Ordering::SeqCst);
                table = self.cache_structure(lin, level, e, and, nx);
                level -= 1;
                continue;
            }
            let size = 1u64 << shift(level);
            if level > 1 && addr & (size - 1) & !HUGE_PAT != 0 {
                return Err(Cause::Reserved);
            }
            let access = Access::of_path(and, nx);
            if !allows(access, kind, user) {
                return Err(Cause::Protection);
            }
            let dirty = if kind == AccessKind::Write { DIRTY } else { 0 };
            let old = slot.fetch_or(ACCESSED | dirty, Ordering::SeqCst);
            let frame = addr & !(size - 1);
            let leaf = CachedLeaf {
                page: VirtAddr::new_truncate(lin & !(size - 1)),
                size: LeafSize::from_level(level),
                frame: PhysAddr::new(frame),
                access,
                dirty: (old | dirty) & DIRTY != 0,
            };
            self.leaves.insert(key(lin, level), leaf);
            return Ok(PhysAddr::new(frame | (lin & (size - 1))));
        }
    }

    /// The level, table and permissions a walk of `lin` starts from: below the deepest
    /// cached paging-structure entry, else at CR3.
    fn walk_start(&self, lin: u64) -> (u8, PhysFrame, u64, u64) {
        (2..=4)
            .find_map(|level| {
                let s = self.structures.get(&key(lin, level))?;
                Some((level - 1, s.table, s.and, s.nx))
            })
            .unwrap_or((4, self.cr3, PATH_BITS, 0))
    }

    /// Drops the leaves covering `lin` and the paging-structure entries that translate it,
    /// or every paging-structure entry when `all_structures`.
    fn invalidate(&mut self, lin: u64, all_structures: bool) {
        for level in 1..=3 {
            self.leaves.remove(&key(lin, level));
        }
        if all_structures {
            self.structures.clear();
        } else {
            for level in 2..=4 {
                self.structures.remove(&key(lin, level));
            }
        }
    }

    fn drop_everything(&mut self) {
        self.leaves.clear();
        self.structures.clear();
        self.stats.flushes += 1;
    }
}

// SAFETY: the emulated TLB drops exactly what `invlpg` and a full flush drop
// on a CPU (SDM vol. 3, 4.10.4); `cr3` is the table it walks.
unsafe impl Mmu for TlbCpu {
    fn cr3(&self) -> PhysFrame {
        self.cr3
    }

    /// Loads `pml4` and drops every cached entry (neither PCIDs nor global pages are modelled).
    unsafe fn set_cr3(&mut self, pml4: PhysFrame) {
        self.cr3 = pml4;
        self.drop_everything();
    }

    /// Drops the leaves covering `addr` and paging-structure entries as the scope says.
    fn invlpg(&mut self, addr: VirtAddr) {
        let all = self.scope == InvlpgScope::AllStructures;
        self.invalidate(linear(addr), all);
        self.stats.flushes += 1;
    }

    fn flush_all(&mut self) {
        self.drop_everything();
    }
}

/// Why a walk or a cached entry refused an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    NotPresent,
    Protection,
    Reserved,
}

/// Whether a translation with `access` allows an access of `kind`: W is enforced at every
/// CPL (CR0.WP), U only for CPL 3, NX for fetches; SMEP and SMAP are off.
fn allows(access: Access, kind: AccessKind, user: bool) -> bool {
    (!user || access.user)
        && match kind {
            AccessKind::Read => true,
            AccessKind::Write => access.writable,
            AccessKind::Exec => access.executable,
        }
}

/// The 48 bits of `va` the tables translate.
fn linear(va: VirtAddr) -> u64 {
    va.as_u64() & ((1 << 48) - 1)
}

/// Bits of a linear address below those that select an entry at `level` (1 = page table).
const fn shift(level: u8) -> u32 {
    12 + 9 * (level as u32 - 1)
}

/// The cache key of the entry at `level` that translates `lin`.
fn key(lin: u64, level: u8) -> (u8, u64) {
    (level, lin >> shift(level))
}

/// Index of `lin` in the table at `level`.
fn index(lin: u64, level: u8) -> usize {
    ((lin >> shift(level)) & 511) as usize
}

/// Entry `i` of the table in `frame`, to read and set bits in as the CPU does: atomically.
fn entry<'m>(phys: &'m EmulatedPhysMem<'_>, frame: PhysFrame, i: usize) -> &'m AtomicU64 {
    let ptr = phys
        .table_ptr(frame)
        .as_ptr()
        .cast::<u64>()
        .wrapping_add(i & 511);
    // SAFETY: `table_ptr` bounds-checks the frame, so the word is inside the emulated
    // buffer, 8-aligned and alive for the borrow of `phys`. Emulated CPUs run on the
    // harness's thread, between calls into the code under test, so no non-atomic access
    // to the word runs at the same time.
    unsafe { AtomicU64::from_ptr(ptr) }
}
