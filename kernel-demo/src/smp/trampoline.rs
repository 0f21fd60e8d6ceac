//! The application processors' way in: a real-mode trampoline copied to
//! [`TRAMPOLINE`], which goes straight to long mode on temporary page
//! tables (the kernel half of the kernel's PML4 plus an identity map of
//! the low 2 MiB, all below 1 MiB as a 32-bit CR3 needs) and jumps to a
//! Rust entry in the higher half on the stack the bootstrap CPU left in
//! its data block.

use crate::boot::phys_to_virt;
use core::sync::atomic::{fence, Ordering};

/// Physical address of the trampoline code (start-up IPI page 8).
pub const TRAMPOLINE: u64 = 0x8000;
/// Temporary PML4, PDPT and page directory (three pages after the code).
const PML4: u64 = 0x9000;
const PDPT: u64 = 0xA000;
const PD: u64 = 0xB000;

core::arch::global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .balign 16
    .global kmem_ap_trampoline
kmem_ap_trampoline:
    .code16
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl tr_gdt_ptr - kmem_ap_trampoline + {base}
    mov %cr4, %eax
    or $0xA0, %eax                      /* PAE | PGE */
    mov %eax, %cr4
    movl kmem_ap_tr_cr3 - kmem_ap_trampoline + {base}, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx               /* EFER */
    rdmsr
    or $0x900, %eax                     /* LME | NXE */
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax                /* PG | WP | PE */
    mov %eax, %cr0
    ljmpl $0x08, $tr_long - kmem_ap_trampoline + {base}

    .code64
tr_long:
    "#,
    crate::boot::load_data_segments!(),
    r#"
    mov kmem_ap_tr_stack - kmem_ap_trampoline + {base}, %rsp
    mov kmem_ap_tr_arg - kmem_ap_trampoline + {base}, %rdi
    mov kmem_ap_tr_entry - kmem_ap_trampoline + {base}, %rax
    xor %ebp, %ebp
    call *%rax
1:  hlt
    jmp 1b

    .balign 8
tr_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF            /* 64-bit code */
    .quad 0x00CF92000000FFFF            /* data */
tr_gdt_ptr:
    .word tr_gdt_ptr - tr_gdt - 1
    .long tr_gdt - kmem_ap_trampoline + {base}
    .balign 8
    .global kmem_ap_tr_cr3
kmem_ap_tr_cr3:
    .quad 0
    .global kmem_ap_tr_stack
kmem_ap_tr_stack:
    .quad 0
    .global kmem_ap_tr_entry
kmem_ap_tr_entry:
    .quad 0
    .global kmem_ap_tr_arg
kmem_ap_tr_arg:
    .quad 0
    .global kmem_ap_trampoline_end
kmem_ap_trampoline_end:
    .text
    "#,
    base = const TRAMPOLINE,
    options(att_syntax)
);

extern "C" {
    static kmem_ap_trampoline: u8;
    static kmem_ap_trampoline_end: u8;
    static kmem_ap_tr_cr3: u8;
    static kmem_ap_tr_stack: u8;
    static kmem_ap_tr_entry: u8;
    static kmem_ap_tr_arg: u8;
}

/// Offset of a trampoline symbol from its start.
fn offset(sym: *const u8) -> usize {
    sym as usize - &raw const kmem_ap_trampoline as usize
}

/// Copies the trampoline to low memory and builds its page tables from
/// `kernel_pml4` (the active kernel PML4, physical).
///
/// # Safety
/// The pages at 0x8000..0xC000 are reserved from the frame allocator
/// (the low 1 MiB is), in the direct map, and no CPU runs the trampoline.
pub unsafe fn install(kernel_pml4: u64) {
    let len = offset(&raw const kmem_ap_trampoline_end);
    assert!(len <= 4096, "the AP trampoline outgrew its page");
    // SAFETY: the source is the trampoline image in .rodata (len bytes);
    // the destination is the reserved low page, in the direct map.
    unsafe {
        core::ptr::copy_nonoverlapping(&raw const kmem_ap_trampoline, phys_to_virt(TRAMPOLINE), len)
    };
    let table = |phys: u64| phys_to_virt(phys).cast::<u64>();
    // SAFETY: the three table pages are reserved low memory in the direct
    // map (per the caller); the kernel PML4 is a live table frame there.
    unsafe {
        table(PML4).write_bytes(0, 512);
        table(PDPT).write_bytes(0, 512);
        table(PD).write_bytes(0, 512);
        // The kernel half as the kernel's PML4 has it: the same PDPTs.
        core::ptr::copy_nonoverlapping(table(kernel_pml4).add(256), table(PML4).add(256), 256);
        table(PML4).write(PDPT | 3);
        table(PDPT).write(PD | 3);
        table(PD).write(0x83); // 2 MiB at 0: present, writable, huge
    }
    // SAFETY: the data block is inside the copied page.
    unsafe { field(&raw const kmem_ap_tr_cr3).write_volatile(PML4) };
}

fn field(sym: *const u8) -> *mut u64 {
    phys_to_virt(TRAMPOLINE + offset(sym) as u64).cast()
}

/// Fills the data block for the next CPU to start: its stack, the entry
/// and the argument the entry receives.
pub fn prepare(stack_top: u64, entry: extern "C" fn(u64) -> !, arg: u64) {
    // SAFETY: the fields are in the copied trampoline page (see `install`);
    // only the bootstrap CPU writes them, between start-ups.
    unsafe {
        field(&raw const kmem_ap_tr_stack).write_volatile(stack_top);
        field(&raw const kmem_ap_tr_entry).write_volatile(entry as usize as u64);
        field(&raw const kmem_ap_tr_arg).write_volatile(arg);
    }
    fence(Ordering::SeqCst);
}

/// The start-up IPI's page number.
pub const fn startup_page() -> u8 {
    (TRAMPOLINE >> 12) as u8
}
