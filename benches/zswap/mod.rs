//! The compressed swap cache against the plain device, in `cargo bench
//! --bench swap`: synthetic traces replayed through a real `kmem::vm`
//! space (emulated memory, a frame limit), every page holding data: 60 %
//! of the pages compress well (text-like), the rest are random; 30 % of
//! the references write a new version of their page. Once with a
//! `MemSwap` device, once with `Zswap` in front of the same device, its
//! pool a quarter of the frame limit.
//!
//! Printed: `ratio zswap_writes_vs_disk <trace> <x>` (pages written to the
//! device with the cache / without) for each trace; then, on one trace
//! with every device request taking 50 µs (busy-waited),
//! `ratio zswap_fault_vs_disk <trace> <x>`: mean service time of a fault
//! served from the pool ÷ that of a fault without the cache (the fault's
//! own reclaim included, as a fault at the limit pays it), and
//! `ratio zswap_all_faults_vs_disk`: over every swap-in fault with the cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kmem::paging::PageTables;
use kmem::smp::Tlb;
use kmem::testing::mmu::RecordingMmu;
use kmem::testing::phys_mem::EmulatedMemory;
use kmem::vm::replace::synth;
use kmem::vm::swap::PAGE_BYTES;
use kmem::vm::{
    FaultAccess, FaultOutcome, MemSwap, Prot, SwapDevice, SwapIoError, Vm, VmSpace, Zswap,
};
use x86_64::VirtAddr;

/// Frames the traces are made for and replayed at.
const FRAMES: usize = 250;
const BASE: u64 = 0x4000_0000;
/// The device latency of the fault-time run.
const LATENCY: Duration = Duration::from_micros(50);

/// A device that counts the pages written to it and can take `latency`
/// per request.
struct Disk {
    inner: MemSwap,
    latency: Option<Duration>,
    written: Arc<AtomicU64>,
}

impl Disk {
    fn wait(&self) {
        if let Some(l) = self.latency {
            let t = Instant::now();
            while t.elapsed() < l {
                std::hint::spin_loop();
            }
        }
    }
}

impl SwapDevice for Disk {
    fn slots(&self) -> u64 {
        self.inner.slots()
    }
    fn write(&self, first: u64, pages: &[&[u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        self.wait();
        self.written
            .fetch_add(pages.len() as u64, Ordering::Relaxed);
        self.inner.write(first, pages)
    }
    fn read(&self, first: u64, pages: &mut [&mut [u8; PAGE_BYTES]]) -> Result<(), SwapIoError> {
        self.wait();
        self.inner.read(first, pages)
    }
}

/// What a replay measured.
struct Run {
    device_writes: u64,
    major_faults: u64,
    major_time: Duration,
    /// Of those, the faults served from the pool (a load during the fault).
    pool_faults: u64,
    pool_time: Duration,
    pool: Option<kmem::vm::ZswapStats>,
}

fn mix(x: u64) -> u64 {
    let x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 31)
}

/// Word `w` of version `v` of page `p`.
fn word(p: u64, v: u64, w: u64) -> u64 {
    let r = mix(p << 40 ^ v << 20 ^ w);
    if mix(p) % 10 < 6 {
        // Text-like: words drawn from a small vocabulary (LZ4 keeps a
        // third to a quarter of such a page), a tag first.
        const WORDS: [u64; 16] = [
            0x2065_6874_2020_2020,
            0x2020_666f_2020_2020,
            0x2064_6e61_2020_2020,
            0x2020_6f74_2020_2020,
            0x2020_6e69_2020_2020,
            0x2073_6920_2020_2020,
            0x2074_6168_7420_2020,
            0x2020_7469_2020_2020,
            0x726f_6620_2020_2020,
            0x2020_7361_2020_2020,
            0x6874_6977_2020_2020,
            0x2020_6e6f_2020_2020,
            0x7369_6874_2020_2020,
            0x2020_7962_2020_2020,
            0x6d6f_7266_2020_2020,
            0x2020_7461_2020_2020,
        ];
        if w == 0 {
            v << 32 | p
        } else {
            WORDS[(r % 16) as usize] ^ (r >> 60 << 56)
        }
    } else {
        r | 1
    }
}

/// Replays `trace` over `FRAMES` frames; with `pool`, through a `Zswap`
/// of that many bytes.
fn replay(trace: &[u64], pool: Option<usize>, latency: Option<Duration>) -> Run {
    // Page numbers made dense (some traces spread them out).
    let mut dense = std::collections::HashMap::new();
    let trace: Vec<u64> = trace
        .iter()
        .map(|p| {
            let n = dense.len() as u64;
            *dense.entry(*p).or_insert(n)
        })
        .collect();
    let pages = dense.len() as u64;
    let mem = EmulatedMemory::new(FRAMES + 64 + pages as usize / 256);
    let mut frames = mem.frame_allocator();
    let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
    vm.set_frame_limit(Some(FRAMES as u64));
    let written = Arc::new(AtomicU64::new(0));
    let disk = Disk {
        inner: MemSwap::new(pages + 64),
        latency,
        written: written.clone(),
    };
    let zswap: Option<Arc<Zswap<Disk>>> =
        pool.map(|bytes| Arc::new(Zswap::new(disk, bytes).unwrap()));
    let device: Box<dyn SwapDevice + Send> = match &zswap {
        Some(z) => Box::new(z.clone()),
        None => Box::new(Disk {
            inner: MemSwap::new(pages + 64),
            latency,
            written: written.clone(),
        }),
    };
    assert!(vm.attach_swap(device).is_ok());
    let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let mut s = VmSpace::new_user(&kernel, &mut frames).unwrap();
    s.map_anonymous(Some(BASE), pages * 4096, Prot::RW | Prot::USER)
        .unwrap();
    let mut mmu = RecordingMmu::new(kernel.pml4());
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut versions = vec![0u64; pages as usize];
    let (mut major_faults, mut major_time) = (0, Duration::ZERO);
    let (mut pool_faults, mut pool_time) = (0, Duration::ZERO);
    let loads = || zswap.as_ref().map_or(0, |z| z.stats().loads);
    for (i, &p) in trace.iter().enumerate() {
        let at = VirtAddr::new(BASE + p * 4096);
        let write = versions[p as usize] == 0 || mix(i as u64) % 10 < 3;
        let present = s
            .mapper()
            .translate(at)
            .is_ok_and(|t| !write || t.access.writable);
        if !present {
            let access = if write {
                FaultAccess::write(true)
            } else {
                FaultAccess::read(true)
            };
            loop {
                let before = loads();
                let t0 = Instant::now();
                let r = s.handle_fault(&vm, at, access, &mut frames, &mut tlb);
                let took = t0.elapsed();
                match r {
                    Ok(FaultOutcome::InTransit) => continue,
                    Ok(FaultOutcome::SwappedIn) => {
                        major_faults += 1;
                        major_time += took;
                        if loads() > before {
                            pool_faults += 1;
                            pool_time += took;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("reference {i}, page {p}: {e}"),
                }
                break;
            }
        }
        s.simulate_access(at, write);
        let phys = s.mapper().translate(at).unwrap().phys;
        let v = versions[p as usize];
        if write {
            versions[p as usize] = v + 1;
            for w in 0..512 {
                mem.write_u64(phys + w * 8, word(p, v + 1, w));
            }
        } else {
            // Spot-check what came back.
            for w in [0, 1, 511] {
                assert_eq!(mem.read_u64(phys + w * 8), word(p, v, w), "page {p}");
            }
        }
    }
    let pool = zswap.as_ref().map(|z| z.stats());
    s.destroy(&vm, &mut frames, &mut tlb)
        .map_err(|e| e.1)
        .unwrap();
    Run {
        device_writes: written.load(Ordering::Relaxed),
        major_faults,
        major_time,
        pool_faults,
        pool_time,
        pool,
    }
}

pub fn compressed_cache() {
    let pool = FRAMES * PAGE_BYTES / 4;
    println!();
    println!(
        "compressed swap cache: traces for {FRAMES} frames replayed through kmem::vm, 60 % of \
         pages compressible, 30 % of references writes; pool {pool} bytes (25 % of the limit)"
    );
    println!();
    println!("| trace | device writes, disk | with zswap | stored | rejected | written back | ratio in pool | writes zswap/disk |");
    println!("|---|---|---|---|---|---|---|---|");
    let suite = synth::suite(FRAMES, 14);
    let mut ratios = Vec::new();
    for t in suite
        .iter()
        .filter(|t| matches!(t.name, "zipf-1.0" | "phase" | "loop" | "files"))
    {
        let disk = replay(&t.pages, None, None);
        let z = replay(&t.pages, Some(pool), None);
        let st = z.pool.expect("a pool");
        let r = z.device_writes as f64 / disk.device_writes.max(1) as f64;
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {r:.3} |",
            t.name,
            disk.device_writes,
            z.device_writes,
            st.stored,
            st.rejected,
            st.written_back,
            st.compression_ratio(),
        );
        ratios.push((t.name, r));
    }
    for (name, r) in &ratios {
        println!("ratio zswap_writes_vs_disk {name} {r:.3}");
    }
    // Fault service time with a 50 µs device, on a shorter stretch of one trace.
    let t = suite
        .iter()
        .find(|t| t.name == "zipf-1.0")
        .expect("in the suite");
    let part = &t.pages[..t.pages.len() / 5];
    let disk = replay(part, None, Some(LATENCY));
    let z = replay(part, Some(pool), Some(LATENCY));
    let mean = |t: Duration, n: u64| t.as_nanos() as f64 / n.max(1) as f64 / 1000.0;
    let disk_us = mean(disk.major_time, disk.major_faults);
    let z_us = mean(z.major_time, z.major_faults);
    let pool_us = mean(z.pool_time, z.pool_faults);
    println!(
        "zipf-1.0, device requests of {} us: a major fault takes {disk_us:.1} us without the \
         cache; with it {pool_us:.1} us when served from the pool ({} of {} faults), \
         {z_us:.1} us over all of them",
        LATENCY.as_micros(),
        z.pool_faults,
        z.major_faults,
    );
    println!(
        "ratio zswap_fault_vs_disk zipf-1.0 {:.3}",
        pool_us / disk_us
    );
    println!(
        "ratio zswap_all_faults_vs_disk zipf-1.0 {:.3}",
        z_us / disk_us
    );
}
