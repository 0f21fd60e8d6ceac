use kmem::frame::LockedFrameAllocator;
use kmem::heap::{KernelHeap, KernelPageSource};
use kmem::memory_map::MemoryMap;
use kmem::paging::{OffsetPhysMem, PageTables};
use kmem::spin::{Mutex, Once};
use kmem::x86_64::VirtAddr;

pub static FRAMES: LockedFrameAllocator = LockedFrameAllocator::empty();
pub static MAPPER: Once<Mutex<PageTables<OffsetPhysMem>>> = Once::new();
#[global_allocator]
static HEAP: KernelHeap = KernelHeap::empty();

/// Frames from GRUB's map, the active page tables, and a heap in PML4 slot 384.
/// `phys_offset`: where the boot code mapped all RAM; `reserved`: `(start, len)` ranges
/// GRUB's map does not mark (the low 1 MiB, the kernel image, the boot information).
///
/// # Safety
/// Call once. All RAM stays mapped at `phys_offset`; CR3 holds tables this kernel owns,
/// no table reachable twice, edited only through `MAPPER` from now on; EFER.NXE is set.
pub unsafe fn init_memory(
    boot: &multiboot2::BootInformation,
    phys_offset: VirtAddr,
    reserved: &[(u64, u64)],
) -> Result<(), kmem::Error> {
    let mut map: MemoryMap = MemoryMap::from_multiboot2(boot.memory_map_tag().expect("a map"))?;
    map.reserve_all(reserved)?;
    // SAFETY: the caller's promises; called once, nothing uses the map's usable memory.
    unsafe { FRAMES.init(&map, phys_offset) }?;
    // SAFETY: the caller's promises about CR3's tables and the direct map.
    let mapper = MAPPER.call_once(|| Mutex::new(unsafe { PageTables::active(phys_offset) }));
    let source = KernelPageSource::new(mapper, &FRAMES);
    // SAFETY: PML4 slot 384 (the 1 GiB given here) is used by nothing else.
    unsafe { HEAP.init(source, 0xffff_c000_0000_0000, 1 << 30) }?;
    Ok(())
}
