//! Bring-up: what runs between the boot stub and the kernel's `main`, in
//! order. The boot stub has started the console; the layers are wired
//! here, from the top, so that none of them reaches up for another.

use crate::arch::interrupts::{self, UserTraps};

/// Loads the GDT, TSS and IDT and registers the user-mode layer's trap
/// handlers with the dispatcher; turns on the CPU features memory
/// protection relies on; reads the boot information. The kernel's address
/// space, heap and other CPUs come after, from `main`
/// ([`crate::mm::kernel_space::enter`], [`crate::smp::boot_aps`]).
pub fn bring_up() {
    interrupts::init();
    interrupts::set_user_traps(UserTraps {
        trap: crate::user::trap,
        fixup: crate::user::fixup,
    });
    crate::arch::cpu::init();
    crate::boot::accept();
}
