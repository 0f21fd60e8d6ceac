//! `kmem::vm` on real paging: ring-3 processes, each in its own address
//! space built by kmem::vm with a demand-paged heap and stack; fork with
//! copy-on-write; processes that touch kernel memory, jump into kernel
//! text or touch unmapped or guard pages are ended with the reason while
//! the others go on; SMAP and SMEP; no frame leaks over many cycles.
// kmem-vm: mem=128M
#![no_std]
#![no_main]

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec;
use core::sync::atomic::{AtomicBool, Ordering};
use kernel_demo::mm::heap::HEAP;
use kernel_demo::mm::memory::direct_map;
use kernel_demo::mm::memory::{with_memory, FRAMES};
use kernel_demo::user::process::{
    enable_smep_smap, run_all, vm_stats, with_tlb, with_vm, End, Process, HEAP_BASE, STACK_PAGES,
    STACK_TOP,
};
use kernel_demo::user::programs::Program;
use kernel_demo::user::{probe_exec, probe_read, probe_read_user, ProbeFault};
use kmem::paging::{Mmu, X86Mmu};
use kmem::vm::{FaultAccess, FaultReason, ObjectId, Pager, PagerError, Prot, VmError};
use x86_64::VirtAddr;

static KERNEL_SECRET: u64 = 0x5ec2e7;

/// Where the processes map objects.
const SHARED: u64 = 0x5000_0000;

/// A file in kernel memory whose reads and writes can be made to fail.
struct MemFile {
    pages: spin::Mutex<alloc::vec::Vec<[u8; 4096]>>,
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
}

impl MemFile {
    fn new(n: usize) -> Self {
        let mut pages = alloc::vec![[0u8; 4096]; n];
        for (i, p) in pages.iter_mut().enumerate() {
            p[..8].copy_from_slice(&(0xf11e_0000 + i as u64).to_le_bytes());
        }
        Self {
            pages: spin::Mutex::new(pages),
            fail_reads: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
        }
    }

    fn word(&self, i: usize) -> u64 {
        u64::from_le_bytes(self.pages.lock()[i][..8].try_into().unwrap())
    }
}

impl Pager for MemFile {
    fn pages(&self) -> u64 {
        self.pages.lock().len() as u64
    }
    fn read(&self, index: u64, page: &mut [u8; 4096]) -> Result<(), PagerError> {
        if self.fail_reads.load(Ordering::Relaxed) {
            return Err(PagerError::Io { index });
        }
        *page = self.pages.lock()[index as usize];
        Ok(())
    }
    fn write(&self, index: u64, page: &[u8; 4096]) -> Result<(), PagerError> {
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(PagerError::Refused { index });
        }
        self.pages.lock()[index as usize] = *page;
        Ok(())
    }
}

/// A process running `program` with `object` mapped shared at [`SHARED`].
fn with_object(pid: u64, program: Program, arg: u64, object: ObjectId, pages: u64) -> Process {
    let mut p = Process::spawn(pid, program, arg).unwrap();
    let rw = Prot::RW | Prot::USER;
    with_vm(|vm| {
        p.space
            .map_object(vm, Some(SHARED), pages * 4096, rw, object, 0, true)
    })
    .unwrap();
    p
}

fn close(object: ObjectId) -> Result<(), VmError> {
    let cpu = kernel_demo::arch::cpus::cpu_index();
    with_vm(|vm| vm.close_object(object, &direct_map(), cpu, &mut &FRAMES))
}

fn killed(reason: FaultReason) -> impl Fn(&End) -> bool {
    move |e| matches!(e, End::Killed(f) if f.reason == reason)
}

/// Frames free plus frames the heap holds: what must come back.
fn frames_accounted() -> u64 {
    let heap = HEAP.stats().expect("heap").pages_held as u64;
    FRAMES.with(|f| f.stats().free) + heap
}

kernel_demo::test_kernel! {
    setup = kernel_demo::mm::kernel_space::enter;

    /// Two processes, the same heap address, each sees its own data; heap
    /// and stack pages come on demand.
    fn processes_see_their_own_memory() {
        let before = vm_stats();
        let a = Process::spawn(1, Program::Tag, 0x1111).unwrap();
        let b = Process::spawn(2, Program::Tag, 0x2222).unwrap();
        let done = run_all(vec![a, b]);
        assert_eq!(done.len(), 2);
        for (pid, reports, end) in &done {
            let tag = if *pid == 1 { 0x1111 } else { 0x2222 };
            assert_eq!(*end, End::Exited(0), "pid {pid}");
            // heap[0] holds its own tag; then the sum of tag + i, i < 8.
            assert_eq!(reports, &vec![tag, 8 * tag + 28], "pid {pid}");
        }
        let after = vm_stats();
        // 8 heap pages + 1 (heap[0] shares page 0) and stack pages, each process.
        assert!(after.zero_fills - before.zero_fills >= 2 * 9, "{after:?}");
    }

    /// A fork: the child sees the parent's value, then each writes its own
    /// at the same address without seeing the other's.
    fn fork_diverges_after_a_write() {
        let before = vm_stats();
        let p = Process::spawn(1, Program::Fork, 0x7777).unwrap();
        let done = run_all(vec![p]);
        assert_eq!(done.len(), 2, "parent and child");
        let (_, parent, pend) = &done[0];
        let (_, child, cend) = &done[1];
        assert_eq!((*pend, parent.as_slice()), (End::Exited(0), &[0x9a7e][..]));
        assert_eq!((*cend, child.as_slice()), (End::Exited(1), &[0x7777, 0xc41d][..]));
        let after = vm_stats();
        assert!(after.cow_copies + after.cow_reuses > before.cow_copies + before.cow_reuses);
        assert_eq!(after.shared_frames, 0, "every share ended with the processes");
    }

    /// Bad processes are ended with the reason; the good one runs to the end.
    fn bad_processes_end_others_go_on() {
        let secret = &raw const KERNEL_SECRET as u64;
        let text = kernel_demo::user::programs::code as *const () as u64;
        let guard = STACK_TOP - (STACK_PAGES + 1) * 4096;
        let procs = vec![
            Process::spawn(1, Program::Read, secret).unwrap(),
            Process::spawn(2, Program::Jump, text).unwrap(),
            Process::spawn(3, Program::Write, 0x5000_0000).unwrap(),
            Process::spawn(4, Program::Write, guard).unwrap(),
            Process::spawn(5, Program::Tag, 0x3333).unwrap(),
            Process::spawn(6, Program::Write, HEAP_BASE + 8).unwrap(),
        ];
        let done = run_all(procs);
        let end = |pid: u64| done.iter().find(|d| d.0 == pid).unwrap().2;
        assert!(killed(FaultReason::UserToKernel)(&end(1)), "{:?}", end(1));
        assert!(done[0].1.is_empty(), "the kernel's secret never reached ring 3");
        assert!(killed(FaultReason::UserToKernel)(&end(2)), "{:?}", end(2));
        assert!(killed(FaultReason::NoArea)(&end(3)), "{:?}", end(3));
        assert!(killed(FaultReason::Guard)(&end(4)), "{:?}", end(4));
        assert_eq!(end(5), End::Exited(0));
        assert_eq!(done[4].1, vec![0x3333, 8 * 0x3333 + 28]);
        assert_eq!(end(6), End::Exited(0));
    }

    /// With SMAP on, a plain kernel read of a user page faults; with
    /// access allowed (`stac`) it reads the process's data.
    fn smap_blocks_kernel_reads_of_user_pages() {
        let (_, smap) = enable_smep_smap();
        assert!(smap, "QEMU -cpu max has SMAP");
        let p = Process::spawn(1, Program::Tag, 0).unwrap();
        with_vm(|vm| {
            with_tlb(|tlb| {
                let heap = VirtAddr::new(HEAP_BASE);
                p.space.handle_fault(vm, heap, FaultAccess::write(false), &mut &FRAMES, tlb)
            })
            .unwrap()
        });
        let phys = p.space.mapper().translate(VirtAddr::new(HEAP_BASE)).unwrap().phys;
        // SAFETY: a private frame of `p`, through the direct map.
        unsafe { kernel_demo::boot::phys_to_virt(phys.as_u64()).cast::<u64>().write(0xda7a) };
        let kernel = X86Mmu.cr3();
        // SAFETY: the space shares the kernel half; switched back below.
        unsafe { X86Mmu.set_cr3(p.space.pml4()) };
        let plain = probe_read(HEAP_BASE);
        let allowed = probe_read_user(HEAP_BASE);
        // SAFETY: the kernel's own tables.
        unsafe { X86Mmu.set_cr3(kernel) };
        assert_eq!(plain, Err(ProbeFault));
        assert_eq!(allowed, Ok(0xda7a));
        with_vm(|vm| with_tlb(|tlb| p.space.destroy(vm, &mut &FRAMES, tlb))).map_err(|e| e.1).unwrap();
    }

    /// With SMEP on, kernel execution of a user page faults.
    fn smep_blocks_kernel_execution_of_user_pages() {
        let (smep, _) = enable_smep_smap();
        assert!(smep, "QEMU -cpu max has SMEP");
        let p = Process::spawn(1, Program::Tag, 0).unwrap();
        let code = kernel_demo::user::process::CODE_BASE;
        assert!(p.peek(code).is_some(), "code is mapped");
        let kernel = X86Mmu.cr3();
        // SAFETY: the space shares the kernel half; switched back below.
        unsafe { X86Mmu.set_cr3(p.space.pml4()) };
        let r = probe_exec(code);
        // SAFETY: the kernel's own tables.
        unsafe { X86Mmu.set_cr3(kernel) };
        assert_eq!(r, Err(ProbeFault));
        with_vm(|vm| with_tlb(|tlb| p.space.destroy(vm, &mut &FRAMES, tlb))).map_err(|e| e.1).unwrap();
    }

    /// A shared anonymous mapping survives fork shared: the child's
    /// message reaches the parent through it while their heaps diverge.
    fn a_shared_anonymous_mapping_carries_a_message_across_fork() {
        let before = kernel_demo::overcommit::accounted_frames();
        let object = with_vm(|vm| vm.create_shared_anonymous(4096)).unwrap();
        let done = run_all(vec![with_object(1, Program::Share, SHARED, object, 1)]);
        assert_eq!(done.len(), 2);
        assert_eq!((done[1].2, done[1].1.as_slice()), (End::Exited(1), &[0x7a9][..]), "child");
        assert_eq!((done[0].2, done[0].1.as_slice()), (End::Exited(0), &[0x5a4ed, 0x7a9][..]), "parent");
        assert_eq!(with_vm(|vm| vm.object_stats(object)).unwrap().cached, 1, "kept while the object is");
        close(object).unwrap();
        assert_eq!(kernel_demo::overcommit::accounted_frames(), before);
    }

    /// A pager that fails reads ends the process touching the page with
    /// the pager's error (the kernel's SIGBUS) while a process reading a
    /// good page goes on; one that refuses writes keeps the page dirty
    /// until the object can be closed, losing nothing.
    fn a_failing_pager_ends_the_reader_and_loses_no_write() {
        let before = kernel_demo::overcommit::accounted_frames();
        let file = Arc::new(MemFile::new(4));
        let object = with_vm(|vm| vm.create_object(alloc::boxed::Box::new(file.clone()))).unwrap();
        file.fail_reads.store(true, Ordering::Relaxed);
        let done = run_all(vec![with_object(1, Program::Read, SHARED + 4096, object, 4)]);
        let bus = FaultReason::Pager(PagerError::Io { index: 1 });
        assert!(killed(bus)(&done[0].2), "{:?}", done[0].2);
        assert!(done[0].1.is_empty());
        file.fail_reads.store(false, Ordering::Relaxed);
        let done = run_all(vec![with_object(1, Program::Read, SHARED + 4096, object, 4)]);
        assert_eq!((done[0].2, done[0].1.as_slice()), (End::Exited(0), &[0xf11e_0001][..]));
        // The writer's exit unmaps the page: its write-back is refused.
        file.fail_writes.store(true, Ordering::Relaxed);
        let done = run_all(vec![with_object(1, Program::Write, SHARED + 2 * 4096, object, 4)]);
        assert_eq!(done[0].2, End::Exited(0));
        let st = with_vm(|vm| vm.object_stats(object)).unwrap();
        assert_eq!((st.cached, st.dirty), (1, 1), "{st:?}");
        assert_eq!(close(object), Err(VmError::Pager(PagerError::Refused { index: 2 })));
        file.fail_writes.store(false, Ordering::Relaxed);
        close(object).unwrap();
        assert_eq!(file.word(2), 1, "the process's write reached the file");
        assert!(vm_stats().pager_errors >= 3);
        assert_eq!(kernel_demo::overcommit::accounted_frames(), before);
    }

    /// Transparent huge pages on real paging: 8 MiB touched one store a
    /// page take 4 faults, each a 2 MiB leaf the MMU walks; with them off,
    /// 2048 faults; every word checked (inside `touch`), every frame back.
    fn huge_pages_take_one_fault_per_2_mib() {
        let before = kernel_demo::overcommit::accounted_frames();
        let on = kernel_demo::huge::touch(8 << 20, true);
        let off = kernel_demo::huge::touch(8 << 20, false);
        assert_eq!((on.faults, on.huge_faults), (4, 4), "{on:?}");
        assert_eq!((off.faults, off.huge_faults), (2048, 0), "{off:?}");
        assert!(on.tables < off.tables, "{on:?} {off:?}");
        assert_eq!(kernel_demo::overcommit::accounted_frames(), before);
    }

    /// A huge page split under the CPU (a partial munmap, then mprotect):
    /// the words left read back through the new 4 KiB entries, a store to
    /// the read-only part is refused, the unmapped pages fault.
    fn a_huge_page_splits_under_the_cpu() {
        use kernel_demo::overcommit::{empty_space, in_space};
        use kmem::paging::LeafSize;
        const AT: u64 = 0x4000_0000;
        let before = kernel_demo::overcommit::accounted_frames();
        kernel_demo::user::process::configure_vm(|vm| {
            vm.set_huge_frames(Some(alloc::boxed::Box::new(kernel_demo::mm::memory::HugeRuns)))
        });
        let mut s = empty_space();
        s.map_anonymous(Some(AT), 2 << 20, Prot::RW).unwrap();
        let (mut s, ()) = in_space(s, || {
            for p in 0..512u64 {
                // SAFETY: the area of the active space; a fault maps the page.
                unsafe { ((AT + p * 4096) as *mut u64).write_volatile(p + 1) };
            }
        });
        assert_eq!(s.mapper().translate(VirtAddr::new(AT)).unwrap().size, LeafSize::Size2MiB);
        with_vm(|vm| with_tlb(|tlb| s.unmap(AT + 100 * 4096, 4096, vm, &mut &FRAMES, tlb))).unwrap();
        with_vm(|vm| with_tlb(|tlb| s.protect(AT, 50 * 4096, Prot::READ, vm, &mut &FRAMES, tlb))).unwrap();
        assert_eq!(s.mapper().translate(VirtAddr::new(AT)).unwrap().size, LeafSize::Size4KiB);
        let refused = with_vm(|vm| with_tlb(|tlb| s.handle_fault(vm, VirtAddr::new(AT), FaultAccess::write(false), &mut &FRAMES, tlb)));
        assert_eq!(refused.map_err(|e| e.reason), Err(FaultReason::WriteToReadOnly));
        let (s, sum) = in_space(s, || {
            (0..512u64)
                .filter(|&p| p != 100)
                // SAFETY: as above (the page at 100 is unmapped: skipped).
                .map(|p| unsafe { ((AT + p * 4096) as *const u64).read_volatile() } - (p + 1))
                .sum::<u64>()
        });
        assert_eq!(sum, 0, "every word as written");
        with_vm(|vm| s.check_invariants(vm)).unwrap();
        with_vm(|vm| with_tlb(|tlb| s.destroy(vm, &mut &FRAMES, tlb))).map_err(|e| e.1).unwrap();
        kernel_demo::user::process::configure_vm(|vm| vm.set_huge_frames(None));
        assert_eq!(vm_stats().huge_splits, 1);
        assert_eq!(kernel_demo::overcommit::accounted_frames(), before);
    }

    /// Two thousand spawn / fork / touch / exit cycles: every frame, page
    /// table and share comes back.
    fn fork_touch_exit_cycles_leak_nothing() {
        // Warm-up: the heap grows to its working size first.
        for _ in 0..4 {
            run_all(vec![Process::spawn(1, Program::Fork, 1).unwrap()]);
        }
        let before = frames_accounted();
        for i in 0..2000 {
            let done = run_all(vec![Process::spawn(1, Program::Fork, i).unwrap()]);
            assert_eq!(done.len(), 2);
        }
        assert_eq!(vm_stats().shared_frames, 0);
        assert_eq!(frames_accounted(), before, "frames lost over 2000 cycles");
        // The kernel's own tables still translate the heap.
        with_memory(|m| assert!(m.mapper.translate(VirtAddr::new(kernel_demo::mm::heap::HEAP_START + 4096)).is_ok()));
    }
}
