//! Transparent huge pages (`Vm::set_huge_frames`): the first touch of an
//! aligned 2 MiB run of an anonymous area maps one 2 MiB leaf, 4 KiB pages
//! when no run is free or the limit has no room; a huge page splits on a
//! partial munmap, mprotect, fork (then copy-on-write page by page) and
//! under reclaim (then its pages go to swap); contents survive every
//! split, every frame comes back.

use kmem::paging::{LeafSize, PageTables};
use kmem::smp::Tlb;
use kmem::testing::huge_frames::SharedFrames;
use kmem::testing::mmu::RecordingMmu;
use kmem::testing::phys_mem::{EmulatedMemory, EmulatedPhysMem};
use kmem::vm::{FaultAccess, FaultOutcome, FaultReason, MemSwap, Prot, Vm, VmSpace};
use x86_64::VirtAddr;

const PAGE: u64 = 4096;
const HUGE: u64 = 2 << 20;
const BASE: u64 = 0x4000_0000;
type Space<'m> = VmSpace<EmulatedPhysMem<'m>>;

/// One emulated allocator, for 4 KiB frames and 2 MiB runs alike.
type Frames = SharedFrames;

struct Machine<'m> {
    mem: &'m EmulatedMemory,
    frames: Frames,
    vm: Vm,
    kernel: PageTables<EmulatedPhysMem<'m>>,
}

impl<'m> Machine<'m> {
    fn new(mem: &'m EmulatedMemory, huge: bool, limit: Option<u64>) -> Self {
        let mut frames = SharedFrames::new(mem.frame_allocator());
        let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
        vm.set_frame_limit(limit);
        if huge {
            vm.set_huge_frames(Some(Box::new(frames.clone())));
        }
        let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
        Self {
            mem,
            frames,
            vm,
            kernel,
        }
    }

    fn space(&mut self, len: u64) -> Space<'m> {
        let mut s = VmSpace::new_user(&self.kernel, &mut self.frames).unwrap();
        s.map_anonymous(Some(BASE), len, Prot::RW | Prot::USER)
            .unwrap();
        s
    }

    fn tlb_do<R>(&mut self, f: impl FnOnce(&Vm, &mut Frames, &mut Tlb<'_>) -> R) -> R {
        let mut mmu = RecordingMmu::new(self.kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        f(&self.vm, &mut self.frames, &mut tlb)
    }

    fn fault(&mut self, s: &Space<'m>, va: u64, write: bool) -> Result<FaultOutcome, FaultReason> {
        let access = if write {
            FaultAccess::write(true)
        } else {
            FaultAccess::read(true)
        };
        self.tlb_do(|vm, frames, tlb| loop {
            match s.handle_fault(vm, VirtAddr::new(va), access, frames, tlb) {
                Ok(FaultOutcome::InTransit) => continue,
                r => return r.map_err(|e| e.reason),
            }
        })
    }

    fn write(&mut self, s: &Space<'m>, va: u64, value: u64) {
        let ok = s
            .mapper()
            .translate(VirtAddr::new(va))
            .is_ok_and(|t| t.access.writable);
        if !ok {
            self.fault(s, va, true).unwrap();
        }
        s.simulate_access(VirtAddr::new(va), true);
        let pa = s.mapper().translate(VirtAddr::new(va)).unwrap().phys;
        self.mem.write_u64(pa, value);
    }

    fn read(&mut self, s: &Space<'m>, va: u64) -> u64 {
        if s.mapper().translate(VirtAddr::new(va)).is_err() {
            self.fault(s, va, false).unwrap();
        }
        s.simulate_access(VirtAddr::new(va), false);
        let pa = s.mapper().translate(VirtAddr::new(va)).unwrap().phys;
        self.mem.read_u64(pa)
    }

    fn size_at(&self, s: &Space<'m>, va: u64) -> LeafSize {
        s.mapper().translate(VirtAddr::new(va)).unwrap().size
    }

    fn in_use(&self) -> usize {
        self.frames.in_use()
    }

    fn destroy(&mut self, s: Space<'m>) {
        self.tlb_do(|vm, frames, tlb| s.destroy(vm, frames, tlb).map_err(|e| e.1).unwrap());
    }
}

/// A word per 4 KiB page of `[BASE, BASE + len)`: written, then checked.
fn stamp<'m>(m: &mut Machine<'m>, s: &Space<'m>, len: u64, salt: u64) {
    for p in 0..len / PAGE {
        m.write(s, BASE + p * PAGE + 8, salt + p);
    }
}

fn check<'m>(m: &mut Machine<'m>, s: &Space<'m>, len: u64, salt: u64) {
    for p in 0..len / PAGE {
        assert_eq!(m.read(s, BASE + p * PAGE + 8), salt + p, "page {p}");
    }
}

#[test]
fn an_aligned_run_takes_one_fault_and_one_leaf() {
    let mem = EmulatedMemory::new(4096);
    let mut m = Machine::new(&mem, true, None);
    let base_frames = m.in_use();
    let s = m.space(4 * HUGE);
    for h in 0..4 {
        assert_eq!(
            m.fault(&s, BASE + h * HUGE + 5 * PAGE, false),
            Ok(FaultOutcome::HugeFilled)
        );
        assert_eq!(m.size_at(&s, BASE + h * HUGE), LeafSize::Size2MiB);
    }
    stamp(&mut m, &s, 4 * HUGE, 100);
    check(&mut m, &s, 4 * HUGE, 100);
    let st = m.vm.stats();
    assert_eq!(
        (st.faults, st.huge_faults, st.zero_fills),
        (4, 4, 0),
        "no other fault"
    );
    let u = s.usage(&m.vm);
    assert_eq!(u.resident, 2048);
    assert!(u.tables <= 3, "PML4, PDPT, PD only: {}", u.tables);
    s.check_invariants(&m.vm).unwrap();
    m.destroy(s);
    assert_eq!(m.in_use(), base_frames, "every frame back");
    assert_eq!(m.vm.stats().resident_frames, 0);
}

#[test]
fn without_a_run_or_room_a_fault_takes_a_4k_page() {
    let mem = EmulatedMemory::new(4096);
    // Off: 4 KiB pages as ever.
    let mut m = Machine::new(&mem, false, None);
    let s = m.space(HUGE);
    assert_eq!(m.fault(&s, BASE, true), Ok(FaultOutcome::ZeroFilled));
    m.destroy(s);
    // On, under a limit with no room for 512 frames: 4 KiB pages.
    let mut m = Machine::new(&mem, true, Some(100));
    let s = m.space(HUGE);
    assert_eq!(m.fault(&s, BASE, true), Ok(FaultOutcome::ZeroFilled));
    assert_eq!(m.size_at(&s, BASE), LeafSize::Size4KiB);
    m.destroy(s);
    // On, but the area does not hold the whole aligned run.
    let mut m = Machine::new(&mem, true, None);
    let s = m.space(HUGE - PAGE);
    assert_eq!(m.fault(&s, BASE, true), Ok(FaultOutcome::ZeroFilled));
    m.destroy(s);
    // On, but a page of the run is mapped already (taken under a limit
    // with no room, lifted since): its neighbours are 4 KiB pages too.
    let mut m = Machine::new(&mem, true, Some(100));
    let s = m.space(HUGE);
    m.write(&s, BASE, 5);
    m.vm.set_frame_limit(None);
    assert_eq!(m.fault(&s, BASE + PAGE, true), Ok(FaultOutcome::ZeroFilled));
    assert_eq!(m.read(&s, BASE), 5);
    s.check_invariants(&m.vm).unwrap();
    m.destroy(s);
}

#[test]
fn munmap_and_mprotect_of_part_split_the_page_and_keep_the_rest() {
    let mem = EmulatedMemory::new(4096);
    let mut m = Machine::new(&mem, true, None);
    let base_frames = m.in_use();
    let mut s = m.space(2 * HUGE);
    stamp(&mut m, &s, 2 * HUGE, 7);
    // A hole in the first huge page.
    m.tlb_do(|vm, frames, tlb| s.unmap(BASE + 3 * PAGE, 2 * PAGE, vm, frames, tlb))
        .unwrap();
    assert_eq!(m.size_at(&s, BASE), LeafSize::Size4KiB);
    assert!(s
        .mapper()
        .translate(VirtAddr::new(BASE + 3 * PAGE))
        .is_err());
    assert_eq!(
        m.size_at(&s, BASE + HUGE),
        LeafSize::Size2MiB,
        "the other stays whole"
    );
    // Part of the second made read-only.
    let ro = Prot::READ | Prot::USER;
    m.tlb_do(|vm, frames, tlb| s.protect(BASE + HUGE, 16 * PAGE, ro, vm, frames, tlb))
        .unwrap();
    assert_eq!(m.size_at(&s, BASE + HUGE), LeafSize::Size4KiB);
    assert_eq!(
        m.fault(&s, BASE + HUGE, true),
        Err(FaultReason::WriteToReadOnly)
    );
    assert!(m.size_at(&s, BASE + HUGE + 16 * PAGE) == LeafSize::Size4KiB);
    for p in (0..2 * HUGE / PAGE).filter(|p| !(3..5).contains(p)) {
        assert_eq!(m.read(&s, BASE + p * PAGE + 8), 7 + p, "page {p}");
    }
    assert_eq!(m.vm.stats().huge_splits, 2);
    s.check_invariants(&m.vm).unwrap();
    // Unmapping a whole huge page needs no split.
    let mut t = m.space(HUGE);
    m.write(&t, BASE, 1);
    m.tlb_do(|vm, frames, tlb| t.unmap(BASE, HUGE, vm, frames, tlb))
        .unwrap();
    assert_eq!(m.vm.stats().huge_splits, 2);
    m.destroy(t);
    m.destroy(s);
    assert_eq!(m.in_use(), base_frames);
}

#[test]
fn fork_splits_and_copies_page_by_page() {
    let mem = EmulatedMemory::new(4096);
    let mut m = Machine::new(&mem, true, None);
    let base_frames = m.in_use();
    let mut parent = m.space(HUGE);
    stamp(&mut m, &parent, HUGE, 50);
    let child = m
        .tlb_do(|vm, frames, tlb| parent.fork(vm, frames, tlb))
        .unwrap();
    assert_eq!(m.vm.stats().shared_frames, 512);
    m.write(&child, BASE + 8, 999);
    assert_eq!(m.read(&parent, BASE + 8), 50);
    assert_eq!(m.vm.stats().cow_copies, 1, "one page copied, not 512");
    let mut want = |p: u64| if p == 0 { 999 } else { 50 + p };
    for p in 0..HUGE / PAGE {
        assert_eq!(
            m.read(&child, BASE + p * PAGE + 8),
            want(p),
            "child page {p}"
        );
    }
    let _ = &mut want;
    parent.check_invariants(&m.vm).unwrap();
    child.check_invariants(&m.vm).unwrap();
    m.destroy(child);
    m.destroy(parent);
    assert_eq!(m.in_use(), base_frames);
}

#[test]
fn reclaim_splits_cold_huge_pages_and_swaps_their_pages() {
    let mem = EmulatedMemory::new(8192);
    let mut m = Machine::new(&mem, true, Some(1536));
    assert!(m.vm.attach_swap(Box::new(MemSwap::new(4096))).is_ok());
    let base_frames = m.in_use();
    let s = m.space(8 * HUGE);
    // Four huge pages fit the limit (2048 > 1536: the fourth cannot).
    stamp(&mut m, &s, 8 * HUGE, 1000);
    check(&mut m, &s, 8 * HUGE, 1000);
    let st = m.vm.stats();
    assert!(st.huge_faults >= 2, "{st:?}");
    assert!(
        st.huge_splits >= 1 && st.swap_outs > 0,
        "cold huge pages split and swapped: {st:?}"
    );
    assert!(st.resident_frames <= 1536);
    s.check_invariants(&m.vm).unwrap();
    m.destroy(s);
    assert_eq!(m.in_use(), base_frames);
    assert_eq!(m.vm.stats().swap_slots_used, 0);
}

#[test]
fn a_split_run_whole_again_collapses_back_into_a_huge_page() {
    let mem = EmulatedMemory::new(4096);
    let mut m = Machine::new(&mem, true, None);
    let base_frames = m.in_use();
    let mut s = m.space(2 * HUGE);
    stamp(&mut m, &s, 2 * HUGE, 300);
    // Split both: a round trip through read-only.
    let (ro, rw) = (Prot::READ | Prot::USER, Prot::RW | Prot::USER);
    m.tlb_do(|vm, frames, tlb| s.protect(BASE, 2 * HUGE, ro, vm, frames, tlb))
        .unwrap();
    m.tlb_do(|vm, frames, tlb| s.protect(BASE, 2 * HUGE, rw, vm, frames, tlb))
        .unwrap();
    assert_eq!(m.size_at(&s, BASE), LeafSize::Size4KiB);
    // The second run is shared with a child: only the first collapses.
    let child = m.tlb_do(|vm, frames, tlb| s.fork(vm, frames, tlb)).unwrap();
    m.write(&s, BASE + 8, 300); // a private copy of the first page: whole again
    for p in 1..512 {
        m.write(&s, BASE + p * PAGE + 8, 300 + p);
    }
    let n = m
        .tlb_do(|vm, frames, tlb| s.collapse_huge(vm, 8, frames, tlb))
        .unwrap();
    assert_eq!(n, 1, "the run still shared with the child stays");
    assert_eq!(m.size_at(&s, BASE), LeafSize::Size2MiB);
    assert_eq!(m.size_at(&s, BASE + HUGE), LeafSize::Size4KiB);
    check(&mut m, &s, 2 * HUGE, 300);
    check(&mut m, &child, 2 * HUGE, 300);
    s.check_invariants(&m.vm).unwrap();
    m.destroy(child);
    // Alone again, and a hole: not whole, not collapsed.
    m.tlb_do(|vm, frames, tlb| s.unmap(BASE + HUGE + 7 * PAGE, PAGE, vm, frames, tlb))
        .unwrap();
    assert_eq!(
        m.tlb_do(|vm, frames, tlb| s.collapse_huge(vm, 8, frames, tlb)),
        Ok(0)
    );
    assert_eq!(m.vm.stats().huge_collapses, 1);
    m.destroy(s);
    assert_eq!(m.in_use(), base_frames);
}
