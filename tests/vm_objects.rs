//! Memory objects (`Vm::create_object`, `VmSpace::map_object`): shared
//! anonymous memory across a fork, file pages cached once for every
//! space, written back on unmap, `msync`, eviction and close, private
//! mappings copied, pager errors as typed results, every frame back.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kmem::paging::PageTables;
use kmem::smp::Tlb;
use kmem::testing::mmu::RecordingMmu;
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use kmem::vm::global::Watermarks;
use kmem::vm::replace::ClockPro;
use kmem::vm::swap::PAGE_BYTES;
use kmem::vm::{
    FaultAccess, FaultOutcome, FaultReason, MemSwap, ObjectId, Pager, PagerError, Prot, Vm,
    VmError, VmSpace,
};
use x86_64::VirtAddr;

const PAGE: u64 = 4096;
type Space<'m> = VmSpace<EmulatedPhysMem<'m>>;

/// A file in memory whose reads and writes can be made to fail.
struct File {
    pages: Mutex<Vec<[u8; PAGE_BYTES]>>,
    reads: AtomicU64,
    writes: AtomicU64,
    bad_reads: Mutex<HashSet<u64>>,
    refuse_writes: AtomicBool,
}

impl File {
    /// `n` pages, page `i` starting with the word `1000 + i`.
    fn new(n: u64) -> Arc<Self> {
        let pages = (0..n)
            .map(|i| {
                let mut p = [0u8; PAGE_BYTES];
                p[..8].copy_from_slice(&(1000 + i).to_le_bytes());
                p
            })
            .collect();
        Arc::new(Self {
            pages: Mutex::new(pages),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            bad_reads: Mutex::new(HashSet::new()),
            refuse_writes: AtomicBool::new(false),
        })
    }

    fn word(&self, i: u64) -> u64 {
        u64::from_le_bytes(
            self.pages.lock().unwrap()[i as usize][..8]
                .try_into()
                .unwrap(),
        )
    }
}

impl Pager for File {
    fn pages(&self) -> u64 {
        self.pages.lock().unwrap().len() as u64
    }

    fn read(&self, index: u64, page: &mut [u8; PAGE_BYTES]) -> Result<(), PagerError> {
        if self.bad_reads.lock().unwrap().contains(&index) {
            return Err(PagerError::Io { index });
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        *page = self.pages.lock().unwrap()[index as usize];
        Ok(())
    }

    fn write(&self, index: u64, page: &[u8; PAGE_BYTES]) -> Result<(), PagerError> {
        if self.refuse_writes.load(Ordering::Relaxed) {
            return Err(PagerError::Refused { index });
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.pages.lock().unwrap()[index as usize] = *page;
        Ok(())
    }
}

struct Machine<'m> {
    mem: &'m EmulatedMemory,
    frames: EmulatedFrameAllocator,
    vm: Vm,
    kernel: PageTables<EmulatedPhysMem<'m>>,
    free_at_start: usize,
}

impl<'m> Machine<'m> {
    fn new(mem: &'m EmulatedMemory, limit: Option<u64>) -> Self {
        let mut frames = mem.frame_allocator();
        let free_at_start = frames.free_count();
        let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
        vm.set_frame_limit(limit);
        let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
        Self {
            mem,
            frames,
            vm,
            kernel,
            free_at_start,
        }
    }

    /// One policy over every space that joins, run by the faults given
    /// the table (no watermark asks for a worker).
    fn global_policy(&mut self, capacity: usize) {
        self.vm.set_global_policy(Box::new(ClockPro::new(capacity)));
        self.vm.set_watermarks(Some(Watermarks {
            min: 0,
            low: 0,
            high: 0,
        }));
    }

    fn space(&mut self) -> Space<'m> {
        VmSpace::new_user(&self.kernel, &mut self.frames).unwrap()
    }

    fn map(&mut self, s: &mut Space<'m>, at: u64, object: ObjectId, pages: u64, shared: bool) {
        let got = s
            .map_object(
                &self.vm,
                Some(at),
                pages * PAGE,
                Prot::RW | Prot::USER,
                object,
                0,
                shared,
            )
            .unwrap();
        assert_eq!(got, at);
    }

    fn fault(&mut self, s: &Space<'m>, va: u64, write: bool) -> Result<FaultOutcome, FaultReason> {
        self.fault_in(None, s, va, write)
    }

    /// A fault, given the table of `spaces` when there is one (reclaim
    /// then runs over all of them).
    fn fault_in(
        &mut self,
        spaces: Option<&[&Space<'m>]>,
        s: &Space<'m>,
        va: u64,
        write: bool,
    ) -> Result<FaultOutcome, FaultReason> {
        let mut mmu = RecordingMmu::new(self.kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        let access = if write {
            FaultAccess::write(true)
        } else {
            FaultAccess::read(true)
        };
        let at = VirtAddr::new(va);
        loop {
            let r = match spaces {
                Some(t) => {
                    s.handle_fault_global(&self.vm, t, at, access, &mut self.frames, &mut tlb)
                }
                None => s.handle_fault(&self.vm, at, access, &mut self.frames, &mut tlb),
            };
            match r {
                Ok(FaultOutcome::InTransit) => continue,
                r => return r.map_err(|e| e.reason),
            }
        }
    }

    /// [`read`](Self::read) with reclaim over every space of `spaces`.
    fn read_in(&mut self, spaces: &[&Space<'m>], s: &Space<'m>, va: u64) -> u64 {
        if s.mapper().translate(VirtAddr::new(va)).is_err() {
            self.fault_in(Some(spaces), s, va, false).unwrap();
        }
        self.read(s, va)
    }

    /// The word at `va` as a CPU reads it (faulting first when not mapped).
    fn read(&mut self, s: &Space<'m>, va: u64) -> u64 {
        if s.mapper().translate(VirtAddr::new(va)).is_err() {
            self.fault(s, va, false).unwrap();
        }
        s.simulate_access(VirtAddr::new(va), false);
        self.mem
            .read_u64(s.mapper().translate(VirtAddr::new(va)).unwrap().phys)
    }

    /// Stores `value` at `va` as a CPU does (faulting first when not
    /// writable; the Dirty bit set).
    fn write(&mut self, s: &Space<'m>, va: u64, value: u64) {
        let writable = s
            .mapper()
            .translate(VirtAddr::new(va))
            .is_ok_and(|t| t.access.writable);
        if !writable {
            self.fault(s, va, true).unwrap();
        }
        s.simulate_access(VirtAddr::new(va), true);
        let phys = s.mapper().translate(VirtAddr::new(va)).unwrap().phys;
        self.mem.write_u64(phys, value);
    }

    fn check(&self, spaces: &[&Space<'m>]) {
        for s in spaces {
            s.check_invariants(&self.vm).unwrap();
        }
    }

    fn unmap(&mut self, s: &mut Space<'m>, at: u64, pages: u64) -> Result<(), VmError> {
        let mut mmu = RecordingMmu::new(self.kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        s.unmap(at, pages * PAGE, &self.vm, &mut self.frames, &mut tlb)
    }

    fn sync(&mut self, s: &Space<'m>, at: u64, pages: u64) -> Result<u64, VmError> {
        let mut mmu = RecordingMmu::new(self.kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        s.sync(&self.vm, at, pages * PAGE, &mut self.frames, &mut tlb)
    }

    fn destroy(&mut self, s: Space<'m>) {
        let mut mmu = RecordingMmu::new(self.kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        s.destroy(&self.vm, &mut self.frames, &mut tlb).unwrap();
    }

    fn tlb_do<R>(
        &mut self,
        f: impl FnOnce(&Vm, &mut EmulatedFrameAllocator, &mut Tlb<'_>) -> R,
    ) -> R {
        let mut mmu = RecordingMmu::new(self.kernel.pml4());
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        f(&self.vm, &mut self.frames, &mut tlb)
    }

    fn close(&mut self, id: ObjectId) -> Result<(), VmError> {
        let phys = self.mem.phys_mem();
        self.vm.close_object(id, &phys, 0, &mut self.frames)
    }

    /// Every frame is back but the zero frame and the kernel's PML4.
    fn all_back(&self) {
        assert_eq!(self.vm.stats().resident_frames, 0);
        assert_eq!(self.frames.free_count(), self.free_at_start - 2);
    }
}

const A: u64 = 0x4000_0000;
const B: u64 = 0x8000_0000;

#[test]
fn a_shared_anonymous_mapping_stays_shared_after_fork() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let object = m.vm.create_shared_anonymous(4 * PAGE).unwrap();
    let mut parent = m.space();
    m.map(&mut parent, A, object, 4, true);
    parent
        .map_anonymous(Some(B), PAGE, Prot::RW | Prot::USER)
        .unwrap();
    m.write(&parent, A, 7);
    m.write(&parent, B, 70);
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let child = parent.fork(&m.vm, &mut m.frames, &mut tlb).unwrap();
    m.check(&[&parent, &child]);
    // The shared page stays writable in both: the child's write is the parent's.
    assert!(
        child
            .mapper()
            .translate(VirtAddr::new(A))
            .unwrap()
            .access
            .writable
    );
    assert_eq!(m.read(&child, A), 7);
    m.write(&child, A, 8);
    m.write(&child, A + PAGE, 9);
    assert_eq!(m.read(&parent, A), 8);
    assert_eq!(m.read(&parent, A + PAGE), 9);
    // The private area is copied on write as ever.
    m.write(&child, B, 71);
    assert_eq!(m.read(&parent, B), 70);
    m.check(&[&parent, &child]);
    // Unmapped in one, the pages stay for the other; then the object closes.
    assert_eq!(
        m.close(object),
        Err(VmError::ObjectMapped { object }),
        "mapped"
    );
    m.destroy(child);
    assert_eq!(m.read(&parent, A + PAGE), 9);
    m.destroy(parent);
    assert_eq!(m.vm.object_stats(object).unwrap().cached, 2);
    m.close(object).unwrap();
    assert_eq!(m.vm.object_stats(object), None);
    assert_eq!(m.close(object), Err(VmError::NoObject { object }));
    m.all_back();
}

#[test]
fn file_pages_are_cached_once_and_written_back_when_the_last_mapping_goes() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let file = File::new(8);
    let object = m.vm.create_object(Box::new(file.clone())).unwrap();
    let (mut s1, mut s2) = (m.space(), m.space());
    m.map(&mut s1, A, object, 8, true);
    m.map(&mut s2, B, object, 8, true);
    assert_eq!(m.read(&s1, A + 3 * PAGE), 1003);
    assert_eq!(m.read(&s2, B + 3 * PAGE), 1003);
    assert_eq!(file.reads.load(Ordering::Relaxed), 1, "read once");
    let f1 = s1.mapper().translate(VirtAddr::new(A + 3 * PAGE)).unwrap();
    let f2 = s2.mapper().translate(VirtAddr::new(B + 3 * PAGE)).unwrap();
    assert_eq!(f1.frame, f2.frame, "one frame for both spaces");
    m.write(&s1, A + 3 * PAGE, 42);
    assert_eq!(m.read(&s2, B + 3 * PAGE), 42);
    m.check(&[&s1, &s2]);
    m.unmap(&mut s1, A, 8).unwrap();
    assert_eq!(file.writes.load(Ordering::Relaxed), 0, "still mapped in s2");
    assert_eq!(
        m.vm.object_stats(object).unwrap().dirty,
        1,
        "s1's Dirty bit kept"
    );
    m.unmap(&mut s2, B, 8).unwrap();
    assert_eq!(file.writes.load(Ordering::Relaxed), 1);
    assert_eq!(file.word(3), 42);
    let st = m.vm.object_stats(object).unwrap();
    assert_eq!((st.cached, st.dirty, st.writes), (0, 0, 1));
    m.destroy(s1);
    m.destroy(s2);
    m.close(object).unwrap();
    m.all_back();
}

#[test]
fn msync_writes_what_was_written_since_and_nothing_else() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let file = File::new(4);
    let object = m.vm.create_object(Box::new(file.clone())).unwrap();
    let mut s = m.space();
    m.map(&mut s, A, object, 4, true);
    for p in 0..4 {
        assert_eq!(m.read(&s, A + p * PAGE), 1000 + p);
    }
    assert_eq!(m.sync(&s, A, 4), Ok(0), "nothing written yet");
    m.write(&s, A + PAGE, 11);
    m.write(&s, A + 2 * PAGE, 12);
    assert_eq!(m.sync(&s, A, 4), Ok(2));
    assert_eq!((file.word(1), file.word(2)), (11, 12));
    assert_eq!(m.sync(&s, A, 4), Ok(0), "clean again");
    // Still mapped and writable: a later write is dirty again.
    m.write(&s, A + PAGE, 13);
    assert_eq!(m.sync(&s, A + PAGE, 1), Ok(1));
    assert_eq!(file.word(1), 13);
    assert_eq!(file.writes.load(Ordering::Relaxed), 3);
    assert_eq!(
        m.sync(&s, A + 8 * PAGE, 1),
        Err(VmError::Unmapped { addr: A + 8 * PAGE })
    );
    m.check(&[&s]);
    m.destroy(s);
    m.close(object).unwrap();
    m.all_back();
}

#[test]
fn a_private_mapping_copies_on_write_over_the_cache_and_never_writes_back() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let file = File::new(4);
    let object = m.vm.create_object(Box::new(file.clone())).unwrap();
    let (mut shared, mut private) = (m.space(), m.space());
    m.map(&mut shared, A, object, 4, true);
    m.map(&mut private, A, object, 4, false);
    assert_eq!(m.read(&shared, A), 1000);
    // A read maps the cached frame, read-only: one frame for both.
    assert_eq!(m.fault(&private, A, false), Ok(FaultOutcome::ObjectMapped));
    let t = private.mapper().translate(VirtAddr::new(A)).unwrap();
    assert!(!t.access.writable);
    let fs = shared.mapper().translate(VirtAddr::new(A)).unwrap().frame;
    assert_eq!(t.frame, fs, "the cached frame");
    assert_eq!(file.reads.load(Ordering::Relaxed), 1, "read once");
    assert_eq!(m.vm.stats().object_copies, 0);
    // The first write copies it.
    assert_eq!(m.fault(&private, A, true), Ok(FaultOutcome::ObjectCopied));
    let fp = private.mapper().translate(VirtAddr::new(A)).unwrap();
    assert!(fp.access.writable);
    assert_ne!(fp.frame, fs, "a frame of its own");
    m.write(&private, A, 5);
    m.write(&private, A + PAGE, 6); // a write to a page never read: copied at once
    assert_eq!(m.read(&shared, A), 1000, "the object does not see it");
    assert_eq!(m.read(&shared, A + PAGE), 1001);
    // A write through the shared mapping reaches a private page not copied
    // yet (it maps the cache), not one copied.
    assert_eq!(m.read(&private, A + 2 * PAGE), 1002);
    m.write(&shared, A + 2 * PAGE, 77);
    m.write(&shared, A, 88);
    assert_eq!(m.read(&private, A + 2 * PAGE), 77);
    assert_eq!(m.read(&private, A), 5);
    // mprotect keeps a page still on the cache read-only.
    assert_eq!(m.read(&private, A + 3 * PAGE), 1003);
    let rw = Prot::RW | Prot::USER;
    m.tlb_do(|vm, frames, tlb| {
        private.protect(A, 4 * PAGE, Prot::READ | Prot::USER, vm, frames, tlb)
    })
    .unwrap();
    m.tlb_do(|vm, frames, tlb| private.protect(A, 4 * PAGE, rw, vm, frames, tlb))
        .unwrap();
    assert!(
        !private
            .mapper()
            .translate(VirtAddr::new(A + 3 * PAGE))
            .unwrap()
            .access
            .writable
    );
    m.write(&private, A + 3 * PAGE, 44);
    assert_eq!(m.read(&shared, A + 3 * PAGE), 1003);
    // A fork's child shares the cached page and its own copies alike.
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let child = private.fork(&m.vm, &mut m.frames, &mut tlb).unwrap();
    m.check(&[&shared, &private, &child]);
    assert_eq!(m.read(&child, A + 2 * PAGE), 77);
    m.write(&child, A + 2 * PAGE, 99);
    m.write(&child, A, 55);
    assert_eq!(m.read(&private, A + 2 * PAGE), 77);
    assert_eq!(m.read(&private, A), 5);
    assert_eq!(m.read(&shared, A + 2 * PAGE), 77);
    let st = m.vm.stats();
    assert_eq!((st.object_copies, st.cow_copies), (4, 1), "{st:?}");
    m.check(&[&shared, &private, &child]);
    m.destroy(child);
    m.destroy(private);
    m.destroy(shared);
    assert_eq!(
        file.writes.load(Ordering::Relaxed),
        2,
        "the shared writes only"
    );
    assert_eq!((file.word(0), file.word(1), file.word(2)), (88, 1001, 77));
    m.close(object).unwrap();
    m.all_back();
}

#[test]
fn private_pages_on_the_cache_are_evicted_with_it_and_copies_go_to_swap() {
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::new(&mem, Some(8));
    assert!(m.vm.attach_swap(Box::new(MemSwap::new(256))).is_ok());
    let file = File::new(32);
    let object = m.vm.create_object(Box::new(file.clone())).unwrap();
    let mut s = m.space();
    m.map(&mut s, A, object, 32, false);
    // Even pages read (the cache's frames), odd ones written (copies).
    for p in 0..32 {
        if p % 2 == 0 {
            assert_eq!(m.read(&s, A + p * PAGE), 1000 + p);
        } else {
            m.write(&s, A + p * PAGE, 3000 + p);
        }
        assert!(m.vm.stats().resident_frames <= 8);
        m.check(&[&s]);
    }
    for p in 0..32 {
        let want = if p % 2 == 0 { 1000 + p } else { 3000 + p };
        assert_eq!(m.read(&s, A + p * PAGE), want, "page {p}");
    }
    let st = m.vm.stats();
    assert!(st.object_evictions > 0 && st.swap_outs > 0, "{st:?}");
    m.destroy(s);
    assert_eq!(
        file.writes.load(Ordering::Relaxed),
        0,
        "a private mapping writes nothing"
    );
    m.close(object).unwrap();
    assert_eq!(m.vm.stats().swap_slots_used, 0);
    m.all_back();
}

#[test]
fn a_failed_read_is_a_typed_fault_and_changes_nothing() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let file = File::new(4);
    let object = m.vm.create_object(Box::new(file.clone())).unwrap();
    let mut s = m.space();
    m.map(&mut s, A, object, 4, true);
    file.bad_reads.lock().unwrap().insert(2);
    let free = m.frames.free_count();
    assert_eq!(
        m.fault(&s, A + 2 * PAGE, false),
        Err(FaultReason::Pager(PagerError::Io { index: 2 }))
    );
    assert!(s.mapper().translate(VirtAddr::new(A + 2 * PAGE)).is_err());
    assert_eq!(m.frames.free_count(), free, "the frame went back");
    assert_eq!(m.vm.stats().pager_errors, 1);
    assert_eq!(m.vm.object_stats(object).unwrap().cached, 0);
    // The private mapping reports it too; then the page reads once it can.
    let mut p = m.space();
    m.map(&mut p, A, object, 4, false);
    assert_eq!(
        m.fault(&p, A + 2 * PAGE, true),
        Err(FaultReason::Pager(PagerError::Io { index: 2 }))
    );
    file.bad_reads.lock().unwrap().clear();
    assert_eq!(m.read(&s, A + 2 * PAGE), 1002);
    assert_eq!(m.read(&p, A + 2 * PAGE), 1002);
    m.check(&[&s, &p]);
    m.destroy(s);
    m.destroy(p);
    m.close(object).unwrap();
    m.all_back();
}

#[test]
fn a_refused_write_back_keeps_the_page_dirty_until_it_is_taken() {
    let mem = EmulatedMemory::new(256);
    let mut m = Machine::new(&mem, None);
    let file = File::new(4);
    let object = m.vm.create_object(Box::new(file.clone())).unwrap();
    let mut s = m.space();
    m.map(&mut s, A, object, 4, true);
    m.write(&s, A, 77);
    file.refuse_writes.store(true, Ordering::Relaxed);
    assert_eq!(
        m.sync(&s, A, 4),
        Err(VmError::Pager(PagerError::Refused { index: 0 }))
    );
    assert_eq!(
        m.unmap(&mut s, A, 4),
        Err(VmError::Pager(PagerError::Refused { index: 0 })),
        "unmapped, the page kept dirty"
    );
    assert!(s.area_at(A).is_none());
    let st = m.vm.object_stats(object).unwrap();
    assert_eq!((st.cached, st.dirty), (1, 1));
    assert_eq!(
        m.close(object),
        Err(VmError::Pager(PagerError::Refused { index: 0 })),
        "the object stays open with its page"
    );
    file.refuse_writes.store(false, Ordering::Relaxed);
    m.close(object).unwrap();
    assert_eq!(file.word(0), 77, "nothing lost");
    m.destroy(s);
    m.all_back();
}

#[test]
fn file_pages_are_evicted_under_the_frame_limit_and_read_back() {
    // No swap device: clean pages are dropped, dirty ones written back.
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::new(&mem, Some(8));
    let file = File::new(64);
    let object = m.vm.create_object(Box::new(file.clone())).unwrap();
    let mut s = m.space();
    m.map(&mut s, A, object, 64, true);
    for p in 0..64 {
        if p % 2 == 0 {
            m.write(&s, A + p * PAGE, 5000 + p);
        } else {
            assert_eq!(m.read(&s, A + p * PAGE), 1000 + p);
        }
        assert!(m.vm.stats().resident_frames <= 8);
        m.check(&[&s]);
    }
    assert!(
        file.writes.load(Ordering::Relaxed) >= 24,
        "dirty pages written back"
    );
    for p in 0..64 {
        let want = if p % 2 == 0 { 5000 + p } else { 1000 + p };
        assert_eq!(m.read(&s, A + p * PAGE), want, "page {p}");
    }
    let st = m.vm.stats();
    assert!(st.object_evictions >= 100, "{st:?}");
    assert!(st.object_reads > 64);
    m.destroy(s);
    for p in 0..64 {
        let want = if p % 2 == 0 { 5000 + p } else { 1000 + p };
        assert_eq!(file.word(p), want, "page {p} on the file");
    }
    m.close(object).unwrap();
    m.all_back();
}

#[test]
fn the_global_policy_ranks_object_pages_with_anonymous_ones() {
    let mem = EmulatedMemory::new(1024);
    let mut m = Machine::new(&mem, Some(32));
    assert!(m.vm.attach_swap(Box::new(MemSwap::new(256))).is_ok());
    m.global_policy(32);
    let file = File::new(32);
    let object = m.vm.create_object(Box::new(file.clone())).unwrap();
    let (mut reader, mut worker) = (m.space(), m.space());
    reader.join_global(1).unwrap();
    worker.join_global(2).unwrap();
    m.map(&mut reader, A, object, 32, true);
    m.map(&mut worker, A, object, 32, true);
    worker
        .map_anonymous(Some(B), 64 * PAGE, Prot::RW | Prot::USER)
        .unwrap();
    // Both spaces map the file's pages (one frame each); the worker then
    // cycles over anonymous memory: the file's cold pages make room.
    for p in 0..16 {
        assert_eq!(m.read(&reader, A + p * PAGE), 1000 + p);
        m.write(&worker, A + p * PAGE, 2000 + p);
    }
    let spaces = [&reader, &worker];
    for round in 0..3 {
        for p in 0..24 {
            let va = B + p * PAGE;
            let mapped = worker
                .mapper()
                .translate(VirtAddr::new(va))
                .is_ok_and(|t| t.access.writable);
            if !mapped {
                m.fault_in(Some(&spaces), &worker, va, true).unwrap();
            }
            worker.simulate_access(VirtAddr::new(va), true);
            let phys = worker.mapper().translate(VirtAddr::new(va)).unwrap().phys;
            m.mem.write_u64(phys, round * 100 + p);
        }
        m.check(&spaces);
    }
    let st = m.vm.stats();
    assert!(st.object_evictions >= 8, "file pages went: {st:?}");
    assert!(
        file.writes.load(Ordering::Relaxed) >= 8,
        "dirty ones written back"
    );
    // An evicted page left both spaces at once, and reads back in both.
    let gone = (0..16)
        .find(|p| {
            reader
                .mapper()
                .translate(VirtAddr::new(A + p * PAGE))
                .is_err()
        })
        .expect("a file page was evicted");
    assert!(worker
        .mapper()
        .translate(VirtAddr::new(A + gone * PAGE))
        .is_err());
    for p in 0..16 {
        assert_eq!(
            m.read_in(&spaces, &reader, A + p * PAGE),
            2000 + p,
            "page {p}"
        );
    }
    for p in 0..24 {
        assert_eq!(m.read_in(&spaces, &worker, B + p * PAGE), 200 + p);
    }
    m.destroy(reader);
    m.destroy(worker);
    m.close(object).unwrap();
    m.all_back();
}

#[test]
fn bad_arguments_are_refused_with_nothing_changed() {
    let mem = EmulatedMemory::new(64);
    let mut m = Machine::new(&mem, None);
    let object = m.vm.create_object(Box::new(File::new(4))).unwrap();
    let mut s = m.space();
    let rw = Prot::RW | Prot::USER;
    let size = 4 * PAGE;
    assert_eq!(
        s.map_object(&m.vm, None, 2 * PAGE, rw, object, 3 * PAGE, true),
        Err(VmError::BeyondObject {
            offset: 3 * PAGE,
            len: 2 * PAGE,
            size
        })
    );
    assert_eq!(
        s.map_object(&m.vm, None, PAGE, rw, object, 100, true),
        Err(VmError::BeyondObject {
            offset: 100,
            len: PAGE,
            size
        })
    );
    assert_eq!(s.area_count(), 0);
    let gone = m.vm.create_shared_anonymous(PAGE).unwrap();
    m.close(gone).unwrap();
    assert_eq!(
        s.map_object(&m.vm, None, PAGE, rw, gone, 0, true),
        Err(VmError::NoObject { object: gone })
    );
    assert_eq!(
        m.vm.create_shared_anonymous(100),
        Err(VmError::Unaligned { addr: 0, len: 100 })
    );
    assert_eq!(s.join_global(0xffff), Err(VmError::GlobalId { id: 0xffff }));
    // A later object reusing the closed one's slot is not the old id.
    let again = m.vm.create_shared_anonymous(PAGE).unwrap();
    assert_ne!(again, gone);
    assert_eq!(m.vm.object_stats(gone), None);
    m.destroy(s);
    m.close(object).unwrap();
    m.close(again).unwrap();
    m.all_back();
}

#[test]
fn shared_anonymous_pages_go_to_swap_and_come_back() {
    // One space over 8 frames: its own reclaim writes the object's pages
    // to swap, and they read back.
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::new(&mem, Some(8));
    assert!(m.vm.attach_swap(Box::new(MemSwap::new(256))).is_ok());
    let object = m.vm.create_shared_anonymous(32 * PAGE).unwrap();
    let mut s = m.space();
    m.map(&mut s, A, object, 32, true);
    for p in 0..32 {
        m.write(&s, A + p * PAGE, 7000 + p);
        assert!(m.vm.stats().resident_frames <= 8);
    }
    assert!(m.vm.object_stats(object).unwrap().swapped >= 24);
    for p in 0..32 {
        assert_eq!(m.read(&s, A + p * PAGE), 7000 + p, "page {p}");
    }
    m.check(&[&s]);
    m.destroy(s);
    let st = m.vm.object_stats(object).unwrap();
    assert_eq!(
        st.cached + st.swapped,
        32,
        "kept while the object is: {st:?}"
    );
    m.close(object).unwrap();
    assert_eq!(m.vm.stats().swap_slots_used, 0, "every slot back");
    m.all_back();
}

#[test]
fn a_forked_pair_sharing_anonymous_memory_swaps_under_one_policy() {
    let mem = EmulatedMemory::new(1024);
    let mut m = Machine::new(&mem, Some(16));
    assert!(m.vm.attach_swap(Box::new(MemSwap::new(256))).is_ok());
    m.global_policy(16);
    let object = m.vm.create_shared_anonymous(48 * PAGE).unwrap();
    let mut parent = m.space();
    parent.join_global(1).unwrap();
    m.map(&mut parent, A, object, 48, true);
    let mut mmu = RecordingMmu::new(m.kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut child = parent.fork(&m.vm, &mut m.frames, &mut tlb).unwrap();
    child.join_global(2).unwrap();
    let spaces = [&parent, &child];
    // The child writes, the parent reads: one page, one frame, both ways.
    for p in 0..48 {
        if !child
            .mapper()
            .translate(VirtAddr::new(A + p * PAGE))
            .is_ok_and(|t| t.access.writable)
        {
            m.fault_in(Some(&spaces), &child, A + p * PAGE, true)
                .unwrap();
        }
        child.simulate_access(VirtAddr::new(A + p * PAGE), true);
        let pa = child
            .mapper()
            .translate(VirtAddr::new(A + p * PAGE))
            .unwrap()
            .phys;
        m.mem.write_u64(pa, 9000 + p);
    }
    for p in 0..48 {
        assert_eq!(
            m.read_in(&spaces, &parent, A + p * PAGE),
            9000 + p,
            "page {p}"
        );
    }
    let st = m.vm.stats();
    assert!(st.swap_outs >= 32 && st.object_evictions >= 32, "{st:?}");
    assert!(st.resident_frames <= 16);
    m.check(&spaces);
    m.destroy(child);
    m.destroy(parent);
    m.close(object).unwrap();
    assert_eq!(m.vm.stats().swap_slots_used, 0);
    m.all_back();
}

#[test]
fn without_swap_the_global_policy_drops_other_spaces_file_pages() {
    // A reader holds 16 clean file pages; a worker with only anonymous
    // memory (no swap device) needs their frames: they are dropped.
    let mem = EmulatedMemory::new(512);
    let mut m = Machine::new(&mem, Some(20));
    m.global_policy(20);
    let file = File::new(16);
    let object = m.vm.create_object(Box::new(file.clone())).unwrap();
    let (mut reader, mut worker) = (m.space(), m.space());
    reader.join_global(1).unwrap();
    worker.join_global(2).unwrap();
    m.map(&mut reader, A, object, 16, true);
    worker
        .map_anonymous(Some(B), 16 * PAGE, Prot::RW | Prot::USER)
        .unwrap();
    for p in 0..16 {
        assert_eq!(m.read(&reader, A + p * PAGE), 1000 + p);
    }
    let spaces = [&reader, &worker];
    for p in 0..16 {
        m.fault_in(Some(&spaces), &worker, B + p * PAGE, true)
            .expect("clean file pages make room");
    }
    let st = m.vm.stats();
    assert!(st.object_evictions >= 12, "{st:?}");
    assert_eq!(
        file.writes.load(Ordering::Relaxed),
        0,
        "clean: dropped, not written"
    );
    for p in 0..16 {
        assert_eq!(
            m.read_in(&spaces, &reader, A + p * PAGE),
            1000 + p,
            "read again"
        );
    }
    m.check(&spaces);
    m.destroy(reader);
    m.destroy(worker);
    m.close(object).unwrap();
    m.all_back();
}
