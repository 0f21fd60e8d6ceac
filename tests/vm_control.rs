//! Controlling memory per address space: what a space holds
//! (`VmSpace::usage`) and the out-of-memory victim choice built on it.

use kmem::paging::PageTables;
use kmem::smp::Tlb;
use kmem::testing::mmu::RecordingMmu;
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use kmem::vm::oom::{badness, choose_victim, OomCandidate, SpaceUsage, NEVER};
use kmem::vm::{FaultAccess, MemSwap, Prot, Vm, VmSpace};
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
