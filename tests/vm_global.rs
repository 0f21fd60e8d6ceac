//! Reclaim over every address space (`kmem::vm::global`): one policy over
//! all spaces' pages, run by a reclaim worker between watermarks. An idle
//! space's cold pages go before an active space's hot ones; contents and
//! every frame and slot survive.

use kmem::paging::PageTables;
use kmem::smp::Tlb;
use kmem::testing::mmu::RecordingMmu;
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use kmem::vm::global::Watermarks;
use kmem::vm::replace::{Clock, ClockPro, ReplacementPolicy};
use kmem::vm::swap::PAGE_BYTES;
use kmem::vm::{FaultAccess, FaultOutcome, MemSwap, Prot, SwapDevice, SwapIoError, Vm, VmSpace};
use x86_64::structures::paging::FrameAllocator;
use x86_64::VirtAddr;

const PAGE: u64 = 4096;
const BASE: u64 = 0x4000_0000;
const LIMIT: u64 = 40;

type Space<'m> = VmSpace<EmulatedPhysMem<'m>>;

struct Machine<'m> {
    mem: &'m EmulatedMemory,
    frames: EmulatedFrameAllocator,
    vm: Vm,
    kernel: PageTables<EmulatedPhysMem<'m>>,
    faults: u64,
}

impl<'m> Machine<'m> {
    fn new(mem: &'m EmulatedMemory, global: bool) -> Self {
        let mut frames = mem.frame_allocator();
        let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
        vm.set_frame_limit(Some(LIMIT));
        assert!(vm.attach_swap(Box::new(MemSwap::new(512))).is_ok());
        if global {
            vm.set_global_policy(Box::new(ClockPro::new(LIMIT as usize)));
        }
        let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
        Self {
            mem,
            frames,
            vm,
            kernel,
            faults: 0,
        }
    }

    /// A machine whose test runs reclaim itself: `policy` over the joined
    /// spaces, no watermark asking for the worker.
    fn manual(mem: &'m EmulatedMemory, policy: Box<dyn ReplacementPolicy + Send>) -> Self {
        let mut m = Self::new(mem, false);
        m.vm.set_global_policy(policy);
        m.vm.set_watermarks(Some(Watermarks {
            min: 0,
            low: 0,
            high: 0,
        }));
        m
    }

    fn space(&mut self, pages: u64, id: u16, global: bool) -> Space<'m> {
        let mut s = VmSpace::new_user(&self.kernel, &mut self.frames).unwrap();
        s.map_anonymous(Some(BASE), pages * PAGE, Prot::RW | Prot::USER)
            .unwrap();
        if global {
            s.join_global(id).unwrap();
        } else {
            s.set_policy(Box::new(ClockPro::new(LIMIT as usize)));
        }
        s
    }

    /// One access to `page` of `s` as the CPU makes it: a hit sets the
    /// Accessed bit, a miss faults (counted); a write stores `value`.
    /// Before a fault the worker runs while the watermarks ask for it.
    fn access(&mut self, spaces: &[&Space<'m>], s: &Space<'m>, page: u64, value: Option<u64>) {
        let at = VirtAddr::new(BASE + page * PAGE);
        let mut mmu = RecordingMmu::new(self.kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        let present = s
            .mapper()
            .translate(at)
            .is_ok_and(|t| value.is_none() || t.access.writable);
        if !present {
            while self.vm.needs_reclaim() {
                let freed = self
                    .vm
                    .reclaim_step(spaces, &mut self.frames, &mut tlb)
                    .unwrap();
                if freed == 0 {
                    break;
                }
            }
            self.faults += 1;
            let access = match value {
                Some(_) => FaultAccess::write(true),
                None => FaultAccess::read(true),
            };
            loop {
                match s.handle_fault(&self.vm, at, access, &mut self.frames, &mut tlb) {
                    Ok(FaultOutcome::InTransit) => continue,
                    Ok(_) => break,
                    Err(e) => panic!("fault at page {page}: {e:?}"),
                }
            }
        }
        s.simulate_access(at, value.is_some());
        if let Some(v) = value {
            let phys = s.mapper().translate(at).unwrap().phys;
            self.mem.write_u64(phys, v);
        }
    }

    fn value(&mut self, spaces: &[&Space<'m>], s: &Space<'m>, page: u64) -> u64 {
        self.access(spaces, s, page, None);
        let phys = s
            .mapper()
            .translate(VirtAddr::new(BASE + page * PAGE))
            .unwrap()
            .phys;
        self.mem.read_u64(phys)
    }
}

/// An idle space fills memory, then an active one cycles over 30 pages:
/// with one policy over both, the idle space's pages go and the active
/// one faults little more than once a page; each space reclaiming only
/// itself, the active one is held to the frames it had and faults on
/// nearly every access.
fn shifting(global: bool) -> u64 {
    let mem = EmulatedMemory::new(1024);
    let mut m = Machine::new(&mem, global);
    let idle = m.space(64, 1, global);
    let busy = m.space(64, 2, global);
    let spaces = [&idle, &busy];
    for p in 0..30 {
        m.access(&spaces, &idle, p, Some(1000 + p));
    }
    m.faults = 0;
    for round in 0..20 {
        for p in 0..30 {
            m.access(&spaces, &busy, p, Some(round * 100 + p));
        }
    }
    let busy_faults = m.faults;
    for p in 0..30 {
        assert_eq!(m.value(&spaces, &idle, p), 1000 + p, "idle page {p}");
        assert_eq!(m.value(&spaces, &busy, p), 1900 + p, "busy page {p}");
    }
    assert!(m.vm.stats().resident_frames <= LIMIT);
    // The idle pages came back within the global policy's history: each a
    // working-set refault. Without a global policy, nothing counts them.
    let st = m.vm.stats();
    if global {
        assert!(st.workingset_refaults >= 10, "{st:?}");
        assert!(st.workingset_refaults <= st.swap_ins, "{st:?}");
    } else {
        assert_eq!(st.workingset_refaults, 0);
    }
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    for s in [idle, busy] {
        s.destroy(&m.vm, &mut m.frames, &mut tlb)
            .map_err(|(_, e)| e)
            .unwrap();
    }
    assert_eq!(m.vm.stats().swap_slots_used, 0, "every slot back");
    assert_eq!(m.vm.stats().resident_frames, 0, "every frame back");
    busy_faults
}

#[test]
fn one_policy_over_every_space_follows_the_active_one() {
    let global = shifting(true);
    let local = shifting(false);
    println!("active space's faults: global {global}, local {local}");
    assert!(global <= 60, "global reclaim: {global} faults for 30 pages");
    assert!(global * 4 < local, "global {global} vs local {local}");
}

#[test]
fn watermarks_default_from_the_limit_and_the_worker_stops_at_high() {
    let w = Watermarks::for_limit(1024);
    assert_eq!((w.min, w.low), (16, 20));
    assert!(w.high > w.low && w.high <= 1024 / 4);
    assert!(Watermarks::for_limit(1).min >= 1);

    let mem = EmulatedMemory::new(512);
    let mut m = Machine::new(&mem, true);
    m.vm.set_watermarks(Some(Watermarks {
        min: 2,
        low: 4,
        high: 10,
    }));
    let s = m.space(64, 7, true);
    let spaces = [&s];
    // Fill to 38 of 40 frames without the worker (only faults run it).
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    for p in 0..38 {
        let at = VirtAddr::new(BASE + p * PAGE);
        s.handle_fault(&m.vm, at, FaultAccess::write(true), &mut m.frames, &mut tlb)
            .unwrap();
        let phys = s.mapper().translate(at).unwrap().phys;
        mem.write_u64(phys, p + 1);
    }
    assert_eq!(m.vm.free_frames(), Some(2));
    assert!(m.vm.needs_reclaim());
    let mut freed = 0;
    while m.vm.needs_reclaim() || m.vm.free_frames() < Some(10) {
        let n =
            m.vm.reclaim_step(&spaces[..], &mut m.frames, &mut tlb)
                .unwrap();
        assert!(n > 0);
        freed += n;
    }
    assert_eq!(m.vm.free_frames(), Some(10), "stops at high");
    assert_eq!(freed, 8);
    assert_eq!(
        m.vm.reclaim_step(&spaces[..], &mut m.frames, &mut tlb),
        Ok(0)
    );
    assert!(!m.vm.needs_reclaim());
    assert_eq!(s.usage(&m.vm).swapped, 8);
}

/// A space that did not join is not touched by the worker; one with a
/// locked range keeps it.
#[test]
fn the_worker_takes_only_pageable_pages_of_spaces_that_joined() {
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::new(&mem, true);
    let mut mine = m.space(64, 1, true);
    let other = m.space(64, 2, false);
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    mine.lock(BASE, 4 * PAGE, &m.vm, &mut m.frames, &mut tlb)
        .unwrap();
    let spaces = [&mine, &other];
    for p in 4..20 {
        m.access(&spaces, &mine, p, Some(p));
    }
    for p in 0..16 {
        m.access(&spaces, &other, p, Some(p));
    }
    let freed =
        m.vm.reclaim_global(&spaces[..], 16, &mut m.frames, &mut tlb)
            .unwrap();
    assert_eq!(freed, 16);
    assert_eq!(other.usage(&m.vm).resident, 16, "not joined: untouched");
    let u = mine.usage(&m.vm);
    assert_eq!((u.resident, u.swapped), (4, 16), "the locked four stay");
    // A plain CLOCK as the global policy works the same way.
    let mut vm = Vm::new(&mem.phys_mem(), &mut m.frames).unwrap();
    vm.set_global_policy(Box::new(Clock::new(8)));
    assert_eq!(
        vm.reclaim_global(&spaces[..], 4, &mut m.frames, &mut tlb),
        Err(kmem::vm::FaultReason::NoSwap)
    );
}

/// References seen only in Accessed bits (no fault) reach the global
/// policy through the worker's harvest: pages touched since the last look
/// stay, the untouched ones go.
#[test]
fn the_worker_harvests_accessed_bits_before_it_chooses() {
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::manual(&mem, Box::new(Clock::new(LIMIT as usize)));
    let s = m.space(64, 3, true);
    let spaces = [&s];
    // Thirty-nine pages in; a first look reports their faulting accesses
    // and takes the oldest.
    for p in 0..39 {
        m.access(&spaces, &s, p, Some(p + 1));
    }
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let first = m.vm.reclaim_global(&spaces[..], 1, &mut m.frames, &mut tlb);
    assert_eq!(first, Ok(1));
    // Pages 1..21 are touched again; 21..39 are not.
    for p in 1..21 {
        s.simulate_access(VirtAddr::new(BASE + p * PAGE), false);
    }
    let freed =
        m.vm.reclaim_global(&spaces[..], 10, &mut m.frames, &mut tlb)
            .unwrap();
    assert_eq!(freed, 10);
    for p in 1..21 {
        let t = s.mapper().translate(VirtAddr::new(BASE + p * PAGE));
        assert!(t.is_ok(), "hot page {p} was taken");
    }
}

/// A frame shared by a parent and its child after a fork is evicted from
/// both at once (one slot, two references) and read back by each; with
/// the child outside the table, it stays.
#[test]
fn shared_frames_are_evicted_from_every_sharer() {
    for child_joins in [true, false] {
        let mem = EmulatedMemory::new(512);
        let mut m = Machine::manual(&mem, Box::new(Clock::new(LIMIT as usize)));
        let mut parent = m.space(64, 1, true);
        for p in 0..10 {
            m.access(&[&parent], &parent, p, Some(100 + p));
        }
        let mut mmu = RecordingMmu::new(m.kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        let mut child = parent.fork(&m.vm, &mut m.frames, &mut tlb).unwrap();
        if child_joins {
            child.join_global(2).unwrap();
        }
        assert_eq!(m.vm.stats().shared_frames, 10);
        let resident = m.vm.stats().resident_frames;
        let spaces = [&parent, &child];
        let table: &[&Space] = if child_joins { &spaces } else { &spaces[..1] };
        let freed =
            m.vm.reclaim_global(table, 10, &mut m.frames, &mut tlb)
                .unwrap();
        if child_joins {
            assert_eq!(freed, 10, "each shared frame evicted once");
            assert_eq!(m.vm.stats().shared_frames, 0);
            assert_eq!(m.vm.stats().resident_frames, resident - 10);
            assert_eq!(m.vm.stats().swap_slots_used, 10, "one slot per frame");
            assert_eq!(parent.usage(&m.vm).swapped, 10);
            assert_eq!(child.usage(&m.vm).swapped, 10);
        } else {
            assert_eq!(freed, 0, "a sharer outside the table keeps the frames");
            assert_eq!(m.vm.stats().shared_frames, 10);
            assert_eq!(m.vm.stats().swap_slots_used, 0);
            assert_eq!(parent.usage(&m.vm).shared, 10);
        }
        // Both read every page back as it was; then the child writes.
        for p in 0..10 {
            assert_eq!(m.value(table, &parent, p), 100 + p);
            assert_eq!(m.value(table, &child, p), 100 + p);
        }
        m.access(table, &child, 0, Some(7));
        assert_eq!(m.value(table, &parent, 0), 100);
        assert_eq!(m.value(table, &child, 0), 7);
        for s in [parent, child] {
            s.destroy(&m.vm, &mut m.frames, &mut tlb)
                .map_err(|(_, e)| e)
                .unwrap();
        }
        assert_eq!(m.vm.stats().swap_slots_used, 0, "every slot back");
        assert_eq!(m.vm.stats().resident_frames, 0, "every frame back");
    }
}

/// A shared page the worker could not evict (a sharer outside its table)
/// is offered again: once the other sharer is gone, the worker takes it.
#[test]
fn shared_pages_kept_are_offered_again() {
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::manual(&mem, Box::new(Clock::new(LIMIT as usize)));
    let mut parent = m.space(64, 1, true);
    for p in 0..10 {
        m.access(&[&parent], &parent, p, Some(100 + p));
    }
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let child = parent.fork(&m.vm, &mut m.frames, &mut tlb).unwrap();
    let table = [&parent];
    assert_eq!(
        m.vm.reclaim_global(&table[..], 10, &mut m.frames, &mut tlb),
        Ok(0)
    );
    child
        .destroy(&m.vm, &mut m.frames, &mut tlb)
        .map_err(|(_, e)| e)
        .unwrap();
    assert_eq!(
        m.vm.reclaim_global(&table[..], 10, &mut m.frames, &mut tlb),
        Ok(10)
    );
    for p in 0..10 {
        assert_eq!(m.value(&table, &parent, p), 100 + p);
    }
}

/// A page table no CPU walked through since the worker's last look is
/// skipped whole; one access through it brings it back into the scan.
#[test]
fn the_harvest_skips_tables_no_cpu_walked() {
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::manual(&mem, Box::new(Clock::new(LIMIT as usize)));
    let s = m.space(64, 5, true);
    let spaces = [&s];
    for p in 0..12 {
        m.access(&spaces, &s, p, Some(p + 1));
    }
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut look = |m: &mut Machine| {
        m.vm.reclaim_global(&spaces[..], 1, &mut m.frames, &mut tlb)
            .unwrap();
        let st = m.vm.stats();
        (st.scanned, st.tables_skipped)
    };
    let (scanned, skipped) = look(&mut m);
    assert_eq!(
        (scanned, skipped),
        (12, 0),
        "the first look scans the table"
    );
    assert_eq!(look(&mut m), (12, 1), "nothing walked since: skipped");
    s.simulate_access(VirtAddr::new(BASE + 5 * PAGE), false);
    assert_eq!(
        look(&mut m),
        (12 + 10, 1),
        "walked again: scanned (10 pages left)"
    );
}

/// The kernel's worker and the simulator decide alike: the same
/// interleaved references over spaces joined in process order, the worker
/// run for one page whenever a fault finds every frame in use, fault
/// exactly as often as `multi::replay_global_harvested` says, for each
/// policy.
#[test]
fn the_worker_faults_as_the_simulator_says() {
    use kmem::vm::replace::{multi, Adaptive, ReplacementPolicy};
    let frames = 24usize;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Three processes, 30 pages each; a process keeps the CPU for a while
    // and favours a few pages.
    let mut refs = Vec::new();
    let mut p = 0u32;
    for i in 0..3000u64 {
        if i % 40 == 0 {
            p = (next() % 3) as u32;
        }
        let page = if next() % 4 == 0 {
            next() % 30
        } else {
            next() % 8
        };
        refs.push((p, page));
    }
    type Make = fn(usize) -> Box<dyn ReplacementPolicy + Send>;
    let policies: [(&str, Make); 3] = [
        ("clock", |n| Box::new(Clock::new(n))),
        ("clock-pro", |n| Box::new(ClockPro::new(n))),
        ("adaptive", |n| Box::new(Adaptive::new(n))),
    ];
    for (name, make) in policies {
        let expected = multi::replay_global_harvested(&mut *make(frames), &refs).faults;
        let mem = EmulatedMemory::new(512);
        let mut frames_src = mem.frame_allocator();
        let mut vm = Vm::new(&mem.phys_mem(), &mut frames_src).unwrap();
        vm.set_frame_limit(Some(frames as u64));
        vm.set_global_policy(make(frames));
        assert!(vm.attach_swap(Box::new(MemSwap::new(256))).is_ok());
        let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames_src).unwrap();
        let spaces: Vec<Space<'_>> = (0..3)
            .map(|id| {
                let mut s = VmSpace::new_user(&kernel, &mut frames_src).unwrap();
                s.map_anonymous(Some(BASE), 64 * PAGE, Prot::RW | Prot::USER)
                    .unwrap();
                s.join_global(id).unwrap();
                s
            })
            .collect();
        let table: Vec<&Space<'_>> = spaces.iter().collect();
        let mut mmu = RecordingMmu::new(kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        let mut faults = 0;
        for &(p, page) in &refs {
            let s = &spaces[p as usize];
            let at = VirtAddr::new(BASE + page * PAGE);
            if s.mapper().translate(at).is_err() {
                faults += 1;
                if vm.free_frames() == Some(0) {
                    let freed = vm
                        .reclaim_global(&table[..], 1, &mut frames_src, &mut tlb)
                        .unwrap();
                    assert_eq!(freed, 1);
                }
                s.handle_fault(&vm, at, FaultAccess::write(true), &mut frames_src, &mut tlb)
                    .unwrap();
                mem.write_u64(s.mapper().translate(at).unwrap().phys, page + 1);
            }
            s.simulate_access(at, true);
        }
        println!("{name}: kernel {faults} faults, simulator {expected}");
        assert_eq!(faults, expected, "{name}");
    }
}

/// Two areas in one page table: the harvest reads the table once for
/// both, so the second area's references are not lost when the first
/// area's pass clears the directory bit.
#[test]
fn areas_sharing_a_page_table_are_harvested_together() {
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::manual(&mem, Box::new(Clock::new(LIMIT as usize)));
    let mut s = VmSpace::new_user(&m.kernel, &mut m.frames).unwrap();
    // Different protections keep the areas apart; one page table maps both.
    s.map_anonymous(Some(BASE), 8 * PAGE, Prot::RW | Prot::USER)
        .unwrap();
    s.map_anonymous(Some(BASE + 8 * PAGE), 8 * PAGE, Prot::RW)
        .unwrap();
    assert_eq!(s.area_count(), 2);
    s.join_global(4).unwrap();
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    // The second area first: its pages are the oldest.
    for p in (8..16).chain(0..8) {
        let at = VirtAddr::new(BASE + p * PAGE);
        s.handle_fault(
            &m.vm,
            at,
            FaultAccess::write(p < 8),
            &mut m.frames,
            &mut tlb,
        )
        .unwrap();
        mem.write_u64(s.mapper().translate(at).unwrap().phys, p + 1);
        s.simulate_access(at, true);
    }
    let spaces = [&s];
    assert_eq!(
        m.vm.reclaim_global(&spaces[..], 1, &mut m.frames, &mut tlb),
        Ok(1)
    );
    // Only the second area's pages are used again.
    for p in 9..16 {
        s.simulate_access(VirtAddr::new(BASE + p * PAGE), false);
    }
    assert_eq!(
        m.vm.reclaim_global(&spaces[..], 4, &mut m.frames, &mut tlb),
        Ok(4)
    );
    for p in 9..16 {
        let t = s.mapper().translate(VirtAddr::new(BASE + p * PAGE));
        assert!(
            t.is_ok(),
            "page {p} of the second area was taken though used"
        );
    }
}

/// Pages a joined space reclaimed for itself leave the global policy:
/// after the range is unmapped and physical memory mapped there, the worker
/// never takes the physical frame (and frees nothing it does not own).
#[test]
fn the_worker_never_takes_what_the_space_reclaimed_or_fixed_memory() {
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::manual(&mem, Box::new(ClockPro::new(LIMIT as usize)));
    let mut s = m.space(64, 6, true);
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    // 60 pages over 40 frames and no worker: faults reclaim the space's own.
    for p in 0..60 {
        let at = VirtAddr::new(BASE + p * PAGE);
        s.handle_fault(&m.vm, at, FaultAccess::write(true), &mut m.frames, &mut tlb)
            .unwrap();
        mem.write_u64(s.mapper().translate(at).unwrap().phys, p + 1);
    }
    s.unmap(BASE, 64 * PAGE, &m.vm, &mut m.frames, &mut tlb)
        .unwrap();
    let device = m.frames.allocate_frame().unwrap();
    // SAFETY: an emulated frame this test owns, mapped as device memory.
    unsafe {
        s.map_physical(
            BASE,
            PAGE,
            Prot::RW | Prot::USER,
            device.start_address(),
            &mut m.frames,
        )
    }
    .unwrap();
    let spaces = [&s];
    let freed =
        m.vm.reclaim_global(&spaces[..], 16, &mut m.frames, &mut tlb);
    assert_eq!(
        freed,
        Ok(0),
        "nothing of this space is the policy's any more"
    );
    let t = s.mapper().translate(VirtAddr::new(BASE)).unwrap();
    assert_eq!(
        t.frame,
        device.start_address(),
        "the device page stays mapped"
    );
    assert_eq!(m.vm.stats().resident_frames, 0);
}

/// A swap device that counts the pages it reads.
struct CountingSwap {
    inner: MemSwap,
    reads: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SwapDevice for CountingSwap {
    fn slots(&self) -> u64 {
        self.inner.slots()
    }
    fn write(&self, first: u64, pages: &[&[u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        self.inner.write(first, pages)
    }
    fn read(&self, first: u64, pages: &mut [&mut [u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        let n = pages.len() as u64;
        self.reads
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.inner.read(first, pages)
    }
}

/// Pages a parent and its child share on swap (one slot each) are read
/// from the device once: the second sharer's fault copies the frame the
/// first one read. That frame is mapped read-only while the slot has other
/// sharers, so a write (here the parent's, before the child's read) leaves
/// the cache first and the child reads the slot's own data.
#[test]
fn a_slot_shared_after_fork_is_read_once() {
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::manual(&mem, Box::new(Clock::new(LIMIT as usize)));
    m.vm.set_reclaim(None, 1);
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let device = m.vm.detach_swap().unwrap();
    drop(device);
    assert!(m
        .vm
        .attach_swap(Box::new(CountingSwap {
            inner: MemSwap::new(10), // readahead reaches past the last slot
            reads: reads.clone(),
        }))
        .is_ok());
    let mut parent = m.space(64, 1, true);
    for p in 0..10 {
        m.access(&[&parent], &parent, p, Some(100 + p));
    }
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut child = parent.fork(&m.vm, &mut m.frames, &mut tlb).unwrap();
    child.join_global(2).unwrap();
    let table: &[&Space] = &[&parent, &child];
    assert_eq!(
        m.vm.reclaim_global(table, 10, &mut m.frames, &mut tlb)
            .unwrap(),
        10
    );
    assert_eq!(m.vm.stats().swap_slots_used, 10);
    let read = || reads.load(std::sync::atomic::Ordering::Relaxed);
    // Page 0: the parent reads it in and writes it; the child must get
    // the slot's data, not the parent's write.
    assert_eq!(m.value(table, &parent, 0), 100);
    assert_eq!(read(), 1);
    m.access(table, &parent, 0, Some(7));
    assert_eq!(
        m.value(table, &child, 0),
        100,
        "the child saw the parent's write"
    );
    assert_eq!(read(), 2, "the written frame left the cache: read again");
    // Page 1: the parent reads it in, then mprotect makes it writable
    // without a fault: that, too, takes the frame out of the cache.
    assert_eq!(m.value(table, &parent, 1), 101);
    parent
        .protect(
            BASE + PAGE,
            PAGE,
            Prot::RW | Prot::USER,
            &m.vm,
            &mut m.frames,
            &mut tlb,
        )
        .unwrap();
    let table: &[&Space] = &[&parent, &child];
    let faults = m.faults;
    m.access(table, &parent, 1, Some(11));
    assert_eq!(m.faults, faults, "writable after mprotect: no fault");
    assert_eq!(
        m.value(table, &child, 1),
        101,
        "the child saw the parent's write"
    );
    assert_eq!(read(), 4);
    // Readahead stops at a slot another sharer holds: the child reads page
    // 4; the parent reads page 2, then page 3 and ahead up to page 4.
    m.vm.set_reclaim(None, 8);
    assert_eq!(m.value(table, &child, 4), 104);
    assert_eq!(m.value(table, &parent, 2), 102);
    assert_eq!(m.value(table, &parent, 3), 103);
    assert_eq!(read(), 7, "readahead re-read a slot the child holds");
    for p in 5..10 {
        assert_eq!(m.value(table, &parent, p), 100 + p);
    }
    assert_eq!(read(), 12, "page 5 alone, then 6..10 read ahead");
    // Pages 2..10: the other sharer copies what one read.
    for p in 2..10 {
        assert_eq!(m.value(table, &child, p), 100 + p);
        assert_eq!(m.value(table, &parent, p), 100 + p);
    }
    assert_eq!(read(), 12, "each shared slot read once");
    assert_eq!(m.vm.stats().swap_in_copies, 8);
    // The copies are private: each sharer's write stays its own.
    m.access(table, &child, 5, Some(55));
    m.access(table, &parent, 6, Some(66));
    assert_eq!(m.value(table, &parent, 5), 105);
    assert_eq!(m.value(table, &child, 6), 106);
    assert_eq!(m.value(table, &parent, 0), 7);
    assert_eq!(m.value(table, &parent, 1), 11);
    for s in [parent, child] {
        s.destroy(&m.vm, &mut m.frames, &mut tlb)
            .map_err(|(_, e)| e)
            .unwrap();
    }
    assert_eq!(m.vm.stats().swap_slots_used, 0, "every slot back");
    assert_eq!(m.vm.stats().resident_frames, 0, "every frame back");
    assert_eq!(m.vm.stats().swap_cached, 0);
}

/// Faults given the kernel's table of spaces reclaim directly over every
/// space, and only below `min`: above it they take a frame and leave the
/// rest to the worker; below it (or with no frame free) the idle space's
/// cold pages go, not the faulting space's own.
#[test]
fn faults_below_min_reclaim_over_every_space() {
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::manual(&mem, Box::new(Clock::new(LIMIT as usize)));
    m.vm.set_watermarks(Some(Watermarks {
        min: 4,
        low: 6,
        high: 8,
    }));
    let idle = m.space(64, 1, true);
    let active = m.space(64, 2, true);
    let table: &[&Space] = &[&idle, &active];
    fn touch<'m>(m: &mut Machine<'m>, table: &[&Space<'m>], s: &Space<'m>, p: u64) {
        let mut mmu = RecordingMmu::new(m.kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        let at = VirtAddr::new(BASE + p * PAGE);
        loop {
            let access = FaultAccess::write(true);
            match s.handle_fault_global(&m.vm, table, at, access, &mut m.frames, &mut tlb) {
                Ok(FaultOutcome::InTransit) => continue,
                Ok(_) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        s.simulate_access(at, true);
        let phys = s.mapper().translate(at).unwrap().phys;
        m.mem.write_u64(phys, p + 1);
    }
    for p in 0..36 {
        touch(&mut m, table, &idle, p);
    }
    assert_eq!(m.vm.free_frames(), Some(4), "no reclaim at min");
    assert_eq!(m.vm.stats().reclaimed, 0);
    touch(&mut m, table, &active, 0);
    assert_eq!(m.vm.free_frames(), Some(3), "the reserve is used");
    assert_eq!(m.vm.stats().direct_reclaims, 0);
    touch(&mut m, table, &active, 1);
    // Below min: reclaimed up to high (8 free) before the frame was taken.
    assert_eq!(m.vm.free_frames(), Some(7));
    assert_eq!(m.vm.stats().direct_reclaims, 1);
    assert_eq!(idle.usage(&m.vm).swapped, 5, "the idle space's pages");
    assert_eq!(active.usage(&m.vm).resident, 2);
    // No reserve at all: the fault still reclaims over every space.
    m.vm.set_watermarks(Some(Watermarks {
        min: 0,
        low: 0,
        high: 0,
    }));
    for p in 2..20 {
        touch(&mut m, table, &active, p);
    }
    assert_eq!(
        active.usage(&m.vm).resident,
        20,
        "the active space kept its pages"
    );
    assert_eq!(idle.usage(&m.vm).swapped, 36 - idle.usage(&m.vm).resident);
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    for s in [idle, active] {
        s.destroy(&m.vm, &mut m.frames, &mut tlb)
            .map_err(|(_, e)| e)
            .unwrap();
    }
    assert_eq!(m.vm.stats().swap_slots_used, 0);
}
