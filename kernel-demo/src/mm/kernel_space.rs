//! The kernel's own address space, built by kmem to replace the boot tables:
//! a direct map of all RAM (huge pages where alignment allows), the kernel
//! image W^X, a kernel stack with an unmapped guard page below it; no
//! identity map.

use crate::boot::image;
use crate::boot::{BootInfo, DIRECT_MAP};
use crate::mm::memory::{direct_map, with_memory};
use kmem::frame::FrameError;
use kmem::memory_map::{MemoryMap, RegionKind};
use kmem::paging::{Census, LeafSize, MapFlags, Mmu, OffsetPhysMem, PageTables};
use x86_64::structures::paging::{Page, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

/// Start of the kernel stack region (PML4 slot 448): its first page is the
/// guard, never mapped.
pub const STACK_GUARD: u64 = 0xFFFF_E000_0000_0000;
/// Pages of the kernel stack.
pub const STACK_PAGES: u64 = 32;
/// The initial stack pointer.
pub const STACK_TOP: u64 = STACK_GUARD + 4096 * (1 + STACK_PAGES);

/// Where the other CPUs' stacks start (1 GiB above the boot CPU's): one
/// [`CPU_STACK_SLOT`] per CPU index.
pub const CPU_STACKS: u64 = STACK_GUARD + (1 << 30);
/// Virtual space per CPU: a guard page, the kernel stack, another guard
/// page and the double-fault stack.
pub const CPU_STACK_SLOT: u64 = 1 << 20;
/// Pages of a CPU's double-fault (IST) stack.
pub const IST_PAGES: u64 = 8;

/// A CPU's stacks, each with an unmapped guard page just below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuStack {
    /// The kernel stack's guard page (never mapped).
    pub guard: u64,
    /// The kernel stack's initial stack pointer.
    pub top: u64,
    /// The double-fault stack's initial stack pointer.
    pub ist_top: u64,
}

/// Maps the stacks of CPU `cpu` (>= 1) with fresh frames: [`STACK_PAGES`]
/// pages of kernel stack and [`IST_PAGES`] of double-fault stack, each
/// above an unmapped guard page. On error the pages mapped so far stay
/// mapped (the CPU is not started).
pub fn map_cpu_stack(cpu: usize) -> Result<CpuStack, kmem::Error> {
    let guard = CPU_STACKS + cpu as u64 * CPU_STACK_SLOT;
    let top = guard + 4096 * (1 + STACK_PAGES);
    let ist_top = top + 4096 * (1 + IST_PAGES);
    let pages = (guard + 4096..top).chain(top + 4096..ist_top).step_by(4096);
    with_memory(|m| {
        for addr in pages {
            let frame = m.frames.with(|f| f.allocate())?;
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(addr));
            // A fresh mapping over a non-present entry: nothing to flush.
            // SAFETY: a fresh frame at the CPU's stack range, which only this CPU's stack uses.
            unsafe {
                m.mapper
                    .map(page, frame, MapFlags::READ_WRITE.global(), &mut m.frames)
            }?
            .ignore();
        }
        Ok(CpuStack {
            guard,
            top,
            ist_top,
        })
    })
}

/// What building the address space took.
#[derive(Debug, Clone, Copy)]
pub struct BuildReport {
    /// Bytes of RAM in the direct map.
    pub direct_bytes: u64,
    /// TSC cycles spent mapping the direct map.
    pub direct_cycles: u64,
    /// Frames used for page tables and the stack.
    pub frames_used: u64,
    /// Tables and leaves of the new hierarchy.
    pub census: Census,
}

/// The flags of a kernel-image section: W^X.
fn section_flags(seg: &image::Segment) -> MapFlags {
    match (seg.writable, seg.executable) {
        (_, true) => MapFlags::READ_EXEC.global(),
        (true, false) => MapFlags::READ_WRITE.global(),
        (false, false) => MapFlags::READ.global(),
    }
}

/// RAM ranges to direct-map: usable and ACPI memory of the sanitized map
/// (sorted, merged, overlaps resolved), page-rounded.
fn ram_ranges(map: &MemoryMap) -> impl Iterator<Item = (u64, u64)> + '_ {
    map.regions()
        .iter()
        .filter(|r| {
            matches!(
                r.kind,
                RegionKind::Usable | RegionKind::AcpiReclaimable | RegionKind::AcpiNvs
            )
        })
        .map(|r| (r.start & !0xfff, (r.end() + 0xfff) & !0xfff))
        .filter(|(s, e)| e > s)
}

/// Builds the kernel's address space (not active yet).
pub fn build(info: &BootInfo) -> Result<(PageTables<OffsetPhysMem>, BuildReport), kmem::Error> {
    with_memory(|m| {
        let free_before = m.free_frames();
        let mut k = PageTables::new_empty(direct_map(), &mut m.frames)?;
        let t0 = crate::arch::cpu::rdtsc();
        let mut direct_bytes = 0;
        let ram: MemoryMap = MemoryMap::from_regions(info.regions().iter().copied())?;
        for (start, end) in ram_ranges(&ram) {
            let virt = VirtAddr::new(DIRECT_MAP + start);
            // SAFETY: the direct map of RAM, in tables not loaded yet: a second view of
            // every frame, which the kernel reaches only through `PhysMem` pointers.
            unsafe {
                k.map_range(
                    virt,
                    PhysAddr::new(start),
                    end - start,
                    MapFlags::READ_WRITE.global(),
                    &mut m.frames,
                )
            }?
            .ignore(); // not active: nothing cached to flush
            direct_bytes += end - start;
        }
        let direct_cycles = crate::arch::cpu::rdtsc() - t0;
        for seg in image::segments() {
            let (virt, phys) = (VirtAddr::new(seg.start), PhysAddr::new(seg.phys_start()));
            // SAFETY: the kernel image, each segment with its own rights (text R+X,
            // data RW), in tables not loaded yet.
            unsafe {
                k.map_range_with(
                    virt,
                    phys,
                    seg.len(),
                    section_flags(&seg),
                    LeafSize::Size4KiB,
                    &mut m.frames,
                )
            }?
            .ignore();
        }
        // The page below the boot stack is padding: unmapped, it turns a
        // boot-stack overflow into a fault instead of silent corruption.
        let guard = VirtAddr::new(info.boot_stack_bottom() - 4096);
        // SAFETY: the page below the boot stack, which nothing uses: it becomes a guard.
        unsafe { k.unmap_range(guard, 4096, &mut m.frames) }?.ignore();
        for i in 0..STACK_PAGES {
            let frame = m.frames.with(|f| f.allocate())?;
            let page =
                Page::<Size4KiB>::containing_address(VirtAddr::new(STACK_GUARD + 4096 * (i + 1)));
            // SAFETY: a fresh frame for the kernel stack, in tables not loaded yet.
            unsafe { k.map(page, frame, MapFlags::READ_WRITE.global(), &mut m.frames) }?.ignore();
        }
        // Every kernel-half slot gets its PDPT now, so kernel mappings made
        // later (heap growth, demand pages) show in every address space.
        k.prefill_kernel_half(&mut m.frames)?;
        let census = k.for_each_leaf(|_| {});
        let frames_used = free_before - m.free_frames();
        Ok((
            k,
            BuildReport {
                direct_bytes,
                direct_cycles,
                frames_used,
                census,
            },
        ))
    })
}

/// Makes `kernel` the active address space and the kernel's mapper; the
/// boot tables (and their identity map) are no longer used, so the boot
/// segment goes back to the frame allocator. Returns how many frames that
/// gave back.
///
/// # Safety
/// `kernel` must come from [`build`] for this kernel: it maps the running
/// code, the boot stack and statics (image sections), and the direct map.
pub unsafe fn activate(kernel: PageTables<OffsetPhysMem>) -> Result<u64, FrameError> {
    with_memory(|m| {
        // SAFETY: per the caller, the new tables map everything in use.
        unsafe { m.mmu.set_cr3(kernel.pml4()) };
        // Global pages from the boot tables must go too.
        m.mmu.flush_all();
        *m.mapper = kernel;
    });
    // SAFETY: the kernel's tables are active and map the boot segment only
    // through the direct map; `interrupts::init` loaded the kernel's GDT
    // before any kernel code ran; the 32-bit stub never runs again.
    unsafe { crate::mm::memory::release_boot_memory() }
}

/// Continues on the kernel stack (with its guard page) in `next`.
///
/// # Safety
/// The stack from [`build`] must be mapped (the kernel space is active) and
/// not in use.
pub unsafe fn run_on_kernel_stack(next: extern "C" fn() -> !) -> ! {
    // SAFETY: STACK_TOP is the 16-byte aligned top of a mapped, unused stack;
    // `next` never returns, so abandoning the boot stack is fine.
    unsafe {
        core::arch::asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "call {next}",
            "ud2",
            top = in(reg) STACK_TOP,
            next = in(reg) next,
            options(noreturn)
        )
    }
}

/// The whole boot flow in one call, for test kernels: frames, the kernel's
/// address space, the switch, the heap, then `next` on the kernel stack.
pub fn enter(next: extern "C" fn() -> !) -> ! {
    let info = crate::boot::info();
    crate::mm::memory::init().unwrap_or_else(|e| crate::dev::qemu::fatal(format_args!("{e}")));
    let (kernel, _) = build(info)
        .unwrap_or_else(|e| crate::dev::qemu::fatal(format_args!("kernel space: {e:?}")));
    // SAFETY: `kernel` was just built by `build` for this kernel.
    unsafe { activate(kernel) }
        .unwrap_or_else(|e| crate::dev::qemu::fatal(format_args!("boot memory: {e}")));
    crate::mm::heap::init()
        .unwrap_or_else(|e| crate::dev::qemu::fatal(format_args!("heap: {e:?}")));
    // SAFETY: the kernel space is active and its stack unused.
    unsafe { run_on_kernel_stack(next) }
}
