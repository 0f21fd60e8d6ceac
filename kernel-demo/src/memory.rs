//! From the PVH memory map to a kmem frame allocator.
//!
//! The PVH map does not reserve the kernel image, the boot data (start
//! info, the map itself, the command line) or the low 1 MiB (BIOS data,
//! real-mode IVT, option ROMs): they are reserved here before the
//! allocator sees the map.

use crate::boot::{BootInfo, DIRECT_MAP};
use core::sync::atomic::{AtomicUsize, Ordering};
use kmem::frame::{BitmapFrameAllocator, FrameError};
use kmem::memory_map::e820;
use kmem::memory_map::{MapError, MemoryMap, Region};
use kmem::paging::{Mapper, OffsetPhysMem, X86Mmu};
use x86_64::VirtAddr;

/// The low memory every kernel keeps out of the allocator.
pub const LOW_RESERVED: u64 = 1 << 20;

/// The sanitized memory map with the kernel's own reservations.
pub fn memory_map(info: &BootInfo) -> Result<MemoryMap, MapError> {
    let regions = info
        .regions()
        .iter()
        .map(|r| Region::new(r.start, r.len, e820::kind(r.kind)));
    let mut map = MemoryMap::from_regions(regions)?;
    for (start, len) in reserved_ranges(info) {
        map.reserve(start, len)?;
    }
    Ok(map)
}

/// Physical ranges `(start, len)` that must never be handed out.
pub fn reserved_ranges(info: &BootInfo) -> impl Iterator<Item = (u64, u64)> {
    let (image_start, image_end) = info.kernel_image();
    [(0, LOW_RESERVED), (image_start, image_end - image_start)]
        .into_iter()
        .chain(
            info.boot_data()
                .into_iter()
                .filter(|&(start, len)| start != 0 && len != 0),
        )
}

/// Why the frame allocator could not be built.
#[derive(Debug)]
pub enum SetupError {
    /// The memory map was refused.
    Map(MapError),
    /// The allocator was refused.
    Frames(FrameError),
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Map(e) => write!(f, "memory map: {e}"),
            Self::Frames(e) => write!(f, "frame allocator: {e}"),
        }
    }
}

/// Builds the frame allocator, carving its storage out of usable RAM and
/// reaching it through the direct map.
///
/// # Safety
/// Call once: the carved storage becomes the allocator's for `'static`;
/// RAM must stay mapped at [`DIRECT_MAP`](crate::boot::DIRECT_MAP).
pub unsafe fn frame_allocator(
    info: &BootInfo,
) -> Result<BitmapFrameAllocator<'static>, SetupError> {
    let map = memory_map(info).map_err(SetupError::Map)?;
    // SAFETY: RAM is mapped at DIRECT_MAP for good (boot tables, then the
    // kernel's own); the storage is carved from usable RAM that nothing
    // else uses: the caller calls this once and reservations cover all
    // boot data.
    unsafe { BitmapFrameAllocator::init_carved(&map, crate::boot::phys_to_virt(0)) }
        .map_err(SetupError::Frames)
}

/// The frame allocator and the mapper of the active page tables, as the
/// test kernels share them.
pub struct Memory {
    /// Frames, from the PVH map.
    pub frames: BitmapFrameAllocator<'static>,
    /// The active hierarchy, reached through the direct map.
    pub mapper: Mapper<OffsetPhysMem>,
    /// The privileged operations.
    pub mmu: X86Mmu,
}

static MEMORY: spin::Mutex<Option<Memory>> = spin::Mutex::new(None);
/// The test (see [`crate::testing::current_test`]) that last took MEMORY.
static HOLDER: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` with the kernel's memory, building it on first use over the
/// boot page tables.
///
/// A test that faults or panics inside `f` never releases the lock: the
/// next test takes it over (its state may be half-changed, but that test
/// already failed). A nested call is refused with a panic.
pub fn with_memory<R>(f: impl FnOnce(&mut Memory) -> R) -> R {
    let test = crate::testing::current_test();
    let mut guard = match MEMORY.try_lock() {
        Some(guard) => guard,
        None if HOLDER.load(Ordering::SeqCst) != test => {
            // SAFETY: single CPU, no interrupts: the holder was a test that
            // was abandoned by a fault or panic and never runs again.
            unsafe { MEMORY.force_unlock() };
            MEMORY.lock()
        }
        None => panic!("with_memory called inside with_memory"),
    };
    HOLDER.store(test, Ordering::SeqCst);
    let memory = guard.get_or_insert_with(|| {
        // SAFETY: the Option is filled once, here; RAM stays in the direct
        // map for good.
        let frames =
            unsafe { frame_allocator(crate::boot::info()) }.unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: CR3 holds the boot tables, which nothing else edits once
        // this mapper exists; every table frame is RAM in the direct map.
        let mapper =
            unsafe { Mapper::from_current(&X86Mmu, OffsetPhysMem::new(VirtAddr::new(DIRECT_MAP))) };
        Memory {
            frames,
            mapper,
            mmu: X86Mmu,
        }
    });
    f(memory)
}
