//! A mixed workload for every CPU at once: heap objects through the
//! per-CPU heap caches, frames through the per-CPU frame caches, pages
//! mapped and unmapped in the kernel's address space (each unmap one
//! shootdown round, its page table freed after the round); every object
//! carries a pattern checked before it is freed. The SMP test kernel and
//! the demo run it on all CPUs ([`crate::smp::run_on_all`]).

use crate::arch::cpu::MAX_CPUS;
use crate::boot::phys_to_virt;
use crate::mm::heap::{self as kheap, HEAP};
use crate::mm::memory::with_memory;
use crate::mm::percpu::{unmap_scattered, FRAME_CACHE, HEAP_CACHE, SCATTERED};
use core::alloc::{GlobalAlloc, Layout};
use kmem::paging::MapFlags;
use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};
use x86_64::VirtAddr;

fn page(addr: u64) -> Page<Size4KiB> {
    Page::containing_address(VirtAddr::new(addr))
}

fn direct(frame: PhysFrame) -> *mut u64 {
    phys_to_virt(frame.start_address().as_u64()).cast()
}

/// Operations each CPU performs.
pub const OPS: u64 = 600;
/// Each CPU's map window (PML4 slot 290, 1 GiB per CPU, one page per 2 MiB).
const WINDOWS: u64 = 0xFFFF_9100_0000_0000;

/// What one CPU did in [`mixed_work`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Heap objects allocated.
    pub heap: u64,
    /// Frames allocated.
    pub frames: u64,
    /// Pages mapped.
    pub maps: u64,
    /// Pages unmapped.
    pub unmaps: u64,
    /// Pattern checks made.
    pub verified: u64,
    /// Pattern checks that failed.
    pub bad: u64,
    /// Batches of unmaps (up to [`SCATTERED`] pages, one shootdown each).
    pub batches: u64,
    /// Shootdown rounds this CPU's unmaps took.
    pub rounds: u64,
}

/// The counters of CPU `cpu`'s last [`mixed_work`].
pub fn counters(cpu: usize) -> Counters {
    *COUNTERS[cpu % MAX_CPUS].lock()
}

static COUNTERS: [spin::Mutex<Counters>; MAX_CPUS] = [const {
    spin::Mutex::new(Counters {
        heap: 0,
        frames: 0,
        maps: 0,
        unmaps: 0,
        verified: 0,
        bad: 0,
        batches: 0,
        rounds: 0,
    })
}; MAX_CPUS];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The pattern of word `i` of an object with `seed`.
fn word(seed: u64, i: usize) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(i as u64)
        ^ 0x5555
}

/// Fills `words` words at `p`.
///
/// # Safety
/// `p` is valid for `words` writes.
unsafe fn write_pattern(p: *mut u64, words: usize, seed: u64) {
    for i in 0..words {
        // SAFETY: within the caller's range.
        unsafe { p.add(i).write_volatile(word(seed, i)) };
    }
}

/// Whether the `words` words at `p` hold the pattern.
///
/// # Safety
/// `p` is valid for `words` reads.
unsafe fn check_pattern(p: *const u64, words: usize, seed: u64) -> bool {
    // SAFETY: within the caller's range.
    (0..words).all(|i| unsafe { p.add(i).read_volatile() } == word(seed, i))
}

/// Mappings waiting for their unmap: (address, frame, pattern seed).
type Pending = [Option<(u64, PhysFrame, u64)>; 8];

/// Unmaps every page of `pending` with one shootdown round, then checks
/// each frame's pattern (no CPU can write it any more) and frees it.
fn unmap_pending(pending: &mut Pending, c: &mut Counters) {
    let mut pages = [page(0); SCATTERED];
    let mut n = 0;
    for (va, _, _) in pending.iter().flatten() {
        pages[n] = page(*va);
        n += 1;
    }
    if n == 0 {
        return;
    }
    let mut k = 0;
    let taken: Pending = core::mem::take(pending);
    let expected: alloc::vec::Vec<(PhysFrame, u64)> =
        taken.iter().flatten().map(|&(_, f, s)| (f, s)).collect();
    let report = unmap_scattered(&pages[..n], |leaf| {
        let (f, s) = expected[k];
        k += 1;
        assert_eq!(leaf, f, "the frame mapped there");
        // SAFETY: unmapped and shot down: only we reach it.
        let ok = unsafe { check_pattern(direct(leaf), 512, s) };
        c.verified += 1;
        c.bad += u64::from(!ok);
        // SAFETY: as above.
        unsafe { FRAME_CACHE.free(leaf) }.expect("free");
    })
    .expect("unmap");
    c.rounds += u64::from(report.rounds);
    c.batches += 1;
    c.unmaps += n as u64;
}

/// Runs `seed`'s mix of [`OPS`] operations on CPU `cpu`, then frees
/// everything it still holds; the counters go to [`counters`]. Panics when
/// memory runs out.
pub fn mixed_work(cpu: usize, seed: u64) {
    let mut rng = Rng(seed ^ (cpu as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut c = Counters::default();
    let mut objects: [Option<(*mut u8, Layout, u64)>; 32] = [None; 32];
    let mut frames: [Option<(PhysFrame, u64)>; 16] = [None; 16];
    let mut maps: [Option<(u64, PhysFrame, u64)>; 8] = [None; 8];
    // Pages taken out of `maps`, unmapped together (one round) later.
    let mut pending: Pending = [None; 8];
    let window = WINDOWS + cpu as u64 * (1 << 30);
    let check = |ok: bool, c: &mut Counters| {
        c.verified += 1;
        if !ok {
            c.bad += 1;
        }
    };
    for _ in 0..OPS {
        let r = rng.next();
        let tag = rng.next();
        match r % 8 {
            0..=2 => {
                let i = (r >> 8) as usize % objects.len();
                if let Some((p, layout, s)) = objects[i].take() {
                    // SAFETY: allocated below with `layout`, filled with `s`.
                    check(
                        unsafe { check_pattern(p.cast(), layout.size() / 8, s) },
                        &mut c,
                    );
                    // SAFETY: from HEAP_CACHE with this layout.
                    unsafe { HEAP_CACHE.dealloc(p, layout) };
                } else {
                    let size = 8 << ((r >> 16) % 9); // 8 B .. 2 KiB
                    let layout = Layout::from_size_align(size as usize, 8).expect("layout");
                    // SAFETY: a non-zero layout.
                    let p = unsafe { HEAP_CACHE.alloc(layout) };
                    assert!(!p.is_null(), "CPU {cpu}: heap exhausted");
                    // SAFETY: `size` bytes at `p` are ours.
                    unsafe { write_pattern(p.cast(), layout.size() / 8, tag) };
                    objects[i] = Some((p, layout, tag));
                    c.heap += 1;
                }
            }
            3 | 4 => {
                let i = (r >> 8) as usize % frames.len();
                if let Some((f, s)) = frames[i].take() {
                    // SAFETY: our frame, in the direct map.
                    check(unsafe { check_pattern(direct(f), 512, s) }, &mut c);
                    // SAFETY: allocated below, mapped nowhere.
                    unsafe { FRAME_CACHE.free(f) }.expect("free");
                } else {
                    let f = FRAME_CACHE.allocate().expect("a frame");
                    // SAFETY: our frame, in the direct map.
                    unsafe { write_pattern(direct(f), 512, tag) };
                    frames[i] = Some((f, tag));
                    c.frames += 1;
                }
            }
            5 | 6 => {
                let i = (r >> 8) as usize % maps.len();
                if let Some((va, f, s)) = maps[i].take() {
                    // SAFETY: mapped below, writable, filled with `s`.
                    check(unsafe { check_pattern(va as *const u64, 512, s) }, &mut c);
                    // Unmapped with others in one shootdown round (batched).
                    if pending.iter().all(Option::is_some) {
                        unmap_pending(&mut pending, &mut c);
                    }
                    let free = pending.iter().position(Option::is_none).expect("room");
                    pending[free] = Some((va, f, s));
                } else {
                    // One page per 2 MiB: each mapping has a page table of
                    // its own, which its unmap frees (deferred).
                    let va = window + i as u64 * 0x20_0000 + ((r >> 20) % 512) * 4096;
                    if pending.iter().flatten().any(|p| p.0 == va) {
                        // That page must be gone before it is mapped again.
                        unmap_pending(&mut pending, &mut c);
                    }
                    let f = FRAME_CACHE.allocate().expect("a frame");
                    with_memory(|m| {
                        let mut cache = &FRAME_CACHE;
                        // SAFETY: a fresh frame at a page of this CPU's own window, mapped nowhere else.
                        unsafe {
                            m.mapper
                                .map(page(va), f, MapFlags::READ_WRITE.global(), &mut cache)
                        }
                        .expect("map")
                        .ignore(); // over a non-present entry
                    });
                    // SAFETY: just mapped, writable, ours.
                    unsafe { write_pattern(va as *mut u64, 512, tag) };
                    maps[i] = Some((va, f, tag));
                    c.maps += 1;
                }
            }
            _ => {
                // Re-verify a live heap object.
                let i = (r >> 8) as usize % objects.len();
                if let Some((p, layout, s)) = objects[i] {
                    // SAFETY: live, filled with `s`.
                    check(
                        unsafe { check_pattern(p.cast(), layout.size() / 8, s) },
                        &mut c,
                    );
                }
            }
        }
    }
    for (p, layout, s) in objects.iter().flatten().copied() {
        // SAFETY: as above.
        check(
            unsafe { check_pattern(p.cast(), layout.size() / 8, s) },
            &mut c,
        );
        // SAFETY: as above.
        unsafe { HEAP_CACHE.dealloc(p, layout) };
    }
    for (f, s) in frames.iter().flatten().copied() {
        // SAFETY: as above.
        check(unsafe { check_pattern(direct(f), 512, s) }, &mut c);
        // SAFETY: as above.
        unsafe { FRAME_CACHE.free(f) }.expect("free");
    }
    unmap_pending(&mut pending, &mut c);
    for (i, m) in maps.iter_mut().enumerate() {
        if let Some((va, f, s)) = m.take() {
            // SAFETY: as above.
            check(unsafe { check_pattern(va as *const u64, 512, s) }, &mut c);
            pending[i] = Some((va, f, s));
        }
    }
    unmap_pending(&mut pending, &mut c);
    *COUNTERS[cpu].lock() = c;
}

/// Free frames plus the frames mapped in the heap's range and the kernel's
/// page tables (the heap may keep a page or a table it grew into), and the
/// heap's live bytes, with every cache drained and the heap trimmed.
pub fn accounted() -> (u64, usize) {
    FRAME_CACHE.drain_all();
    HEAP_CACHE.drain_all();
    kheap::trim();
    let heap_range = kheap::HEAP_START..kheap::HEAP_START + kheap::HEAP_SIZE;
    let mut heap_pages = 0u64;
    let (free, census) = with_memory(|m| {
        let census = m.mapper.for_each_leaf(|leaf| {
            heap_pages += u64::from(heap_range.contains(&leaf.page.as_u64()));
        });
        (m.free_frames(), census)
    });
    let live = HEAP.stats().expect("heap").live_bytes;
    (free + heap_pages + census.tables as u64, live)
}
