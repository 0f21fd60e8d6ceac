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
pub mod files;
pub mod huge;
pub mod mm;
pub mod overcommit;
pub mod smp;
pub mod start;
pub mod testing;
pub mod text;
pub mod user;
pub mod workingsets;

/// Defines the kernel's main function, called after `start::bring_up`
/// with the console, the IDT and `boot::info` ready, and makes the kernel
/// heap (`mm::heap::HEAP`) the global allocator
/// (`entry_point!(own_heap; main)` leaves that to the kernel).
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
            $crate::start::bring_up();
            main()
        }
    };
    ($main:path) => {
        #[global_allocator]
        static __KERNEL_DEMO_HEAP: $crate::mm::heap::Global = $crate::mm::heap::Global;
        $crate::entry_point!(own_heap; $main);
    };
}
