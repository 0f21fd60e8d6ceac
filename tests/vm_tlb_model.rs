//! `kmem::vm` on several emulated CPUs against a model: random sequences of
//! map / unmap / protect / fork / exit / reclaim, CPU switches and reads
//! and writes, over several processes, under a frame limit with a small
//! swap device and injected frame and swap failures. Each CPU has its own
//! TLB (`testing::tlb`), which keeps what it cached until an invalidation
//! reaches it and walks the paging structures of its space speculatively
//! after every step; a process may run on several CPUs at once (threads).
//! Every access is made by a CPU through its TLB and faults into
//! `handle_fault` on that CPU; every other operation runs on a CPU too, and
//! its shootdowns flush the other CPUs' TLBs.
//!
//! Checked after every access: a read returns the last byte its process
//! wrote there; an access the model refuses ends in a refused fault; a
//! successful one went through the translation the tables hold now (same
//! frame, the rights, Dirty after a write) and through allocated frames
//! only. At every free: no CPU caches a translation or a table pointer
//! reaching the frame. After every step: invariants and share counts. At
//! the end: every byte still reads back, every frame and swap slot is back.
//!
//! Default: a fast run. Long run: `PROPTEST_CASES=5000 cargo test --release --test vm_tlb_model`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kmem::paging::{Flush, Mmu, PageTables};
use kmem::smp::{CpuSet, Tlb, TlbShootdown};
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use kmem::testing::tlb::{AccessKind, TlbCpu};
use kmem::vm::swap::PAGE_BYTES;
use kmem::vm::{
    AreaKind, FaultAccess, FaultError, FaultOutcome, FaultReason, MemSwap, Prot, SwapDevice,
    SwapIoError, Vm, VmError, VmSpace,
};
use proptest::collection::vec;
use proptest::prelude::*;
use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, PageTableFlags, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

const PAGE: u64 = kmem::PAGE_SIZE;
/// Processes touch pages in a small window (one page table) so ops collide.
const BASE: u64 = 0x40_0000;
const WINDOW: u64 = 32;
/// Pages of the heap a process starts with, at `BASE`.
const HEAP: u64 = 16;
/// A second heap a process starts with, in the next page table: only
/// aimed accesses reach it, so its pages are often all on swap.
const HEAP2: u64 = 0x60_0000;
const HEAP2_PAGES: u64 = 8;
/// The ranges of one page table each that processes map in: gaps at the
/// bottom, the window, the second heap.
const TABLES: [(u64, u64); 3] = [(PAGE, 0x20_0000), (BASE, HEAP2), (HEAP2, 0x80_0000)];
/// Offsets an access uses in a page: few, so reads meet earlier writes.
const OFFSETS: [u64; 4] = [0, 1361, 2722, 4095];
const CPUS: usize = 3;
const PROCS: usize = 4;
/// Frames anonymous memory may hold: reclaim runs on most faults.
const FRAME_LIMIT: u64 = 12;
const SWAP_SLOTS: u64 = 64;

type Space<'m> = VmSpace<EmulatedPhysMem<'m>>;
type Cpus = [RefCell<TlbCpu>];

/// CPU `c` of `cpus` as the running CPU's MMU in a [`Tlb`].
struct CpuMmu<'a> {
    cpus: &'a Cpus,
    c: usize,
}

// SAFETY: forwards to the emulated CPU's TLB, which keeps the promises.
unsafe impl Mmu for CpuMmu<'_> {
    fn cr3(&self) -> PhysFrame {
        self.cpus[self.c].borrow().cr3()
    }

    unsafe fn set_cr3(&mut self, pml4: PhysFrame) {
        // SAFETY: the caller's promise, forwarded to the emulated CPU.
        unsafe { self.cpus[self.c].borrow_mut().set_cr3(pml4) }
    }

    fn invlpg(&mut self, addr: VirtAddr) {
        self.cpus[self.c].borrow_mut().invlpg(addr);
    }

    fn flush_all(&mut self) {
        self.cpus[self.c].borrow_mut().flush_all();
    }
}

/// The IPIs of CPU `me`: each target performs the flush on its own TLB.
struct Ipis<'a> {
    cpus: &'a Cpus,
    me: usize,
    rounds: u64,
    wrong: &'a RefCell<Option<String>>,
}

// SAFETY: every target CPU's TLB performs the flush (its `invlpg`s or a
// full flush) before `shoot` returns, which is the acknowledgement.
unsafe impl TlbShootdown for Ipis<'_> {
    fn shoot(&mut self, targets: CpuSet, flush: &Flush) {
        if targets.is_empty() || targets.contains(self.me) {
            report(self.wrong, format!("CPU {} shot at {targets:?}", self.me));
        }
        for t in targets.iter() {
            flush.clone().flush(&mut *self.cpus[t].borrow_mut());
        }
        self.rounds += 1;
    }
}

/// The frame source kmem gets: a frame freed while a CPU still caches a
/// translation or a table pointer reaching it is a free before the flush.
struct Frames<'a> {
    inner: &'a mut EmulatedFrameAllocator,
    cpus: &'a Cpus,
    wrong: &'a RefCell<Option<String>>,
}

// SAFETY: forwards to the emulated allocator, which makes the promise.
unsafe impl FrameAllocator<Size4KiB> for Frames<'_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.inner.allocate_frame()
    }
}

impl FrameDeallocator<Size4KiB> for Frames<'_> {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        for (c, cpu) in self.cpus.iter().enumerate() {
            if cpu.borrow().holds_frame(frame) {
                report(
                    self.wrong,
                    format!("{frame:?} freed while CPU {c} still caches a way to it"),
                );
            }
        }
        // SAFETY: the caller's promise, forwarded.
        unsafe { self.inner.deallocate_frame(frame) }
    }
}

/// Records the first thing found wrong inside a kmem call; the harness
/// panics once the call has returned (never unwinding through kmem).
fn report(wrong: &RefCell<Option<String>>, what: String) {
    wrong.borrow_mut().get_or_insert(what);
}

/// The CPUs and the frames: what an operation on a CPU needs.
struct Machine {
    cpus: Vec<RefCell<TlbCpu>>,
    frames: EmulatedFrameAllocator,
    rounds: u64,
    wrong: RefCell<Option<String>>,
}

impl Machine {
    /// Runs `f` on CPU `c`: with its TLB context and the checking frame source.
    fn on<R>(&mut self, c: usize, f: impl FnOnce(&mut Frames<'_>, &mut Tlb<'_>) -> R) -> R {
        let cpus = &self.cpus[..];
        let mut mmu = CpuMmu { cpus, c };
        let mut ipis = Ipis {
            cpus,
            me: c,
            rounds: 0,
            wrong: &self.wrong,
        };
        let r = {
            let mut tlb = Tlb::new(&mut mmu, c, &mut ipis);
            let mut frames = Frames {
                inner: &mut self.frames,
                cpus,
                wrong: &self.wrong,
            };
            f(&mut frames, &mut tlb)
        };
        self.rounds += ipis.rounds;
        if let Some(wrong) = self.wrong.take() {
            panic!("on CPU {c}: {wrong}");
        }
        r
    }

    /// Every frame CPU `c`'s last walk went through is allocated.
    fn check_walk(&self, c: usize, va: VirtAddr) {
        for &f in self.cpus[c].borrow().last_walk() {
            assert!(
                self.frames.is_allocated(f),
                "CPU {c} at {va:?} went through free {f:?}"
            );
        }
    }
}

/// A swap device the test reaches after handing it to the `Vm`.
struct SharedSwap(Arc<Mutex<MemSwap>>);

impl SwapDevice for SharedSwap {
    fn slots(&self) -> u64 {
        self.0.lock().unwrap().slots()
    }

    fn write(&self, first: u64, pages: &[&[u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        self.0.lock().unwrap().write(first, pages)
    }

    fn read(&self, first: u64, pages: &mut [&mut [u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        self.0.lock().unwrap().read(first, pages)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The frame allocator fails after this many more allocations.
    Frames(u64),
    SwapWrites,
    SwapReads,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Process(usize),
    /// What CPU `d` runs: one more thread of its process.
    ThreadOf(usize),
    Kernel,
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
        c: usize,
        p: usize,
        page: u64,
        pages: u64,
    },
    /// Unmaps all of `TABLES[t]`: its page table is freed.
    UnmapTable {
        c: usize,
        p: usize,
        t: usize,
    },
    /// `pages` from the page of `at` on.
    Protect {
        c: usize,
        p: usize,
        at: At,
        pages: u64,
        prot: u8,
    },
    /// Process `p` forks on CPU `c`; the child starts on CPU `d`.
    Fork {
        c: usize,
        p: usize,
        d: usize,
    },
    Exit {
        c: usize,
        p: usize,
    },
    /// CPU `c` runs another process, or the kernel's tables.
    Switch {
        c: usize,
        to: Target,
    },
    /// CPU `c` reads (or writes `v` to) the first byte of `pages` mapped
    /// (writable) pages in a row, from the `page`-th on: sequential
    /// refaults read ahead.
    Sweep {
        c: usize,
        p: usize,
        page: u64,
        pages: u64,
        v: Option<u8>,
    },
    /// By CPU `c`, in the process it runs (first switched to `p` if idle).
    Read {
        c: usize,
        p: usize,
        at: At,
        off: usize,
    },
    Write {
        c: usize,
        p: usize,
        at: At,
        off: usize,
        v: u8,
    },
    Reclaim {
        c: usize,
        p: usize,
        want: usize,
    },
    /// Injects `what` for the next `steps` steps.
    Fail {
        what: Failure,
        steps: u8,
    },
}

/// Mostly read-write: most writes should land.
fn prot_of(code: u8) -> Prot {
    Prot::USER
        | match code % 8 {
            0 => Prot::READ,
            1 => Prot::RX,
            2 => Prot::empty(),
            _ => Prot::RW,
        }
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CPUS;
    let p = 0..PROCS;
    let page = 0..WINDOW;
    let off = 0..OFFSETS.len();
    let k = 0u64..64;
    let read_at = prop_oneof![
        2 => page.clone().prop_map(At::Window),
        5 => k.clone().prop_map(At::Written),
        3 => k.clone().prop_map(At::Recent),
    ];
    let protect_at = prop_oneof![
        2 => page.clone().prop_map(At::Window),
        1 => k.clone().prop_map(At::Written),
        1 => k.clone().prop_map(At::Recent),
    ];
    let write_at = prop_oneof![
        2 => page.clone().prop_map(At::Window),
        5 => k.clone().prop_map(At::Writable),
        3 => k.prop_map(At::Recent),
    ];
    let target = prop_oneof![
        3 => p.clone().prop_map(Target::Process),
        3 => c.clone().prop_map(Target::ThreadOf),
        1 => Just(Target::Kernel),
    ];
    let failure = prop_oneof![
        (0u64..4).prop_map(Failure::Frames),
        Just(Failure::SwapWrites),
        Just(Failure::SwapReads),
    ];
    prop_oneof![
        3 => (p.clone(), page.clone(), 1u64..8, 0u8..8)
            .prop_map(|(p, hint, pages, prot)| Op::Map { p, hint, pages, prot }),
        1 => (c.clone(), p.clone(), page.clone(), 1u64..8)
            .prop_map(|(c, p, page, pages)| Op::Unmap { c, p, page, pages }),
        // All of one page table's range: the table is freed.
        2 => (c.clone(), p.clone(), 0..TABLES.len())
            .prop_map(|(c, p, t)| Op::UnmapTable { c, p, t }),
        2 => (c.clone(), p.clone(), protect_at, 1u64..16, 0u8..8)
            .prop_map(|(c, p, at, pages, prot)| Op::Protect { c, p, at, pages, prot }),
        1 => (c.clone(), p.clone(), c.clone()).prop_map(|(c, p, d)| Op::Fork { c, p, d }),
        1 => (c.clone(), p.clone()).prop_map(|(c, p)| Op::Exit { c, p }),
        3 => (c.clone(), target).prop_map(|(c, to)| Op::Switch { c, to }),
        1 => (c.clone(), p.clone(), page.clone(), 2u64..12, any::<Option<u8>>())
            .prop_map(|(c, p, page, pages, v)| Op::Sweep { c, p, page, pages, v }),
        6 => (c.clone(), p.clone(), read_at, off.clone())
            .prop_map(|(c, p, at, off)| Op::Read { c, p, at, off }),
        6 => (c.clone(), p.clone(), write_at, off, any::<u8>())
            .prop_map(|(c, p, at, off, v)| Op::Write { c, p, at, off, v }),
        3 => (c, p, prop_oneof![1usize..4, Just(32)])
            .prop_map(|(c, p, want)| Op::Reclaim { c, p, want }),
        1 => (failure, 1u8..6).prop_map(|(what, steps)| Op::Fail { what, steps }),
    ]
}

/// What a process should see: the protection of each mapped page and
/// every byte written (unwritten bytes of a mapped page read 0).
#[derive(Debug, Clone, Default)]
struct Model {
    pages: BTreeMap<u64, Prot>,
    bytes: BTreeMap<u64, u8>,
    /// The last addresses accessed, by any CPU: threads share pages.
    recent: Vec<u64>,
}

/// Where an access goes: the `k`-th page of the window, of the mapped
/// pages or of the writable ones, the `k`-th byte written or one of the
/// last addresses accessed (cyclically; each falls back to the one before
/// it when there is none).
#[derive(Debug, Clone, Copy)]
enum At {
    Window(u64),
    Mapped(u64),
    Writable(u64),
    Written(u64),
    Recent(u64),
}

impl Model {
    /// The address an access at `at` makes, at `OFFSETS[off]` in its page.
    fn pick(&self, at: At, off: usize) -> u64 {
        fn nth(all: Vec<u64>, k: u64) -> Option<u64> {
            (!all.is_empty()).then(|| all[(k % all.len() as u64) as usize])
        }
        let in_page = |page: u64| page + OFFSETS[off];
        match at {
            At::Window(k) => in_page(BASE + k % WINDOW * PAGE),
            At::Mapped(k) => nth(self.pages.keys().copied().collect(), k)
                .map_or_else(|| self.pick(At::Window(k), off), in_page),
            At::Writable(k) => {
                let writable = self.pages.iter().filter(|(_, p)| p.contains(Prot::WRITE));
                nth(writable.map(|(&pg, _)| pg).collect(), k)
                    .map_or_else(|| self.pick(At::Mapped(k), off), in_page)
            }
            At::Written(k) => nth(self.bytes.keys().copied().collect(), k)
                .unwrap_or_else(|| self.pick(At::Writable(k), off)),
            At::Recent(k) => {
                nth(self.recent.clone(), k).unwrap_or_else(|| self.pick(At::Written(k), off))
            }
        }
    }

    /// Remembers an access at `a` among the last few.
    fn touched(&mut self, a: u64) {
        if self.recent.len() == 4 {
            self.recent.remove(0);
        }
        self.recent.push(a);
    }

    fn unmap(&mut self, a: u64, b: u64) {
        let gone: Vec<u64> = self.pages.range(a..b).map(|(&k, _)| k).collect();
        for k in gone {
            self.pages.remove(&k);
        }
        self.bytes.retain(|&addr, _| addr < a || addr >= b);
    }
}

/// Kernel failures a fault may end in; the access is then not done.
fn is_resource(reason: FaultReason) -> bool {
    matches!(
        reason,
        FaultReason::OutOfMemory | FaultReason::OutOfSwap | FaultReason::SwapIo(_)
    )
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

/// How the steps went, to see that the op mix reaches every path.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    done: u64,
    refused: u64,
    failed: u64,
    op_failed: u64,
}

struct World<'m> {
    mem: &'m EmulatedMemory,
    vm: Vm,
    kernel: PageTables<EmulatedPhysMem<'m>>,
    machine: Machine,
    /// The process each CPU runs.
    running: [Option<usize>; CPUS],
    procs: Vec<Option<(Space<'m>, Model)>>,
    swap: Arc<Mutex<MemSwap>>,
    /// Steps left until injected failures stop.
    heal_in: u8,
    /// Whether the frame source fails now.
    frames_fail: bool,
    counts: Counts,
}

impl<'m> World<'m> {
    fn new(mem: &'m EmulatedMemory) -> Self {
        let mut frames = mem.frame_allocator();
        let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
        vm.set_frame_limit(Some(FRAME_LIMIT));
        let swap = Arc::new(Mutex::new(MemSwap::new(SWAP_SLOTS)));
        assert!(vm.attach_swap(Box::new(SharedSwap(swap.clone()))).is_ok());
        let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
        let cpus = (0..CPUS)
            .map(|_| RefCell::new(TlbCpu::new(kernel.pml4())))
            .collect();
        let mut w = Self {
            mem,
            vm,
            kernel,
            machine: Machine {
                cpus,
                frames,
                rounds: 0,
                wrong: RefCell::new(None),
            },
            running: [None; CPUS],
            procs: (0..PROCS).map(|_| None).collect(),
            swap,
            heal_in: 0,
            frames_fail: false,
            counts: Counts::default(),
        };
        for p in 0..2 {
            w.spawn(p);
        }
        w
    }

    fn spawn(&mut self, p: usize) {
        // Fails only while frame failures are injected.
        let Ok(mut space) = VmSpace::new_user(&self.kernel, &mut self.machine.frames) else {
            return;
        };
        // Even processes reclaim by CLOCK-Pro, odd ones by the CLOCK scan.
        if p.is_multiple_of(2) {
            space.set_policy(Box::new(kmem::vm::replace::ClockPro::new(
                FRAME_LIMIT as usize,
            )));
        }
        // A process starts with a heap in the window, so accesses meet,
        // and one in the next page table.
        let rw = Prot::RW | Prot::USER;
        let mut model = Model::default();
        for (at, pages) in [(BASE, HEAP), (HEAP2, HEAP2_PAGES)] {
            let heap = space.map_anonymous(Some(at), pages * PAGE, rw).unwrap();
            for pg in 0..pages {
                model.pages.insert(heap + pg * PAGE, rw);
            }
        }
        self.procs[p] = Some((space, model));
    }

    fn heal(&mut self) {
        self.machine.frames.clear_failure();
        self.frames_fail = false;
        self.swap.lock().unwrap().fail(false, false);
    }

    /// Makes CPU `c` run process `to`: it enters the new space before its
    /// CR3 load and leaves the old one after.
    fn switch(&mut self, c: usize, to: Option<usize>) {
        let from = self.running[c];
        if from == to {
            return;
        }
        let pml4 = match to {
            Some(p) => {
                let (space, _) = self.procs[p].as_ref().expect("a live process");
                space.cpus().enter(c);
                space.pml4()
            }
            None => self.kernel.pml4(),
        };
        // SAFETY: an emulated CPU runs no code; the load drops its TLB.
        unsafe { self.machine.cpus[c].borrow_mut().set_cr3(pml4) };
        if let Some(q) = from {
            let (space, _) = self.procs[q].as_ref().expect("a live process");
            space.cpus().leave(c);
        }
        self.running[c] = to;
    }

    /// One ring-3 access by CPU `c` through its TLB to the process it
    /// runs, faulting into the space on that CPU until it goes through.
    /// Returns the byte read or written.
    fn access(&mut self, c: usize, addr: u64, write: Option<u8>) -> Result<u8, FaultError> {
        let p = self.running[c].expect("CPU runs a process");
        let frames_fail = self.frames_fail;
        let Self {
            mem,
            vm,
            machine,
            procs,
            ..
        } = self;
        let (space, _) = procs[p].as_mut().expect("a live process");
        let phys = mem.phys_mem();
        let va = VirtAddr::new(addr);
        let kind = if write.is_some() {
            AccessKind::Write
        } else {
            AccessKind::Read
        };
        // Faults that resolve (zero page, copy, swap-in, spurious) and
        // retries (`InTransit`: each reclaimed a batch first).
        let (mut faults, mut retries) = (0, 0);
        while faults < 4 && retries < 64 {
            let r = machine.cpus[c].borrow_mut().access(&phys, va, kind, true);
            machine.check_walk(c, va);
            match r {
                Ok(pa) => {
                    // What the CPU used is what the tables say now.
                    let t = space.mapper().translate(va).unwrap_or_else(|e| {
                        panic!("CPU {c} reached {pa:?} through {va:?}, unmapped: {e:?}")
                    });
                    assert_eq!(t.phys, pa, "CPU {c} at {va:?}: a stale translation");
                    assert!(t.access.user, "CPU {c} at {va:?}: not a user page");
                    if let Some(v) = write {
                        assert!(t.access.writable, "CPU {c} wrote read-only {va:?}");
                        assert!(
                            t.flags.contains(PageTableFlags::DIRTY),
                            "CPU {c} wrote {va:?} through an entry the tables hold clean"
                        );
                        write_byte(mem, pa, v);
                        return Ok(v);
                    }
                    return Ok(read_byte(mem, pa));
                }
                Err(fault) => {
                    let access = FaultAccess::from_error_code(fault.error_code().bits());
                    let outcome = machine.on(c, |frames, tlb| {
                        space.handle_fault(vm, va, access, frames, tlb)
                    })?;
                    if outcome != FaultOutcome::InTransit {
                        faults += 1;
                        continue;
                    }
                    // No other CPU moves a page here: only a frame source
                    // that refuses frames reclaim freed makes a retry.
                    assert!(frames_fail, "CPU {c} at {va:?}: in transit, sequentially");
                    retries += 1;
                }
            }
        }
        panic!("CPU {c}: the access at {addr:#x} still faults after resolution");
    }

    /// Applies `op`; injected failures end after their steps.
    fn step(&mut self, op: &Op) {
        self.apply(op);
        // CPUs fill their paging-structure caches at will: every table
        // must be invalidated before it is freed, leaves or not.
        let phys = self.mem.phys_mem();
        for (c, running) in self.running.iter().enumerate() {
            if running.is_some() {
                let mut cpu = self.machine.cpus[c].borrow_mut();
                TABLES
                    .iter()
                    .for_each(|&(lo, _)| cpu.speculate(&phys, VirtAddr::new(lo)));
            }
        }
        if self.heal_in > 0 {
            self.heal_in -= 1;
            if self.heal_in == 0 {
                self.heal();
            }
        }
    }

    fn apply(&mut self, op: &Op) {
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
                for pg in (at..end).step_by(PAGE as usize) {
                    model.pages.insert(pg, prot);
                }
            }
            Op::Unmap { c, p, page, pages } => self.unmap(c, p, addr(page), addr(page + pages)),
            Op::UnmapTable { c, p, t } => self.unmap(c, p, TABLES[t].0, TABLES[t].1),
            Op::Protect {
                c,
                p,
                at,
                pages,
                prot,
            } => {
                let p = self.live(p);
                let Self {
                    vm, machine, procs, ..
                } = self;
                let Some((space, model)) = procs[p].as_mut() else {
                    return;
                };
                // Up to `pages` mapped pages in a row (one, unmapped, if none).
                let a = model.pick(at, 0) & !(PAGE - 1);
                let mapped = (0..pages).take_while(|i| model.pages.contains_key(&(a + i * PAGE)));
                let b = a + (mapped.count() as u64).max(1) * PAGE;
                let prot = prot_of(prot);
                let covered = (a..b)
                    .step_by(PAGE as usize)
                    .all(|pg| model.pages.contains_key(&pg));
                let before = snapshot(space, vm, &machine.frames);
                match machine.on(c, |frames, tlb| {
                    space.protect(a, b - a, prot, vm, frames, tlb)
                }) {
                    Ok(()) => {
                        assert!(covered);
                        for pg in (a..b).step_by(PAGE as usize) {
                            model.pages.insert(pg, prot);
                        }
                    }
                    Err(VmError::OutOfMemory) => {
                        assert_eq!(snapshot(space, vm, &machine.frames), before);
                        self.counts.op_failed += 1;
                    }
                    Err(e) => {
                        assert_eq!(e, VmError::Unmapped { addr: a });
                        assert!(!covered);
                    }
                }
            }
            Op::Fork { c, p, d } => {
                let p = self.live(p);
                let Some(slot) = self.procs.iter().position(Option::is_none) else {
                    return;
                };
                let Self {
                    vm, machine, procs, ..
                } = self;
                let Some((space, model)) = procs[p].as_mut() else {
                    return;
                };
                let before = snapshot(space, vm, &machine.frames);
                match machine.on(c, |frames, tlb| space.fork(vm, frames, tlb)) {
                    Ok(child) => {
                        let model = model.clone();
                        procs[slot] = Some((child, model));
                        self.switch(d, Some(slot));
                    }
                    Err(VmError::OutOfMemory) => {
                        assert_eq!(snapshot(space, vm, &machine.frames), before);
                        self.counts.op_failed += 1;
                    }
                    Err(e) => panic!("fork: {e}"),
                }
            }
            Op::Exit { c, p } => self.exit(c, p),
            Op::Switch { c, to } => {
                let to = match to {
                    Target::Process(p) if self.procs[self.live(p)].is_none() => return,
                    Target::Process(p) => Some(self.live(p)),
                    Target::ThreadOf(d) => self.running[d],
                    Target::Kernel => None,
                };
                self.switch(c, to);
            }
            Op::Sweep {
                c,
                p,
                page,
                pages,
                v,
            } => {
                for k in page..page + pages {
                    let at = if v.is_some() {
                        At::Writable(k)
                    } else {
                        At::Mapped(k)
                    };
                    self.read_write(c, p, at, 0, v);
                }
            }
            Op::Read { c, p, at, off } => self.read_write(c, p, at, off, None),
            Op::Write { c, p, at, off, v } => self.read_write(c, p, at, off, Some(v)),
            Op::Reclaim { c, p, want } => {
                let p = self.live(p);
                let Self {
                    vm, machine, procs, ..
                } = self;
                let Some((space, _)) = procs[p].as_mut() else {
                    return;
                };
                match machine.on(c, |frames, tlb| space.reclaim(vm, frames, want, tlb)) {
                    Ok(_) => {}
                    Err(e) if is_resource(e) => self.counts.op_failed += 1,
                    Err(e) => panic!("reclaim: {e:?}"),
                }
            }
            Op::Fail { what, steps } => {
                match what {
                    Failure::Frames(k) => {
                        self.machine.frames.fail_after(k);
                        self.frames_fail = true;
                    }
                    Failure::SwapWrites => self.swap.lock().unwrap().fail(true, false),
                    Failure::SwapReads => self.swap.lock().unwrap().fail(false, true),
                }
                self.heal_in = steps + 1;
            }
        }
    }

    /// Process `p` if it lives, else the next one that does: ops on
    /// processes that exited would be lost.
    fn live(&self, p: usize) -> usize {
        (p..p + PROCS)
            .map(|q| q % PROCS)
            .find(|&q| self.procs[q].is_some())
            .unwrap_or(p)
    }

    /// Unmaps `[a, b)` of process `p` on CPU `c`.
    fn unmap(&mut self, c: usize, p: usize, a: u64, b: u64) {
        let p = self.live(p);
        let Self {
            vm, machine, procs, ..
        } = self;
        let Some((space, model)) = procs[p].as_mut() else {
            return;
        };
        let before = snapshot(space, vm, &machine.frames);
        match machine.on(c, |frames, tlb| space.unmap(a, b - a, vm, frames, tlb)) {
            Ok(()) => model.unmap(a, b),
            Err(VmError::OutOfMemory) => {
                assert_eq!(snapshot(space, vm, &machine.frames), before);
                self.counts.op_failed += 1;
            }
            Err(e) => panic!("unmap: {e}"),
        }
    }

    /// Switches every CPU away from process `p`, then destroys it on CPU `c`.
    fn exit(&mut self, c: usize, p: usize) {
        if self.procs[p].is_none() {
            return;
        }
        for cpu in 0..CPUS {
            if self.running[cpu] == Some(p) {
                self.switch(cpu, None);
            }
        }
        let (space, _) = self.procs[p].take().expect("checked above");
        let Self { vm, machine, .. } = self;
        let destroyed = machine.on(c, |frames, tlb| {
            space.destroy(vm, frames, tlb).map_err(|(_, e)| e)
        });
        if let Err(e) = destroyed {
            panic!("exit: {e}");
        }
    }

    /// A read or write by CPU `c`, checked against the model.
    fn read_write(&mut self, c: usize, p: usize, at: At, off: usize, write: Option<u8>) {
        let p = self.live(p);
        if self.running[c].is_none() {
            if self.procs[p].is_none() {
                return;
            }
            self.switch(c, Some(p));
        }
        let p = self.running[c].expect("switched above");
        let (_, model) = self.procs[p].as_ref().expect("running");
        let a = model.pick(at, off);
        let page = a & !(PAGE - 1);
        let r = self.access(c, a, write);
        let (_, model) = self.procs[p].as_mut().expect("running");
        let want = match model.pages.get(&page) {
            None => Err(FaultReason::NoArea),
            Some(pr) if !pr.accessible() => Err(FaultReason::NoAccess),
            Some(pr) if write.is_some() && !pr.contains(Prot::WRITE) => {
                Err(FaultReason::WriteToReadOnly)
            }
            Some(_) => Ok(write.unwrap_or_else(|| model.bytes.get(&a).copied().unwrap_or(0))),
        };
        match (r, want) {
            (Err(e), Ok(_)) if is_resource(e.reason) => self.counts.failed += 1,
            (Ok(got), Ok(v)) => {
                assert_eq!(got, v, "CPU {c} process {p} byte at {a:#x}");
                if let Some(v) = write {
                    model.bytes.insert(a, v);
                }
                model.touched(a);
                self.counts.done += 1;
            }
            (Err(e), Err(reason)) => {
                assert_eq!(e.reason, reason, "CPU {c} process {p} at {a:#x}");
                self.counts.refused += 1;
            }
            (r, want) => panic!("CPU {c} process {p} at {a:#x}: {r:?}, the model says {want:?}"),
        }
    }

    /// Every space's invariants, share counts against the real sharing
    /// (as in `vm_model`), and each CPU loaded with what it runs.
    fn check(&self) {
        let mut mapped: HashMap<PhysFrame, u32> = HashMap::new();
        for (space, _) in self.procs.iter().flatten() {
            space.check_invariants(&self.vm).unwrap();
            for area in space.areas().filter(|a| a.kind == AreaKind::Anonymous) {
                space
                    .mapper()
                    .for_each_leaf_in(VirtAddr::new(area.start), area.len(), |l| {
                        *mapped
                            .entry(PhysFrame::containing_address(l.frame))
                            .or_default() += 1;
                    });
            }
        }
        mapped.remove(&self.vm.zero_frame());
        for (&frame, &n) in &mapped {
            assert_eq!(self.vm.share_count(frame), n, "share count of {frame:?}");
        }
        for (c, running) in self.running.iter().enumerate() {
            let cr3 = self.machine.cpus[c].borrow().cr3();
            match running {
                Some(p) => {
                    let (space, _) = self.procs[*p].as_ref().expect("a live process");
                    assert!(space.cpus().snapshot().contains(c));
                    assert_eq!(cr3, space.pml4());
                }
                None => assert_eq!(cr3, self.kernel.pml4()),
            }
        }
    }

    /// Reads back every byte still readable, exits everything; the frames
    /// in use must be the zero frame and the kernel's PML4.
    fn finish(mut self) {
        self.heal();
        self.heal_in = 0;
        for p in 0..PROCS {
            let Some((_, model)) = self.procs[p].as_ref() else {
                continue;
            };
            let bytes: Vec<(u64, u8)> = model
                .bytes
                .iter()
                .filter(|(a, _)| model.pages[&(*a & !(PAGE - 1))].accessible())
                .map(|(&a, &v)| (a, v))
                .collect();
            let c = p % CPUS;
            self.switch(c, Some(p));
            for (a, v) in bytes {
                match self.access(c, a, None) {
                    Ok(got) => assert_eq!(got, v, "process {p} byte at {a:#x} at the end"),
                    Err(e) if is_resource(e.reason) => {}
                    Err(e) => panic!("process {p} at {a:#x} at the end: {e}"),
                }
            }
        }
        for c in 0..CPUS {
            self.switch(c, None);
        }
        for p in 0..PROCS {
            self.exit(p % CPUS, p);
        }
        let st = self.vm.stats();
        assert_eq!(
            (
                st.shared_frames,
                st.resident_frames,
                st.swap_slots_used,
                st.swap_cached,
                st.leaked_frames
            ),
            (0, 0, 0, 0, 0),
            "{st:?}"
        );
        assert_eq!(
            st.shootdowns, self.machine.rounds,
            "shootdown rounds counted"
        );
        assert_eq!(self.machine.frames.in_use(), 2, "frames leaked");
    }
}

fn read_byte(mem: &EmulatedMemory, pa: PhysAddr) -> u8 {
    let word = mem.read_u64(pa.align_down(8u64));
    (word >> ((pa.as_u64() % 8) * 8)) as u8
}

fn write_byte(mem: &EmulatedMemory, pa: PhysAddr, v: u8) {
    let at = pa.align_down(8u64);
    let shift = (pa.as_u64() % 8) * 8;
    let word = mem.read_u64(at) & !(0xff << shift);
    mem.write_u64(at, word | (u64::from(v) << shift));
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(miri) { 2 } else { 128 })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn vm_on_three_cpus_matches_the_model(ops in vec(op(), 1..200)) {
        let mem = EmulatedMemory::new(512);
        let mut w = World::new(&mem);
        for op in &ops {
            w.step(op);
            w.check();
        }
        w.finish();
    }
}

/// The op mix reaches the paths the properties are about: shootdowns,
/// copy-on-write, reuse after a fork, reclaim to swap and back, refused
/// and failed accesses and operations. (Spurious faults on a stale
/// read-only entry and readahead are rarer: counted, not required.)
#[test]
fn the_op_mix_reaches_every_path() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeMap::new();
    for _ in 0..32 {
        let ops = vec(op(), 150).new_tree(&mut runner).unwrap().current();
        let mem = EmulatedMemory::new(512);
        let mut w = World::new(&mem);
        for op in &ops {
            w.step(op);
            w.check();
        }
        let (st, n) = (w.vm.stats(), w.counts);
        for (name, v) in [
            ("shootdown rounds", w.machine.rounds),
            ("copies on write", st.cow_copies),
            ("reuses on write", st.cow_reuses),
            ("swap-outs", st.swap_outs),
            ("swap-ins", st.swap_ins),
            ("swap cache hits", st.swap_cache_hits),
            ("accesses done", n.done),
            ("accesses refused", n.refused),
            ("accesses failed", n.failed),
            ("operations failed", n.op_failed),
            ("(spurious faults)", st.spurious),
            ("(pages read ahead)", st.readahead),
        ] {
            *seen.entry(name).or_insert(0) += v;
        }
        w.finish();
    }
    eprintln!("in 32 sequences: {seen:?}");
    for (name, sum) in seen {
        assert!(
            sum > 0 || name.starts_with('('),
            "no {name} in 32 sequences"
        );
    }
}
