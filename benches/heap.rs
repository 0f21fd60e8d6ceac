//! Heap benchmark after talc's methodology (SFBdragon/talc `benches/`):
//! kmem vs talc 5.1.1, rlsf 0.2.3, linked_list_allocator 0.10.6 and
//! buddy_system_allocator 0.13, same 128 MiB pre-touched arena, same run.
//!
//! `cargo bench --bench heap`; `KMEM_BENCH_QUICK=1` for a short iteration run.
//!
//! Knobs (environment):
//! - `KMEM_BENCH_ONLY=throughput|efficiency|latency`: one part only.
//! - `KMEM_BENCH_ROWS=realloc_3000,norealloc_30000,high_align`: only these
//!   throughput rows.
//! - `KMEM_BENCH_PROBE=<max>`: diagnostics instead of the tables: one
//!   random-actions run per allocator (`KMEM_BENCH_PROBE_ALLOC=0|1|2`,
//!   `KMEM_BENCH_PROBE_REALLOC=0|1`, `KMEM_BENCH_PROBE_MS`,
//!   `KMEM_BENCH_PROBE_OPS` to stop after that many operations) printing
//!   ops, reallocs that moved, bytes copied per op, the address extent used
//!   and TSC ticks per alloc, free, in-place realloc and moving realloc;
//!   `KMEM_BENCH_PROBE=0` prints kmem's state at the heap-efficiency failure.
//!   Deterministic instruction counts: run the probe under
//!   `valgrind --tool=callgrind`.
//! - Latency (`LATENCY_WORKLOADS`): p50/p99 per size range and per
//!   alignment range are printed for every workload;
//!   `KMEM_BENCH_CHURN_EVERY=k` churns the live set once every `k` timed
//!   pairs (0: never after the warm-up, a heap whose caches stay warm;
//!   default 1); `KMEM_BENCH_CAUSES=1` counts kmem's timed operations that
//!   mapped or unmapped pages.

mod common;
use common::Rng;

use core::ptr::NonNull;
use kmem::heap::{LockedHeap, PAGE_SIZE};
use kmem::testing::arena::ArenaPageSource;
use std::alloc::{GlobalAlloc, Layout};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

const HEAP_SIZE: usize = 1 << 27;
/// kmem keeps an unmapped guard page at each end, outside the 128 MiB.
const GUARDS: usize = 2 * PAGE_SIZE;
const MAX_SIZES: [usize; 5] = [200, 1000, 3000, 10000, 30000];
const NAMES: [&str; 5] = ["kmem", "talc", "rlsf", "linked_list", "buddy"];

struct Config {
    trials: usize,
    duration: Duration,
    eff_rounds: usize,
    small_rounds: usize,
    latency_samples: usize,
}

fn config() -> Config {
    if std::env::var_os("KMEM_BENCH_QUICK").is_some() {
        Config {
            trials: 3,
            duration: Duration::from_millis(40),
            eff_rounds: 2,
            small_rounds: 1,
            latency_samples: 30_000,
        }
    } else {
        Config {
            trials: 7,
            duration: Duration::from_millis(200),
            eff_rounds: 10,
            small_rounds: 1,
            latency_samples: 300_000,
        }
    }
}

// ---------------------------------------------------------------- PRNG

/// size cap = U[16, max), size = U[4, cap) (talc's bias to small sizes).
fn gen_size(rng: &mut Rng, max: usize) -> usize {
    let cap = rng.range(16, max);
    rng.range(4, cap)
}

/// 8 << (trailing_zeros(random u16) / 2): 75 % 8, 19 % 16, 4 % 32, ...
fn gen_align(rng: &mut Rng) -> usize {
    8 << ((rng.next() as u16).trailing_zeros() / 2)
}

// ---------------------------------------------------------------- arena + allocators

struct Buffer(*mut u8);

impl Buffer {
    fn new() -> Self {
        let layout = Layout::from_size_align(HEAP_SIZE + GUARDS, PAGE_SIZE).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        assert!(!p.is_null());
        for i in (0..HEAP_SIZE + GUARDS).step_by(1024) {
            // SAFETY: inside the buffer; touch every page once, like talc's bench.
            unsafe { p.add(i).write_volatile(0xab) };
        }
        Buffer(p)
    }
}

struct Locked<T>(spin::Mutex<T>);
// SAFETY: the inner allocators are only used under the lock.
unsafe impl<T> Sync for Locked<T> {}
// SAFETY: as above.
unsafe impl<T> Send for Locked<T> {}

type Rlsf =
    rlsf::Tlsf<'static, usize, usize, { usize::BITS as usize - 12 }, { usize::BITS as usize }>;

// SAFETY: forwards to rlsf under the lock.
unsafe impl GlobalAlloc for Locked<Rlsf> {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.0
            .lock()
            .allocate(l)
            .map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller passes a live block.
        unsafe {
            self.0
                .lock()
                .deallocate(NonNull::new_unchecked(p), l.align())
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: the caller passes a live block.
        unsafe {
            let nl = Layout::from_size_align_unchecked(n, l.align());
            self.0
                .lock()
                .reallocate(NonNull::new_unchecked(p), nl)
                .map_or(std::ptr::null_mut(), NonNull::as_ptr)
        }
    }
}

// SAFETY: forwards to linked_list_allocator under the lock.
unsafe impl GlobalAlloc for Locked<linked_list_allocator::Heap> {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.0
            .lock()
            .allocate_first_fit(l)
            .map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller passes a live block.
        unsafe { self.0.lock().deallocate(NonNull::new_unchecked(p), l) }
    }
}

// SAFETY: forwards to buddy_system_allocator under the lock.
unsafe impl GlobalAlloc for Locked<buddy_system_allocator::Heap<32>> {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.0
            .lock()
            .alloc(l)
            .map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller passes a live block.
        unsafe { self.0.lock().dealloc(NonNull::new_unchecked(p), l) }
    }
}

/// A fresh allocator `which` over the buffer.
fn make(which: usize, buf: &Buffer) -> Box<dyn GlobalAlloc + Sync> {
    let base = buf.0;
    match which {
        0 => {
            let heap = Box::new(LockedHeap::<ArenaPageSource>::empty());
            // SAFETY: the buffer is page-aligned, HEAP_SIZE + GUARDS long, and used
            // by this allocator alone until the next `make`.
            let mut arena = unsafe { ArenaPageSource::over(base, HEAP_SIZE + GUARDS) };
            arena.set_poison(false);
            // SAFETY: as above.
            unsafe { heap.init(arena, base as usize, HEAP_SIZE + GUARDS) }.unwrap();
            KMEM_LAST.store(&*heap as *const _ as usize, Relaxed);
            heap
        }
        1 => {
            // SAFETY: as above.
            let claim = unsafe { talc::source::Claim::new(base, HEAP_SIZE) };
            Box::new(talc::TalcLock::<spin::Mutex<()>, _>::new(claim))
        }
        2 => {
            let mut tlsf = Rlsf::new();
            // SAFETY: as above; the block outlives the allocator (the buffer is leaked).
            let block = unsafe {
                std::slice::from_raw_parts_mut(base.cast::<MaybeUninit<u8>>(), HEAP_SIZE)
            };
            tlsf.insert_free_block(block);
            Box::new(Locked(spin::Mutex::new(tlsf)))
        }
        3 => {
            let mut h = linked_list_allocator::Heap::empty();
            // SAFETY: as above.
            unsafe { h.init(base, HEAP_SIZE) };
            Box::new(Locked(spin::Mutex::new(h)))
        }
        _ => {
            let mut h = buddy_system_allocator::Heap::<32>::new();
            // SAFETY: as above.
            unsafe { h.init(base as usize, HEAP_SIZE) };
            Box::new(Locked(spin::Mutex::new(h)))
        }
    }
}

/// Probe-only counters: reallocs that moved, and the bytes they copied
/// (`usize::MAX` = not counting).
static PROBE_MOVES: AtomicUsize = AtomicUsize::new(usize::MAX);
static PROBE_COPIED: AtomicUsize = AtomicUsize::new(0);
/// Probe-only: the highest block end seen in the arena's lower half, and
/// the lowest block start in its upper half (kmem's slabs live there).
static PROBE_TOP: AtomicUsize = AtomicUsize::new(0);
static PROBE_FLOOR: AtomicUsize = AtomicUsize::new(usize::MAX);
static PROBE_BASE: AtomicUsize = AtomicUsize::new(0);

/// Probe-only: stop random actions after this many operations
/// (`KMEM_BENCH_PROBE_OPS`), so runs under callgrind compare equal work.
fn probe_ops() -> usize {
    static OPS: AtomicUsize = AtomicUsize::new(0);
    match OPS.load(Relaxed) {
        0 => {
            let n = std::env::var("KMEM_BENCH_PROBE_OPS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(usize::MAX);
            OPS.store(n, Relaxed);
            n
        }
        n => n,
    }
}

/// Whether a probe is counting (a plain load: the timed runs skip the
/// atomic read-modify-writes below).
fn probing() -> bool {
    PROBE_MOVES.load(Relaxed) != usize::MAX
}

/// Probe-only: records the extent of a block at `p` of `n` bytes.
fn probe_extent(p: *mut u8, n: usize) {
    let off = (p as usize).wrapping_sub(PROBE_BASE.load(Relaxed));
    if off < HEAP_SIZE / 2 {
        PROBE_TOP.fetch_max(off + n, Relaxed);
    } else if off < HEAP_SIZE + GUARDS {
        PROBE_FLOOR.fetch_min(off, Relaxed);
    }
}

/// Probe-only: TSC ticks and calls for alloc, free, in-place realloc and
/// moving realloc (pairs of counters, in that order).
static PROBE_TSC: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];

/// Probe-only: the TSC, read only while a probe is counting.
fn probe_start() -> u64 {
    if probing() {
        rdtsc()
    } else {
        0
    }
}

/// Probe-only: charges the ticks since `t0` to call kind `kind`.
fn probe_time(kind: usize, t0: u64) {
    PROBE_TSC[2 * kind].fetch_add((rdtsc() - t0) as usize, Relaxed);
    PROBE_TSC[2 * kind + 1].fetch_add(1, Relaxed);
}

struct Block<'a> {
    ptr: *mut u8,
    layout: Layout,
    a: &'a dyn GlobalAlloc,
}

impl<'a> Block<'a> {
    fn new(a: &'a dyn GlobalAlloc, size: usize, align: usize) -> Option<Self> {
        let layout = Layout::from_size_align(size, align).unwrap();
        let t0 = probe_start();
        // SAFETY: non-zero size.
        let ptr = unsafe { a.alloc(layout) };
        if probing() {
            probe_time(0, t0);
            probe_extent(ptr, size);
        }
        (!ptr.is_null()).then(|| Block { ptr, layout, a })
    }
    fn realloc(&mut self, n: usize) -> bool {
        let t0 = probe_start();
        // SAFETY: live block with its layout.
        let p = unsafe { self.a.realloc(self.ptr, self.layout, n) };
        if probing() {
            probe_time(if p == self.ptr { 2 } else { 3 }, t0);
        }
        if p.is_null() {
            return false;
        }
        if probing() {
            probe_extent(p, n);
        }
        if probing() && p != self.ptr {
            PROBE_MOVES.fetch_add(1, Relaxed);
            PROBE_COPIED.fetch_add(self.layout.size().min(n), Relaxed);
        }
        self.ptr = p;
        self.layout = Layout::from_size_align(n, self.layout.align()).unwrap();
        true
    }
}

impl Drop for Block<'_> {
    fn drop(&mut self) {
        let t0 = probe_start();
        // SAFETY: live block with its layout.
        unsafe { self.a.dealloc(self.ptr, self.layout) }
        if probing() {
            probe_time(1, t0);
        }
    }
}

// ---------------------------------------------------------------- workloads

/// talc's random actions: returns the number of operations done in `dur`.
fn random_actions(
    a: &dyn GlobalAlloc,
    max: usize,
    realloc: bool,
    dur: Duration,
    align: &dyn Fn(&mut Rng) -> usize,
    rng: &mut Rng,
) -> usize {
    let mut v: Vec<Block> = Vec::with_capacity(100_000);
    let mut score = 0;
    let start = Instant::now();
    let cap = probe_ops();
    while start.elapsed() < dur && score < cap {
        for _ in 0..100 {
            let action = rng.range(0, 6 + realloc as usize);
            if action == 6 {
                if !v.is_empty() {
                    let i = rng.range(0, v.len());
                    let n = rng.range(1, max * 3);
                    score += v[i].realloc(n) as usize;
                }
            } else if action < 3 || v.len() < 300 {
                let size = gen_size(rng, max);
                let al = align(rng);
                if let Some(b) = Block::new(a, size, al) {
                    v.push(b);
                    score += 1;
                }
            } else {
                let i = rng.range(0, v.len());
                v.swap_remove(i);
                score += 1;
            }
        }
    }
    score
}

/// Throughput (ops/s) of every allocator, median over interleaved trials.
fn throughput(
    cfg: &Config,
    buf: &Buffer,
    max: usize,
    realloc: bool,
    align: &dyn Fn(&mut Rng) -> usize,
) -> [f64; 5] {
    let mut scores = vec![Vec::new(); NAMES.len()];
    for t in 0..cfg.trials {
        for (which, s) in scores.iter_mut().enumerate() {
            let a = make(which, buf);
            let mut rng = Rng(0x5eed + t as u64);
            random_actions(&*a, max, realloc, Duration::from_millis(2), align, &mut rng);
            let n = random_actions(&*a, max, realloc, cfg.duration, align, &mut rng);
            s.push(n as f64 / cfg.duration.as_secs_f64());
        }
    }
    scores
        .iter_mut()
        .map(|s| median(s))
        .collect::<Vec<_>>()
        .try_into()
        .unwrap()
}

/// One round of talc's heap-efficiency fill: 50 % alloc (max `max`), 10 %
/// free and, with `realloc`, 40 % realloc to U[1, 10·max), until the first
/// failure. `None` if `give_up()` says so first (asked every 4096 steps; the
/// blocks are then leaked: freeing would take as long again in
/// linked_list_allocator, which is O(n) per free, and the allocator is
/// discarded anyway).
fn fill_until_failure<'a>(
    a: &'a dyn GlobalAlloc,
    rng: &mut Rng,
    max: usize,
    realloc: bool,
    give_up: &dyn Fn() -> bool,
) -> Option<Vec<Block<'a>>> {
    let mut v: Vec<Block> = Vec::with_capacity(100_000);
    for n in 1u64.. {
        if n.is_multiple_of(4096) && give_up() {
            std::mem::forget(v);
            return None;
        }
        let action = if realloc {
            rng.range(0, 10)
        } else {
            rng.range(0, 6)
        };
        match action {
            0..=4 => match Block::new(a, gen_size(rng, max), gen_align(rng)) {
                Some(b) => v.push(b),
                None => break,
            },
            5 => {
                if !v.is_empty() {
                    let i = rng.range(0, v.len());
                    v.swap_remove(i);
                }
            }
            _ => {
                if !v.is_empty() {
                    let i = rng.range(0, v.len());
                    if !v[i].realloc(rng.range(1, max * 10)) {
                        break;
                    }
                }
            }
        }
    }
    Some(v)
}

/// talc's heap efficiency over `rounds` fills: live requested ÷ heap.
fn efficiency(
    a: &dyn GlobalAlloc,
    max: usize,
    realloc: bool,
    rounds: usize,
    limit: Duration,
) -> Option<f64> {
    let start = Instant::now();
    let mut rng = Rng(0xe44);
    let (mut used, mut total) = (0usize, 0usize);
    for round in 0..rounds {
        let v = fill_until_failure(a, &mut rng, max, realloc, &|| start.elapsed() > limit)?;
        used += v.iter().map(|b| b.layout.size()).sum::<usize>();
        total += HEAP_SIZE;
        if round + 1 == rounds {
            // The allocator is discarded next; freeing millions of blocks one
            // by one is O(n²) in linked_list_allocator and buddy.
            std::mem::forget(v);
        }
    }
    Some(used as f64 / total as f64 * 100.0)
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc/lfence have no preconditions on x86_64.
    unsafe {
        core::arch::x86_64::_mm_lfence();
        let t = core::arch::x86_64::_rdtsc();
        core::arch::x86_64::_mm_lfence();
        t
    }
}

fn ns_per_tick() -> f64 {
    let (t0, i0) = (rdtsc(), Instant::now());
    while i0.elapsed() < Duration::from_millis(50) {}
    i0.elapsed().as_nanos() as f64 / (rdtsc() - t0) as f64
}

/// Rounds of the latency run. Every round runs each allocator in turn, so
/// all see the same machine conditions (a noisy phase hits them all, not
/// one allocator's whole run).
const LATENCY_ROUNDS: u64 = 6;

/// A latency workload: requests of `gen_size(max)` bytes aligned by
/// `align`, timed as alloc+free pairs on a heap holding a live set.
struct LatencyWorkload {
    name: &'static str,
    /// Size cap, as in the throughput rows.
    max: usize,
    /// The live set random-walks within `[lo, hi]` objects.
    live: (usize, usize),
    /// Upper bounds of the size ranges reported separately.
    ranges: &'static [usize],
    /// The alignment of each request.
    align: fn(&mut Rng) -> usize,
    /// What is timed: an alloc+free pair of one request between churn
    /// steps, or (`sweep`) every single alloc and free while the live set
    /// sweeps from `live.0` to `live.1` and back, growing and shrinking
    /// the heap (page mapping and trimming are part of what is timed).
    sweep: bool,
}

/// 8..=4096, each power of two equally likely (as in `high_align_1000`).
fn uniform_align(rng: &mut Rng) -> usize {
    1 << rng.range(3, 13)
}

const LATENCY_WORKLOADS: [LatencyWorkload; 4] = [
    LatencyWorkload {
        name: "max 3000, live >= 300",
        max: 3000,
        live: (300, usize::MAX),
        ranges: &[1024, usize::MAX],
        align: gen_align,
        sweep: false,
    },
    LatencyWorkload {
        name: "max 32 KiB, live 50-600",
        max: 32 << 10,
        live: (50, 600),
        ranges: &[256, 1024, 4096, usize::MAX],
        align: gen_align,
        sweep: false,
    },
    LatencyWorkload {
        name: "max 32 KiB, live 50-600, align 8-4096 uniform",
        max: 32 << 10,
        live: (50, 600),
        ranges: &[256, 1024, 4096, usize::MAX],
        align: uniform_align,
        sweep: false,
    },
    LatencyWorkload {
        name: "max 32 KiB, single allocs and frees, live sweeping 50-600-50",
        max: 32 << 10,
        live: (50, 600),
        ranges: &[1024, 4096, usize::MAX],
        align: gen_align,
        sweep: true,
    },
];

/// Upper bounds of the alignment ranges reported separately: kmem's large
/// blocks need no gap up to 64, keep a gap inside the block up to 1024,
/// and may split one off above.
const ALIGN_RANGES: [usize; 3] = [64, 1024, usize::MAX];

/// The kmem heap `make` built last (the latency diagnostics read its page
/// source).
static KMEM_LAST: AtomicUsize = AtomicUsize::new(0);

/// kmem's page-source `(map, unmap)` calls so far.
fn kmem_calls() -> (usize, usize) {
    // SAFETY: `make` stored a heap that lives while it is measured.
    let h = unsafe { &*(KMEM_LAST.load(Relaxed) as *const LockedHeap<ArenaPageSource>) };
    h.lock().heap().map_or((0, 0), |h| h.source().calls())
}

/// Knobs of the latency run, read once.
struct LatencyKnobs {
    /// Untimed churn actions between two timed pairs
    /// (`KMEM_BENCH_CHURN_EVERY=k`: one action every `k` pairs, 0 = none
    /// after the warm-up; default 1).
    churn_every: usize,
    /// Count kmem's pairs that mapped or unmapped pages (`KMEM_BENCH_CAUSES=1`).
    causes: bool,
}

/// One round's samples (ns): all pairs, then per size range of `w`, then
/// per range of `ALIGN_RANGES`.
type Samples = Vec<Vec<f64>>;

/// One round of alloc+free pair latencies (ns) for allocator `which`.
/// Between two timed pairs one untimed action (alloc or free) churns the
/// live set, so every pair meets a different heap. For kmem with
/// `k.causes`, also the pairs that called the page source.
fn latency_round(
    buf: &Buffer,
    w: &LatencyWorkload,
    k: &LatencyKnobs,
    which: usize,
    (ns, round, n): (f64, u64, usize),
) -> (Samples, Vec<f64>) {
    let mut out: Samples = vec![Vec::new(); 2 + w.ranges.len() + ALIGN_RANGES.len()];
    let mut paged = Vec::new();
    let a = make(which, buf);
    let causes = k.causes && which == 0;
    let mut rng = Rng(0x1a7 + round);
    let mut keep: Vec<Block> = Vec::new();
    fn churn<'a>(
        a: &'a dyn GlobalAlloc,
        w: &LatencyWorkload,
        rng: &mut Rng,
        keep: &mut Vec<Block<'a>>,
    ) {
        let grow = keep.len() < w.live.0 || (keep.len() < w.live.1 && rng.range(0, 2) == 0);
        if grow {
            keep.extend(Block::new(a, gen_size(rng, w.max), (w.align)(rng)));
        } else if !keep.is_empty() {
            let i = rng.range(0, keep.len());
            keep.swap_remove(i);
        }
    }
    for _ in 0..20_000 {
        churn(&*a, w, &mut rng, &mut keep);
    }
    if w.sweep {
        let mut up = true;
        for _ in 0..n {
            up = if up {
                keep.len() < w.live.1
            } else {
                keep.len() <= w.live.0
            };
            let c0 = if causes { kmem_calls() } else { (0, 0) };
            let (t, col) = if up {
                let l = Layout::from_size_align(gen_size(&mut rng, w.max), (w.align)(&mut rng))
                    .unwrap();
                let t0 = rdtsc();
                let b = Block::new(&*a, l.size(), l.align());
                let t = rdtsc() - t0;
                keep.extend(b);
                let r = w.ranges.iter().position(|&hi| l.size() <= hi).unwrap();
                let r2 = ALIGN_RANGES.iter().position(|&hi| l.align() <= hi).unwrap();
                out[1 + w.ranges.len() + r2].push(t as f64 * ns);
                (t, 1 + r)
            } else {
                let b = keep.swap_remove(rng.range(0, keep.len()));
                let t0 = rdtsc();
                drop(b);
                (rdtsc() - t0, 1 + w.ranges.len() + ALIGN_RANGES.len())
            };
            let t = t as f64 * ns;
            if causes && kmem_calls() != c0 {
                paged.push(t);
            }
            out[0].push(t);
            out[col].push(t);
        }
        return (out, paged);
    }
    for i in 0..n {
        if k.churn_every != 0 && i % k.churn_every == 0 {
            churn(&*a, w, &mut rng, &mut keep);
        }
        let size = gen_size(&mut rng, w.max);
        let l = Layout::from_size_align(size, (w.align)(&mut rng)).unwrap();
        let c0 = if causes { kmem_calls() } else { (0, 0) };
        let t0 = rdtsc();
        // SAFETY: non-zero layout; freed right away with it.
        unsafe {
            let p = a.alloc(l);
            a.dealloc(p, l);
        }
        let t = (rdtsc() - t0) as f64 * ns;
        if causes && kmem_calls() != c0 {
            paged.push(t);
        }
        out[0].push(t);
        let r = w.ranges.iter().position(|&hi| l.size() <= hi).unwrap();
        out[1 + r].push(t);
        let r = ALIGN_RANGES.iter().position(|&hi| l.align() <= hi).unwrap();
        out[1 + w.ranges.len() + r].push(t);
    }
    (out, paged)
}

/// Percentiles 1/25/50/75/99 of `v` (sorted in place).
fn percentiles(v: &mut [f64]) -> [f64; 5] {
    v.sort_by(f64::total_cmp);
    [1, 25, 50, 75, 99].map(|p| v[(v.len() - 1) * p / 100])
}

/// Prints a table of p50 / p99 per range: one column per `(label, i)`,
/// `i` indexing each allocator's sample lists.
fn print_ranges(title: &str, all: &mut [Samples], cols: &[(String, usize)]) {
    let mut head = format!("{title:<14}");
    for (label, _) in cols {
        head.push_str(&format!("{label:>18}"));
    }
    println!("{head}");
    for (which, v) in all.iter_mut().enumerate() {
        let mut row = format!("{:<14}", NAMES[which]);
        for &(_, i) in cols {
            let cell = if v[i].is_empty() {
                "-".to_string()
            } else {
                let p = percentiles(&mut v[i]);
                format!("{:.0} / {:.0}", p[2], p[4])
            };
            row.push_str(&format!("{cell:>18}"));
        }
        println!("{row}");
    }
}

/// Column labels for the ranges ending at `bounds`, starting at column `first`.
fn range_cols(bounds: &[usize], first: usize, fmt: fn(usize) -> usize) -> Vec<(String, usize)> {
    let mut lo = 0;
    let mut cols = Vec::new();
    for (i, &hi) in bounds.iter().enumerate() {
        let label = if hi == usize::MAX {
            format!("> {lo}")
        } else {
            format!("{}-{hi}", fmt(lo))
        };
        cols.push((label, first + i));
        lo = hi;
    }
    cols
}

/// Alloc+free pair latency percentiles of every allocator for workload
/// `w`, rounds interleaved; p50/p99 per size range and per alignment range
/// are printed.
fn latency(cfg: &Config, buf: &Buffer, ns: f64, w: &LatencyWorkload) -> Vec<[f64; 5]> {
    let knobs = LatencyKnobs {
        churn_every: std::env::var("KMEM_BENCH_CHURN_EVERY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        causes: std::env::var_os("KMEM_BENCH_CAUSES").is_some(),
    };
    let per_round = cfg.latency_samples / LATENCY_ROUNDS as usize;
    let lists = 2 + w.ranges.len() + ALIGN_RANGES.len();
    let mut all: Vec<Samples> = vec![vec![Vec::new(); lists]; NAMES.len()];
    let mut paged = Vec::new();
    for round in 0..LATENCY_ROUNDS {
        for (which, acc) in all.iter_mut().enumerate() {
            let (r, p) = latency_round(buf, w, &knobs, which, (ns, round, per_round));
            for (acc, r) in acc.iter_mut().zip(r) {
                acc.extend(r);
            }
            paged.extend(p);
        }
    }
    let mut by_size = range_cols(w.ranges, 1, |lo| lo + 1);
    if w.sweep {
        by_size.push(("free".into(), 1 + w.ranges.len() + ALIGN_RANGES.len()));
    }
    print_ranges(
        if w.sweep {
            "alloc by size"
        } else {
            "p50 / p99 by size"
        },
        &mut all,
        &by_size,
    );
    print_ranges(
        "p50 / p99 by align",
        &mut all,
        &range_cols(&ALIGN_RANGES, 1 + w.ranges.len(), |lo| (lo * 2).max(1)),
    );
    if knobs.causes {
        let n = paged.len();
        let median = if n == 0 {
            0.0
        } else {
            percentiles(&mut paged)[2]
        };
        println!(
            "kmem pairs that mapped or unmapped pages: {n} of {} (median {median:.0} ns)",
            all[0][0].len()
        );
    }
    all.iter_mut().map(|v| percentiles(&mut v[0])).collect()
}

/// Diagnostic: kmem's state at the first failure of one heap-efficiency fill.
fn probe_efficiency_failure(buf: &Buffer) {
    let heap = LockedHeap::<ArenaPageSource>::empty();
    // SAFETY: as in `make`.
    let mut arena = unsafe { ArenaPageSource::over(buf.0, HEAP_SIZE + GUARDS) };
    arena.set_poison(false);
    // SAFETY: as in `make`.
    unsafe { heap.init(arena, buf.0 as usize, HEAP_SIZE + GUARDS) }.unwrap();
    let v = fill_until_failure(&heap, &mut Rng(0xe44), 10_000, true, &|| false)
        .expect("never gives up");
    let g = heap.lock();
    let h = g.heap().unwrap();
    let s = h.stats();
    let small: usize = v
        .iter()
        .filter(|b| kmem::heap::class_of(b.layout).is_some())
        .map(|b| b.layout.size())
        .sum();
    println!(
        "{s:?}\nsmall live bytes {small}, large live {}",
        s.live_bytes - small
    );
    drop(g);
    std::mem::forget(v);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    common::print_provenance("heap");
    let cfg = config();
    let buf = Buffer::new();
    let mut ratios: Vec<String> = Vec::new();
    if let Some(max) = std::env::var("KMEM_BENCH_PROBE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        if max == 0 {
            probe_efficiency_failure(&buf);
            return;
        }
        PROBE_BASE.store(buf.0 as usize, Relaxed);
        let which: Vec<usize> = var("KMEM_BENCH_PROBE_ALLOC").map_or(vec![0, 1, 2], |w| vec![w]);
        let reallocs: Vec<bool> =
            var("KMEM_BENCH_PROBE_REALLOC").map_or(vec![false, true], |r: usize| vec![r != 0]);
        for &which in &which {
            for &realloc in &reallocs {
                let a = make(which, &buf);
                PROBE_MOVES.store(0, Relaxed);
                PROBE_COPIED.store(0, Relaxed);
                let n = random_actions(
                    &*a,
                    max,
                    realloc,
                    Duration::from_millis(var("KMEM_BENCH_PROBE_MS").unwrap_or(200) as u64),
                    &gen_align,
                    &mut Rng(1),
                );
                let moves = PROBE_MOVES.swap(usize::MAX, Relaxed);
                let top = PROBE_TOP.swap(0, Relaxed);
                let slabs =
                    (HEAP_SIZE + GUARDS).saturating_sub(PROBE_FLOOR.swap(usize::MAX, Relaxed));
                let copied = PROBE_COPIED.load(Relaxed);
                let t: Vec<usize> = PROBE_TSC.iter().map(|a| a.swap(0, Relaxed)).collect();
                println!(
                    "  TSC ticks/call: alloc {:.0} free {:.0} realloc-inplace {:.0} ({}) realloc-move {:.0} ({})",
                    t[0] as f64 / t[1] as f64,
                    t[2] as f64 / t[3] as f64,
                    t[4] as f64 / t[5] as f64,
                    t[5],
                    t[6] as f64 / t[7] as f64,
                    t[7]
                );
                println!(
                    "{:<6} realloc {realloc:<5}: {n:>8} ops, {moves} moves, {:.1} B copied/op, top {} KiB, upper {} KiB",
                    NAMES[which],
                    copied as f64 / n as f64,
                    top >> 10,
                    slabs >> 10
                );
            }
        }
        return;
    }
    let mut effs: Vec<String> = Vec::new();
    let default_align: &dyn Fn(&mut Rng) -> usize = &gen_align;

    let only = std::env::var("KMEM_BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.contains(part);
    // KMEM_BENCH_ROWS=realloc_3000,norealloc_30000: only these throughput rows.
    let rows = std::env::var("KMEM_BENCH_ROWS").unwrap_or_default();
    if run("throughput") {
        println!(
            "## random actions (Mops/s, median of {} trials × {:?})",
            cfg.trials, cfg.duration
        );
        println!(
            "{:<28}{}",
            "workload",
            NAMES.map(|n| format!("{n:>13}")).concat()
        );
        for realloc in [true, false] {
            for max in MAX_SIZES {
                let name = format!(
                    "random_actions_{}_{max}",
                    if realloc { "realloc" } else { "norealloc" }
                );
                if !rows.is_empty() && !rows.split(',').any(|r| name.contains(r)) {
                    continue;
                }
                let t = throughput(&cfg, &buf, max, realloc, default_align);
                println!(
                    "{name:<28}{}",
                    t.map(|x| format!("{:>13.2}", x / 1e6)).concat()
                );
                for p in 1..NAMES.len() {
                    ratios.push(format!("ratio {name} {} {:.2}", NAMES[p], t[0] / t[p]));
                }
            }
        }
        if rows.is_empty() || rows.contains("high_align") {
            let high: &dyn Fn(&mut Rng) -> usize = &|r: &mut Rng| 1 << r.range(3, 13);
            let t = throughput(&cfg, &buf, 1000, false, high);
            println!(
                "{:<28}{}",
                "high_align_1000",
                t.map(|x| format!("{:>13.2}", x / 1e6)).concat()
            );
            for p in 1..NAMES.len() {
                ratios.push(format!(
                    "ratio high_align_1000 {} {:.2}",
                    NAMES[p],
                    t[0] / t[p]
                ));
            }
        }
    }
    if run("efficiency") {
        println!("\n## efficiency (% of the 128 MiB arena live at the first failure)");
        println!(
            "{:<28}{}",
            "workload",
            NAMES.map(|n| format!("{n:>13}")).concat()
        );
        for (name, max, realloc, rounds) in [
            ("heap_efficiency", 10_000, true, cfg.eff_rounds),
            ("small_objects_256", 256, false, cfg.small_rounds),
        ] {
            let mut row = String::new();
            for (which, alloc_name) in NAMES.iter().enumerate() {
                eprintln!("efficiency {name} {alloc_name} ...");
                let a = make(which, &buf);
                let e = efficiency(&*a, max, realloc, rounds, Duration::from_secs(20));
                row += &e.map_or(format!("{:>13}", "timeout"), |e| format!("{e:>13.2}"));
                effs.push(format!(
                    "efficiency {name} {alloc_name} {}",
                    e.map_or("n/a".into(), |e| format!("{e:.2}"))
                ));
            }
            println!("{name:<28}{row}");
        }
    }
    if run("latency") {
        let ns = ns_per_tick();
        for (k, w) in LATENCY_WORKLOADS.iter().enumerate() {
            println!(
                "\n## alloc+free latency (ns), {}: percentiles 1/25/50/75/99",
                w.name
            );
            let lat = latency(&cfg, &buf, ns, w);
            for (n, l) in NAMES.iter().zip(&lat) {
                println!("{n:<14}{}", l.map(|x| format!("{x:>9.1}")).concat());
            }
            let tag = match k {
                0 => String::new(),
                1 => format!("_{}", w.max),
                2 => format!("_{}_align", w.max),
                _ => format!("_{}_sweep", w.max),
            };
            for (i, pct) in [(2, "p50"), (4, "p99")] {
                for p in 1..NAMES.len() {
                    ratios.push(format!(
                        "ratio latency{tag}_{pct} {} {:.2}",
                        NAMES[p],
                        lat[p][i] / lat[0][i]
                    ));
                }
            }
        }
    }
    println!();
    effs.iter().chain(&ratios).for_each(|l| println!("{l}"));
}
