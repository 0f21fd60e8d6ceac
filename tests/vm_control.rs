//! Controlling memory per address space: what a space holds
//! (`VmSpace::usage`), the out-of-memory victim choice built on it,
//! `madvise` (`VmSpace::advise`) and `mlock` (`VmSpace::lock`).

use kmem::paging::PageTables;
use kmem::smp::Tlb;
use kmem::testing::mmu::RecordingMmu;
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use kmem::vm::oom::{badness, choose_victim, OomCandidate, SpaceUsage, NEVER};
use kmem::vm::{Advice, AreaKind, FaultAccess, FaultReason, MemSwap, Prot, Vm, VmError, VmSpace};
use x86_64::VirtAddr;

const PAGE: u64 = 4096;
const BASE: u64 = 0x4000_0000;

struct Machine<'m> {
    mem: &'m EmulatedMemory,
    frames: EmulatedFrameAllocator,
    vm: Vm,
    kernel: PageTables<EmulatedPhysMem<'m>>,
}

impl<'m> Machine<'m> {
    fn new(mem: &'m EmulatedMemory, limit: Option<u64>) -> Self {
        let mut frames = mem.frame_allocator();
        let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
        vm.set_frame_limit(limit);
        assert!(vm.attach_swap(Box::new(MemSwap::new(256))).is_ok());
        let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
        Self {
            mem,
            frames,
            vm,
            kernel,
        }
    }

    fn space(&mut self, pages: u64) -> VmSpace<EmulatedPhysMem<'m>> {
        let mut s = VmSpace::new_user(&self.kernel, &mut self.frames).unwrap();
        s.map_anonymous(Some(BASE), pages * PAGE, Prot::RW | Prot::USER)
            .unwrap();
        s
    }

    /// A fault on `page` of `s`; a write stores a non-zero word in it (a
    /// page of zeros would be dropped, not swapped).
    fn fault(&mut self, s: &VmSpace<EmulatedPhysMem<'m>>, page: u64, write: bool) {
        let mut mmu = RecordingMmu::new(self.kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        let access = if write {
            FaultAccess::write(true)
        } else {
            FaultAccess::read(true)
        };
        let at = VirtAddr::new(BASE + page * PAGE);
        s.handle_fault(&self.vm, at, access, &mut self.frames, &mut tlb)
            .unwrap();
        if write {
            let phys = s.mapper().translate(at).unwrap().phys;
            self.mem.write_u64(phys, page + 1);
        }
    }
}

#[test]
fn usage_counts_private_shared_zero_and_swapped_pages() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let mut parent = m.space(16);
    for p in 0..8 {
        m.fault(&parent, p, true);
    }
    m.fault(&parent, 8, false);
    m.fault(&parent, 9, false);
    let u = parent.usage(&m.vm);
    assert_eq!((u.resident, u.shared, u.zero, u.swapped), (8, 0, 2, 0));
    assert!(
        u.tables >= 4,
        "PML4 and the path to the pages: {}",
        u.tables
    );

    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let child = parent.fork(&m.vm, &mut m.frames, &mut tlb).unwrap();
    let (pu, cu) = (parent.usage(&m.vm), child.usage(&m.vm));
    assert_eq!((pu.resident, pu.shared), (0, 8));
    assert_eq!((cu.resident, cu.shared, cu.zero), (0, 8, 2));
    // The child's write copies page 0: each side now holds its own.
    m.fault(&child, 0, true);
    assert_eq!(
        (parent.usage(&m.vm).resident, parent.usage(&m.vm).shared),
        (1, 7)
    );
    assert_eq!(child.usage(&m.vm).resident, 1);

    // Reclaim writes the child's private page out: it counts as swapped.
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let freed = child.reclaim(&m.vm, &mut m.frames, 8, &mut tlb).unwrap();
    assert_eq!(freed, 1, "only the private page can go");
    let cu = child.usage(&m.vm);
    assert_eq!((cu.resident, cu.swapped, cu.shared), (0, 1, 7));
    assert_eq!(cu.footprint(), 8 + cu.tables);
}

#[test]
fn the_largest_footprint_is_chosen_unless_exempt_or_adjusted() {
    let small = SpaceUsage {
        resident: 10,
        ..SpaceUsage::default()
    };
    let big = SpaceUsage {
        resident: 400,
        swapped: 600,
        tables: 6,
        ..SpaceUsage::default()
    };
    let c = |id, usage, adjust| OomCandidate { id, usage, adjust };
    assert_eq!(
        choose_victim([c(1, small, 0), c(2, big, 0)], 4096)
            .unwrap()
            .id,
        2
    );
    assert_eq!(badness(&big, 0, 4096), Some(1006));
    // -500: half of the 4096 managed pages off its score.
    assert_eq!(badness(&big, -500, 4096), Some(1));
    assert_eq!(
        choose_victim([c(1, small, 0), c(2, big, -500)], 4096)
            .unwrap()
            .id,
        1
    );
    // Exempt: never chosen, even alone.
    assert_eq!(badness(&big, NEVER, 4096), None);
    assert_eq!(choose_victim([c(2, big, NEVER)], 4096), None);
    // +1000 makes even an empty process the first choice.
    let empty = SpaceUsage::default();
    let choice = choose_victim([c(1, big, 0), c(9, empty, 1000)], 4096).unwrap();
    assert_eq!((choice.id, choice.badness, choice.adjust), (9, 4096, 1000));
    // Ties go to the lowest id.
    assert_eq!(
        choose_victim([c(5, small, 0), c(3, small, 0)], 4096)
            .unwrap()
            .id,
        3
    );
}

/// The kernel's loop when a fault runs out of memory: score every process,
/// end the chosen one, retry. The runaway is ended; the others keep their
/// pages and contents.
#[test]
fn ending_the_chosen_space_lets_the_others_fault_again() {
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::new(&mem, Some(40));
    let quiet = m.space(8);
    for p in 0..8 {
        m.fault(&quiet, p, true);
    }
    let runaway = m.space(400);
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut failed = None;
    for p in 0..400 {
        let at = VirtAddr::new(BASE + p * PAGE);
        if let Err(e) =
            runaway.handle_fault(&m.vm, at, FaultAccess::write(true), &mut m.frames, &mut tlb)
        {
            failed = Some((p, e));
            break;
        }
        let phys = runaway.mapper().translate(at).unwrap().phys;
        mem.write_u64(phys, p + 1);
    }
    let (at, _) = failed.expect("40 frames and 256 slots do not hold 400 pages");
    let spaces = [(1, &quiet), (2, &runaway)];
    let choice = choose_victim(
        spaces.iter().map(|&(id, s)| OomCandidate {
            id,
            usage: s.usage(&m.vm),
            adjust: 0,
        }),
        40 + 256,
    )
    .unwrap();
    assert_eq!(choice.id, 2, "{choice:?}");
    assert!(
        choice.usage.swapped > 200 && at > 250,
        "{choice:?} at page {at}"
    );
    runaway
        .destroy(&m.vm, &mut m.frames, &mut tlb)
        .map_err(|(_, e)| e)
        .unwrap();
    // Its slots and frames are back: the quiet process grows again.
    let u = quiet.usage(&m.vm);
    assert_eq!(u.resident + u.swapped, 8);
    assert_eq!(m.vm.stats().swap_slots_used, u.swapped);
    for p in 0..8 {
        let at = VirtAddr::new(BASE + p * PAGE);
        let phys = quiet.mapper().translate(at).unwrap().phys;
        assert_eq!(mem.read_u64(phys), p + 1, "page {p} kept its contents");
    }
}

fn read(mem: &EmulatedMemory, s: &VmSpace<EmulatedPhysMem<'_>>, page: u64) -> Option<u64> {
    let at = VirtAddr::new(BASE + page * PAGE);
    s.mapper().translate(at).ok().map(|t| mem.read_u64(t.phys))
}

#[test]
fn dont_need_gives_frames_and_slots_back_and_reads_zeros_after() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let mut s = m.space(16);
    let baseline = m.frames.in_use();
    for p in 0..12 {
        m.fault(&s, p, true);
    }
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    // Four written out first: their slots go too.
    assert_eq!(
        s.advise(
            BASE,
            4 * PAGE,
            Advice::PageOut,
            &m.vm,
            &mut m.frames,
            &mut tlb
        ),
        Ok(4)
    );
    assert_eq!(s.usage(&m.vm).swapped, 4);
    let given = s
        .advise(
            BASE,
            16 * PAGE,
            Advice::DontNeed,
            &m.vm,
            &mut m.frames,
            &mut tlb,
        )
        .unwrap();
    assert_eq!(given, 12, "8 frames and 4 slots");
    let u = s.usage(&m.vm);
    assert_eq!((u.resident, u.swapped), (0, 0));
    assert_eq!(m.vm.stats().swap_slots_used, 0);
    assert_eq!(
        m.frames.in_use(),
        baseline,
        "frames and emptied tables back"
    );
    // The area stays: a touch reads zeros.
    assert_eq!(s.area_count(), 1);
    m.fault(&s, 3, false);
    assert_eq!(read(&mem, &s, 3), Some(0));
}

#[test]
fn page_out_writes_now_and_the_contents_come_back() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let mut s = m.space(16);
    for p in 0..10 {
        m.fault(&s, p, true);
    }
    m.fault(&s, 10, false); // the zero page: not a page of this space's own
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let out = s
        .advise(
            BASE,
            16 * PAGE,
            Advice::PageOut,
            &m.vm,
            &mut m.frames,
            &mut tlb,
        )
        .unwrap();
    assert_eq!(out, 10);
    let u = s.usage(&m.vm);
    assert_eq!((u.resident, u.swapped, u.zero), (0, 10, 1));
    for p in 0..10 {
        m.fault(&s, p, false);
        assert_eq!(read(&mem, &s, p), Some(p + 1), "page {p}");
    }
}

#[test]
fn advice_is_refused_where_it_does_not_apply() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let mut s = m.space(8);
    s.map_fixed(
        BASE + 8 * PAGE,
        2 * PAGE,
        Prot::empty(),
        AreaKind::Guard,
        &mut m.frames,
    )
    .unwrap();
    m.fault(&s, 0, true);
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut advise = |s: &mut VmSpace<_>, m: &mut Machine, at, pages, advice| {
        s.advise(at, pages * PAGE, advice, &m.vm, &mut m.frames, &mut tlb)
    };
    assert_eq!(
        advise(&mut s, &mut m, BASE, 10, Advice::DontNeed),
        Err(VmError::NotAnonymous {
            addr: BASE + 8 * PAGE
        })
    );
    assert_eq!(
        advise(&mut s, &mut m, BASE, 12, Advice::PageOut),
        Err(VmError::Unmapped { addr: BASE })
    );
    assert_eq!(
        advise(&mut s, &mut m, BASE + 1, 1, Advice::PageOut),
        Err(VmError::Unaligned {
            addr: BASE + 1,
            len: PAGE
        })
    );
    assert_eq!(read(&mem, &s, 0), Some(1), "nothing changed");
    // No swap device: nothing to write to.
    let mut vm = Vm::new(&mem.phys_mem(), &mut m.frames).unwrap();
    let mut t = m.space(2);
    std::mem::swap(&mut m.vm, &mut vm);
    m.fault(&t, 0, true);
    let err = t.advise(BASE, PAGE, Advice::PageOut, &m.vm, &mut m.frames, &mut tlb);
    assert_eq!(err, Err(VmError::PageOut(FaultReason::NoSwap)));
    assert_eq!(read(&mem, &t, 0), Some(1));
}

/// Locked pages stay resident under pressure (reclaim by the CLOCK hand or
/// by a policy), within the limit; unlocked, reclaim takes them again; a
/// child does not inherit the lock.
#[test]
fn locked_pages_stay_resident_until_unlocked() {
    locked_pages_under_pressure(false);
}

#[test]
fn locked_pages_stay_resident_under_a_policy() {
    locked_pages_under_pressure(true);
}

fn locked_pages_under_pressure(policy: bool) {
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::new(&mem, Some(24));
    m.vm.set_lock_limit(Some(10));
    let mut s = m.space(200);
    if policy {
        s.set_policy(Box::new(kmem::vm::replace::ClockPro::new(24)));
    }
    for p in 0..8 {
        m.fault(&s, p, true);
    }
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    // Pages 8 and 9 are not touched yet: locking faults them in.
    s.lock(BASE, 10 * PAGE, &m.vm, &mut m.frames, &mut tlb)
        .unwrap();
    assert_eq!((s.locked_pages(), m.vm.locked_pages()), (10, 10));
    assert_eq!(s.usage(&m.vm).resident, 10);
    // Past the limit: refused, nothing changed.
    assert_eq!(
        s.lock(BASE + 10 * PAGE, PAGE, &m.vm, &mut m.frames, &mut tlb),
        Err(VmError::LockLimit {
            locked: 10,
            wanted: 1,
            limit: 10
        })
    );
    assert_eq!(s.locked_pages(), 10);
    assert_eq!(
        s.advise(BASE, PAGE, Advice::DontNeed, &m.vm, &mut m.frames, &mut tlb),
        Err(VmError::Locked { addr: BASE })
    );
    // Pressure: 24 frames, 190 more pages written.
    for p in 10..200 {
        m.fault(&s, p, true);
    }
    for p in 0..10 {
        let t = s.mapper().translate(VirtAddr::new(BASE + p * PAGE));
        assert!(t.is_ok(), "locked page {p} was taken");
        // 8 and 9 were faulted in by the lock: zero-filled private frames.
        assert_eq!(read(&mem, &s, p), Some(if p < 8 { p + 1 } else { 0 }));
    }
    // Page-out skips them too.
    s.advise(
        BASE,
        200 * PAGE,
        Advice::PageOut,
        &m.vm,
        &mut m.frames,
        &mut tlb,
    )
    .unwrap();
    assert_eq!(s.usage(&m.vm).resident, 10);
    // A child shares the pages but not the lock.
    let child = s.fork(&m.vm, &mut m.frames, &mut tlb).unwrap();
    assert_eq!((child.locked_pages(), m.vm.locked_pages()), (0, 10));
    // The parent's writes copy its locked pages (the copies are locked).
    for p in 0..10 {
        m.fault(&s, p, true);
    }
    child
        .destroy(&m.vm, &mut m.frames, &mut tlb)
        .map_err(|(_, e)| e)
        .unwrap();
    for p in 100..200 {
        m.fault(&s, p, true);
    }
    for p in 0..10 {
        assert_eq!(
            read(&mem, &s, p),
            Some(p + 1),
            "locked page {p} after the copy"
        );
    }
    // Unlocked: reclaim may take them again.
    s.unlock(BASE, 10 * PAGE, &m.vm).unwrap();
    assert_eq!((s.locked_pages(), m.vm.locked_pages()), (0, 0));
    s.advise(
        BASE,
        10 * PAGE,
        Advice::PageOut,
        &m.vm,
        &mut m.frames,
        &mut tlb,
    )
    .unwrap();
    for p in 0..10 {
        let t = s.mapper().translate(VirtAddr::new(BASE + p * PAGE));
        assert!(t.is_err(), "unlocked page {p} was written out");
    }
    // Unmapping a locked range gives its charge back.
    s.lock(BASE + 20 * PAGE, 4 * PAGE, &m.vm, &mut m.frames, &mut tlb)
        .unwrap();
    assert_eq!(m.vm.locked_pages(), 4);
    s.unmap(BASE, 40 * PAGE, &m.vm, &mut m.frames, &mut tlb)
        .unwrap();
    assert_eq!(m.vm.locked_pages(), 0);
}

/// MADV_FREE: swapped pages give their slots back at once; resident ones
/// are dropped by reclaim without a write unless written again (a write
/// after the advice keeps the page and its new contents).
#[test]
fn free_lets_reclaim_drop_pages_not_written_since() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let mut s = m.space(16);
    for p in 0..8 {
        m.fault(&s, p, true);
    }
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut advise = |s: &mut VmSpace<_>, m: &mut Machine, first: u64, pages: u64, advice| {
        s.advise(
            BASE + first * PAGE,
            pages * PAGE,
            advice,
            &m.vm,
            &mut m.frames,
            &mut tlb,
        )
    };
    assert_eq!(advise(&mut s, &mut m, 4, 4, Advice::PageOut), Ok(4));
    for p in 0..4 {
        // Written through the TLB before the advice: Dirty is set.
        s.simulate_access(VirtAddr::new(BASE + p * PAGE), true);
    }
    assert_eq!(advise(&mut s, &mut m, 0, 8, Advice::Free), Ok(8));
    assert_eq!(
        m.vm.stats().swap_slots_used,
        0,
        "the swapped four gave their slots"
    );
    // Page 1 is written again after the advice: it must survive.
    let at = VirtAddr::new(BASE + PAGE);
    s.simulate_access(at, true);
    mem.write_u64(s.mapper().translate(at).unwrap().phys, 55);
    let out = advise(&mut s, &mut m, 0, 8, Advice::PageOut).unwrap();
    assert_eq!(out, 4, "three dropped unwritten, one written out");
    let st = m.vm.stats();
    assert_eq!((st.lazy_freed, st.swap_slots_used), (3, 1));
    for p in 0..8 {
        m.fault(&s, p, false);
        let want = if p == 1 { 55 } else { 0 };
        assert_eq!(read(&mem, &s, p), Some(want), "page {p}");
    }
}

/// MADV_WILLNEED reads the swapped pages of the range back now.
#[test]
fn will_need_reads_swapped_pages_back() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let mut s = m.space(16);
    for p in 0..8 {
        m.fault(&s, p, true);
    }
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let len = 8 * PAGE;
    s.advise(BASE, len, Advice::PageOut, &m.vm, &mut m.frames, &mut tlb)
        .unwrap();
    assert_eq!(s.usage(&m.vm).swapped, 8);
    let read_back = s
        .advise(
            BASE,
            16 * PAGE,
            Advice::WillNeed,
            &m.vm,
            &mut m.frames,
            &mut tlb,
        )
        .unwrap();
    assert_eq!(read_back, 8);
    let u = s.usage(&m.vm);
    assert_eq!((u.resident, u.swapped), (8, 0));
    for p in 0..8 {
        assert_eq!(read(&mem, &s, p), Some(p + 1), "page {p} without a fault");
    }
}

/// MADV_COLD: the page's references are forgotten and the policy lets it
/// go before pages referenced as recently.
#[test]
fn cold_pages_go_first() {
    for policy in ["clock", "clock-pro", "none"] {
        let mem = EmulatedMemory::new(256);
        let mut m = Machine::new(&mem, None);
        let mut s = m.space(16);
        match policy {
            "clock" => s.set_policy(Box::new(kmem::vm::replace::Clock::new(64))),
            "clock-pro" => s.set_policy(Box::new(kmem::vm::replace::ClockPro::new(64))),
            _ => {}
        }
        for p in 0..8 {
            m.fault(&s, p, true);
        }
        let mut mmu = RecordingMmu::new(m.kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        // A first pass consumes the faulting accesses; then every page is
        // referenced again, page 5 included.
        for p in 0..8 {
            s.simulate_access(VirtAddr::new(BASE + p * PAGE), false);
        }
        let cold = s.advise(
            BASE + 5 * PAGE,
            PAGE,
            Advice::Cold,
            &m.vm,
            &mut m.frames,
            &mut tlb,
        );
        assert_eq!(cold, Ok(1), "{policy}");
        for p in 0..8 {
            if p != 5 {
                s.simulate_access(VirtAddr::new(BASE + p * PAGE), false);
            }
        }
        assert_eq!(
            s.reclaim(&m.vm, &mut m.frames, 1, &mut tlb),
            Ok(1),
            "{policy}"
        );
        let gone: Vec<u64> = (0..8)
            .filter(|&p| {
                s.mapper()
                    .translate(VirtAddr::new(BASE + p * PAGE))
                    .is_err()
            })
            .collect();
        assert_eq!(gone, [5], "{policy}");
    }
}

/// MADV_FREE on a page whose older copy is still in the swap cache: the
/// copy goes, so a later eviction never brings the older contents back
/// (here mprotect drops the free mark, and the page is written out anew).
#[test]
fn free_never_brings_back_an_older_copy() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let mut s = m.space(4);
    m.fault(&s, 0, true); // holds 1
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let at = VirtAddr::new(BASE);
    s.advise(BASE, PAGE, Advice::PageOut, &m.vm, &mut m.frames, &mut tlb)
        .unwrap();
    // Read back: clean, its slot kept as the swap cache.
    s.handle_fault(&m.vm, at, FaultAccess::read(true), &mut m.frames, &mut tlb)
        .unwrap();
    assert_eq!(read(&mem, &s, 0), Some(1));
    // Written again (the slot's copy is now stale), then freed.
    s.handle_fault(&m.vm, at, FaultAccess::write(true), &mut m.frames, &mut tlb)
        .unwrap();
    s.simulate_access(at, true);
    mem.write_u64(s.mapper().translate(at).unwrap().phys, 2);
    s.advise(BASE, PAGE, Advice::Free, &m.vm, &mut m.frames, &mut tlb)
        .unwrap();
    s.protect(
        BASE,
        PAGE,
        Prot::READ | Prot::USER,
        &m.vm,
        &mut m.frames,
        &mut tlb,
    )
    .unwrap();
    s.advise(BASE, PAGE, Advice::PageOut, &m.vm, &mut m.frames, &mut tlb)
        .unwrap();
    m.fault(&s, 0, false);
    let now = read(&mem, &s, 0);
    assert!(
        now == Some(2) || now == Some(0),
        "page reads {now:?}, an older copy"
    );
}

/// An inaccessible (PROT_NONE) range can be locked and advised WillNeed:
/// nothing is faulted in, nothing fails.
#[test]
fn lock_and_will_need_accept_inaccessible_ranges() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let mut s = m.space(8);
    m.fault(&s, 0, true);
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    s.advise(BASE, PAGE, Advice::PageOut, &m.vm, &mut m.frames, &mut tlb)
        .unwrap();
    s.protect(
        BASE,
        8 * PAGE,
        Prot::empty(),
        &m.vm,
        &mut m.frames,
        &mut tlb,
    )
    .unwrap();
    assert_eq!(
        s.advise(
            BASE,
            8 * PAGE,
            Advice::WillNeed,
            &m.vm,
            &mut m.frames,
            &mut tlb
        ),
        Ok(0)
    );
    s.lock(BASE, 8 * PAGE, &m.vm, &mut m.frames, &mut tlb)
        .unwrap();
    assert_eq!((s.locked_pages(), s.usage(&m.vm).resident), (8, 0));
}

/// DontNeed in a fork's child drops its own mappings but reports only what
/// went back: frames and slots the parent still holds are not counted, and
/// the parent's pages keep their contents.
#[test]
fn dont_need_after_fork_counts_only_what_goes_back() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let mut parent = m.space(8);
    for p in 0..8 {
        m.fault(&parent, p, true);
    }
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    // Pages 0..4 on swap before the fork: their slots are shared too.
    let out = parent.advise(
        BASE,
        4 * PAGE,
        Advice::PageOut,
        &m.vm,
        &mut m.frames,
        &mut tlb,
    );
    assert_eq!(out, Ok(4));
    let mut child = parent.fork(&m.vm, &mut m.frames, &mut tlb).unwrap();
    let resident = m.vm.stats().resident_frames;
    let all = 8 * PAGE;
    let dropped = child.advise(BASE, all, Advice::DontNeed, &m.vm, &mut m.frames, &mut tlb);
    assert_eq!(dropped, Ok(0), "everything is still the parent's");
    assert_eq!(m.vm.stats().resident_frames, resident);
    assert_eq!(m.vm.stats().swap_slots_used, 4);
    for p in 0..8 {
        m.fault(&parent, p, false);
        assert_eq!(read(&mem, &parent, p), Some(p + 1), "parent page {p}");
    }
    // Now the parent's are its own: they go back.
    let dropped = parent.advise(BASE, all, Advice::DontNeed, &m.vm, &mut m.frames, &mut tlb);
    assert_eq!(dropped, Ok(8));
    assert_eq!(m.vm.stats().resident_frames, 0);
    assert_eq!(m.vm.stats().swap_slots_used, 0);
    for s in [parent, child] {
        s.destroy(&m.vm, &mut m.frames, &mut tlb)
            .map_err(|(_, e)| e)
            .unwrap();
    }
}
