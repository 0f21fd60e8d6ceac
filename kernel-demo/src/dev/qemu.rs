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

/// The number of CPUs QEMU was started with (`-smp`), read from its
/// firmware configuration device; `None` without one (not QEMU).
pub fn cpu_count() -> Option<u16> {
    const SELECTOR: u16 = 0x510;
    const DATA: u16 = 0x511;
    const SIGNATURE: u16 = 0x0000;
    const NB_CPUS: u16 = 0x0005;
    let mut selector = Port::<u16>::new(SELECTOR);
    let mut data = Port::<u8>::new(DATA);
    // SAFETY: the fw_cfg ports only select and read configuration items;
    // on a machine without the device the reads return garbage, which the
    // signature check rejects.
    unsafe {
        selector.write(SIGNATURE);
        let mut sig = [0u8; 4];
        sig.iter_mut().for_each(|b| *b = data.read());
        if &sig != b"QEMU" {
            return None;
        }
        selector.write(NB_CPUS);
        let lo = u16::from(data.read());
        let hi = u16::from(data.read());
        Some(lo | (hi << 8)).filter(|&n| n > 0)
    }
}

/// Reports an unrecoverable error on the console and exits QEMU with
/// failure.
pub fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    crate::println!("\nFATAL: {args}");
    exit(ExitCode::Failure)
}
