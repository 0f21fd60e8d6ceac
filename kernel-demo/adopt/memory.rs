use kmem::frame::{BitmapFrameAllocator, LockedFrameAllocator};
use kmem::heap::{KernelPageSource, LockedHeap};
use kmem::memory_map::MemoryMap;
use kmem::paging::{Mapper, OffsetPhysMem, X86Mmu};
use kmem::spin::{Mutex, Once};
use kmem::x86_64::VirtAddr;

pub static FRAMES: LockedFrameAllocator = LockedFrameAllocator::new(BitmapFrameAllocator::empty());
pub static MAPPER: Once<Mutex<Mapper<OffsetPhysMem>>> = Once::new();
#[global_allocator]
static HEAP: LockedHeap<KernelPageSource<OffsetPhysMem, &LockedFrameAllocator>> =
    LockedHeap::empty();

/// Frames from the boot map, the active page tables, and the heap in PML4 slot 384.
/// `phys_offset`: where the boot code mapped all RAM; `reserved`: `(start, len)` ranges
/// the map does not mark (the kernel image, the boot information).
pub fn init_memory(
    boot: &multiboot2::BootInformation,
    phys_offset: VirtAddr,
    reserved: &[(u64, u64)],
) -> Result<(), kmem::Error> {
    let tag = boot.memory_map_tag().expect("GRUB passes a memory map");
    let mut map: MemoryMap = MemoryMap::from_multiboot2(tag)?;
    for &(start, len) in reserved {
        map.reserve(start, len)?;
    }
    // SAFETY: all RAM stays mapped at `phys_offset`; the carved storage is used by nothing else.
    FRAMES.replace(unsafe { BitmapFrameAllocator::init_carved(&map, phys_offset.as_mut_ptr()) }?);
    // SAFETY: as above; CR3 holds tables this kernel owns, reachable through the direct map.
    let mapper = MAPPER.call_once(|| {
        Mutex::new(unsafe { Mapper::from_current(&X86Mmu, OffsetPhysMem::new(phys_offset)) })
    });
    // SAFETY: PML4 slot 384 (1 GiB of it) is used by nothing else.
    unsafe {
        HEAP.init(
            KernelPageSource::new(mapper, &FRAMES),
            0xffff_c000_0000_0000,
            1 << 30,
        )
    }?;
    Ok(())
}
