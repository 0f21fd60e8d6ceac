//! Privileged operations behind a small trait, so everything else runs on the host.

use x86_64::structures::paging::PhysFrame;
use x86_64::VirtAddr;

/// The privileged operations the mapper needs: CR3 and TLB invalidation.
///
/// Unsafe to implement: kmem frees frames and page tables because an
/// implementation said it invalidated their translations.
///
/// # Safety
/// - [`cr3`](Self::cr3) returns the top-level table this CPU translates
///   with now (kmem refuses to free the tables of the active space by it);
/// - [`invlpg`](Self::invlpg) returns only after this CPU no longer holds a
///   TLB or paging-structure-cache entry for `addr` (what `invlpg` does);
/// - [`flush_all`](Self::flush_all) returns only after this CPU holds no
///   TLB entry at all, global ones included.
///
/// A double that models no TLB (a host test whose "CPU" walks the tables
/// on every access) keeps these promises vacuously.
///
/// ```compile_fail,E0200
/// // A safe impl is refused: the promise must be made with `unsafe impl`.
/// struct Fake;
/// impl kmem::paging::Mmu for Fake {
///     fn cr3(&self) -> x86_64::structures::paging::PhysFrame { unimplemented!() }
///     unsafe fn set_cr3(&mut self, _: x86_64::structures::paging::PhysFrame) {}
///     fn invlpg(&mut self, _: x86_64::VirtAddr) {}
///     fn flush_all(&mut self) {}
/// }
/// ```
pub unsafe trait Mmu {
    /// The frame of the active top-level table.
    fn cr3(&self) -> PhysFrame;
    /// Makes `pml4` the active top-level table.
    ///
    /// # Safety
    ///
    /// `pml4` must be a valid PML4 that maps the currently executing code, stack and every
    /// memory the caller touches afterwards, with the permissions it relies on.
    unsafe fn set_cr3(&mut self, pml4: PhysFrame);
    /// Invalidates the TLB entry of `addr` (and the paging-structure caches).
    fn invlpg(&mut self, addr: VirtAddr);
    /// Invalidates every TLB entry, global ones included.
    fn flush_all(&mut self);
}

/// The real MMU: executes `mov cr3`, `invlpg` and a CR4.PGE toggle. Ring 0 only.
#[derive(Debug, Default, Clone, Copy)]
pub struct X86Mmu;

// SAFETY: reads CR3, and executes `invlpg` and a full flush (a CR4.PGE
// toggle, or a CR3 reload) on the running CPU.
unsafe impl Mmu for X86Mmu {
    fn cr3(&self) -> PhysFrame {
        x86_64::registers::control::Cr3::read().0
    }

    unsafe fn set_cr3(&mut self, pml4: PhysFrame) {
        use x86_64::registers::control::Cr3;
        let (_, flags) = Cr3::read();
        // SAFETY: the caller guarantees `pml4` maps everything in use from now on.
        unsafe { Cr3::write(pml4, flags) };
    }

    fn invlpg(&mut self, addr: VirtAddr) {
        x86_64::instructions::tlb::flush(addr);
    }

    fn flush_all(&mut self) {
        use x86_64::registers::control::{Cr4, Cr4Flags};
        let cr4 = Cr4::read();
        if cr4.contains(Cr4Flags::PAGE_GLOBAL) {
            // SAFETY: clearing then restoring PGE only flushes the TLB (global entries too);
            // no other CR4 bit changes.
            unsafe {
                Cr4::write(cr4 - Cr4Flags::PAGE_GLOBAL);
                Cr4::write(cr4);
            }
        } else {
            x86_64::instructions::tlb::flush_all();
        }
    }
}
