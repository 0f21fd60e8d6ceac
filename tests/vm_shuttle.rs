//! Model checking (shuttle) of the fault path on several CPUs: two CPUs
//! write and read the same pages while a third reclaims them, over a frame
//! limit below the pages in use and a swap device, with the real
//! `kmem::vm` code. Each CPU has an emulated TLB (`testing::tlb::TlbCpu`)
//! that caches translations until kmem invalidates them; an access holds
//! its CPU's TLB, so a shootdown (which takes the target's TLB) lands
//! between accesses, as an IPI does. Schedules switch CPUs wherever kmem
//! waits for other CPUs (each shootdown) and between accesses and faults.
//!
//! Checked in every schedule: a CPU reads back the last value it wrote and
//! never an older value of another CPU's; no frame is freed while any TLB
//! still caches it; every frame and swap slot is back at the end. A second
//! scenario forks a space whose pages are on swap: parent and child fault
//! the shared slots in on their CPUs (the second one copying the frame the
//! first read) while a third CPU reclaims both; the child never sees the
//! parent's writes nor the parent the child's.
//!
//! Run: `cargo test --test vm_shuttle` (seconds); `KMEM_MODEL_ITERATIONS=<n>`
//! for more schedules (default 200 random and 200 PCT).

use std::sync::atomic::{AtomicU64, Ordering};

use kmem::paging::{Flush, Mmu, PageTables, PhysMem};
use kmem::smp::{CpuSet, Tlb, TlbShootdown};
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use kmem::testing::tlb::{AccessKind, TlbCpu};
use kmem::vm::global::Watermarks;
use kmem::vm::replace::ClockPro;
use kmem::vm::swap::PAGE_BYTES;
use kmem::vm::{FaultAccess, MemSwap, Prot, SwapDevice, SwapIoError, Vm, VmSpace, Zswap};
use shuttle::scheduler::{PctScheduler, RandomScheduler};
use shuttle::sync::{Arc, Mutex};
use shuttle::thread;
use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size4KiB};
use x86_64::VirtAddr;

const CPUS: usize = 3;
const BASE: u64 = 0x4000_0000;
/// Pages in use, over a limit of two frames: reclaim runs all the time.
const PAGES: u64 = 3;
const LIMIT: u64 = 2;
/// Values each writer writes.
const ROUNDS: u64 = 3;
/// What page `p` holds before the fork scenario's fork: `ORIGINAL + p`.
const ORIGINAL: u64 = 1000;

fn iterations() -> usize {
    std::env::var("KMEM_MODEL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Memory, frames, the vm, one space loaded on every CPU, and the CPUs' TLBs.
struct Machine {
    /// Leaked in `new`, freed in `end`.
    mem: Leaked,
    phys: EmulatedPhysMem<'static>,
    frames: std::sync::Mutex<EmulatedFrameAllocator>,
    vm: Vm,
    kernel: PageTables<EmulatedPhysMem<'static>>,
    /// The spaces; CPU `c` runs `spaces[on[c]]`.
    spaces: Vec<VmSpace<EmulatedPhysMem<'static>>>,
    on: [usize; CPUS],
    tlbs: Vec<Mutex<TlbCpu>>,
    /// Per writer, the last value it wrote.
    last: [AtomicU64; CPUS],
    /// The file both spaces map (`Kind::Objects`).
    file: Option<(kmem::vm::ObjectId, std::sync::Arc<File>)>,
    /// The shared anonymous object both spaces map (`Kind::SharedAnon`).
    anon: Option<kmem::vm::ObjectId>,
}

/// The swap device of a machine.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Disk {
    /// Requests complete at once.
    Fast,
    /// Other CPUs run while a request is in flight (random scheduler only).
    Slow,
    /// A compressed cache (`Zswap`) of a few entries in front of a fast
    /// device: stores, write-backs, exclusive loads and discards race with
    /// faults and reclaim. Not with `Slow`: the cache holds a spin lock
    /// across its device writes, and a CPU spinning on it would never let
    /// shuttle run the holder.
    Compressed,
}

impl Disk {
    fn device(self) -> Box<dyn SwapDevice + Send> {
        match self {
            Self::Fast => Box::new(Device(MemSwap::new(16), false)),
            Self::Slow => Box::new(Device(MemSwap::new(16), true)),
            // The test's pages compress to 29-38 bytes: one entry fits.
            Self::Compressed => Box::new(Zswap::new(Device(MemSwap::new(16), false), 40).unwrap()),
        }
    }
}

/// What runs on the CPUs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One space on every CPU.
    One,
    /// A forked parent (CPUs 0 and 2) and child (CPU 1).
    Forked,
    /// Two spaces under one global policy (CPU 1 on the second).
    Global,
    /// A forked parent and child under one global policy, their pages
    /// shared frames at the start.
    GlobalForked,
    /// Two spaces mapping one file shared (CPU 1 on the second), with the
    /// file's reads and writes yielding; (`true`) under the global policy,
    /// which evicts its pages from both spaces.
    Objects(bool),
    /// The same over shared anonymous memory under the global policy: its
    /// pages go to swap and come back.
    SharedAnon,
    /// A file mapped shared by the first space, private by the second,
    /// under the global policy: the second's pages map the cache until its
    /// writes copy them, while the worker evicts.
    PrivateFile,
}

/// A file in memory whose requests let other CPUs run (the page being
/// read or written stays marked meanwhile).
struct File(std::sync::Mutex<Vec<[u64; 4]>>);

impl kmem::vm::Pager for File {
    fn pages(&self) -> u64 {
        PAGES
    }
    fn read(&self, index: u64, page: &mut [u8; PAGE_BYTES]) -> Result<(), kmem::vm::PagerError> {
        thread::yield_now();
        let words = self.0.lock().unwrap()[index as usize];
        for (w, v) in words.iter().enumerate() {
            page[w * 8..w * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }
    fn write(&self, index: u64, page: &[u8; PAGE_BYTES]) -> Result<(), kmem::vm::PagerError> {
        thread::yield_now();
        let mut words = [0; 4];
        for (w, v) in words.iter_mut().enumerate() {
            *v = u64::from_le_bytes(page[w * 8..w * 8 + 8].try_into().unwrap());
        }
        self.0.lock().unwrap()[index as usize] = words;
        Ok(())
    }
}

/// The emulated memory, owned by the machine (shared, it is touched only
/// through `EmulatedPhysMem` pointers).
struct Leaked(*mut EmulatedMemory);

// SAFETY: only `end` uses the pointer, to free the memory once every CPU is done.
unsafe impl Send for Leaked {}
// SAFETY: as above: `&Leaked` gives nothing.
unsafe impl Sync for Leaked {}

/// The machine's frame source: every free checks that no TLB still caches the frame.
struct Frames<'a>(&'a Machine);

// SAFETY: forwards to the emulated allocator, which makes the promise.
unsafe impl FrameAllocator<Size4KiB> for Frames<'_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.0.frames.lock().unwrap().allocate_frame()
    }
}

impl FrameDeallocator<Size4KiB> for Frames<'_> {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        for (c, tlb) in self.0.tlbs.iter().enumerate() {
            assert!(
                !tlb.lock().unwrap().holds_frame(frame),
                "{frame:?} freed while CPU {c}'s TLB still caches it"
            );
        }
        // SAFETY: the caller's promise, forwarded.
        unsafe { self.0.frames.lock().unwrap().deallocate_frame(frame) };
    }
}

/// The swap device: with `.1`, other CPUs may run while a request is in
/// flight (only under the random scheduler: PCT would run a CPU that waits
/// for the page in flight, retrying, ahead of the CPU moving it, forever).
struct Device(MemSwap, bool);

impl SwapDevice for Device {
    fn slots(&self) -> u64 {
        self.0.slots()
    }
    fn write(&self, first: u64, pages: &[&[u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        if self.1 {
            thread::yield_now();
        }
        self.0.write(first, pages)
    }
    fn read(&self, first: u64, pages: &mut [&mut [u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        if self.1 {
            thread::yield_now();
        }
        self.0.read(first, pages)
    }
}

/// CPU `cpu`'s MMU: its TLB.
struct CpuMmu<'a>(&'a Machine, usize);

// SAFETY: forwards to the emulated CPU's TLB, which keeps the promises.
unsafe impl Mmu for CpuMmu<'_> {
    fn cr3(&self) -> PhysFrame {
        self.0.tlbs[self.1].lock().unwrap().cr3()
    }
    unsafe fn set_cr3(&mut self, pml4: PhysFrame) {
        // SAFETY: an emulated CPU: loading a CR3 drops its TLB.
        unsafe { self.0.tlbs[self.1].lock().unwrap().set_cr3(pml4) };
    }
    fn invlpg(&mut self, addr: VirtAddr) {
        self.0.tlbs[self.1].lock().unwrap().invlpg(addr);
    }
    fn flush_all(&mut self) {
        self.0.tlbs[self.1].lock().unwrap().flush_all();
    }
}

/// IPIs: each target flushes its TLB, between two of its accesses.
struct Ipis<'a>(&'a Machine);

// SAFETY: `shoot` performs the flush on every target's TLB before it returns.
unsafe impl TlbShootdown for Ipis<'_> {
    fn shoot(&mut self, targets: CpuSet, flush: &Flush) {
        // The shooter waits for the others: they may run meanwhile.
        thread::yield_now();
        for t in targets.iter() {
            let mut tlb = self.0.tlbs[t].lock().unwrap();
            flush.clone().flush(&mut *tlb);
        }
    }
}

impl Machine {
    /// `Forked`: every page holds `ORIGINAL + page` in its first words and
    /// is on swap, then the space forks; CPU 1 runs the child. `Global`:
    /// two spaces under one global policy, CPU 1 on the second. With
    /// `disk` says what the swap device is.
    fn new(kind: Kind, disk: Disk) -> Self {
        let fork = matches!(kind, Kind::Forked | Kind::GlobalForked);
        let global = matches!(
            kind,
            Kind::Global
                | Kind::GlobalForked
                | Kind::Objects(true)
                | Kind::SharedAnon
                | Kind::PrivateFile
        );
        let mem: &'static EmulatedMemory = Box::leak(Box::new(EmulatedMemory::new(48)));
        let mut frames = mem.frame_allocator();
        let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
        // Each space reclaims only its own pages: after a fork, room for
        // one whole space and a page of the other.
        vm.set_frame_limit(Some(if kind == Kind::One { LIMIT } else { PAGES + 1 }));
        if global {
            vm.set_global_policy(Box::new(ClockPro::new(PAGES as usize + 1)));
            vm.set_watermarks(Some(Watermarks {
                min: 1,
                low: 2,
                high: 3,
            }));
        }
        vm.set_reclaim(Some(1), 1);
        assert!(vm.attach_swap(disk.device()).is_ok());
        let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
        let mut space = VmSpace::new_user(&kernel, &mut frames).unwrap();
        let mut file = None;
        let mut anon = None;
        if kind == Kind::SharedAnon {
            vm.set_frame_limit(Some(LIMIT));
            anon = Some(vm.create_shared_anonymous(PAGES * 4096).unwrap());
        } else if let Kind::Objects(_) | Kind::PrivateFile = kind {
            // A space reclaiming alone cannot free a page the other maps:
            // the global policy's reclaim (over both) runs under the limit,
            // the spaces' own at room for the whole file (syncs race with
            // writes there).
            vm.set_frame_limit(Some(if global { LIMIT } else { PAGES }));
            let words = (0..PAGES).map(|p| [ORIGINAL + p; 4]).collect();
            let f = std::sync::Arc::new(File(std::sync::Mutex::new(words)));
            file = Some((vm.create_object(Box::new(f.clone())).unwrap(), f));
        } else {
            space
                .map_anonymous(Some(BASE), PAGES * 4096, Prot::RW | Prot::USER)
                .unwrap();
        }
        let mut spaces = Vec::new();
        let mut on = [0; CPUS];
        if let Some(id) = file.as_ref().map(|f| f.0).or(anon) {
            let id = &id;
            let mut other = VmSpace::new_user(&kernel, &mut frames).unwrap();
            for (s, shared) in [(&mut space, true), (&mut other, kind != Kind::PrivateFile)] {
                let rw = Prot::RW | Prot::USER;
                s.map_object(&vm, Some(BASE), PAGES * 4096, rw, *id, 0, shared)
                    .unwrap();
            }
            if global {
                space.join_global(1).unwrap();
                other.join_global(2).unwrap();
            }
            spaces.push(space);
            spaces.push(other);
            on[1] = 1;
        } else if fork {
            let mut mmu = kmem::testing::mmu::RecordingMmu::new(kernel.pml4());
            let mut tlb = Tlb::uniprocessor(&mut mmu);
            for p in 0..PAGES {
                let va = VirtAddr::new(BASE + p * 4096);
                space
                    .handle_fault(&vm, va, FaultAccess::write(true), &mut frames, &mut tlb)
                    .unwrap();
                let pa = space.mapper().translate(va).unwrap().phys;
                for w in 0..4 {
                    mem.write_u64(pa + w * 8, ORIGINAL + p);
                }
            }
            if global {
                // Frames shared by the fork: the worker evicts them from
                // both sharers at once, while the sharers' writes copy them.
                space.join_global(1).unwrap();
            } else {
                space
                    .reclaim(&vm, &mut frames, PAGES as usize, &mut tlb)
                    .unwrap();
            }
            let mut child = space.fork(&vm, &mut frames, &mut tlb).unwrap();
            if global {
                child.join_global(2).unwrap();
                assert_eq!(vm.stats().shared_frames, PAGES, "every page shared");
            } else {
                assert_eq!(vm.stats().resident_frames, 0, "every page on swap");
            }
            spaces.push(space);
            spaces.push(child);
            on[1] = 1;
        } else if kind == Kind::Global {
            let mut other = VmSpace::new_user(&kernel, &mut frames).unwrap();
            other
                .map_anonymous(Some(BASE), PAGES * 4096, Prot::RW | Prot::USER)
                .unwrap();
            space.join_global(1).unwrap();
            other.join_global(2).unwrap();
            spaces.push(space);
            spaces.push(other);
            on[1] = 1;
        } else {
            spaces.push(space);
        }
        let tlbs = (0..CPUS)
            .map(|c| {
                let space = &spaces[on[c]];
                space.cpus().enter(c);
                Mutex::new(TlbCpu::new(space.pml4()))
            })
            .collect();
        Self {
            mem: Leaked(core::ptr::from_ref(mem).cast_mut()),
            phys: mem.phys_mem(),
            frames: std::sync::Mutex::new(frames),
            vm,
            kernel,
            spaces,
            on,
            tlbs,
            last: [const { AtomicU64::new(0) }; CPUS],
            file,
            anon,
        }
    }

    /// An access by CPU `cpu` to word `word` of page `page`: through its
    /// TLB, faulting into kmem (with no TLB held) until it goes through.
    fn access(&self, cpu: usize, page: u64, word: u64, write: Option<u64>) -> u64 {
        let va = VirtAddr::new(BASE + page * 4096 + word * 8);
        let kind = if write.is_some() {
            AccessKind::Write
        } else {
            AccessKind::Read
        };
        for _ in 0..1000 {
            let code = {
                let mut tlb = self.tlbs[cpu].lock().unwrap();
                match tlb.access(&self.phys, va, kind, true) {
                    Ok(pa) => {
                        let frame = PhysFrame::containing_address(pa);
                        assert!(
                            self.frames.lock().unwrap().is_allocated(frame),
                            "CPU {cpu} reached free {frame:?}"
                        );
                        let p = self.phys.table_ptr(frame).as_ptr().cast::<u64>();
                        let p = p.wrapping_add(word as usize);
                        // SAFETY: an emulated frame, 4096 bytes; accesses are serialized by shuttle.
                        return unsafe {
                            match write {
                                Some(v) => {
                                    p.write(v);
                                    v
                                }
                                None => p.read(),
                            }
                        };
                    }
                    Err(f) => f.error_code().bits(),
                }
            };
            let (mut mmu, mut ipis) = (CpuMmu(self, cpu), Ipis(self));
            let mut tlb = Tlb::new(&mut mmu, cpu, &mut ipis);
            let access = FaultAccess::from_error_code(code);
            let space = &self.spaces[self.on[cpu]];
            let frames = &mut Frames(self);
            let r = if self.vm.has_global_policy() {
                // With the table: below `min` this fault reclaims over both spaces.
                space.handle_fault_global(&self.vm, &self.spaces[..], va, access, frames, &mut tlb)
            } else {
                space.handle_fault(&self.vm, va, access, frames, &mut tlb)
            };
            if let Err(e) = r {
                let m = space.mapper();
                let pages: Vec<_> = (0..PAGES)
                    .map(|p| {
                        m.translate(VirtAddr::new(BASE + p * 4096))
                            .map(|t| (t.frame, t.access.writable))
                    })
                    .collect();
                panic!("CPU {cpu}: {e}; {:?}; pages {pages:?}", self.vm.stats());
            }
            thread::yield_now();
        }
        panic!("CPU {cpu}: no progress at {va:?}");
    }

    /// CPU `cpu` reclaims what it can in every space (as the worker does
    /// under a global policy, while the watermarks ask).
    fn reclaim(&self, cpu: usize) {
        let (mut mmu, mut ipis) = (CpuMmu(self, cpu), Ipis(self));
        let mut tlb = Tlb::new(&mut mmu, cpu, &mut ipis);
        if self.vm.has_global_policy() {
            while self.vm.needs_reclaim() {
                let freed = self
                    .vm
                    .reclaim_step(&self.spaces[..], &mut Frames(self), &mut tlb)
                    .expect("swap has room");
                if freed == 0 {
                    break;
                }
            }
            return;
        }
        for space in &self.spaces {
            space
                .reclaim(&self.vm, &mut Frames(self), 2, &mut tlb)
                .expect("swap has room");
        }
    }

    /// CPU `cpu` syncs its space's mapping of the file (`msync`).
    fn sync(&self, cpu: usize) -> u64 {
        let (mut mmu, mut ipis) = (CpuMmu(self, cpu), Ipis(self));
        let mut tlb = Tlb::new(&mut mmu, cpu, &mut ipis);
        let space = &self.spaces[self.on[cpu]];
        space
            .sync(&self.vm, BASE, PAGES * 4096, &mut Frames(self), &mut tlb)
            .expect("the file takes every write")
    }

    /// Every CPU leaves, the space goes; everything must be back.
    fn end(self) {
        let Self {
            mem,
            frames,
            vm,
            kernel,
            spaces,
            on,
            tlbs,
            phys,
            file,
            anon,
            ..
        } = self;
        for (c, tlb) in tlbs.iter().enumerate() {
            // SAFETY: an emulated CPU.
            unsafe { tlb.lock().unwrap().set_cr3(kernel.pml4()) };
            spaces[on[c]].cpus().leave(c);
        }
        let mut frames = frames.into_inner().unwrap();
        let mut mmu = kmem::testing::mmu::RecordingMmu::new(kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        for space in spaces {
            space
                .destroy(&vm, &mut frames, &mut tlb)
                .map_err(|e| e.1)
                .unwrap();
        }
        if let Some(id) = file.map(|f| f.0).or(anon) {
            vm.close_object(id, &phys, 0, &mut frames).unwrap();
        }
        assert_eq!(vm.stats().swap_slots_used, 0, "swap slots left");
        assert_eq!(
            frames.in_use(),
            2,
            "frames left: the zero frame and the kernel's PML4 only"
        );
        drop((kernel, vm, tlbs, phys));
        // SAFETY: leaked in `new`; nothing refers to it any more.
        drop(unsafe { Box::from_raw(mem.0) });
    }
}

/// CPUs 0 and 1 write increasing values into their own word of page 0 and
/// read both words back; CPU 2 reclaims and touches the other pages.
fn scenario(disk: Disk) {
    let m = Arc::new(Machine::new(Kind::One, disk));
    let writers: Vec<_> = (0..2)
        .map(|cpu| {
            let m = m.clone();
            thread::spawn(move || {
                let mut seen_other = 0;
                for k in 1..=ROUNDS {
                    m.access(cpu, 0, cpu as u64, Some(k));
                    m.last[cpu].store(k, Ordering::SeqCst);
                    assert_eq!(
                        m.access(cpu, 0, cpu as u64, None),
                        k,
                        "CPU {cpu} lost its write {k}"
                    );
                    let other = m.access(cpu, 0, 1 - cpu as u64, None);
                    assert!(
                        other >= seen_other,
                        "CPU {cpu} saw CPU {}'s value go back",
                        1 - cpu
                    );
                    seen_other = other;
                    m.access(cpu, 1 + (k % 2), 2, Some(k));
                }
            })
        })
        .collect();
    let reclaimer = {
        let m = m.clone();
        thread::spawn(move || {
            for i in 0..3 {
                m.reclaim(2);
                m.access(2, 2, 3, Some(i));
            }
        })
    };
    for t in writers {
        t.join().unwrap();
    }
    reclaimer.join().unwrap();
    for cpu in 0..2 {
        let last = m.last[cpu].load(Ordering::SeqCst);
        assert_eq!(
            m.access(2, 0, cpu as u64, None),
            last,
            "CPU {cpu}'s last write"
        );
    }
    let m = Arc::try_unwrap(m).ok().expect("every CPU is done");
    m.end();
}

/// Parent (CPU 0) and child (CPU 1) of a fork fault in the pages they
/// share (on swap, or as frames under a global policy), each writing its
/// own word, while CPU 2 reclaims both spaces (their own reclaim, or the
/// worker): each sees its own writes and the other's never.
fn forked_scenario(kind: Kind, disk: Disk) {
    let m = Arc::new(Machine::new(kind, disk));
    let sharers: Vec<_> = (0..2)
        .map(|cpu| {
            let m = m.clone();
            thread::spawn(move || {
                let mine = cpu as u64;
                for k in 1..=ROUNDS {
                    let page = k % PAGES;
                    m.access(cpu, page, mine, Some(k));
                    assert_eq!(m.access(cpu, page, mine, None), k, "CPU {cpu} lost {k}");
                    for p in 0..PAGES {
                        assert_eq!(
                            m.access(cpu, p, 1 - mine, None),
                            ORIGINAL + p,
                            "CPU {cpu} saw the other sharer's write in page {p}"
                        );
                        assert_eq!(m.access(cpu, p, 2, None), ORIGINAL + p);
                    }
                }
            })
        })
        .collect();
    let reclaimer = {
        let m = m.clone();
        thread::spawn(move || {
            for _ in 0..3 {
                m.reclaim(2);
                thread::yield_now();
            }
        })
    };
    for t in sharers {
        t.join().unwrap();
    }
    reclaimer.join().unwrap();
    let m = Arc::try_unwrap(m).ok().expect("every CPU is done");
    m.end();
}

/// Two processes under one global policy (CPUs 0 and 1, each in its own
/// space, faulting with the table of spaces: below `min` a fault reclaims
/// over both) while CPU 2 runs the reclaim worker: each reads back what it
/// last wrote in every page.
fn global_scenario(disk: Disk) {
    let m = Arc::new(Machine::new(Kind::Global, disk));
    let cpus: Vec<_> = (0..2)
        .map(|cpu| {
            let m = m.clone();
            thread::spawn(move || {
                // Six pages written over four frames each round: by the
                // second, pages come back from swap.
                for k in 1..=ROUNDS {
                    let value = |p: u64| (cpu as u64 + 1) * 1000 + k * 10 + p;
                    for p in 0..PAGES {
                        m.access(cpu, p, 0, Some(value(p)));
                    }
                    for p in 0..PAGES {
                        assert_eq!(m.access(cpu, p, 0, None), value(p), "CPU {cpu} page {p}");
                    }
                }
            })
        })
        .collect();
    let worker = {
        let m = m.clone();
        thread::spawn(move || {
            for _ in 0..4 {
                m.reclaim(2);
                thread::yield_now();
            }
        })
    };
    for t in cpus {
        t.join().unwrap();
    }
    worker.join().unwrap();
    // Six pages hold data, four frames: at least two come back from swap.
    for cpu in 0..2 {
        for p in 0..PAGES {
            let want = (cpu as u64 + 1) * 1000 + ROUNDS * 10 + p;
            assert_eq!(
                m.access(cpu, p, 0, None),
                want,
                "CPU {cpu} page {p} at the end"
            );
        }
    }
    let st = m.vm.stats();
    assert!(st.reclaimed >= 2 && st.swap_ins >= 2, "{st:?}");
    let m = Arc::try_unwrap(m).ok().expect("every CPU is done");
    m.end();
}

/// CPUs 0 and 1, each in its own space, write their own word of the
/// pages of one file both map shared, and read the other's: it never goes
/// back, and each reads its own last write; CPU 2 syncs, and with
/// `global` runs the worker over a frame limit below the file's pages, so
/// pages leave the cache (written back) and are read again meanwhile.
/// At the end, with the spaces gone and the file closed, the file holds
/// every last write.
fn objects_scenario(kind: Kind) {
    let global = kind != Kind::Objects(false);
    // What a page holds before any write: the file's words, or zeros.
    let initial = move |p: u64| {
        if kind == Kind::SharedAnon {
            0
        } else {
            ORIGINAL + p
        }
    };
    let m = Arc::new(Machine::new(kind, Disk::Fast));
    let cpus: Vec<_> = (0..2)
        .map(|cpu| {
            let m = m.clone();
            thread::spawn(move || {
                let mine = cpu as u64;
                let mut seen = [0; PAGES as usize];
                for k in 1..=ROUNDS {
                    // One page a round, and page 1 in all rounds but the
                    // last: rewritten through a TLB entry cached dirty,
                    // its last write not hidden by a later one.
                    let extra = (k < ROUNDS).then_some(1);
                    for page in [k % PAGES].into_iter().chain(extra) {
                        m.access(cpu, page, mine, Some(k));
                        assert_eq!(m.access(cpu, page, mine, None), k, "CPU {cpu} lost {k}");
                    }
                    for p in 0..PAGES {
                        let other = m.access(cpu, p, 1 - mine, None);
                        // Before the other's first write: the initial word.
                        let other = if other == initial(p) { 0 } else { other };
                        assert!(
                            other >= seen[p as usize],
                            "CPU {cpu} saw the other's word of page {p} go back"
                        );
                        seen[p as usize] = other;
                        assert_eq!(m.access(cpu, p, 3, None), initial(p));
                    }
                }
            })
        })
        .collect();
    let worker = {
        let m = m.clone();
        thread::spawn(move || {
            for _ in 0..2 {
                if global {
                    m.reclaim(2);
                }
                m.sync(2);
                thread::yield_now();
            }
        })
    };
    for t in cpus {
        t.join().unwrap();
    }
    worker.join().unwrap();
    let last = |p: u64| {
        (1..=ROUNDS)
            .filter(|k| k % PAGES == p || (p == 1 && *k < ROUNDS))
            .max()
            .unwrap_or(initial(p))
    };
    if kind == Kind::SharedAnon {
        // Through the first space, after everything went to swap and back.
        let st = m.vm.stats();
        assert!(st.swap_outs > 0, "{st:?}");
        for p in 0..PAGES {
            for w in 0..2 {
                assert_eq!(m.access(2, p, w, None), last(p), "page {p} word {w}");
            }
        }
        let m = Arc::try_unwrap(m).ok().expect("every CPU is done");
        return m.end();
    }
    let m = Arc::try_unwrap(m).ok().expect("every CPU is done");
    let file = m.file.as_ref().unwrap().1.clone();
    m.end();
    let words = file.0.lock().unwrap();
    for p in 0..PAGES {
        let want = last(p);
        assert_eq!(
            words[p as usize][0], want,
            "page {p} of the file, CPU 0's word"
        );
        assert_eq!(
            words[p as usize][1], want,
            "page {p} of the file, CPU 1's word"
        );
        assert_eq!(words[p as usize][3], ORIGINAL + p);
    }
}

/// CPU 0 writes its word of the file through a shared mapping; CPU 1, in
/// a space mapping it private, reads the file's pages (the cached frames)
/// and writes its own word (each first write copies the page) while CPU 2
/// runs the worker over a frame limit below the pages and syncs CPU 0's
/// space: CPU 1 always reads back what it wrote and the file's word where
/// it wrote nothing, CPU 0 its own writes; at the end the file holds CPU
/// 0's last writes and none of CPU 1's.
fn private_file_scenario() {
    let m = Arc::new(Machine::new(Kind::PrivateFile, Disk::Fast));
    let writer = {
        let m = m.clone();
        thread::spawn(move || {
            for k in 1..=ROUNDS {
                let page = k % PAGES;
                m.access(0, page, 0, Some(k));
                assert_eq!(m.access(0, page, 0, None), k, "CPU 0 lost {k}");
                for p in 0..PAGES {
                    assert_eq!(
                        m.access(0, p, 1, None),
                        ORIGINAL + p,
                        "CPU 1's write reached the file"
                    );
                }
            }
        })
    };
    let private = {
        let m = m.clone();
        thread::spawn(move || {
            let mut mine = [None; PAGES as usize];
            for k in 1..=ROUNDS {
                for p in 0..PAGES {
                    let want = mine[p as usize].unwrap_or(ORIGINAL + p);
                    assert_eq!(m.access(1, p, 1, None), want, "CPU 1 page {p}");
                }
                let page = (k + 1) % PAGES;
                m.access(1, page, 1, Some(100 + k));
                mine[page as usize] = Some(100 + k);
                assert_eq!(m.access(1, page, 1, None), 100 + k, "CPU 1 lost {k}");
            }
        })
    };
    let worker = {
        let m = m.clone();
        thread::spawn(move || {
            for _ in 0..2 {
                m.reclaim(2);
                m.sync(2);
                thread::yield_now();
            }
        })
    };
    for t in [writer, private, worker] {
        t.join().unwrap();
    }
    let m = Arc::try_unwrap(m).ok().expect("every CPU is done");
    let file = m.file.as_ref().unwrap().1.clone();
    m.end();
    let words = file.0.lock().unwrap();
    for p in 0..PAGES {
        let last = (1..=ROUNDS).filter(|k| k % PAGES == p).max();
        assert_eq!(
            words[p as usize][0],
            last.unwrap_or(ORIGINAL + p),
            "page {p}, CPU 0's word"
        );
        assert_eq!(
            words[p as usize][1],
            ORIGINAL + p,
            "page {p}: a private write reached the file"
        );
    }
}

fn config() -> shuttle::Config {
    let mut config = shuttle::Config::new();
    config.stack_size = 1 << 20;
    config
}

#[test]
fn two_cpus_fault_one_page_while_a_third_reclaims() {
    let n = iterations();
    shuttle::Runner::new(RandomScheduler::new(n), config()).run(|| scenario(Disk::Slow));
    shuttle::Runner::new(PctScheduler::new(3, n), config()).run(|| scenario(Disk::Fast));
    shuttle::Runner::new(RandomScheduler::new(n), config()).run(|| scenario(Disk::Compressed));
}

#[test]
fn two_spaces_fault_under_one_policy_while_a_third_cpu_runs_the_worker() {
    let n = iterations();
    shuttle::Runner::new(RandomScheduler::new(n), config()).run(|| global_scenario(Disk::Slow));
    shuttle::Runner::new(PctScheduler::new(3, n), config()).run(|| global_scenario(Disk::Fast));
    shuttle::Runner::new(RandomScheduler::new(n), config())
        .run(|| global_scenario(Disk::Compressed));
}

#[test]
fn two_spaces_share_a_file_while_a_third_cpu_reclaims_and_syncs() {
    let n = iterations();
    for kind in [Kind::Objects(false), Kind::Objects(true), Kind::SharedAnon] {
        shuttle::Runner::new(RandomScheduler::new(n), config()).run(move || objects_scenario(kind));
        shuttle::Runner::new(PctScheduler::new(3, n), config()).run(move || objects_scenario(kind));
    }
}

#[test]
fn a_private_mapping_copies_over_the_cache_while_the_worker_evicts() {
    let n = iterations();
    shuttle::Runner::new(RandomScheduler::new(n), config()).run(private_file_scenario);
    shuttle::Runner::new(PctScheduler::new(3, n), config()).run(private_file_scenario);
}

#[test]
fn parent_and_child_fault_shared_slots_while_a_third_cpu_reclaims() {
    let n = iterations();
    for kind in [Kind::Forked, Kind::GlobalForked] {
        shuttle::Runner::new(RandomScheduler::new(n), config())
            .run(move || forked_scenario(kind, Disk::Slow));
        shuttle::Runner::new(PctScheduler::new(3, n), config())
            .run(move || forked_scenario(kind, Disk::Fast));
        shuttle::Runner::new(RandomScheduler::new(n), config())
            .run(move || forked_scenario(kind, Disk::Compressed));
    }
}
