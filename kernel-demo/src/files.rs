//! A file on the virtio disk, mapped through `kmem::vm`'s page cache: a
//! run of the disk's pages stands for the file ([`DiskFile`], a
//! [`kmem::vm::Pager`]), mapped shared in a kernel-mode workload over a
//! frame limit smaller than the file ([`run`]): read, written, synced,
//! read back after its pages were evicted, and checked on the disk once
//! the object is closed.

use crate::mm::memory::FRAMES;
use crate::mm::swap_disk::LockedDisk;
use crate::overcommit::{empty_space, in_space};
use crate::user::process::{configure_vm, with_tlb, with_vm};
use alloc::boxed::Box;
use alloc::sync::Arc;
use kmem::vm::swap::PAGE_BYTES;
use kmem::vm::{ObjectStats, Pager, PagerError, Prot, SwapDevice, VmStats};

/// Where the file is mapped.
const BASE: u64 = 0x6000_0000;

/// Pages `first..first + pages` of a disk as a file.
pub struct DiskFile {
    disk: Arc<LockedDisk>,
    first: u64,
    pages: u64,
}

impl DiskFile {
    /// The file of `pages` pages from disk page `first` on.
    pub fn new(disk: Arc<LockedDisk>, first: u64, pages: u64) -> Self {
        Self { disk, first, pages }
    }
}

impl Pager for DiskFile {
    fn pages(&self) -> u64 {
        self.pages
    }

    fn read(&self, index: u64, page: &mut [u8; PAGE_BYTES]) -> Result<(), PagerError> {
        self.disk
            .read(self.first + index, &mut [page])
            .map_err(|_| PagerError::Io { index })
    }

    fn write(&self, index: u64, page: &[u8; PAGE_BYTES]) -> Result<(), PagerError> {
        self.disk
            .write(self.first + index, &[page])
            .map_err(|_| PagerError::Io { index })
    }
}

/// Word `i` of page `page` of the file as written in `version` (0: as
/// made on the disk).
pub fn word(page: u64, version: u64, i: u64) -> u64 {
    (version << 48) ^ (page << 32) ^ i.wrapping_mul(0x9e37_79b9)
}

/// What [`run`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The object's counters before it was closed.
    pub object: ObjectStats,
    /// Pages `msync` wrote.
    pub synced: u64,
    /// The vm's events over the run.
    pub vm: VmStats,
    /// Pages checked on the disk after the close.
    pub checked_on_disk: u64,
}

/// Makes a file of `pages` pages on `disk` from page `first`, maps it
/// shared over `limit` frames (no swap: clean pages are dropped, dirty ones
/// written back), reads every page, rewrites every other one, syncs, reads
/// them all back (most from the disk again), unmaps, closes, and checks
/// every page on the disk. Panics on a wrong word.
pub fn run(disk: Arc<LockedDisk>, first: u64, pages: u64, limit: u64) -> Report {
    let mut page = [0u8; PAGE_BYTES];
    for p in 0..pages {
        fill(&mut page, p, 0);
        disk.write(first + p, &[&page]).expect("the file's pages");
    }
    let file = DiskFile::new(disk.clone(), first, pages);
    let object = with_vm(|vm| vm.create_object(Box::new(file))).expect("the file's object");
    configure_vm(|vm| vm.set_frame_limit(Some(limit)));
    let before = with_vm(|vm| vm.stats());
    let mut space = empty_space();
    with_vm(|vm| space.map_object(vm, Some(BASE), pages * 4096, Prot::RW, object, 0, true))
        .expect("the file's mapping");
    let version = |p: u64| u64::from(p.is_multiple_of(2));
    let (space, ()) = in_space(space, || {
        for p in 0..pages {
            check(p, 0);
        }
        for p in (0..pages).step_by(2) {
            write(p, 1);
        }
    });
    let synced =
        with_vm(|vm| with_tlb(|tlb| space.sync(vm, BASE, pages * 4096, &mut &FRAMES, tlb)))
            .expect("msync");
    let (space, ()) = in_space(space, || {
        for p in 0..pages {
            check(p, version(p));
        }
    });
    let vm_stats = with_vm(|vm| vm.stats());
    with_vm(|vm| with_tlb(|tlb| space.destroy(vm, &mut &FRAMES, tlb)))
        .map_err(|e| e.1)
        .expect("teardown");
    let object_stats = with_vm(|vm| vm.object_stats(object)).expect("the object");
    let phys = crate::mm::memory::direct_map();
    let cpu = crate::arch::cpus::cpu_index();
    with_vm(|vm| vm.close_object(object, &phys, cpu, &mut &FRAMES)).expect("close");
    configure_vm(|vm| vm.set_frame_limit(None));
    for p in 0..pages {
        disk.read(first + p, &mut [&mut page])
            .expect("a page of the file");
        for i in 0..512 {
            let w = u64::from_le_bytes(page[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            assert_eq!(
                w,
                word(p, version(p), i as u64),
                "page {p} word {i} on the disk"
            );
        }
    }
    Report {
        object: object_stats,
        synced,
        vm: vm_stats.since(before),
        checked_on_disk: pages,
    }
}

fn fill(page: &mut [u8; PAGE_BYTES], p: u64, version: u64) {
    for i in 0..512 {
        page[i * 8..i * 8 + 8].copy_from_slice(&word(p, version, i as u64).to_le_bytes());
    }
}

fn write(p: u64, version: u64) {
    let at = (BASE + p * 4096) as *mut u64;
    for i in 0..512 {
        // SAFETY: the file's mapping in the active space; faults map the page.
        unsafe { at.add(i).write_volatile(word(p, version, i as u64)) };
    }
}

fn check(p: u64, version: u64) {
    let at = (BASE + p * 4096) as *const u64;
    for i in 0..512 {
        // SAFETY: as in `write`.
        let w = unsafe { at.add(i).read_volatile() };
        assert_eq!(
            w,
            word(p, version, i as u64),
            "page {p} word {i} of the file"
        );
    }
}
