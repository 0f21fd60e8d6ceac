//! Serial console on COM1 and the `print!`/`println!` macros.
//!
//! The writer takes no lock: the kernels are single-CPU and their exception
//! handlers print too, so a lock held by the interrupted code would deadlock
//! the report of the very fault that matters most.

use core::fmt;
use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;

/// Programs COM1 for 115200 baud, 8N1, FIFO on.
pub fn init() {
    let setup: [(u16, u8); 7] = [
        (1, 0x00), // interrupts off
        (3, 0x80), // DLAB on
        (0, 0x01), // divisor low: 115200 baud
        (1, 0x00), // divisor high
        (3, 0x03), // 8N1, DLAB off
        (2, 0xC7), // FIFO on, cleared, 14-byte threshold
        (4, 0x0B), // DTR, RTS, OUT2
    ];
    for (offset, value) in setup {
        // SAFETY: COM1 registers; writing them only configures the UART.
        unsafe { Port::<u8>::new(COM1 + offset).write(value) };
    }
}

fn write_byte(byte: u8) {
    let mut status = Port::<u8>::new(COM1 + 5);
    // SAFETY: reading the line-status register has no side effect.
    while unsafe { status.read() } & 0x20 == 0 {
        core::hint::spin_loop();
    }
    // SAFETY: the transmit holding register is empty (checked above).
    unsafe { Port::<u8>::new(COM1).write(byte) };
}

/// Bytes written so far: the test framework tells from it whether a test
/// printed something after its `test <name> ... ` prefix.
static WRITTEN: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Bytes written to the console so far.
pub fn bytes_written() -> u64 {
    WRITTEN.load(core::sync::atomic::Ordering::Relaxed)
}

/// The serial port as a `fmt::Write` sink.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        WRITTEN.fetch_add(s.len() as u64, core::sync::atomic::Ordering::Relaxed);
        for b in s.bytes() {
            if b == b'\n' {
                write_byte(b'\r');
            }
            write_byte(b);
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _ = fmt::Write::write_fmt(&mut Serial, args);
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::dev::console::_print(format_args!($($arg)*)));
}

/// Prints to the serial console, with a newline.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::print!("{}\n", format_args!($($arg)*)));
}
