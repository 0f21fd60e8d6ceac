//! Step 8: a W^X audit of the live page tables.

use kernel_demo::mm::memory::with_memory;
use kernel_demo::println;

pub fn audit_wx() {
    let (mut bad, mut exec) = (0usize, 0usize);
    let census = with_memory(|m| {
        m.mapper.for_each_leaf(|leaf| {
            let a = leaf.access;
            if a.writable && a.executable {
                bad += 1;
                println!("  W+X: {:#x} ({:?})", leaf.page, leaf.size);
            }
            exec += usize::from(a.executable);
        })
    });
    let total: usize = census.leaves.iter().sum();
    println!(
        "{total} leaves in {} tables walked: {exec} executable, {bad} writable+executable",
        census.tables
    );
    if bad != 0 {
        kernel_demo::dev::qemu::fatal(format_args!("W^X audit failed"));
    }
}
