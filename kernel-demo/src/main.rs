//! The kmem demo kernel: boots under QEMU (PVH), shows the memory manager
//! at work on real x86_64 paging, and exits with status 0.
#![no_std]
#![no_main]

use kernel_demo::{boot, println, qemu};

kernel_demo::entry_point!(main);

fn main() -> ! {
    let info = boot::info();
    println!("kmem demo kernel");
    println!("command line: {:?}", info.cmdline());
    println!(
        "memory map ({} entries, {} usable):",
        info.regions().len(),
        boot::Size(info.usable_bytes())
    );
    info.print_memory_map();
    let (start, end) = info.kernel_image();
    println!(
        "kernel image: {start:#x}..{end:#x} ({})",
        boot::Size(end - start)
    );
    println!("demo done");
    qemu::exit(qemu::ExitCode::Success)
}
