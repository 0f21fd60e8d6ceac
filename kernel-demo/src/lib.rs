//! The bare-metal side of kmem: PVH boot, serial console, exception
//! handling with fault recovery, and the in-VM test framework shared by
//! the demo kernel and the test kernels in `tests/`.
#![no_std]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod boot;
pub mod console;
pub mod cpu;
pub mod heap;
pub mod image;
pub mod interrupts;
pub mod kernel_space;
pub mod memory;
pub mod overcommit;
pub mod process;
pub mod programs;
pub mod qemu;
pub mod recover;
pub mod testing;
pub mod user;
pub mod virtio;

/// Defines the kernel's main function, called after boot with the console,
/// the IDT and [`boot::info`] ready, and makes [`heap::HEAP`] the global
/// allocator (`entry_point!(own_heap; main)` leaves that to the kernel).
///
/// ```ignore
/// kernel_demo::entry_point!(main);
/// fn main() -> ! { kernel_demo::qemu::exit(kernel_demo::qemu::ExitCode::Success) }
/// ```
#[macro_export]
macro_rules! entry_point {
    (own_heap; $main:path) => {
        #[unsafe(export_name = "__kernel_demo_main")]
        fn __kernel_demo_main() -> ! {
            let main: fn() -> ! = $main;
            main()
        }
    };
    ($main:path) => {
        #[global_allocator]
        static __KERNEL_DEMO_HEAP: $crate::heap::Global = $crate::heap::Global;
        $crate::entry_point!(own_heap; $main);
    };
}

/// Reports an unrecoverable error and exits QEMU with failure.
pub fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    println!("\nFATAL: {args}");
    qemu::exit(qemu::ExitCode::Failure)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    recover::escape_panic(info);
    fatal(format_args!("kernel panic: {info}"))
}
