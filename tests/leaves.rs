//! `PageTables::for_each_leaf`: every leaf once, in address order, with the
//! effective permissions the MMU would apply, and exact table counts.

use kmem::paging::{LeafSize, MapFlags, PageTables};
use kmem::testing::phys_mem::EmulatedMemory;
use x86_64::{PhysAddr, VirtAddr};

#[test]
fn leaves_sizes_permissions_and_tables() {
    let mem = EmulatedMemory::new(64);
    let mut frames = mem.frame_allocator();
    let mut m = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let data = VirtAddr::new(0x1000_0000);
    let code = VirtAddr::new(0xffff_8000_4000_0000);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe {
        m.map_range(
            data,
            PhysAddr::new(0x20_0000),
            0x3000,
            MapFlags::READ_WRITE,
            &mut frames,
        )
    }
    .unwrap()
    .ignore();
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe {
        m.map_range(
            code,
            PhysAddr::new(0x4000_0000),
            4 << 20,
            MapFlags::READ_EXEC,
            &mut frames,
        )
    }
    .unwrap()
    .ignore();
    let giant = VirtAddr::new(0x80_0000_0000);
    // SAFETY: tables this test owns, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe {
        m.map_range(
            giant,
            PhysAddr::new(0x8000_0000),
            1 << 30,
            MapFlags::READ,
            &mut frames,
        )
    }
    .unwrap()
    .ignore();

    let mut seen = Vec::new();
    let census = m.for_each_leaf(|leaf| seen.push(*leaf));
    assert_eq!(census.leaves, [3, 2, 1]);
    assert_eq!(census.mapped_bytes(), 0x3000 + (4 << 20) + (1 << 30));
    // PML4 + (PDPT, PD, PT) for data + (PDPT) for the giant page + (PDPT, PD) for code.
    assert_eq!(census.tables, 1 + 3 + 1 + 2);
    assert_eq!(census.tables, frames.in_use());
    assert!(
        seen.windows(2).all(|w| w[0].page < w[1].page),
        "not in address order"
    );
    for leaf in &seen {
        let t = m.translate(leaf.page).unwrap();
        assert_eq!(
            (t.frame, t.size, t.access),
            (leaf.frame, leaf.size, leaf.access)
        );
    }
    let first = seen[0];
    assert_eq!((first.page, first.size), (data, LeafSize::Size4KiB));
    assert!(first.access.writable && !first.access.executable && !first.access.user);
    let code_leaf = seen.iter().find(|l| l.page == code).unwrap();
    assert_eq!(code_leaf.size, LeafSize::Size2MiB);
    assert!(code_leaf.access.executable && !code_leaf.access.writable);
    assert!(seen
        .iter()
        .all(|l| !(l.access.writable && l.access.executable)));
}

#[test]
fn empty_hierarchy_has_only_the_root() {
    let mem = EmulatedMemory::new(4);
    let mut frames = mem.frame_allocator();
    let m = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let mut count = 0;
    let census = m.for_each_leaf(|_| count += 1);
    assert_eq!((count, census.tables, census.leaves), (0, 1, [0, 0, 0]));
}
