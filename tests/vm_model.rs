//! `kmem::vm` against a model: random sequences of map / unmap / protect /
//! fork / exit / read / write / execute over several processes on emulated
//! physical memory. Each access goes through an emulated CPU: translate,
//! fault into `handle_fault` when the page does not allow it, retry. After
//! every step the contents and permissions seen through the page tables
//! equal the model's, every space's invariants hold, share counts equal
//! the mappings that really share a frame, and after every process exits
//! the frame count is exactly the starting one.
//!
//! A third variant turns transparent huge pages on over a window of three
//! 2 MiB runs: the same checks while huge pages are mapped and split.
//!
//! Default: a fast run. Long run: `PROPTEST_CASES=10000 cargo test --release --test vm_model`.
//! Miri: `MIRIFLAGS="-Zmiri-permissive-provenance -Zmiri-disable-isolation" PROPTEST_CASES=2 \
//!  cargo +nightly miri test --test vm_model`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kmem::paging::PageTables;
use kmem::smp::Tlb;
use kmem::testing::mmu::RecordingMmu;
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use kmem::vm::{
    Advice, AreaKind, FaultAccess, FaultError, FaultOutcome, FaultReason, MemSwap, Prot, Vm,
    VmError, VmSpace,
};
use proptest::prelude::*;
use x86_64::structures::paging::PhysFrame;
use x86_64::{PhysAddr, VirtAddr};

const PAGE: u64 = 4096;
/// Processes touch pages in a small window so ops collide.
const BASE: u64 = 0x40_0000;
const WINDOW: u64 = 48;

type Space<'a> = VmSpace<EmulatedPhysMem<'a>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write(u8),
    Exec,
}

/// One emulated access from ring 3: the CPU's checks, then faults into
/// `vm` until the page allows the access (at most twice: zero page, then
/// copy). Returns the byte read or written.
fn access<A: kmem::paging::FrameSource + ?Sized>(
    space: &mut Space<'_>,
    vm: &mut Vm,
    frames: &mut A,
    addr: u64,
    kind: Kind,
) -> Result<u8, FaultError> {
    for _ in 0..3 {
        let t = space.mapper().translate(VirtAddr::new(addr));
        if let Ok(t) = &t {
            let ok = t.access.user
                && match kind {
                    Kind::Read => true,
                    Kind::Write(_) => t.access.writable,
                    Kind::Exec => t.access.executable,
                };
            if ok {
                space.simulate_access(VirtAddr::new(addr), matches!(kind, Kind::Write(_)));
                // The byte's own frame (a huge page's frame is its first).
                let frame = PhysFrame::containing_address(t.phys);
                let p = space.mapper().phys_mem_ptr(frame);
                let off = (addr % PAGE) as usize;
                // SAFETY: the frame is emulated memory, valid for 4096 bytes.
                return Ok(unsafe {
                    match kind {
                        Kind::Write(v) => {
                            p.add(off).write(v);
                            v
                        }
                        _ => p.add(off).read(),
                    }
                });
            }
        }
        let access = FaultAccess {
            present: t.is_ok(),
            write: matches!(kind, Kind::Write(_)),
            exec: kind == Kind::Exec,
            user: true,
            reserved_bit: false,
        };
        space.handle_fault(vm, VirtAddr::new(addr), access, frames, &mut up())?;
    }
    panic!("access at {addr:#x} still faults after resolution");
}

/// The TLB context of a uniprocessor kernel whose CPU has no space loaded
/// (these tests run no CPU: their accesses walk the tables).
fn up() -> Tlb<'static> {
    let mmu = RecordingMmu::new(PhysFrame::containing_address(PhysAddr::new(0)));
    Tlb::uniprocessor(Box::leak(Box::new(mmu)))
}

/// Pointer access to an emulated frame, for the emulated CPU.
trait PhysPtr {
    fn phys_mem_ptr(&self, frame: PhysFrame) -> *mut u8;
}

impl PhysPtr for PageTables<EmulatedPhysMem<'_>> {
    fn phys_mem_ptr(&self, frame: PhysFrame) -> *mut u8 {
        use kmem::paging::PhysMem;
        self.phys_mem().table_ptr(frame).as_ptr().cast()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        p: usize,
        hint: u64,
        pages: u64,
        prot: u8,
    },
    Unmap {
        p: usize,
        page: u64,
        pages: u64,
    },
    Protect {
        p: usize,
        page: u64,
        pages: u64,
        prot: u8,
    },
    Fork {
        p: usize,
    },
    Exit {
        p: usize,
    },
    Read {
        p: usize,
        page: u64,
        off: u64,
    },
    Write {
        p: usize,
        page: u64,
        off: u64,
        v: u8,
    },
    Exec {
        p: usize,
        page: u64,
    },
    /// `madvise` with DontNeed, PageOut, WillNeed or Cold (by `kind % 4`).
    Advise {
        p: usize,
        page: u64,
        pages: u64,
        kind: u8,
    },
    Lock {
        p: usize,
        page: u64,
        pages: u64,
    },
    Unlock {
        p: usize,
        page: u64,
        pages: u64,
    },
    /// Collapse runs whole again back into huge pages (nothing without them).
    Collapse {
        p: usize,
    },
}

fn prot_of(code: u8) -> Prot {
    Prot::USER
        | match code % 4 {
            0 => Prot::READ,
            1 => Prot::RW,
            2 => Prot::RX,
            _ => Prot::empty(),
        }
}

fn op() -> impl Strategy<Value = Op> {
    ops_in(4, WINDOW, 1, 1)
}

/// Ops of the first `procs` processes over `window` pages: maps of up to
/// `7 * scale` pages, their hints on multiples of `align` pages half of
/// the time; other ranges up to `5 * scale` pages.
fn ops_in(procs: usize, window: u64, scale: u64, align: u64) -> impl Strategy<Value = Op> {
    let p = 0usize..procs;
    let page = 0..window;
    let hint = prop_oneof![(0..window / align).prop_map(move |k| k * align), 0..window];
    prop_oneof![
        3 => (p.clone(), hint, 1u64..8 * scale, 0u8..4).prop_map(|(p, hint, pages, prot)| Op::Map { p, hint, pages, prot }),
        1 => (p.clone(), page.clone(), 1u64..8 * scale).prop_map(|(p, page, pages)| Op::Unmap { p, page, pages }),
        1 => (p.clone(), page.clone(), 1u64..6 * scale, 0u8..4).prop_map(|(p, page, pages, prot)| Op::Protect { p, page, pages, prot }),
        1 => p.clone().prop_map(|p| Op::Fork { p }),
        1 => p.clone().prop_map(|p| Op::Exit { p }),
        4 => (p.clone(), page.clone(), 0..PAGE).prop_map(|(p, page, off)| Op::Read { p, page, off }),
        5 => (p.clone(), page.clone(), 0..PAGE, any::<u8>()).prop_map(|(p, page, off, v)| Op::Write { p, page, off, v }),
        1 => (p.clone(), page.clone()).prop_map(|(p, page)| Op::Exec { p, page }),
        1 => (p.clone(), page.clone(), 1u64..6 * scale, 0u8..4).prop_map(|(p, page, pages, kind)| Op::Advise { p, page, pages, kind }),
        1 => (p.clone(), page.clone(), 1u64..4 * scale).prop_map(|(p, page, pages)| Op::Lock { p, page, pages }),
        1 => (p.clone(), page, 1u64..6 * scale).prop_map(|(p, page, pages)| Op::Unlock { p, page, pages }),
        1 => p.prop_map(|p| Op::Collapse { p }),
    ]
}

/// What a process should see: the protection of each mapped page and
/// every byte written (unwritten bytes of a mapped page read 0).
#[derive(Debug, Clone, Default)]
struct Model {
    pages: BTreeMap<u64, Prot>,
    bytes: HashMap<u64, u8>,
    /// Pages locked in memory, and those of them faulted in by the lock.
    locked: BTreeSet<u64>,
    resident_locked: BTreeSet<u64>,
}

impl Model {
    fn unmap(&mut self, a: u64, b: u64) {
        let gone: Vec<u64> = self.pages.range(a..b).map(|(&k, _)| k).collect();
        for k in gone {
            self.pages.remove(&k);
            self.locked.remove(&k);
            self.resident_locked.remove(&k);
        }
        self.bytes.retain(|&addr, _| addr < a || addr >= b);
    }

    fn covered(&self, a: u64, b: u64) -> bool {
        (a..b)
            .step_by(PAGE as usize)
            .all(|pg| self.pages.contains_key(&pg))
    }
}

/// The emulated allocator, shared with the `Vm` as its source of 2 MiB
/// runs (transparent huge pages) in the huge-page variant.
type Frames = kmem::testing::huge_frames::SharedFrames;

struct World<'m> {
    mem: &'m EmulatedMemory,
    frames: Frames,
    vm: Vm,
    kernel: PageTables<EmulatedPhysMem<'m>>,
    procs: Vec<Option<(Space<'m>, Model)>>,
    /// Whether an access may find memory full (big areas over a limit).
    full_ok: bool,
}

impl<'m> World<'m> {
    fn new(mem: &'m EmulatedMemory) -> Self {
        Self::with_vm(mem, |_| {})
    }

    /// A world whose `Vm` is set up by `setup` (a frame limit, a swap device).
    fn with_vm(mem: &'m EmulatedMemory, setup: impl FnOnce(&mut Vm)) -> Self {
        Self::with_vm_huge(mem, false, setup)
    }

    /// [`with_vm`](Self::with_vm), with transparent huge pages on (`huge`).
    fn with_vm_huge(mem: &'m EmulatedMemory, huge: bool, setup: impl FnOnce(&mut Vm)) -> Self {
        let mut frames = Frames::new(mem.frame_allocator());
        let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
        if huge {
            vm.set_huge_frames(Some(Box::new(frames.clone())));
        }
        setup(&mut vm);
        let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
        let mut w = Self {
            mem,
            frames,
            vm,
            kernel,
            procs: vec![None, None, None, None],
            full_ok: false,
        };
        for p in 0..2 {
            w.spawn(p);
        }
        w
    }

    fn spawn(&mut self, p: usize) {
        let mut space = VmSpace::new_user(&self.kernel, &mut self.frames).unwrap();
        if let Some(limit) = self.vm.frame_limit() {
            // Processes with an even slot reclaim by CLOCK-Pro, the others
            // by the built-in CLOCK scan.
            if p.is_multiple_of(2) {
                space.set_policy(Box::new(kmem::vm::replace::ClockPro::new(limit as usize)));
            }
        }
        self.procs[p] = Some((space, Model::default()));
    }

    fn step(&mut self, op: &Op) {
        let addr = |page: u64| BASE + page * PAGE;
        match *op {
            Op::Map {
                p,
                hint,
                pages,
                prot,
            } => {
                let Some((space, model)) = self.procs[p].as_mut() else {
                    return self.spawn(p);
                };
                let prot = prot_of(prot);
                let at = space
                    .map_anonymous(Some(addr(hint)), pages * PAGE, prot)
                    .unwrap();
                let end = at + pages * PAGE;
                assert!(
                    model.pages.range(at..end).next().is_none(),
                    "mapped over a mapping"
                );
                if model
                    .pages
                    .range(addr(hint)..addr(hint) + pages * PAGE)
                    .next()
                    .is_none()
                {
                    assert_eq!(at, addr(hint), "a free hint must be used");
                }
                for pg in (at..end).step_by(PAGE as usize) {
                    model.pages.insert(pg, prot);
                }
            }
            Op::Unmap { p, page, pages } => {
                let Some((space, model)) = self.procs[p].as_mut() else {
                    return;
                };
                let (a, b) = (addr(page), addr(page + pages));
                space
                    .unmap(a, b - a, &self.vm, &mut self.frames, &mut up())
                    .unwrap();
                model.unmap(a, b);
            }
            Op::Protect {
                p,
                page,
                pages,
                prot,
            } => {
                let Some((space, model)) = self.procs[p].as_mut() else {
                    return;
                };
                let (a, b) = (addr(page), addr(page + pages));
                let prot = prot_of(prot);
                let covered = (a..b)
                    .step_by(PAGE as usize)
                    .all(|pg| model.pages.contains_key(&pg));
                match space.protect(a, b - a, prot, &self.vm, &mut self.frames, &mut up()) {
                    Ok(()) => {
                        assert!(covered);
                        for pg in (a..b).step_by(PAGE as usize) {
                            model.pages.insert(pg, prot);
                        }
                    }
                    Err(e) => {
                        assert_eq!(e, VmError::Unmapped { addr: a });
                        assert!(!covered);
                    }
                }
            }
            Op::Fork { p } => {
                let Some(slot) = self.procs.iter().position(Option::is_none) else {
                    return;
                };
                let Some((space, model)) = self.procs[p].as_mut() else {
                    return;
                };
                let child = space.fork(&self.vm, &mut self.frames, &mut up()).unwrap();
                let mut model = model.clone();
                model.locked.clear(); // a child does not inherit locks
                model.resident_locked.clear();
                self.procs[slot] = Some((child, model));
            }
            Op::Collapse { p } => {
                let Some((space, _)) = self.procs[p].as_mut() else {
                    return;
                };
                space
                    .collapse_huge(&self.vm, 2, &mut self.frames, &mut up())
                    .unwrap();
            }
            Op::Exit { p } => {
                let Some((space, _)) = self.procs[p].take() else {
                    return;
                };
                space
                    .destroy(&self.vm, &mut self.frames, &mut up())
                    .unwrap();
            }
            Op::Read { p, page, off } | Op::Write { p, page, off, .. } => {
                let Some((space, model)) = self.procs[p].as_mut() else {
                    return;
                };
                let a = addr(page) + off;
                let kind = match *op {
                    Op::Write { v, .. } => Kind::Write(v),
                    _ => Kind::Read,
                };
                let r = access(space, &mut self.vm, &mut self.frames, a, kind);
                if let Err(FaultError {
                    reason: FaultReason::OutOfMemory,
                    ..
                }) = r
                {
                    // Only with every frame under the limit taken (locked,
                    // or shared after a fork: a space's own reclaim cannot
                    // take those); the access changed nothing.
                    let (resident, limit) =
                        (self.vm.stats().resident_frames, self.vm.frame_limit());
                    assert!(
                        self.full_ok && limit.is_some_and(|l| resident + 1 >= l),
                        "out of memory at {resident} of {limit:?} frames"
                    );
                    return;
                }
                let prot = model.pages.get(&addr(page)).copied();
                match (prot, kind) {
                    (None, _) => assert_eq!(r.unwrap_err().reason, FaultReason::NoArea),
                    (Some(pr), _) if !pr.accessible() => {
                        assert_eq!(r.unwrap_err().reason, FaultReason::NoAccess)
                    }
                    (Some(pr), Kind::Write(v)) if pr.contains(Prot::WRITE) => {
                        assert_eq!(r.unwrap(), v);
                        model.bytes.insert(a, v);
                    }
                    (Some(_), Kind::Write(_)) => {
                        assert_eq!(r.unwrap_err().reason, FaultReason::WriteToReadOnly)
                    }
                    (Some(_), _) => {
                        assert_eq!(
                            r.unwrap(),
                            model.bytes.get(&a).copied().unwrap_or(0),
                            "byte at {a:#x}"
                        )
                    }
                }
            }
            Op::Advise {
                p,
                page,
                pages,
                kind,
            } => {
                let Some((space, model)) = self.procs[p].as_mut() else {
                    return;
                };
                let (a, b) = (addr(page), addr(page + pages));
                let advice = [
                    Advice::DontNeed,
                    Advice::PageOut,
                    Advice::WillNeed,
                    Advice::Cold,
                ][usize::from(kind % 4)];
                let r = space.advise(a, b - a, advice, &self.vm, &mut self.frames, &mut up());
                let locked = model.locked.range(a..b).next().copied();
                match r {
                    Ok(_) => {
                        assert!(model.covered(a, b), "{advice:?} over a hole");
                        if advice == Advice::DontNeed {
                            assert_eq!(locked, None, "DontNeed over locked memory");
                            model.bytes.retain(|&x, _| x < a || x >= b);
                        }
                    }
                    Err(VmError::Unmapped { addr }) => {
                        assert_eq!(addr, a);
                        assert!(!model.covered(a, b));
                    }
                    Err(VmError::Locked { .. }) => {
                        assert_eq!(advice, Advice::DontNeed);
                        assert!(locked.is_some());
                    }
                    // No swap device in this world, or swap full: nothing lost.
                    Err(VmError::PageOut(_) | VmError::Populate(_) | VmError::OutOfMemory) => {}
                    Err(e) => panic!("{advice:?}: {e:?}"),
                }
            }
            Op::Lock { p, page, pages } => {
                let Some((space, model)) = self.procs[p].as_mut() else {
                    return;
                };
                let (a, b) = (addr(page), addr(page + pages));
                match space.lock(a, b - a, &self.vm, &mut self.frames, &mut up()) {
                    Ok(()) => {
                        assert!(model.covered(a, b));
                        for pg in (a..b).step_by(PAGE as usize) {
                            model.locked.insert(pg);
                            if model.pages[&pg].accessible() {
                                let t = space.mapper().translate(VirtAddr::new(pg));
                                assert!(t.is_ok(), "locked page {pg:#x} not resident");
                                model.resident_locked.insert(pg);
                            }
                        }
                    }
                    Err(VmError::Unmapped { addr }) => {
                        assert_eq!(addr, a);
                        assert!(!model.covered(a, b));
                    }
                    // Frames or swap ran out while faulting in: left unlocked.
                    Err(VmError::OutOfMemory | VmError::Populate(_)) => {}
                    Err(e) => panic!("lock: {e:?}"),
                }
            }
            Op::Unlock { p, page, pages } => {
                let Some((space, model)) = self.procs[p].as_mut() else {
                    return;
                };
                let (a, b) = (addr(page), addr(page + pages));
                match space.unlock(a, b - a, &self.vm) {
                    Ok(()) => {
                        assert!(model.covered(a, b));
                        for pg in (a..b).step_by(PAGE as usize) {
                            model.locked.remove(&pg);
                            model.resident_locked.remove(&pg);
                        }
                    }
                    Err(e) => {
                        assert_eq!(e, VmError::Unmapped { addr: a });
                        assert!(!model.covered(a, b));
                    }
                }
            }
            Op::Exec { p, page } => {
                let Some((space, model)) = self.procs[p].as_mut() else {
                    return;
                };
                let r = access(
                    space,
                    &mut self.vm,
                    &mut self.frames,
                    addr(page),
                    Kind::Exec,
                );
                let prot = model.pages.get(&addr(page)).copied();
                let want = prot.is_some_and(|p| p.contains(Prot::EXEC));
                assert_eq!(r.is_ok(), want, "exec at page {page}: {r:?} with {prot:?}");
            }
        }
    }

    /// Invariants of every space, and share counts against the real
    /// sharing: each frame mapped by n > 1 pages of live spaces has count n.
    fn check(&self) {
        let mut mapped: HashMap<PhysFrame, u32> = HashMap::new();
        for (space, _) in self.procs.iter().flatten() {
            space.check_invariants(&self.vm).unwrap();
            // By leaf: a huge page may lie across two areas (an unlock of
            // part of it) and is one mapping.
            let mut leaves = BTreeMap::new();
            for area in space.areas().filter(|a| a.kind == AreaKind::Anonymous) {
                space
                    .mapper()
                    .for_each_leaf_in(VirtAddr::new(area.start), area.len(), |l| {
                        leaves.insert(l.page, PhysFrame::containing_address(l.frame));
                    });
            }
            for frame in leaves.into_values() {
                *mapped.entry(frame).or_default() += 1;
            }
        }
        let mut locked = 0;
        for (space, model) in self.procs.iter().flatten() {
            assert_eq!(
                space.locked_pages(),
                model.locked.len() as u64,
                "locked pages"
            );
            locked += model.locked.len() as u64;
        }
        assert_eq!(self.vm.locked_pages(), locked, "locked pages of the Vm");
        mapped.remove(&self.vm.zero_frame());
        for (&frame, &n) in &mapped {
            assert_eq!(self.vm.share_count(frame), n, "share count of {frame:?}");
        }
        assert_eq!(
            self.vm.shared_frames(),
            mapped.values().filter(|&&n| n > 1).count()
        );
    }

    /// Exits everything; the frames in use must be the zero frame and the
    /// kernel's PML4.
    fn finish(mut self) {
        for p in 0..self.procs.len() {
            self.step(&Op::Exit { p });
        }
        assert_eq!(self.vm.shared_frames(), 0);
        let st = self.vm.stats();
        assert_eq!(
            (st.resident_frames, st.swap_slots_used, st.swap_cached),
            (0, 0, 0),
            "{st:?}"
        );
        assert_eq!(self.frames.in_use(), 2, "frames leaked");
        let _ = self.mem;
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(miri) { 2 } else { 64 })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// The same with 12 frames for anonymous memory and a swap device:
    /// most steps evict or read back pages.
    #[test]
    fn vm_with_swap_matches_the_model(ops in proptest::collection::vec(op(), 1..160)) {
        let mem = EmulatedMemory::new(2048);
        let mut w = World::with_vm(&mem, |vm| {
            vm.set_frame_limit(Some(12));
            assert!(vm.attach_swap(Box::new(MemSwap::new(4096))).is_ok());
        });
        for op in &ops {
            w.step(op);
            w.check();
        }
        w.finish();
    }

    /// Transparent huge pages on, over a window of three 2 MiB runs with
    /// areas of up to 1 792 pages (hints on run boundaries half of the
    /// time): first touches map huge pages, and every other operation,
    /// fork and reclaim split them; contents and permissions as the model
    /// says, with and without a frame limit and swap.
    #[test]
    fn vm_with_huge_pages_matches_the_model(
        ops in proptest::collection::vec(ops_in(4, 1536, 256, 512), 20..100),
        limited in any::<bool>(),
    ) {
        let mem = EmulatedMemory::new(16384);
        let mut w = World::with_vm_huge(&mem, true, |vm| {
            if limited {
                vm.set_frame_limit(Some(1100));
                assert!(vm.attach_swap(Box::new(MemSwap::new(16384))).is_ok());
            }
        });
        w.full_ok = limited;
        // Each process starts with two whole runs of read-write memory.
        for p in 0..2 {
            w.step(&Op::Map { p, hint: 0, pages: 1024, prot: 1 });
        }
        for op in &ops {
            w.step(op);
            w.check();
        }
        w.finish();
    }

    #[test]
    fn vm_matches_the_model(ops in proptest::collection::vec(op(), 1..120)) {
        let mem = EmulatedMemory::new(2048);
        let mut w = World::new(&mem);
        for op in &ops {
            w.step(op);
            w.check();
        }
        w.finish();
    }
}

/// The state a failed operation must leave untouched.
fn snapshot(space: &Space<'_>, vm: &Vm, frames: &EmulatedFrameAllocator) -> String {
    let mut leaves = Vec::new();
    space.mapper().for_each_leaf(|l| leaves.push(*l));
    format!(
        "{:?}\n{leaves:?}\n{}\n{:?}",
        space.areas().collect::<Vec<_>>(),
        frames.in_use(),
        vm.stats().shared_frames
    )
}

#[test]
fn frame_exhaustion_at_every_step_changes_nothing() {
    let mem = EmulatedMemory::new(512);
    for k in 0..40u64 {
        let mut frames = mem.frame_allocator();
        let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
        let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
        let mut parent = VmSpace::new_user(&kernel, &mut frames).unwrap();
        let heap = parent
            .map_anonymous(None, 64 * PAGE, Prot::RW | Prot::USER)
            .unwrap();
        // Touch pages in three tables' worth of range, some read-only.
        for i in 0..20 {
            let kind = if i % 3 == 0 {
                Kind::Read
            } else {
                Kind::Write(i as u8 + 1)
            };
            access(&mut parent, &mut vm, &mut frames, heap + i * 3 * PAGE, kind).unwrap();
        }
        frames.fail_after(k);
        // A fork, then writes in both (copies), then reads of new pages.
        let before = snapshot(&parent, &vm, &frames);
        let child = match parent.fork(&vm, &mut frames, &mut up()) {
            Ok(child) => Some(child),
            Err(e) => {
                assert_eq!(e, VmError::OutOfMemory);
                assert_eq!(
                    snapshot(&parent, &vm, &frames),
                    before,
                    "fork failed at {k}"
                );
                None
            }
        };
        let mut spaces = vec![parent];
        spaces.extend(child);
        for i in 0..24u64 {
            let s = (i % spaces.len() as u64) as usize;
            let space = &mut spaces[s];
            let before = snapshot(space, &vm, &frames);
            let a = heap + (i * 5 % 64) * PAGE;
            let access = if i % 4 == 3 {
                FaultAccess::read(true)
            } else {
                FaultAccess::write(true)
            };
            match space.handle_fault(&vm, VirtAddr::new(a), access, &mut frames, &mut up()) {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.reason, FaultReason::OutOfMemory, "{e}");
                    assert_eq!(snapshot(space, &vm, &frames), before, "fault failed at {k}");
                }
            }
            space.check_invariants(&vm).unwrap();
        }
        frames.clear_failure();
        for space in spaces {
            space.destroy(&vm, &mut frames, &mut up()).unwrap();
        }
        assert_eq!(frames.in_use(), 2, "leak after exhaustion at {k}");
    }
}

#[test]
fn fork_shares_then_copies_and_reuses() {
    let mem = EmulatedMemory::new(256);
    let mut frames = mem.frame_allocator();
    let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
    let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let mut parent = VmSpace::new_user(&kernel, &mut frames).unwrap();
    let a = parent
        .map_anonymous(None, 4 * PAGE, Prot::RW | Prot::USER)
        .unwrap();
    access(&mut parent, &mut vm, &mut frames, a, Kind::Write(7)).unwrap();
    let used = frames.in_use();
    let mut mmu = RecordingMmu::new(parent.pml4());
    let mut child = parent
        .fork(&vm, &mut frames, &mut Tlb::uniprocessor(&mut mmu))
        .unwrap();
    assert_eq!(
        mmu.invlpg_count(),
        1,
        "the parent's written page lost write access"
    );
    assert_eq!(vm.stats().shared_frames, 1);
    // Sharing took only the child's tables (PML4, PDPT, PD, PT).
    assert_eq!(frames.in_use(), used + 4);
    let w = child
        .handle_fault(
            &vm,
            VirtAddr::new(a),
            FaultAccess {
                present: true,
                ..FaultAccess::write(true)
            },
            &mut frames,
            &mut up(),
        )
        .unwrap();
    assert_eq!(w, FaultOutcome::CopiedOnWrite);
    access(&mut child, &mut vm, &mut frames, a, Kind::Write(9)).unwrap();
    assert_eq!(
        access(&mut parent, &mut vm, &mut frames, a, Kind::Read).unwrap(),
        7
    );
    // The parent's frame is no longer shared: its write fault reuses it.
    let r = parent
        .handle_fault(
            &vm,
            VirtAddr::new(a),
            FaultAccess {
                present: true,
                ..FaultAccess::write(true)
            },
            &mut frames,
            &mut up(),
        )
        .unwrap();
    assert_eq!(r, FaultOutcome::ReusedOnWrite);
    let s = vm.stats();
    assert_eq!((s.cow_copies, s.cow_reuses, s.shared_frames), (1, 1, 0));
    child.destroy(&vm, &mut frames, &mut up()).unwrap();
    parent.destroy(&vm, &mut frames, &mut up()).unwrap();
    assert_eq!(frames.in_use(), 2);
}

#[test]
fn faults_are_typed_for_every_reason() {
    let mem = EmulatedMemory::new(256);
    let mut frames = mem.frame_allocator();
    let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
    let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let mut s = VmSpace::new_user(&kernel, &mut frames).unwrap();
    let ro = s
        .map_anonymous(None, PAGE, Prot::READ | Prot::USER)
        .unwrap();
    let kern = s.map_anonymous(None, PAGE, Prot::RW).unwrap();
    let none = s.map_anonymous(None, PAGE, Prot::USER).unwrap();
    let guard = 0x7000_0000;
    s.map_fixed(guard, PAGE, Prot::empty(), AreaKind::Guard, &mut frames)
        .unwrap();
    let mut fault = |vm: &mut Vm, addr: u64, access| {
        s.handle_fault(vm, VirtAddr::new(addr), access, &mut frames, &mut up())
            .map_err(|e| e.reason)
    };
    assert_eq!(
        fault(&mut vm, 0x10, FaultAccess::read(true)),
        Err(FaultReason::NoArea)
    );
    assert_eq!(
        fault(&mut vm, guard, FaultAccess::read(false)),
        Err(FaultReason::Guard)
    );
    assert_eq!(
        fault(&mut vm, ro, FaultAccess::write(true)),
        Err(FaultReason::WriteToReadOnly)
    );
    assert_eq!(
        fault(&mut vm, ro, FaultAccess::exec(true)),
        Err(FaultReason::ExecuteNoExec)
    );
    assert_eq!(
        fault(&mut vm, kern, FaultAccess::read(true)),
        Err(FaultReason::UserToKernel)
    );
    assert_eq!(
        fault(&mut vm, none, FaultAccess::read(true)),
        Err(FaultReason::NoAccess)
    );
    assert_eq!(
        fault(&mut vm, ro, FaultAccess::from_error_code(8)),
        Err(FaultReason::CorruptTable)
    );
    assert_eq!(
        fault(&mut vm, ro, FaultAccess::read(true)),
        Ok(FaultOutcome::ZeroPageMapped)
    );
    assert_eq!(
        fault(&mut vm, ro, FaultAccess::read(true)),
        Ok(FaultOutcome::Spurious)
    );
    // The kernel touching a user page the page allows: SMAP.
    assert_eq!(
        fault(
            &mut vm,
            ro,
            FaultAccess {
                present: true,
                ..FaultAccess::read(false)
            }
        ),
        Err(FaultReason::KernelToUser)
    );
    let st = vm.stats();
    assert_eq!(st.protection_faults, 8, "{st:?}");
    assert_eq!((st.zero_page_maps, st.spurious), (1, 1), "{st:?}");
    // Any address, any error code: a result, never a panic.
    for code in 0..64 {
        for addr in [0, ro, !0xfff, 0xffff_8000_0000_0000, 0x0000_7fff_ffff_f000] {
            let _ = fault(&mut vm, addr, FaultAccess::from_error_code(code));
        }
    }
}

#[test]
fn areas_split_merge_and_refuse_bad_ranges() {
    let mem = EmulatedMemory::new(64);
    let mut frames = mem.frame_allocator();
    let vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
    let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let mut s = VmSpace::new_user(&kernel, &mut frames).unwrap();
    let rw = Prot::RW | Prot::USER;
    let a = s.map_anonymous(Some(0x10_0000), 8 * PAGE, rw).unwrap();
    assert_eq!(a, 0x10_0000);
    // Adjacent with the same protection: one area.
    s.map_anonymous(Some(a + 8 * PAGE), 8 * PAGE, rw).unwrap();
    assert_eq!(s.area_count(), 1);
    // Protect the middle: three areas; back: one again.
    s.protect(
        a + 4 * PAGE,
        4 * PAGE,
        Prot::READ | Prot::USER,
        &vm,
        &mut frames,
        &mut up(),
    )
    .unwrap();
    assert_eq!(s.area_count(), 3);
    s.protect(a + 4 * PAGE, 4 * PAGE, rw, &vm, &mut frames, &mut up())
        .unwrap();
    assert_eq!(s.area_count(), 1);
    // Unmap the middle: two areas; a hint into the hole is taken, and an
    // address left to the space goes top-down, below the layout's top.
    s.unmap(a + 4 * PAGE, 2 * PAGE, &vm, &mut frames, &mut up())
        .unwrap();
    assert_eq!(s.area_count(), 2);
    assert_eq!(
        s.map_anonymous(Some(a + 4 * PAGE), 2 * PAGE, Prot::READ | Prot::USER)
            .unwrap(),
        a + 4 * PAGE
    );
    assert_eq!(
        s.map_anonymous(None, PAGE, Prot::READ | Prot::USER)
            .unwrap()
            + PAGE,
        s.layout().top
    );
    // A taken hint falls back to a gap.
    assert_ne!(s.map_anonymous(Some(a), PAGE, rw).unwrap(), a);
    assert_eq!(
        s.map_anonymous(None, 3, rw),
        Err(VmError::Unaligned { addr: 0, len: 3 })
    );
    assert_eq!(
        s.map_anonymous(None, PAGE, Prot::RW | Prot::EXEC),
        Err(VmError::WriteExec { addr: 0 })
    );
    assert_eq!(
        s.map_anonymous(None, 1 << 50, rw),
        Err(VmError::NoSpace { len: 1 << 50 })
    );
    // The area in the way (the taken hint's page went right below `a`
    // and joined it: top-down placement in the smallest gap).
    let in_the_way = s.area_at(a).unwrap().start;
    assert_eq!(
        s.map_fixed(a, PAGE, rw, AreaKind::Anonymous, &mut frames)
            .unwrap_err(),
        VmError::Overlap { addr: in_the_way }
    );
    assert!(matches!(
        s.unmap(0xffff_8000_0000_0000, PAGE, &vm, &mut frames, &mut up()),
        Err(VmError::OutOfRange { .. })
    ));
    assert!(matches!(
        s.protect(0x5000_0000, PAGE, rw, &vm, &mut frames, &mut up()),
        Err(VmError::Unmapped { .. })
    ));
    // Fixed physical memory maps at once and is never freed; only through
    // the unsafe `map_physical`.
    let mmio = 0x6000_0000;
    let phys = PhysAddr::new(mem.start().as_u64() + 60 * PAGE);
    assert_eq!(
        s.map_fixed(mmio, 2 * PAGE, rw, AreaKind::Fixed { phys }, &mut frames),
        Err(VmError::Physical { phys })
    );
    // SAFETY: frames 60 and 61 of the 64 emulated ones, which the allocator
    // never hands out here (it goes from the bottom, and this test takes
    // a handful).
    unsafe { s.map_physical(mmio, 2 * PAGE, rw, phys, &mut frames) }.unwrap();
    assert!(s.mapper().translate(VirtAddr::new(mmio + PAGE)).is_ok());
    s.check_invariants(&vm).unwrap();
    let in_use = frames.in_use();
    let _ = in_use;
    s.destroy(&vm, &mut frames, &mut up()).unwrap();
    assert_eq!(frames.in_use(), 2);
}

/// A swap device whose failures the test switches from outside.
struct FlakySwap {
    inner: MemSwap,
    fail: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

const FAIL_WRITES: u8 = 1;
const FAIL_READS: u8 = 2;

impl kmem::vm::SwapDevice for FlakySwap {
    fn slots(&self) -> u64 {
        self.inner.slots()
    }
    fn write(&self, first: u64, pages: &[&[u8; 4096]]) -> Result<(), kmem::vm::SwapIoError> {
        let f = self.fail.load(std::sync::atomic::Ordering::SeqCst);
        self.inner.fail(f & FAIL_WRITES != 0, f & FAIL_READS != 0);
        self.inner.write(first, pages)
    }
    fn read(&self, first: u64, pages: &mut [&mut [u8; 4096]]) -> Result<(), kmem::vm::SwapIoError> {
        let f = self.fail.load(std::sync::atomic::Ordering::SeqCst);
        self.inner.fail(f & FAIL_WRITES != 0, f & FAIL_READS != 0);
        self.inner.read(first, pages)
    }
}

/// A word that says which page and pass wrote it.
fn stamp(page: u64, pass: u64) -> u8 {
    (page * 31 + pass * 7 + 1) as u8
}

#[test]
fn four_times_ram_with_checksums_faults_and_out_of_swap() {
    use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
    let mem = EmulatedMemory::new(1024);
    let fail = std::sync::Arc::new(AtomicU8::new(0));
    let device = FlakySwap {
        inner: MemSwap::new(256),
        fail: fail.clone(),
    };
    let mut frames = mem.frame_allocator();
    let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
    vm.set_frame_limit(Some(16));
    assert!(vm.attach_swap(Box::new(device)).is_ok());
    let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let mut s = VmSpace::new_user(&kernel, &mut frames).unwrap();
    let pages = 64u64; // four times the 16 frames
    let base = s
        .map_anonymous(None, pages * PAGE, Prot::RW | Prot::USER)
        .unwrap();
    let mut expect = vec![0u8; pages as usize];
    // Sequential write passes, then random read and write passes, then a
    // hot set: every value is checked on every read.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for pass in 0..12u64 {
        for k in 0..pages * 2 {
            let p = match pass {
                0..=2 => k % pages,
                3..=8 => next() % pages,
                _ => next() % 12,
            };
            let a = base + p * PAGE + (p % 500) * 8;
            if k % 3 == 0 && pass != 1 {
                let got = access(&mut s, &mut vm, &mut frames, a, Kind::Read).unwrap();
                assert_eq!(got, expect[p as usize], "page {p} pass {pass}");
            } else {
                let v = stamp(p, pass);
                access(&mut s, &mut vm, &mut frames, a, Kind::Write(v)).unwrap();
                expect[p as usize] = v;
            }
            s.check_invariants(&vm).unwrap();
        }
    }
    let st = vm.stats();
    assert!(st.resident_frames <= 16, "{st:?}");
    assert!(st.swap_outs > 100 && st.swap_ins > 100, "{st:?}");
    assert!(st.readahead > 0 && st.swap_cache_hits > 0, "{st:?}");

    // A failed write-out keeps the pages resident and intact: the fault
    // that needed the frame fails, typed, and nothing else changes.
    let resident: Vec<u64> = (0..pages)
        .filter(|p| s.mapper().translate(VirtAddr::new(base + p * PAGE)).is_ok())
        .collect();
    let swapped = (0..pages).find(|p| !resident.contains(p)).unwrap();
    fail.store(FAIL_WRITES, SeqCst);
    let before = snapshot(&s, &vm, &frames);
    let a = base + swapped * PAGE + (swapped % 500) * 8;
    match access(&mut s, &mut vm, &mut frames, a, Kind::Read) {
        Err(e) => {
            assert!(matches!(e.reason, FaultReason::SwapIo(_)), "{e}");
            assert_eq!(snapshot(&s, &vm, &frames), before);
        }
        Ok(v) => assert_eq!(v, expect[swapped as usize]), // a clean or zero page went instead
    }
    for &p in &resident {
        let t = s.mapper().translate(VirtAddr::new(base + p * PAGE));
        if t.is_ok() {
            let got = access(
                &mut s,
                &mut vm,
                &mut frames,
                base + p * PAGE + (p % 500) * 8,
                Kind::Read,
            );
            assert_eq!(got.unwrap(), expect[p as usize]);
        }
    }
    // A failed read is typed and loses nothing.
    fail.store(FAIL_READS, SeqCst);
    let still_out = (0..pages)
        .find(|p| {
            s.mapper()
                .translate(VirtAddr::new(base + p * PAGE))
                .is_err()
        })
        .unwrap();
    let a = base + still_out * PAGE + (still_out % 500) * 8;
    let e = access(&mut s, &mut vm, &mut frames, a, Kind::Read).unwrap_err();
    assert!(matches!(e.reason, FaultReason::SwapIo(_)), "{e}");
    fail.store(0, SeqCst);
    for p in 0..pages {
        let a = base + p * PAGE + (p % 500) * 8;
        assert_eq!(
            access(&mut s, &mut vm, &mut frames, a, Kind::Read).unwrap(),
            expect[p as usize],
            "page {p}"
        );
    }

    // Out of swap: more memory than RAM and swap hold is a typed error, and
    // what was written stays.
    let big = 400u64;
    let b2 = s
        .map_anonymous(None, big * PAGE, Prot::RW | Prot::USER)
        .unwrap();
    let mut written = 0;
    let err = loop {
        match access(
            &mut s,
            &mut vm,
            &mut frames,
            b2 + written * PAGE,
            Kind::Write(stamp(written, 99)),
        ) {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < big, "RAM and swap never ran out");
    };
    assert_eq!(err.reason, FaultReason::OutOfSwap, "{err}");
    for p in (0..written).step_by(7) {
        let got = access(&mut s, &mut vm, &mut frames, b2 + p * PAGE, Kind::Read);
        // Reading may need a frame too: a typed error, or the right value.
        if let Ok(v) = got {
            assert_eq!(v, stamp(p, 99), "page {p} after out of swap");
        }
    }
    s.destroy(&vm, &mut frames, &mut up()).unwrap();
    let st = vm.stats();
    assert_eq!((st.resident_frames, st.swap_slots_used), (0, 0), "{st:?}");
    assert_eq!(frames.in_use(), 2);
}

/// The kernel path (faults, Accessed bits harvested at reclaim, one page a
/// pass, no readahead) makes the same policy calls as the simulator's
/// `replay_harvested`: the fault counts are equal, for CLOCK and CLOCK-Pro,
/// on a loop, a skewed random pattern and a phase change.
#[test]
fn kernel_fault_counts_equal_the_simulator() {
    use kmem::vm::replace::{sim, Clock, ClockPro, ReplacementPolicy};
    let frames_n = 24u64;
    let mut rng = 0x5eed_1234_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut traces: Vec<(&str, Vec<u64>)> = Vec::new();
    traces.push(("loop", (0..1200).map(|i| i % 30).collect()));
    traces.push((
        "skewed",
        (0..1500)
            .map(|_| {
                let r = next() % 100;
                if r < 70 {
                    next() % 12
                } else {
                    12 + next() % 60
                }
            })
            .collect(),
    ));
    traces.push((
        "phase",
        (0..1500).map(|i| (i / 500) * 40 + next() % 28).collect(),
    ));
    type MakePolicy = fn(usize) -> Box<dyn ReplacementPolicy + Send>;
    let policies: [(&str, MakePolicy); 2] = [
        ("clock", |n| Box::new(Clock::new(n))),
        ("clock-pro", |n| Box::new(ClockPro::new(n))),
    ];
    for (tname, trace) in &traces {
        for (pname, make) in policies {
            let mem = EmulatedMemory::new(1024);
            let mut frames = mem.frame_allocator();
            let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
            vm.set_frame_limit(Some(frames_n));
            vm.set_reclaim(Some(1), 1);
            assert!(vm.attach_swap(Box::new(MemSwap::new(512))).is_ok());
            let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
            let mut s = VmSpace::new_user(&kernel, &mut frames).unwrap();
            s.set_policy(make(frames_n as usize));
            let base = s
                .map_anonymous(Some(0x100_0000), 128 * PAGE, Prot::RW | Prot::USER)
                .unwrap();
            let f0 = vm.stats();
            for &p in trace {
                // Writes: every page holds a frame of its own once touched.
                let v = stamp(p, 1);
                access(
                    &mut s,
                    &mut vm,
                    &mut frames,
                    base + p * PAGE,
                    Kind::Write(v),
                )
                .unwrap();
            }
            let st = vm.stats();
            let kernel_faults =
                (st.zero_fills - f0.zero_fills) + (st.major_faults - f0.major_faults);
            let ids: Vec<u64> = trace.iter().map(|&p| (base >> 12) + p).collect();
            let expected = sim::replay_harvested(&mut *make(frames_n as usize), &ids).faults;
            assert_eq!(kernel_faults, expected, "{pname} on {tname}");
            let distinct = trace
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len() as u64;
            assert!(
                expected > distinct + 50,
                "{pname} on {tname}: the trace must evict"
            );
            eprintln!("{pname} {tname}: {expected} faults in kernel and simulator");
            s.destroy(&vm, &mut frames, &mut up()).unwrap();
        }
    }
}
