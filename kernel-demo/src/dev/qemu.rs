//! Leaving QEMU with a status through the `isa-debug-exit` device.
//!
//! QEMU exits with `(code << 1) | 1`: [`ExitCode::Success`] becomes 33 and
//! [`ExitCode::Failure`] 35. A triple fault exits 0 and a hang never exits,
//! so the host runner treats only 33 as success.

use x86_64::instructions::port::Port;

/// I/O port of the debug-exit device (`-device isa-debug-exit,iobase=0xf4`).
pub const EXIT_PORT: u16 = 0xf4;

/// Status the kernel reports to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Everything passed: QEMU exits 33.
    Success = 0x10,
    /// Something failed: QEMU exits 35.
    Failure = 0x11,
}

/// Exits QEMU with `code`.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: writing the debug-exit port only terminates the VM.
    unsafe { Port::<u32>::new(EXIT_PORT).write(code as u32) };
    // Without the device (a misconfigured run), stop here.
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
