//! The compressed swap cache (`kmem::vm::Zswap`): pages that compress go
//! to the pool, the rest (and the pool's oldest entries when it is full)
//! to the device; every page reads back as written, through kmem's swap
//! too, and freed slots leave the pool.

use std::sync::Arc;

use kmem::paging::PageTables;
use kmem::smp::Tlb;
use kmem::testing::mmu::RecordingMmu;
use kmem::testing::phys_mem::EmulatedMemory;
use kmem::testing::rng::Rng;
use kmem::vm::swap::PAGE_BYTES;
use kmem::vm::{FaultAccess, MemSwap, Prot, SwapDevice, Vm, VmSpace, Zswap};
use x86_64::VirtAddr;

type Page = [u8; PAGE_BYTES];

/// A page that compresses well: a few words repeated, tagged.
fn text(tag: u64) -> Box<Page> {
    let mut p = Box::new([0u8; PAGE_BYTES]);
    for (i, c) in p.chunks_mut(8).enumerate() {
        let w = if i % 64 == 0 {
            tag
        } else {
            0x2020_6f6c_6c65_6800 | (i as u64 % 7)
        };
        c.copy_from_slice(&w.to_le_bytes());
    }
    p
}

/// A page that does not compress: random bytes.
fn noise(rng: &mut Rng) -> Box<Page> {
    let mut p = Box::new([0u8; PAGE_BYTES]);
    for c in p.chunks_mut(8) {
        c.copy_from_slice(&rng.next().to_le_bytes());
    }
    p
}

fn read(z: &impl SwapDevice, slot: u64) -> Box<Page> {
    let mut p = Box::new([0u8; PAGE_BYTES]);
    z.read(slot, &mut [&mut *p]).unwrap();
    p
}

#[test]
fn compressible_pages_stay_in_ram_the_rest_go_to_the_device() {
    let z = Zswap::new(MemSwap::new(64), 64 * PAGE_BYTES).unwrap();
    let mut rng = Rng(7);
    let pages: Vec<Box<Page>> = (0..16)
        .map(|i| if i % 2 == 0 { text(i) } else { noise(&mut rng) })
        .collect();
    let refs: Vec<&Page> = pages.iter().map(|p| &**p).collect();
    z.write(0, &refs).unwrap();
    let st = z.stats();
    assert_eq!((st.stored, st.rejected, st.device_writes), (8, 8, 8));
    assert!(st.compression_ratio() > 4.0, "{st:?}");
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(read(&z, i as u64), *p, "slot {i}");
    }
    let st = z.stats();
    assert_eq!((st.loads, st.device_reads), (8, 8));
}

#[test]
fn a_full_pool_writes_its_oldest_entries_back() {
    // Room for a few compressed pages only.
    let limit = 4 * 200;
    let z = Zswap::new(MemSwap::new(64), limit).unwrap();
    let pages: Vec<Box<Page>> = (0..32).map(text).collect();
    for (i, p) in pages.iter().enumerate() {
        z.write(i as u64, &[&**p]).unwrap();
    }
    let st = z.stats();
    assert_eq!(st.stored, 32);
    assert!(st.pool_bytes as usize <= limit, "{st:?}");
    assert_eq!(st.written_back, 32 - st.pool_pages, "{st:?}");
    assert_eq!(st.device_writes, st.written_back);
    // The newest stayed, the oldest went first; all read back as written.
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(read(&z, i as u64), *p, "slot {i}");
    }
    assert_eq!(z.stats().loads, st.pool_pages);
}

#[test]
fn a_slot_written_again_reads_its_newest_data() {
    let z = Zswap::new(MemSwap::new(8), 8 * PAGE_BYTES).unwrap();
    let mut rng = Rng(3);
    z.write(2, &[&*text(1)]).unwrap();
    let n = noise(&mut rng);
    z.write(2, &[&*n]).unwrap(); // to the device: the pool's copy must go
    assert_eq!(read(&z, 2), n);
    z.write(2, &[&*text(2)]).unwrap();
    assert_eq!(read(&z, 2), text(2));
    assert_eq!(z.stats().pool_pages, 1);
    z.discard(2);
    assert_eq!(z.stats().pool_pages, 0);
    assert_eq!(z.stats().pool_bytes, 0);
}

#[test]
fn threads_store_write_back_and_read_their_own_slots() {
    let z = Arc::new(Zswap::new(MemSwap::new(256), 6 * 200).unwrap());
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let z = z.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(t + 11);
                let mut last = vec![None; 64];
                for round in 0..300u64 {
                    let k = (rng.next() % 64) as usize;
                    let slot = t * 64 + k as u64;
                    if rng.next().is_multiple_of(3) {
                        if let Some(p) = &last[k] {
                            assert_eq!(&read(&*z, slot), p, "thread {t} slot {slot}");
                        }
                        continue;
                    }
                    let p = if rng.next().is_multiple_of(4) {
                        noise(&mut rng)
                    } else {
                        text(round << 8 | t)
                    };
                    z.write(slot, &[&*p]).unwrap();
                    last[k] = Some(p);
                }
                for (k, p) in last.iter().enumerate() {
                    if let Some(p) = p {
                        assert_eq!(&read(&*z, t * 64 + k as u64), p);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let st = z.stats();
    assert!(st.written_back > 0 && st.rejected > 0, "{st:?}");
}

/// Through kmem's swap: a space writes four times the frame limit of
/// mixed pages and reads them all back; the pool takes the compressible
/// ones, the device gets fewer writes than pages swapped out, and once the
/// space is gone the pool is empty (freed slots were discarded).
#[test]
fn under_kmem_swap_every_page_comes_back_and_freed_slots_leave_the_pool() {
    const LIMIT: u64 = 16;
    const PAGES: u64 = 64;
    let mem = EmulatedMemory::new(512);
    let mut frames = mem.frame_allocator();
    let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
    vm.set_frame_limit(Some(LIMIT));
    let zs = Arc::new(Zswap::new(MemSwap::new(256), 8 * PAGE_BYTES).unwrap());
    assert!(vm.attach_swap(Box::new(zs.clone())).is_ok());
    let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let mut s = VmSpace::new_user(&kernel, &mut frames).unwrap();
    let base = 0x4000_0000u64;
    s.map_anonymous(Some(base), PAGES * 4096, Prot::RW | Prot::USER)
        .unwrap();
    let mut mmu = RecordingMmu::new(kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut rng = Rng(5);
    let mut want = Vec::new();
    for round in 0..2 {
        for p in 0..PAGES {
            let at = VirtAddr::new(base + p * 4096);
            loop {
                let r = s.handle_fault(&vm, at, FaultAccess::write(true), &mut frames, &mut tlb);
                if r != Ok(kmem::vm::FaultOutcome::InTransit) {
                    r.unwrap();
                    break;
                }
            }
            let page = if (p + round).is_multiple_of(3) {
                noise(&mut rng)
            } else {
                text(p << 8 | round)
            };
            s.simulate_access(at, true); // the CPU sets Accessed and Dirty
            let phys = s.mapper().translate(at).unwrap().phys;
            for (i, c) in page.chunks(8).enumerate() {
                mem.write_u64(
                    phys + i as u64 * 8,
                    u64::from_le_bytes(c.try_into().unwrap()),
                );
            }
            if round == 1 {
                want.push(page);
            }
        }
    }
    for p in 0..PAGES {
        let at = VirtAddr::new(base + p * 4096);
        if s.mapper().translate(at).is_err() {
            s.handle_fault(&vm, at, FaultAccess::read(true), &mut frames, &mut tlb)
                .unwrap();
        }
        let phys = s.mapper().translate(at).unwrap().phys;
        for (i, c) in want[p as usize].chunks(8).enumerate() {
            let w = u64::from_le_bytes(c.try_into().unwrap());
            assert_eq!(mem.read_u64(phys + i as u64 * 8), w, "page {p} word {i}");
        }
    }
    let st = zs.stats();
    let swap_outs = vm.stats().swap_outs;
    assert!(st.stored > 0 && st.rejected > 0, "{st:?}");
    assert!(
        st.device_writes < swap_outs,
        "{st:?} vs {swap_outs} pages out"
    );
    s.destroy(&vm, &mut frames, &mut tlb)
        .map_err(|e| e.1)
        .unwrap();
    assert_eq!(vm.stats().swap_slots_used, 0);
    assert_eq!(zs.stats().pool_pages, 0, "freed slots left the pool");
}

/// A page read back from the pool leaves it and frees its slot (the pool's
/// room is for pages not in memory); one read back from the device keeps
/// its slot as kmem's swap cache (evicted again unwritten, it costs no
/// write). A slot a fork's other side still names stays in the pool.
#[test]
fn pages_read_back_from_the_pool_leave_it() {
    let mem = EmulatedMemory::new(256);
    let mut frames = mem.frame_allocator();
    let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
    let zs = Arc::new(Zswap::new(MemSwap::new(64), 64 * PAGE_BYTES).unwrap());
    assert!(vm.attach_swap(Box::new(zs.clone())).is_ok());
    let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let mut s = VmSpace::new_user(&kernel, &mut frames).unwrap();
    let base = 0x4000_0000u64;
    s.map_anonymous(Some(base), 4 * 4096, Prot::RW | Prot::USER)
        .unwrap();
    let mut mmu = RecordingMmu::new(kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut rng = Rng(9);
    let pages = [text(1), noise(&mut rng), text(3), text(4)];
    for (p, page) in pages.iter().enumerate() {
        let at = VirtAddr::new(base + p as u64 * 4096);
        s.handle_fault(&vm, at, FaultAccess::write(true), &mut frames, &mut tlb)
            .unwrap();
        s.simulate_access(at, true);
        let phys = s.mapper().translate(at).unwrap().phys;
        for (i, c) in page.chunks(8).enumerate() {
            mem.write_u64(
                phys + i as u64 * 8,
                u64::from_le_bytes(c.try_into().unwrap()),
            );
        }
    }
    vm.set_reclaim(None, 1); // one page a swap-in
    let out = s.advise(
        base,
        4 * 4096,
        kmem::vm::Advice::PageOut,
        &vm,
        &mut frames,
        &mut tlb,
    );
    assert_eq!(out, Ok(4));
    assert_eq!((zs.stats().pool_pages, vm.stats().swap_slots_used), (3, 4));
    let child = s.fork(&vm, &mut frames, &mut tlb).unwrap();
    // Page 0 from the pool, shared with the child: the slot stays.
    s.handle_fault(
        &vm,
        VirtAddr::new(base),
        FaultAccess::read(true),
        &mut frames,
        &mut tlb,
    )
    .unwrap();
    assert_eq!((zs.stats().pool_pages, vm.stats().swap_slots_used), (3, 4));
    child
        .destroy(&vm, &mut frames, &mut tlb)
        .map_err(|e| e.1)
        .unwrap();
    // Page 2 from the pool, named by this space alone: pool entry and slot go.
    let at = VirtAddr::new(base + 2 * 4096);
    s.handle_fault(&vm, at, FaultAccess::read(true), &mut frames, &mut tlb)
        .unwrap();
    assert_eq!(zs.stats().pool_pages, 2, "page 0 still cached, page 2 gone");
    // Page 1 from the device: its slot stays as the swap cache.
    let at = VirtAddr::new(base + 4096);
    s.handle_fault(&vm, at, FaultAccess::read(true), &mut frames, &mut tlb)
        .unwrap();
    assert_eq!(zs.stats().device_reads, 1);
    assert_eq!(vm.stats().swap_cached, 2, "pages 0 and 1 keep their slots");
    let phys = s.mapper().translate(at).unwrap().phys;
    assert_eq!(
        mem.read_u64(phys + 8),
        u64::from_le_bytes(pages[1][8..16].try_into().unwrap())
    );
    s.destroy(&vm, &mut frames, &mut tlb)
        .map_err(|e| e.1)
        .unwrap();
    assert_eq!(vm.stats().swap_slots_used, 0);
    assert_eq!(zs.stats().pool_pages, 0);
}
