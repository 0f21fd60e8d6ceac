//! Boot through PVH (QEMU's `-kernel`) or Multiboot2 (GRUB): the 32-bit entry
//! stubs, the switch to long mode, and what the loader hands over (memory
//! map, command line).
//!
//! QEMU's `-kernel` loads an ELF carrying a Xen PVH note and jumps to the
//! note's entry in 32-bit protected mode, paging off, `ebx` = physical
//! address of the start info. GRUB finds the Multiboot2 header in the first
//! 32 KiB of the same ELF and enters `_mb2_start` in the same state, with
//! `eax` = the Multiboot2 magic and `ebx` = the boot information. The stub identity-maps the first 64 GiB with
//! 2 MiB pages (enough for every RAM size the demo runs with) and again at
//! [`DIRECT_MAP`], maps the first GiB at the kernel's higher-half base
//! (`kernel.ld`), enables long mode and calls [`rust_entry`] on the boot
//! stack, in the higher half. Rust code reaches physical memory through the
//! direct map only, so nothing changes when the kernel replaces these boot
//! tables with its own and drops the identity map.

pub mod image;

use crate::text::{FixedStr, Size};
use core::fmt;
use kmem::memory_map::e820::E820Entry;
use kmem::memory_map::multiboot2 as multiboot2_map;
use kmem::memory_map::{Region, RegionKind};

/// AT&T instructions that load the boot GDT's data selector (0x10) into
/// ds, es and ss and clear fs and gs: the first thing 64-bit code does after
/// the far jump, on the boot CPU and on each AP.
macro_rules! load_data_segments {
    () => {
        "mov $0x10, %ax\nmov %ax, %ds\nmov %ax, %es\nmov %ax, %ss\n\
         xor %ax, %ax\nmov %ax, %fs\nmov %ax, %gs\n"
    };
}
pub(crate) use load_data_segments;

/// Size of the boot stack (the stack every kernel runs its `main` on).
pub const BOOT_STACK_SIZE: usize = 2 * 1024 * 1024;
/// Where all physical memory is mapped: physical `p` is at `DIRECT_MAP + p`.
/// The boot tables map 64 GiB there; the kernel's own tables map all RAM.
pub const DIRECT_MAP: u64 = 0xFFFF_8000_0000_0000;

/// The virtual address of physical `phys` in the direct map.
pub fn phys_to_virt(phys: u64) -> *mut u8 {
    core::ptr::with_exposed_provenance_mut(DIRECT_MAP.wrapping_add(phys) as usize)
}

/// Bytes of physical memory the boot stub identity-maps.
pub const IDENTITY_MAPPED: u64 = 64 << 30;

const START_INFO_MAGIC: u32 = 0x336e_c578;
/// What GRUB leaves in `eax` when it enters a Multiboot2 kernel.
const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;
/// Capacity of the copied memory map.
pub const MAX_REGIONS: usize = 128;
/// Capacity of the copied command line; longer ones are cut.
pub const CMDLINE_CAPACITY: usize = 512;

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18            /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad _pvh_start
    .balign 4

    /* The Multiboot2 header: magic, architecture 0 (i386), length,
       checksum; an entry-address tag; the end tag. */
    .section .multiboot2, "a"
    .balign 8
mb2_header:
    .long 0xe85250d6
    .long 0
    .long mb2_header_end - mb2_header
    .long -(0xe85250d6 + (mb2_header_end - mb2_header))
    .balign 8
    .short 3, 0
    .long 12
    .long _mb2_start
    .balign 8
    .short 0, 0
    .long 8
mb2_header_end:

    .section .text.boot, "ax"
    .code32
    .global _mb2_start
_mb2_start:
    cli
    cmp ${mb2_magic}, %eax
    jne 4f
    mov $1, %ebp                    /* protocol 1: Multiboot2 */
    jmp 5f
4:  hlt
    jmp 4b

    .global _pvh_start
_pvh_start:
    cli
    xor %ebp, %ebp                  /* protocol 0: PVH */
5:  cld
    mov %ebx, %esi                  /* keep the boot information address */
    mov $boot_stack32_top, %esp

    /* PML4[0] -> identity PDPT, PML4[256] -> the same PDPT (the direct
       map at 0xffff800000000000), PML4[511] -> higher-half PDPT */
    mov $boot_pdpt, %eax
    or $3, %eax
    mov %eax, boot_pml4
    mov %eax, boot_pml4 + 256 * 8
    mov $boot_pdpt_high, %eax
    or $3, %eax
    mov %eax, boot_pml4 + 511 * 8

    /* identity PDPT[i] -> PD i, i in 0..64 */
    mov $boot_pds, %eax
    or $3, %eax
    mov $boot_pdpt, %edi
    mov $64, %ecx
1:  mov %eax, (%edi)
    movl $0, 4(%edi)
    add $4096, %eax
    add $8, %edi
    loop 1b

    /* higher-half PDPT[510] (0xffffffff80000000) -> PD 0: the first GiB */
    mov $boot_pds, %eax
    or $3, %eax
    mov %eax, boot_pdpt_high + 510 * 8

    /* PD entries: 32768 x 2 MiB, present | writable | huge */
    mov $boot_pds, %edi
    xor %eax, %eax
    xor %edx, %edx
    mov $32768, %ecx
2:  mov %eax, %ebx
    or $0x83, %ebx
    mov %ebx, (%edi)
    mov %edx, 4(%edi)
    add $0x200000, %eax
    adc $0, %edx
    add $8, %edi
    loop 2b

    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                  /* PAE */
    mov %eax, %cr4
    mov $0xC0000080, %ecx           /* EFER */
    rdmsr
    or $0x100, %eax                 /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax            /* PG | PE */
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    mov $long_mode_entry, %eax
    push $0x08
    push %eax
    lret

    .code64
long_mode_entry:
    "#,
    load_data_segments!(),
    r#"
    movabs $boot_stack_top, %rsp    /* from here on: the higher half */
    mov %esi, %edi                  /* boot information; zero-extends */
    mov %ebp, %esi                  /* protocol */
    xor %rbp, %rbp
    movabs ${entry}, %rax
    call *%rax
3:  hlt
    jmp 3b

    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF        /* 64-bit code */
    .quad 0x00CF92000000FFFF        /* data */
boot_gdt_ptr:
    .word boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pdpt_high:
    .skip 4096
boot_pds:
    .skip 4096 * 64
    .skip 256
boot_stack32_top:

    .section .bss.stack, "aw", @nobits
    .balign 4096
    .global boot_stack_guard
boot_stack_guard:                   /* unmapped by the kernel's own tables */
    .skip 4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip {stack_size}
boot_stack_top:
    "#,
    entry = sym rust_entry,
    stack_size = const BOOT_STACK_SIZE,
    mb2_magic = const MULTIBOOT2_MAGIC,
    options(att_syntax)
);

extern "C" {
    static __kernel_phys_start: u8;
    static __kernel_phys_end: u8;
    static __boot_phys_end: u8;
    static boot_stack_bottom: u8;
}

/// The kernel's entry in Rust, called by the stub on the boot stack with the
/// loader's boot information and which protocol handed it over: starts the
/// console, keeps the handover for [`accept`] and runs the kernel binary's
/// entry (its `entry_point!`), which brings the rest up.
extern "C" fn rust_entry(boot_info: u64, protocol: u64) -> ! {
    crate::dev::console::init();
    HANDOVER.call_once(|| (boot_info, protocol));
    extern "Rust" {
        fn __kernel_demo_main() -> !;
    }
    // SAFETY: every kernel binary defines `__kernel_demo_main` through the
    // `entry_point!` or `test_kernel!` macro, which checks its signature.
    unsafe { __kernel_demo_main() }
}

/// The loader's information address and protocol (1: Multiboot2, else PVH).
static HANDOVER: spin::Once<(u64, u64)> = spin::Once::new();

/// Reads what the loader handed over into [`info`] (once; later calls do
/// nothing). Bad boot information is fatal. Run after the IDT is loaded,
/// so that a fault while reading it is reported, not a triple fault.
pub fn accept() {
    let &(boot_info, protocol) = HANDOVER
        .get()
        .expect("the entry stub hands over before the kernel starts");
    BOOT_INFO.call_once(|| {
        let parsed = match protocol {
            1 => BootInfo::from_multiboot2(boot_info),
            _ => BootInfo::from_pvh(boot_info),
        };
        parsed
            .unwrap_or_else(|e| crate::dev::qemu::fatal(format_args!("bad boot information: {e}")))
    });
}

static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();

/// What the kernel learned at boot. Available once the entry point runs
/// (after [`accept`]).
pub fn info() -> &'static BootInfo {
    BOOT_INFO
        .get()
        .expect("boot info is set before the entry point runs")
}

/// How the kernel was booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// PVH direct boot (QEMU's `-kernel`).
    Pvh,
    /// Multiboot2 (GRUB).
    Multiboot2,
}

/// What the loader handed over, copied out of its structures.
pub struct BootInfo {
    regions: [Region; MAX_REGIONS],
    region_count: usize,
    cmdline: FixedStr<CMDLINE_CAPACITY>,
    /// How the kernel was booted.
    pub protocol: Protocol,
    /// Physical address of the loader's structure (PVH start info, Multiboot2 information).
    pub boot_info_addr: u64,
    boot_data: [(u64, u64); 3],
}

#[repr(C)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// Why the boot information could not be used.
#[derive(Debug)]
pub enum BootInfoError {
    /// The PVH start info's magic number is wrong.
    BadMagic(u32),
    /// PVH start info version 0 carries no memory map.
    NoMemoryMap(u32),
    /// The Multiboot2 information did not parse.
    Multiboot2(multiboot2::LoadError),
    /// The Multiboot2 information has no memory-map tag.
    NoMemoryMapTag,
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(m) => write!(f, "PVH magic {m:#x}, expected {START_INFO_MAGIC:#x}"),
            Self::NoMemoryMap(v) => write!(f, "PVH start info version {v} has no memory map"),
            Self::Multiboot2(e) => write!(f, "Multiboot2 information: {e:?}"),
            Self::NoMemoryMapTag => f.write_str("Multiboot2 information without a memory map"),
        }
    }
}

impl BootInfo {
    fn empty(protocol: Protocol, addr: u64) -> Self {
        BootInfo {
            regions: [Region::new(0, 0, RegionKind::Reserved); MAX_REGIONS],
            region_count: 0,
            cmdline: FixedStr::new(),
            protocol,
            boot_info_addr: addr,
            boot_data: [(0, 0); 3],
        }
    }

    fn push_region(&mut self, region: Region) {
        if self.region_count < MAX_REGIONS {
            self.regions[self.region_count] = region;
            self.region_count += 1;
        }
    }

    /// The Multiboot2 information GRUB left at `addr`.
    fn from_multiboot2(addr: u64) -> Result<Self, BootInfoError> {
        // SAFETY: GRUB passes the physical address of its boot information in
        // ebx (checked by the stub through eax's magic); the first 64 GiB are
        // in the direct map and nothing writes the information.
        let mbi = unsafe {
            multiboot2::BootInformation::load(
                phys_to_virt(addr).cast::<multiboot2::BootInformationHeader>(),
            )
        }
        .map_err(BootInfoError::Multiboot2)?;
        let mut info = Self::empty(Protocol::Multiboot2, addr);
        info.boot_data[0] = (addr, mbi.total_size() as u64);
        let tag = mbi.memory_map_tag().ok_or(BootInfoError::NoMemoryMapTag)?;
        for area in tag.memory_areas() {
            info.push_region(Region::new(
                area.start_address(),
                area.size(),
                multiboot2_map::kind(area),
            ));
        }
        if let Some(Ok(line)) = mbi.command_line_tag().map(|t| t.cmdline()) {
            // Cut at a character boundary at or below the capacity.
            let mut end = line.len().min(CMDLINE_CAPACITY);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            let _ = fmt::Write::write_str(&mut info.cmdline, &line[..end]);
        }
        Ok(info)
    }

    /// The PVH start info QEMU left at `addr`.
    fn from_pvh(addr: u64) -> Result<Self, BootInfoError> {
        // SAFETY: QEMU passes the physical address of a valid
        // `hvm_start_info` in ebx; the first 64 GiB are in the direct map.
        let si = unsafe { &*phys_to_virt(addr).cast::<HvmStartInfo>() };
        if si.magic != START_INFO_MAGIC {
            return Err(BootInfoError::BadMagic(si.magic));
        }
        if si.version < 1 {
            return Err(BootInfoError::NoMemoryMap(si.version));
        }
        let mut info = Self::empty(Protocol::Pvh, addr);
        info.cmdline = cmdline_at(si.cmdline_paddr);
        info.boot_data = [
            (addr, core::mem::size_of::<HvmStartInfo>() as u64),
            (
                si.memmap_paddr,
                u64::from(si.memmap_entries) * core::mem::size_of::<E820Entry>() as u64,
            ),
            (si.cmdline_paddr, CMDLINE_CAPACITY as u64),
        ];
        for i in 0..si.memmap_entries as usize {
            // SAFETY: the map holds `memmap_entries` entries at `memmap_paddr`, in
            // the direct map; `i` is below that count. `E820Entry` has the layout
            // of a PVH `hvm_memmap_table_entry`.
            let e = unsafe { &*phys_to_virt(si.memmap_paddr).cast::<E820Entry>().add(i) };
            info.push_region(Region::from(e));
        }
        Ok(info)
    }

    /// Physical ranges `(start, len)` of the boot data (start info, memory
    /// map, command line; the Multiboot2 information): the loaders' maps do
    /// not reserve them. Unused entries are `(0, 0)`.
    pub fn boot_data(&self) -> [(u64, u64); 3] {
        self.boot_data
    }

    /// The memory map, as the loader gave it (not sanitized).
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.region_count]
    }

    /// The kernel command line (`-append`), empty when none.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Value of `key=value` on the command line.
    pub fn cmdline_arg(&self, key: &str) -> Option<&str> {
        self.cmdline.split_ascii_whitespace().find_map(|w| {
            let (k, v) = w.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    /// Physical range `[start, end)` of the loaded kernel image (incl. bss).
    pub fn kernel_image(&self) -> (u64, u64) {
        // Linker-script symbols: only their addresses are taken.
        (
            &raw const __kernel_phys_start as u64,
            &raw const __kernel_phys_end as u64,
        )
    }

    /// Physical range `[start, end)` of the boot segment: the 32-bit entry
    /// code, its GDT, stack and page tables, used only until the kernel
    /// runs on its own tables and GDT.
    pub fn boot_segment(&self) -> (u64, u64) {
        // Linker-script symbols: only their addresses are taken.
        (
            &raw const __kernel_phys_start as u64,
            &raw const __boot_phys_end as u64,
        )
    }

    /// The lowest address of the boot stack: the page below it is padding
    /// a kernel unmaps as a guard.
    pub fn boot_stack_bottom(&self) -> u64 {
        // A linker-defined symbol: only its address is taken.
        &raw const boot_stack_bottom as u64
    }

    /// Total bytes of usable RAM in the map.
    pub fn usable_bytes(&self) -> u64 {
        self.regions()
            .iter()
            .filter(|r| r.kind == RegionKind::Usable)
            .map(|r| r.len)
            .sum()
    }

    /// Prints the memory map as an aligned table.
    pub fn print_memory_map(&self) {
        crate::println!("{:>18}  {:>18}  {:>10}  {}", "start", "end", "size", "kind");
        for r in self.regions() {
            crate::println!(
                "{:#018x}  {:#018x}  {:>10}  {}",
                r.start,
                r.start.saturating_add(r.len),
                Size(r.len),
                r.kind
            );
        }
    }
}

/// Copies the NUL-terminated command line at `paddr` (identity-mapped at
/// boot): the kernel drops the identity map later, so nothing may point
/// into boot data.
fn cmdline_at(paddr: u64) -> FixedStr<CMDLINE_CAPACITY> {
    let mut out = FixedStr::new();
    if paddr == 0 {
        return out;
    }
    let p = phys_to_virt(paddr).cast_const();
    let mut len = 0;
    // SAFETY: QEMU places a NUL-terminated string at `cmdline_paddr`,
    // in the direct map; we read up to its terminator, at most the capacity.
    while len < CMDLINE_CAPACITY && unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` bytes starting at `p` were just read as valid memory
    // that the kernel never writes.
    let bytes = unsafe { core::slice::from_raw_parts(p, len) };
    let _ = fmt::Write::write_str(&mut out, core::str::from_utf8(bytes).unwrap_or(""));
    out
}
