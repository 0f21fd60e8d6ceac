//! Sequences that can lose a write, reach a freed frame or panic when an
//! invalidation or a Dirty bit is mishandled, one test each.
//! Accesses go through an emulated CPU (`testing::tlb::TlbCpu`) that caches
//! leaf and paging-structure entries and sets Accessed and Dirty in the
//! tables as the MMU does, so a forgotten invalidation or a lost Dirty bit
//! shows as a wrong value or a freed frame still cached.

use kmem::paging::{Mmu, PageTables, PhysMem};
use kmem::smp::Tlb;
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use kmem::testing::tlb::{AccessKind, TlbCpu};
use kmem::vm::replace::ClockPro;
use kmem::vm::{FaultAccess, FaultOutcome, FaultReason, MemSwap, Prot, Vm, VmSpace};
use x86_64::structures::paging::PhysFrame;
use x86_64::VirtAddr;

const PAGE: u64 = 4096;
/// 2 MiB-aligned: the pages of a test share one page table.
const BASE: u64 = 0x4000_0000;

type Space<'m> = VmSpace<EmulatedPhysMem<'m>>;

/// One emulated machine: memory, frames, the `Vm`, and CPU 0 running one space.
struct Machine<'m> {
    mem: &'m EmulatedMemory,
    frames: EmulatedFrameAllocator,
    vm: Vm,
    kernel: PageTables<EmulatedPhysMem<'m>>,
    cpu: TlbCpu,
}

impl<'m> Machine<'m> {
    fn new(mem: &'m EmulatedMemory, limit: Option<u64>, swap_slots: Option<u64>) -> Self {
        let mut frames = mem.frame_allocator();
        let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
        vm.set_frame_limit(limit);
        vm.set_reclaim(Some(1), 1);
        if let Some(slots) = swap_slots {
            assert!(vm.attach_swap(Box::new(MemSwap::new(slots))).is_ok());
        }
        let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
        let cpu = TlbCpu::new(kernel.pml4());
        Self {
            mem,
            frames,
            vm,
            kernel,
            cpu,
        }
    }

    /// A new space with `pages` anonymous read-write pages at `BASE`, running on CPU 0.
    fn space(&mut self, pages: u64) -> Space<'m> {
        let mut s = VmSpace::new_user(&self.kernel, &mut self.frames).unwrap();
        s.map_anonymous(Some(BASE), pages * PAGE, Prot::RW | Prot::USER)
            .unwrap();
        self.run(&s);
        s
    }

    /// CPU 0 loads `s`.
    fn run(&mut self, s: &Space<'m>) {
        s.cpus().enter(0);
        // SAFETY: an emulated CPU: loading a CR3 only drops its TLB.
        unsafe { self.cpu.set_cr3(s.pml4()) };
    }

    /// CPU 0 goes back to the kernel's tables.
    fn leave(&mut self, s: &Space<'m>) {
        // SAFETY: as in `run`.
        unsafe { self.cpu.set_cr3(self.kernel.pml4()) };
        s.cpus().leave(0);
    }

    /// An access from ring 3 on CPU 0: through the TLB, faulting into `s`
    /// until the page allows it. Returns the byte read (or written).
    fn touch(
        &mut self,
        s: &mut Space<'m>,
        page: u64,
        write: Option<u8>,
    ) -> Result<u8, FaultReason> {
        let va = VirtAddr::new(BASE + page * PAGE);
        let kind = if write.is_some() {
            AccessKind::Write
        } else {
            AccessKind::Read
        };
        for _ in 0..4 {
            match self.cpu.access(&self.mem.phys_mem(), va, kind, true) {
                Ok(pa) => {
                    let frame = PhysFrame::containing_address(pa);
                    assert!(
                        self.frames.is_allocated(frame),
                        "an access reached free {frame:?}"
                    );
                    let p = self.mem.phys_mem().table_ptr(frame).as_ptr().cast::<u8>();
                    // SAFETY: an emulated frame, 4096 bytes; offset 0.
                    return Ok(unsafe {
                        match write {
                            Some(v) => {
                                p.write(v);
                                v
                            }
                            None => p.read(),
                        }
                    });
                }
                Err(f) => {
                    let access = FaultAccess::from_error_code(f.error_code().bits());
                    let mut tlb = Tlb::uniprocessor(&mut self.cpu);
                    s.handle_fault(&self.vm, va, access, &mut self.frames, &mut tlb)
                        .map_err(|e| e.reason)?;
                }
            }
        }
        panic!("page {page} still faults");
    }

    fn end(mut self, s: Space<'m>) {
        self.leave(&s);
        let mut tlb = Tlb::uniprocessor(&mut self.cpu);
        s.destroy(&self.vm, &mut self.frames, &mut tlb).unwrap();
        assert_eq!(
            self.frames.in_use(),
            2,
            "every frame back but the zero frame and the kernel's PML4"
        );
        assert_eq!(self.vm.stats().swap_slots_used, 0);
    }
}

/// A protect that keeps the same rights keeps the Dirty bit the CPU set on
/// a page whose clean copy is still on swap, so reclaim writes the page out
/// instead of dropping the write.
#[test]
fn a_write_survives_a_protect_and_reclaim() {
    let mem = EmulatedMemory::new(64);
    let mut m = Machine::new(&mem, Some(4), Some(64));
    let mut s = m.space(8);
    for p in 0..8 {
        m.touch(&mut s, p, Some(p as u8 + 1)).unwrap();
    }
    assert_eq!(
        m.touch(&mut s, 0, None),
        Ok(1),
        "swapped in, clean, slot cached"
    );
    m.touch(&mut s, 0, Some(0xAB)).unwrap(); // no fault: the CPU sets Dirty
    let mut tlb = Tlb::uniprocessor(&mut m.cpu);
    s.protect(
        BASE,
        PAGE,
        Prot::RW | Prot::USER,
        &m.vm,
        &mut m.frames,
        &mut tlb,
    )
    .unwrap();
    for p in 1..8 {
        m.touch(&mut s, p, None).unwrap();
    }
    let mut tlb = Tlb::uniprocessor(&mut m.cpu);
    s.reclaim(&m.vm, &mut m.frames, 8, &mut tlb).unwrap();
    assert_eq!(
        m.touch(&mut s, 0, None),
        Ok(0xAB),
        "the write after the swap-in was lost"
    );
    m.end(s);
}

/// A page written after a swap-in, write-protected by a fork
/// whose child exits, regains write access by `ReusedOnWrite`: that
/// rewrite must keep Dirty even if the write it was resolved for never
/// lands, or reclaim drops the page for its stale swap copy.
#[test]
fn reuse_after_fork_keeps_dirty() {
    let mem = EmulatedMemory::new(96);
    let mut m = Machine::new(&mem, Some(4), Some(64));
    let mut s = m.space(8);
    for p in 0..8 {
        m.touch(&mut s, p, Some(p as u8 + 1)).unwrap();
    }
    assert_eq!(
        m.touch(&mut s, 0, None),
        Ok(1),
        "swapped in, clean, slot cached"
    );
    m.touch(&mut s, 0, Some(0xCD)).unwrap(); // Dirty
    let mut tlb = Tlb::uniprocessor(&mut m.cpu);
    let child = s.fork(&m.vm, &mut m.frames, &mut tlb).unwrap();
    child.destroy(&m.vm, &mut m.frames, &mut tlb).unwrap();
    // The kernel resolves a write fault for the page, then (SMAP) never writes.
    let va = VirtAddr::new(BASE);
    let present_write = FaultAccess::from_error_code(0b11);
    let r = s.handle_fault(&m.vm, va, present_write, &mut m.frames, &mut tlb);
    assert_eq!(r, Ok(FaultOutcome::ReusedOnWrite));
    for p in 1..8 {
        m.touch(&mut s, p, None).unwrap();
    }
    let mut tlb = Tlb::uniprocessor(&mut m.cpu);
    s.reclaim(&m.vm, &mut m.frames, 8, &mut tlb).unwrap();
    assert_eq!(
        m.touch(&mut s, 0, None),
        Ok(0xCD),
        "the write before the fork was lost"
    );
    m.end(s);
}

/// Reclaim with resident pages and no swap device is a typed error, not a
/// panic.
#[test]
fn reclaim_without_swap_is_a_typed_error() {
    let mem = EmulatedMemory::new(64);
    let mut m = Machine::new(&mem, None, None);
    let mut s = m.space(4);
    for p in 0..4 {
        m.touch(&mut s, p, Some(7)).unwrap();
    }
    let mut tlb = Tlb::uniprocessor(&mut m.cpu);
    assert_eq!(
        s.reclaim(&m.vm, &mut m.frames, 4, &mut tlb),
        Err(FaultReason::NoSwap)
    );
    for p in 0..4 {
        assert_eq!(m.touch(&mut s, p, None), Ok(7));
    }
    m.end(s);
}

/// Pages the policy names while a fork shares them stay in its tracking,
/// so once the child exits they can be reclaimed again.
#[test]
fn pages_shared_when_named_are_offered_again() {
    let mem = EmulatedMemory::new(96);
    let mut m = Machine::new(&mem, Some(8), Some(64));
    let mut s = VmSpace::new_user(&m.kernel, &mut m.frames).unwrap();
    s.set_policy(Box::new(ClockPro::new(8)));
    s.map_anonymous(Some(BASE), 4 * PAGE, Prot::RW | Prot::USER)
        .unwrap();
    m.run(&s);
    for p in 0..4 {
        m.touch(&mut s, p, Some(p as u8 + 1)).unwrap();
    }
    let mut tlb = Tlb::uniprocessor(&mut m.cpu);
    let child = s.fork(&m.vm, &mut m.frames, &mut tlb).unwrap();
    assert_eq!(
        s.reclaim(&m.vm, &mut m.frames, 4, &mut tlb),
        Ok(0),
        "all shared"
    );
    child.destroy(&m.vm, &mut m.frames, &mut tlb).unwrap();
    assert_eq!(
        s.reclaim(&m.vm, &mut m.frames, 4, &mut tlb),
        Ok(4),
        "private again: every page can go"
    );
    for p in 0..4 {
        assert_eq!(m.touch(&mut s, p, None), Ok(p as u8 + 1));
    }
    m.end(s);
}

/// Unmapping a range whose entries are all swap entries frees the page
/// table only after a flush, since a CPU's paging-structure cache can still
/// point at it.
#[test]
fn a_freed_table_is_invalidated_even_without_a_present_page() {
    let mem = EmulatedMemory::new(64);
    let mut m = Machine::new(&mem, Some(8), Some(64));
    let mut s = m.space(4);
    for p in 0..4 {
        m.touch(&mut s, p, Some(9)).unwrap();
    }
    let pt = *m
        .cpu
        .last_walk()
        .iter()
        .rev()
        .nth(1)
        .expect("a walk: tables, then the page");
    let mut tlb = Tlb::uniprocessor(&mut m.cpu);
    assert_eq!(s.reclaim(&m.vm, &mut m.frames, 4, &mut tlb), Ok(4));
    // Only swap entries keep the page table; a CPU may cache the way to it anyway.
    m.cpu.speculate(&mem.phys_mem(), VirtAddr::new(BASE));
    assert!(m.cpu.holds_frame(pt));
    let mut tlb = Tlb::uniprocessor(&mut m.cpu);
    s.unmap(BASE, 4 * PAGE, &m.vm, &mut m.frames, &mut tlb)
        .unwrap();
    assert!(!m.frames.is_allocated(pt), "the page table was freed");
    assert!(
        !m.cpu.holds_frame(pt),
        "a CPU still caches the freed page table"
    );
    m.end(s);
}

/// A fault that reclaims pages to find a frame and then fails (here the
/// swap read) still performs the reclaim's invalidation, so no CPU keeps a
/// translation to a freed frame.
#[test]
fn a_failed_fault_keeps_the_invalidations_of_its_reclaim() {
    struct Flaky(MemSwap, std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl kmem::vm::SwapDevice for Flaky {
        fn slots(&self) -> u64 {
            self.0.slots()
        }
        fn write(&self, first: u64, pages: &[&[u8; 4096]]) -> Result<(), kmem::vm::SwapIoError> {
            self.0.write(first, pages)
        }
        fn read(
            &self,
            first: u64,
            pages: &mut [&mut [u8; 4096]],
        ) -> Result<(), kmem::vm::SwapIoError> {
            if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(kmem::vm::SwapIoError {
                    slot: first,
                    pages: pages.len(),
                });
            }
            self.0.read(first, pages)
        }
    }
    let mem = EmulatedMemory::new(64);
    let mut m = Machine::new(&mem, Some(4), None);
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flaky = Box::new(Flaky(MemSwap::new(64), fail.clone()));
    assert!(m.vm.attach_swap(flaky).is_ok());
    let mut s = m.space(8);
    for p in 0..8 {
        m.touch(&mut s, p, Some(p as u8 + 1)).unwrap();
    }
    // Pages 4..8 resident and cached by the CPU; 0..4 on swap.
    for p in 4..8 {
        assert_eq!(m.touch(&mut s, p, None), Ok(p as u8 + 1));
    }
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = m.touch(&mut s, 0, None);
    assert!(matches!(r, Err(FaultReason::SwapIo(_))), "{r:?}");
    for p in 4..8 {
        let va = VirtAddr::new(BASE + p * PAGE);
        if let Some(leaf) = m.cpu.cached(va) {
            let t = s.mapper().translate(va);
            assert!(
                t.is_ok_and(|t| t.frame == leaf.frame),
                "page {p}: the CPU caches {:?}, the tables say {t:?}",
                leaf.frame
            );
        }
    }
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    for p in 0..8 {
        assert_eq!(m.touch(&mut s, p, None), Ok(p as u8 + 1));
    }
    m.end(s);
}

/// Chosen addresses start no lower than 64 KiB, go
/// top-down below the room kept for stacks, follow the kernel's seed, and
/// a hint below the minimum or in the kernel half is not taken.
#[test]
fn user_layout_is_top_down_above_the_minimum_and_randomized() {
    use kmem::vm::{UserLayout, VmError, MMAP_MIN_ADDR, USER_RANGE};
    let mem = EmulatedMemory::new(16);
    let mut frames = mem.frame_allocator();
    let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let mut s = VmSpace::new_user(&kernel, &mut frames).unwrap();
    let layout = s.layout();
    assert_eq!(layout.min_addr, MMAP_MIN_ADDR);
    assert!(layout.top < USER_RANGE.1, "room kept above for stacks");
    let rw = Prot::RW | Prot::USER;
    let first = s.map_anonymous(None, 4 * PAGE, rw).unwrap();
    assert_eq!(
        first + 4 * PAGE,
        layout.top,
        "the first area ends at the top"
    );
    let second = s.map_anonymous(None, PAGE, rw).unwrap();
    assert_eq!(second + PAGE, first, "the next one right below it");
    for hint in [0x1234, 0x1000, 0xffff_8000_0000_0000, MMAP_MIN_ADDR - PAGE] {
        let at = s.map_anonymous(Some(hint), PAGE, rw).unwrap();
        assert!(
            at >= MMAP_MIN_ADDR && at != hint,
            "hint {hint:#x} gave {at:#x}"
        );
    }
    assert_eq!(
        s.map_anonymous(Some(MMAP_MIN_ADDR), PAGE, rw),
        Ok(MMAP_MIN_ADDR)
    );
    assert!(matches!(
        s.map_fixed(0x1000, PAGE, rw, kmem::vm::AreaKind::Anonymous, &mut frames),
        Err(VmError::OutOfRange { .. })
    ));
    assert!(s
        .set_layout(UserLayout {
            min_addr: 0,
            top: layout.top
        })
        .is_err());
    assert!(s
        .set_layout(UserLayout {
            min_addr: 0x20_0000,
            top: 0x10_0000
        })
        .is_err());
    // Two spaces with different seeds place their first area differently.
    let mut a = VmSpace::new_user(&kernel, &mut frames).unwrap();
    let mut b = VmSpace::new_user(&kernel, &mut frames).unwrap();
    let (ta, tb) = (a.randomize(0x1234_5678), b.randomize(0x8765_4321));
    assert_ne!(ta, tb);
    assert!(ta < layout.top && tb < layout.top && ta > MMAP_MIN_ADDR);
    assert_eq!(a.map_anonymous(None, PAGE, rw).unwrap() + PAGE, ta);
    assert_eq!(b.map_anonymous(None, PAGE, rw).unwrap() + PAGE, tb);
}

/// A space takes over only a hierarchy that maps nothing
/// in its range (checked), and physical memory maps only through the
/// `unsafe` `map_physical`.
#[test]
fn with_mapper_checks_its_range_is_empty() {
    use kmem::paging::MapFlags;
    use kmem::vm::{VmError, USER_RANGE};
    use x86_64::structures::paging::Page;
    let mem = EmulatedMemory::new(16);
    let mut frames = mem.frame_allocator();
    let mut tables = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let page =
        Page::<x86_64::structures::paging::Size4KiB>::containing_address(VirtAddr::new(0x40_0000));
    let frame = PhysFrame::containing_address(mem.start() + 15 * PAGE);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { tables.map(page, frame, MapFlags::READ_WRITE.user(), &mut frames) }
        .unwrap()
        .ignore();
    let (tables, e) = VmSpace::with_mapper(tables, USER_RANGE.0, USER_RANGE.1).unwrap_err();
    assert_eq!(e, VmError::Overlap { addr: 0x40_0000 });
    // Outside the range it manages, the mapping does not matter.
    assert!(VmSpace::with_mapper(tables, 0x80_0000, 0x100_0000).is_ok());
}
