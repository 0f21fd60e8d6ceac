//! The GDT and TSS: kernel and user segments, the double-fault stack (IST)
//! and the stack a trap from ring 3 lands on (RSP0).
//!
//! Each CPU has its own TSS (a TSS descriptor is marked busy when loaded,
//! and each CPU needs its own double-fault stack), so each has its own
//! GDT; the selectors are the same on every CPU.

use crate::arch::cpu::MAX_CPUS;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slot (1-based in the IDT, 0-based in the TSS) for double faults.
pub(crate) const DOUBLE_FAULT_IST: u8 = 1;
const IST_STACK_SIZE: usize = 32 * 1024;

/// A 16-byte aligned stack for one IST slot.
#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; IST_STACK_SIZE]);
/// The stack the CPU switches to (TSS RSP0) on a trap from ring 3.
static mut USER_TRAP_STACK: Stack = Stack([0; IST_STACK_SIZE]);

struct Tables {
    gdt: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
    user_code: SegmentSelector,
    user_data: SegmentSelector,
}

/// The selectors of ring 3: (code, data), RPL 3.
pub fn user_selectors() -> (SegmentSelector, SegmentSelector) {
    let t = TABLES.get().expect("gdt::init ran at boot");
    (t.user_code, t.user_data)
}

/// The selectors of ring 0: (code, data).
pub fn kernel_selectors() -> (SegmentSelector, SegmentSelector) {
    let t = TABLES.get().expect("gdt::init ran at boot");
    (t.code, t.data)
}

static TSS: spin::Once<TaskStateSegment> = spin::Once::new();
static TABLES: spin::Once<Tables> = spin::Once::new();

/// The kernel code selector (for IDT gates).
pub(crate) fn kernel_code() -> SegmentSelector {
    kernel_selectors().0
}

/// Loads the GDT with its TSS and reloads the segment registers.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let stack = &raw const DOUBLE_FAULT_STACK;
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST - 1)] =
            VirtAddr::from_ptr(stack) + IST_STACK_SIZE as u64;
        let trap_stack = &raw const USER_TRAP_STACK;
        tss.privilege_stack_table[0] = VirtAddr::from_ptr(trap_stack) + IST_STACK_SIZE as u64;
        tss
    });
    load(TABLES.call_once(|| tables_with(tss)));
}

static AP_TSS: [spin::Once<TaskStateSegment>; MAX_CPUS] = [const { spin::Once::new() }; MAX_CPUS];
static AP_TABLES: [spin::Once<Tables>; MAX_CPUS] = [const { spin::Once::new() }; MAX_CPUS];

/// Loads CPU `cpu`'s own GDT and TSS (built on its first call), with its
/// double-fault stack at `ist_top` (the CPU never enters ring 3: RSP0 is
/// the same stack).
pub fn init_ap(cpu: usize, ist_top: u64) {
    let tss = AP_TSS[cpu % MAX_CPUS].call_once(|| {
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST - 1)] = VirtAddr::new(ist_top);
        tss.privilege_stack_table[0] = VirtAddr::new(ist_top);
        tss
    });
    load(AP_TABLES[cpu % MAX_CPUS].call_once(|| tables_with(tss)));
}

fn tables_with(tss: &'static TaskStateSegment) -> Tables {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss = gdt.append(Descriptor::tss_segment(tss));
    let user_data = gdt.append(Descriptor::user_data_segment());
    let user_code = gdt.append(Descriptor::user_code_segment());
    Tables {
        gdt,
        code,
        data,
        tss,
        user_code,
        user_data,
    }
}

fn load(tables: &'static Tables) {
    tables.gdt.load();
    // SAFETY: the selectors index the GDT just loaded, which is 'static;
    // code is 64-bit ring 0, data is writable, the TSS descriptor is valid.
    unsafe {
        use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
        CS::set_reg(tables.code);
        SS::set_reg(tables.data);
        DS::set_reg(tables.data);
        ES::set_reg(tables.data);
        x86_64::instructions::tables::load_tss(tables.tss);
    }
}
