//! Host tests of the pieces a kernel adopts kmem with: the kernel page source over kmem's
//! mapper (with a frame allocator that frees and one that cannot), and the `x86_64` crate's
//! `PageTables` / `Translate` traits over kmem's mapper (blog_os's code, unchanged).

use kmem::heap::{KernelPageSource, PageSource, PageSourceError};
use kmem::paging::{KeepFreed, PageTables, X86Mapper};
use kmem::spin::Mutex;
use kmem::testing::mmu::RecordingMmu;
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use x86_64::structures::paging::mapper::{MapToError, Translate, TranslateResult, UnmapError};
use x86_64::structures::paging::{
    FrameAllocator, Mapper as _, Page, PageTableFlags as F, PhysFrame, Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

const HEAP: usize = 0xffff_c000_0000_0000;
const PAGE: usize = 4096;

fn memory(frames: usize) -> &'static EmulatedMemory {
    Box::leak(Box::new(EmulatedMemory::new(frames)))
}

fn shared_mapper(
    mem: &'static EmulatedMemory,
    frames: &mut EmulatedFrameAllocator,
) -> &'static Mutex<PageTables<EmulatedPhysMem<'static>>> {
    let mapper = PageTables::new_empty(mem.phys_mem(), frames).unwrap();
    Box::leak(Box::new(Mutex::new(mapper)))
}

fn frame_of(mapper: &Mutex<PageTables<EmulatedPhysMem<'static>>>, addr: usize) -> Option<PhysAddr> {
    mapper.lock().translate_addr(VirtAddr::new(addr as u64))
}

#[test]
fn kernel_page_source_maps_fresh_frames_and_gives_them_back() {
    let mem = memory(256);
    let mut frames = mem.frame_allocator();
    let mapper = shared_mapper(mem, &mut frames);
    let base = frames.in_use();
    let mmu = RecordingMmu::new(mapper.lock().pml4());
    let mut source = KernelPageSource::with_mmu(mapper, frames, mmu);

    source.map(HEAP + PAGE, 8).unwrap();
    let backing: Vec<PhysAddr> = (1..9)
        .map(|i| frame_of(mapper, HEAP + i * PAGE).expect("mapped"))
        .collect();
    let mut distinct = backing.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 8, "every page has its own frame");
    let t = mapper
        .lock()
        .translate(VirtAddr::new((HEAP + PAGE) as u64))
        .unwrap();
    assert!(t.flags.contains(F::WRITABLE | F::NO_EXECUTE | F::GLOBAL));
    assert!(!t.flags.contains(F::USER_ACCESSIBLE));
    // 8 data frames and the 3 tables below the PML4.
    assert_eq!(source.frames().in_use(), base + 8 + 3);

    // SAFETY: mapped above, used by nothing.
    unsafe { source.unmap(HEAP + PAGE, 8) };
    assert!((1..9).all(|i| frame_of(mapper, HEAP + i * PAGE).is_none()));
    // The kernel half's level-3 table stays: every address space shares it.
    assert_eq!(
        source.frames().in_use(),
        base + 1,
        "data frames and empty tables back"
    );
}

#[test]
fn kernel_page_source_out_of_frames_leaves_nothing_mapped() {
    let mem = memory(256);
    let mut frames = mem.frame_allocator();
    let mapper = shared_mapper(mem, &mut frames);
    let base = frames.in_use();
    frames.fail_after(5);
    let mmu = RecordingMmu::new(mapper.lock().pml4());
    let mut source = KernelPageSource::with_mmu(mapper, frames, mmu);

    let err = source.map(HEAP, 16).unwrap_err();
    assert!(
        matches!(
            err,
            PageSourceError::OutOfFrames { .. } | PageSourceError::MapFailed { .. }
        ),
        "{err:?}"
    );
    assert!((0..16).all(|i| frame_of(mapper, HEAP + i * PAGE).is_none()));
    // All back but the kernel half's level-3 table, which stays for good once made.
    assert_eq!(
        source.frames().in_use(),
        base + 1,
        "every frame of the failed call is back"
    );
}

/// A frame allocator that cannot take frames back (blog_os's `BootInfoFrameAllocator`).
struct Bump(EmulatedFrameAllocator);

// SAFETY: hands out the emulated allocator's frames, each once.
unsafe impl FrameAllocator<Size4KiB> for Bump {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.0.allocate_frame()
    }
}

#[test]
fn kernel_page_source_keeps_frames_an_allocator_cannot_take_back() {
    let mem = memory(256);
    let mut frames = mem.frame_allocator();
    let mapper = shared_mapper(mem, &mut frames);
    let mmu = RecordingMmu::new(mapper.lock().pml4());
    let mut source = KernelPageSource::keeping(mapper, Bump(frames)).using_mmu(mmu);

    source.map(HEAP, 6).unwrap();
    let handed_out = source.frames_ref_allocations();
    // SAFETY: mapped above, used by nothing.
    unsafe { source.unmap(HEAP, 6) };
    // The data frames and the emptied level-2 and level-1 tables (the kernel half's
    // level-3 table stays: address spaces share it).
    assert_eq!(source.frames().kept(), 6 + 2);
    source.map(HEAP, 6).unwrap();
    assert_eq!(
        source.frames_ref_allocations(),
        handed_out,
        "the second map is served from kept frames"
    );
    assert_eq!(source.frames().kept(), 0);
}

trait Allocations {
    fn frames_ref_allocations(&self) -> u64;
}

impl<M: kmem::paging::Mmu> Allocations
    for KernelPageSource<'_, EmulatedPhysMem<'static>, KeepFreed<Bump, EmulatedPhysMem<'static>>, M>
{
    fn frames_ref_allocations(&self) -> u64 {
        self.frames().inner().0.allocations()
    }
}

/// blog_os's `create_example_mapping`, unchanged.
fn create_example_mapping(
    page: Page,
    mapper: &mut impl x86_64::structures::paging::Mapper<Size4KiB>,
    frame_allocator: &mut impl FrameAllocator<Size4KiB>,
) {
    let frame = PhysFrame::containing_address(PhysAddr::new(0xb8000));
    let flags = F::PRESENT | F::WRITABLE;
    // SAFETY: a test: the frame is never accessed through the mapping.
    let map_to_result = unsafe { mapper.map_to(page, frame, flags, frame_allocator) };
    map_to_result.expect("map_to failed").ignore();
}

#[test]
fn blog_os_code_runs_on_kmems_mapper() {
    let mem = memory(256);
    let mut frames = mem.frame_allocator();
    let mut mapper = X86Mapper::new(PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap());
    let page = Page::containing_address(VirtAddr::new(0xdeadbeaf000));
    create_example_mapping(page, &mut mapper, &mut frames);

    // blog_os's `translate_addr`, through `Translate`.
    let addr = VirtAddr::new(0xdeadbeaf123);
    assert_eq!(mapper.translate_addr(addr), Some(PhysAddr::new(0xb8123)));
    let TranslateResult::Mapped { flags, .. } = mapper.translate(addr) else {
        panic!("not mapped")
    };
    assert!(
        flags.contains(F::NO_EXECUTE),
        "writable means non-executable (W^X)"
    );
    assert_eq!(
        mapper.translate_page(page).ok(),
        Some(PhysFrame::containing_address(PhysAddr::new(0xb8000)))
    );

    // Mapping it again is refused with the frame already there.
    let again = PhysFrame::containing_address(PhysAddr::new(0x1000));
    // SAFETY: refused; nothing is mapped.
    let err = unsafe { mapper.map_to(page, again, F::PRESENT, &mut frames) }.unwrap_err();
    assert!(
        matches!(err, MapToError::PageAlreadyMapped(f) if f.start_address().as_u64() == 0xb8000)
    );

    // A 2 MiB page over the 4 KiB tables is refused, not merged.
    let huge = Page::<Size2MiB>::containing_address(VirtAddr::new(0xdeadbeaf000));
    let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(0x20_0000));
    // SAFETY: refused; nothing is mapped.
    assert!(unsafe { mapper.map_to(huge, frame, F::PRESENT, &mut frames) }.is_err());

    let in_use = frames.in_use();
    let (frame, flush) = mapper.unmap(page).unwrap();
    flush.ignore();
    assert_eq!(frame.start_address().as_u64(), 0xb8000);
    assert!(matches!(mapper.unmap(page), Err(UnmapError::PageNotMapped)));
    assert_eq!(
        mapper.spare_frames(),
        3,
        "emptied tables are kept, as x86_64's unmap frees nothing"
    );
    // The next mapping reuses them: the caller's allocator is not asked.
    create_example_mapping(page, &mut mapper, &mut frames);
    assert_eq!(frames.in_use(), in_use);
    assert_eq!(mapper.spare_frames(), 0);
    let (_, flush) = mapper.unmap(page).unwrap();
    flush.ignore();
    assert_eq!(mapper.give_back_spares(&mut frames), 3);
    assert_eq!(frames.in_use(), in_use - 3);
}

/// A frame source two owners see: the page source, and a test's check.
#[derive(Clone)]
struct Shared(std::rc::Rc<std::cell::RefCell<EmulatedFrameAllocator>>);

// SAFETY: forwards to the emulated allocator, which makes the promise.
unsafe impl FrameAllocator<Size4KiB> for Shared {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.0.borrow_mut().allocate_frame()
    }
}

impl x86_64::structures::paging::FrameDeallocator<Size4KiB> for Shared {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        // SAFETY: the caller's promise, forwarded.
        unsafe { self.0.borrow_mut().deallocate_frame(frame) }
    }
}

/// The other CPUs, as a test sees them: each round checks that no frame
/// of the pages being given back was freed yet.
struct Watch {
    frames: Shared,
    backing: Vec<PhysFrame>,
    rounds: usize,
}

// SAFETY: a test double: the "other CPUs" cache nothing; it only records.
unsafe impl kmem::heap::KernelShootdown for &mut Watch {
    fn shoot_others(&mut self, flush: &kmem::paging::Flush) {
        assert!(!flush.is_empty());
        let frames = self.frames.0.borrow();
        assert!(!flush.is_full(), "a batch fits a flush of single pages");
        for va in flush.pages() {
            let f = self.backing[(va.as_u64() as usize - HEAP) / PAGE - 1];
            assert!(
                frames.is_allocated(f),
                "{f:?} freed before the other CPUs flushed"
            );
        }
        self.rounds += 1;
    }
}

/// Heap pages given back reach every other CPU before their frames are
/// reused, in one round per 32 pages.
#[test]
fn kernel_page_source_shoots_down_before_freeing() {
    let mem = memory(256);
    let mut frames = mem.frame_allocator();
    let mapper = shared_mapper(mem, &mut frames);
    let base = frames.in_use();
    let shared = Shared(std::rc::Rc::new(std::cell::RefCell::new(frames)));
    let mmu = RecordingMmu::new(mapper.lock().pml4());
    let mut watch = Watch {
        frames: shared.clone(),
        backing: Vec::new(),
        rounds: 0,
    };
    let mut source =
        KernelPageSource::with_mmu(mapper, shared.clone(), mmu).with_shootdown(&mut watch);
    source.map(HEAP + PAGE, 40).unwrap();
    let backing: Vec<PhysFrame> = (1..41)
        .map(|i| PhysFrame::containing_address(frame_of(mapper, HEAP + i * PAGE).expect("mapped")))
        .collect();
    drop(source);
    watch.backing = backing;
    let mmu = RecordingMmu::new(mapper.lock().pml4());
    let mut source =
        KernelPageSource::with_mmu(mapper, shared.clone(), mmu).with_shootdown(&mut watch);
    // SAFETY: mapped above, used by nothing.
    unsafe { source.unmap(HEAP + PAGE, 40) };
    drop(source);
    assert_eq!(watch.rounds, 2, "one round per 32 pages");
    assert_eq!(
        shared.0.borrow().in_use(),
        base + 1,
        "frames and empty tables back after"
    );
}
