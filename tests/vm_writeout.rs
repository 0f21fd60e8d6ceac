//! Pages under write-out: while reclaim's write to swap is in flight the
//! pages stay mapped read-only, so reads go on; a write faults, waits for
//! the write to end and cancels that page's eviction (it stays, clean, its
//! copy on swap cached). The device here runs a probe in the middle of its
//! write, as another CPU would run meanwhile.

use std::sync::{Arc, Mutex};

use kmem::paging::PageTables;
use kmem::smp::Tlb;
use kmem::testing::mmu::RecordingMmu;
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use kmem::vm::swap::PAGE_BYTES;
use kmem::vm::{FaultAccess, FaultOutcome, MemSwap, Prot, SwapDevice, SwapIoError, Vm, VmSpace};
use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size4KiB};
use x86_64::VirtAddr;

const PAGE: u64 = 4096;
const BASE: u64 = 0x4000_0000;
const PAGES: u64 = 8;

type Space = VmSpace<EmulatedPhysMem<'static>>;
/// What runs in the middle of a write (on the thread that writes).
struct Probe(Box<dyn FnMut()>);

// SAFETY: a probe is made and run on the test's one thread; the device only
// has to be `Send` because kmem's devices may be moved between CPUs.
unsafe impl Send for Probe {}

/// A device that runs the probe (once) in the middle of its next write, and
/// counts the pages written.
struct ProbingSwap {
    inner: MemSwap,
    probe: Arc<Mutex<Option<Probe>>>,
    written: Arc<Mutex<u64>>,
}

impl SwapDevice for ProbingSwap {
    fn slots(&self) -> u64 {
        self.inner.slots()
    }
    fn write(&self, first: u64, pages: &[&[u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        if let Some(mut probe) = self.probe.lock().unwrap().take() {
            (probe.0)();
        }
        *self.written.lock().unwrap() += pages.len() as u64;
        self.inner.write(first, pages)
    }
    fn read(&self, first: u64, pages: &mut [&mut [u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        self.inner.read(first, pages)
    }
}

/// The probe's frame source: a fault on a page under write-out takes no frame.
struct NoFrames;

// SAFETY: hands out no frame.
unsafe impl FrameAllocator<Size4KiB> for NoFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        panic!("a fault on a page under write-out took a frame")
    }
}

impl FrameDeallocator<Size4KiB> for NoFrames {
    unsafe fn deallocate_frame(&mut self, _: PhysFrame) {
        panic!("a fault on a page under write-out freed a frame")
    }
}

struct Machine {
    mem: &'static EmulatedMemory,
    frames: EmulatedFrameAllocator,
    vm: &'static Vm,
    kernel: PageTables<EmulatedPhysMem<'static>>,
    space: &'static Space,
    probe: Arc<Mutex<Option<Probe>>>,
    written: Arc<Mutex<u64>>,
}

impl Machine {
    /// One space of `PAGES` pages, page `p` holding `p + 1`.
    fn new() -> Self {
        let mem: &'static EmulatedMemory = Box::leak(Box::new(EmulatedMemory::new(256)));
        let mut frames = mem.frame_allocator();
        let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
        let probe = Arc::new(Mutex::new(None));
        let written = Arc::new(Mutex::new(0));
        let device = ProbingSwap {
            inner: MemSwap::new(64),
            probe: probe.clone(),
            written: written.clone(),
        };
        assert!(vm.attach_swap(Box::new(device)).is_ok());
        let vm: &'static Vm = Box::leak(Box::new(vm));
        let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
        let mut space = VmSpace::new_user(&kernel, &mut frames).unwrap();
        space
            .map_anonymous(Some(BASE), PAGES * PAGE, Prot::RW | Prot::USER)
            .unwrap();
        let space: &'static Space = Box::leak(Box::new(space));
        let mut m = Self {
            mem,
            frames,
            vm,
            kernel,
            space,
            probe,
            written,
        };
        for p in 0..PAGES {
            m.fault(p, true);
            m.mem.write_u64(m.phys(p).unwrap(), p + 1);
        }
        m
    }

    fn phys(&self, page: u64) -> Option<x86_64::PhysAddr> {
        let t = self.space.mapper().translate(at(page)).ok()?;
        Some(t.phys)
    }

    fn fault(&mut self, page: u64, write: bool) -> FaultOutcome {
        let mut mmu = RecordingMmu::new(self.kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        let access = if write {
            FaultAccess::write(true)
        } else {
            FaultAccess::read(true)
        };
        self.space
            .handle_fault(self.vm, at(page), access, &mut self.frames, &mut tlb)
            .unwrap()
    }

    fn reclaim(&mut self, want: usize) -> usize {
        let mut mmu = RecordingMmu::new(self.kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        self.space
            .reclaim(self.vm, &mut self.frames, want, &mut tlb)
            .unwrap()
    }

    /// Reads page `page` through its mapping, faulting it in when needed.
    fn value(&mut self, page: u64) -> u64 {
        if self.phys(page).is_none() {
            self.fault(page, false);
        }
        self.mem.read_u64(self.phys(page).unwrap())
    }

    fn written(&self) -> u64 {
        *self.written.lock().unwrap()
    }
}

fn at(page: u64) -> VirtAddr {
    VirtAddr::new(BASE + page * PAGE)
}

#[test]
fn pages_under_write_out_are_readable_and_a_write_cancels_the_eviction() {
    let mut m = Machine::new();
    let (mem, vm, space, kernel_pml4) = (m.mem, m.vm, m.space, m.kernel.pml4());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    *m.probe.lock().unwrap() = Some(Probe(Box::new(move || {
        // Another CPU, meanwhile: every page reads as written, with no fault.
        let mut log = log.lock().unwrap();
        for p in 0..PAGES {
            let t = space.mapper().translate(at(p)).expect("readable");
            assert!(!t.access.writable, "page {p} writable under write-out");
            log.push(mem.read_u64(t.phys));
        }
        // A write to page 3 faults: it waits, and takes no frame.
        let mut mmu = RecordingMmu::new(kernel_pml4);
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        let r = space.handle_fault(vm, at(3), FaultAccess::write(true), &mut NoFrames, &mut tlb);
        log.push(u64::from(r == Ok(FaultOutcome::InTransit)));
        // Another reclaim meanwhile takes none of them.
        let again = space.reclaim(vm, &mut NoFrames, PAGES as usize, &mut tlb);
        log.push(again.unwrap() as u64);
    })));
    let freed = m.reclaim(PAGES as usize);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [1, 2, 3, 4, 5, 6, 7, 8, 1, 0],
        "reads during the write, the wait, no second reclaim"
    );
    assert_eq!(freed, PAGES as usize - 1, "page 3 stays");
    assert_eq!(m.written(), PAGES, "written once, all of them");
    let st = m.vm.stats();
    assert_eq!(st.writeback_cancelled, 1);
    assert_eq!(st.swap_slots_used, PAGES, "page 3's copy stays cached");
    let t = m.space.mapper().translate(at(3)).unwrap();
    assert!(t.access.writable, "the waiting write goes through now");
    // Evicted again without a write: nothing is written, the copy is used.
    assert_eq!(m.reclaim(1), 1);
    assert_eq!(m.written(), PAGES);
    assert_eq!(m.vm.stats().swap_cache_hits, 1);
    for p in 0..PAGES {
        assert_eq!(m.value(p), p + 1, "page {p}");
    }
}

#[test]
fn a_write_after_the_cancel_is_kept_and_written_next_time() {
    let mut m = Machine::new();
    let (vm, space, kernel_pml4) = (m.vm, m.space, m.kernel.pml4());
    *m.probe.lock().unwrap() = Some(Probe(Box::new(move || {
        let mut mmu = RecordingMmu::new(kernel_pml4);
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        let r = space.handle_fault(vm, at(5), FaultAccess::write(true), &mut NoFrames, &mut tlb);
        assert_eq!(r, Ok(FaultOutcome::InTransit));
    })));
    assert_eq!(m.reclaim(PAGES as usize), PAGES as usize - 1);
    // The write that waited: it lands now, through the restored mapping.
    m.space.simulate_access(at(5), true);
    m.mem.write_u64(m.phys(5).unwrap(), 55);
    assert_eq!(m.reclaim(1), 1);
    assert_eq!(m.written(), PAGES + 1, "written again: it changed");
    assert_eq!(m.value(5), 55);
    assert_eq!(m.vm.stats().swap_cache_hits, 0);
}
