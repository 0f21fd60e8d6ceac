//! The bare-metal side of kmem: PVH boot, serial console, exception
//! handling with fault recovery, and the in-VM test framework shared by
//! the demo kernel and the test kernels in `tests/`.
#![no_std]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod arch;
pub mod boot;
pub mod dev;
pub mod mm;
pub mod overcommit;
pub mod testing;
pub mod text;
pub mod user;

/// Defines the kernel's main function, called after boot with the console,
/// the IDT and [`boot::info`] ready, and makes [`heap::HEAP`] the global
/// allocator (`entry_point!(own_heap; main)` leaves that to the kernel).
///
/// ```ignore
/// kernel_demo::entry_point!(main);
/// fn main() -> ! { kernel_demo::dev::qemu::exit(kernel_demo::dev::qemu::ExitCode::Success) }
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
        static __KERNEL_DEMO_HEAP: $crate::mm::heap::Global = $crate::mm::heap::Global;
        $crate::entry_point!(own_heap; $main);
    };
}

/// Reports an unrecoverable error and exits QEMU with failure.
pub fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    println!("\nFATAL: {args}");
    dev::qemu::exit(dev::qemu::ExitCode::Failure)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    arch::recover::escape_panic(info);
    fatal(format_args!("kernel panic: {info}"))
}
