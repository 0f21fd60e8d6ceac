//! From the loader's memory map to a kmem frame allocator.
//!
//! The PVH and Multiboot2 maps do not reserve the kernel image, the boot data (start
//! info, the map itself, the command line) or the low 1 MiB (BIOS data,
//! real-mode IVT, option ROMs): they are reserved here before the
//! allocator sees the map.

use crate::boot::{BootInfo, DIRECT_MAP};
use crate::mm::lock::TestLock;
use core::sync::atomic::{AtomicU64, Ordering};
use kmem::frame::{BitmapFrameAllocator, FrameError, LockedFrameAllocator};
use kmem::memory_map::{MapError, MemoryMap};
use kmem::paging::{OffsetPhysMem, PageTables, X86Mmu};
use x86_64::structures::paging::PhysFrame;
use x86_64::{PhysAddr, VirtAddr};

/// The low memory every kernel keeps out of the allocator.
pub const LOW_RESERVED: u64 = 1 << 20;

/// The sanitized memory map with the kernel's own reservations.
pub fn memory_map(info: &BootInfo) -> Result<MemoryMap, MapError> {
    let mut map = MemoryMap::from_regions(info.regions().iter().copied())?;
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
unsafe fn frame_allocator(info: &BootInfo) -> Result<BitmapFrameAllocator<'static>, SetupError> {
    let map = memory_map(info).map_err(SetupError::Map)?;
    // SAFETY: RAM is mapped at DIRECT_MAP for good (boot tables, then the
    // kernel's own); the storage is carved from usable RAM that nothing
    // else uses: the caller calls this once and reservations cover all
    // boot data.
    unsafe { BitmapFrameAllocator::init_carved(&map, crate::boot::phys_to_virt(0)) }
        .map_err(SetupError::Frames)
}

/// The kernel's frame allocator: empty until [`init`].
pub static FRAMES: LockedFrameAllocator<'static> =
    LockedFrameAllocator::new(BitmapFrameAllocator::empty());

/// The mapper of the kernel's active page tables: the boot tables after
/// [`init`], the kernel's own after the demo switches to them.
static MAPPER: TestLock<Option<PageTables<OffsetPhysMem>>> = TestLock::new(None);
static INIT: spin::Once<Result<(), SetupError>> = spin::Once::new();

/// Builds the frame allocator from the PVH map and a mapper over the boot
/// page tables; later calls return the first call's result.
pub fn init() -> Result<(), &'static SetupError> {
    INIT.call_once(|| {
        // SAFETY: `call_once` runs this once; RAM stays in the direct map.
        let frames = unsafe { frame_allocator(crate::boot::info()) }?;
        FRAMES.replace(frames);
        // SAFETY: CR3 holds the boot tables, which nothing else edits once
        // this mapper exists; every table frame is RAM in the direct map.
        let mapper = unsafe { PageTables::from_current(&X86Mmu, direct_map()) };
        *MAPPER.lock() = Some(mapper);
        Ok(())
    })
    .as_ref()
    .map(|_| ())
}

/// Frames of the boot segment given back by [`release_boot_memory`].
static BOOT_FRAMES_RELEASED: AtomicU64 = AtomicU64::new(0);

/// Gives the boot segment (entry code, boot GDT, boot stack and boot page
/// tables) to the frame allocator, as a kernel frees its init memory, and
/// returns how many frames that was.
///
/// # Safety
/// Nothing may use the boot segment any more: CR3 holds tables that reach
/// it only through the direct map, the boot GDT is no longer loaded, and
/// no code or data in it is referenced.
pub unsafe fn release_boot_memory() -> Result<u64, FrameError> {
    let (start, end) = crate::boot::info().boot_segment();
    let range = PhysFrame::range(
        PhysFrame::containing_address(PhysAddr::new(start)),
        PhysFrame::containing_address(PhysAddr::new(end)),
    );
    // SAFETY: per the caller, nothing uses these frames any more.
    FRAMES.with(|f| unsafe { f.release(range) })?;
    let frames = (end - start) / 4096;
    BOOT_FRAMES_RELEASED.fetch_add(frames, Ordering::SeqCst);
    Ok(frames)
}

/// Frames of the boot segment given back so far (0 before the switch to
/// the kernel's own page tables).
pub fn boot_frames_released() -> u64 {
    BOOT_FRAMES_RELEASED.load(Ordering::SeqCst)
}

/// Physical memory as the mapper reaches it: the direct map.
pub fn direct_map() -> OffsetPhysMem {
    // SAFETY: all RAM is mapped read-write at DIRECT_MAP for good, by the
    // boot tables and then by the kernel's own; page tables are reached
    // only through the mapper.
    unsafe { OffsetPhysMem::new(VirtAddr::new(DIRECT_MAP)) }
}

/// What [`with_memory`] lends: the frames, the active mapper, the MMU.
pub struct Memory<'a> {
    /// The kernel's frames (each call locks them briefly).
    pub frames: &'static LockedFrameAllocator<'static>,
    /// The mapper of the active page tables.
    pub mapper: &'a mut PageTables<OffsetPhysMem>,
    /// The privileged operations.
    pub mmu: X86Mmu,
}

impl Memory<'_> {
    /// Free frames now.
    pub fn free_frames(&self) -> u64 {
        self.frames.with(|f| f.stats().free)
    }
}

/// Runs `f` with the kernel's memory, [`init`]ializing it on first use.
/// A nested call is refused with a panic; a test abandoned inside `f` by a
/// fault leaves the lock to the next test ([`TestLock`]).
pub fn with_memory<R>(f: impl FnOnce(&mut Memory<'_>) -> R) -> R {
    init().unwrap_or_else(|e| panic!("{e}"));
    let mut guard = MAPPER.lock_or_take_over("with_memory called inside with_memory");
    let mapper = guard.as_mut().expect("init installs the mapper");
    f(&mut Memory {
        frames: &FRAMES,
        mapper,
        mmu: X86Mmu,
    })
}

/// Replaces the active mapper (after a switch to new page tables).
pub fn set_mapper(mapper: PageTables<OffsetPhysMem>) -> Option<PageTables<OffsetPhysMem>> {
    MAPPER.lock().replace(mapper)
}

/// Transparent huge pages' frames for `kmem::vm`: 2 MiB-aligned runs of
/// 512 frames from [`FRAMES`], given back one frame at a time.
pub struct HugeRuns;

// SAFETY: each run is 512 free frames of the frame allocator, reached by
// the direct map; the bitmap allocator takes each of them back on its own.
unsafe impl kmem::vm::HugeFrames for HugeRuns {
    fn allocate_2mib(
        &self,
    ) -> Option<x86_64::structures::paging::PhysFrame<x86_64::structures::paging::Size2MiB>> {
        let run = FRAMES
            .with(|f| f.allocate_contiguous(512, 2 << 20, None))
            .ok()?;
        Some(x86_64::structures::paging::PhysFrame::containing_address(
            run.start.start_address(),
        ))
    }
}
