//! The seeded synthetic suite: the access patterns the replacement
//! literature measures policies on, generated (never downloaded) so every
//! run of the bench, the tests and `traces/` sees the same references.
//!
//! Sizes are relative to a frame count `f`; every trace has `200 f`
//! references (`len` in the individual generators).

use super::PageId;
use std::vec::Vec;

/// One trace of the suite.
pub struct Trace {
    /// The name the bench and `replay` print.
    pub name: &'static str,
    /// The page references, in order.
    pub pages: Vec<PageId>,
}

/// SplitMix64: a small deterministic generator, enough for workloads.
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws ranks `0..n` with probability proportional to `1 / (rank+1)^alpha`
/// and maps them to pages through a seeded permutation of `base..base+n`.
pub struct Zipf {
    cdf: Vec<f64>,
    pages: Vec<PageId>,
}

impl Zipf {
    /// A distribution over `n` pages starting at `base`.
    pub fn new(n: usize, alpha: f64, base: PageId, rng: &mut Rng) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for rank in 0..n {
            sum += 1.0 / ((rank + 1) as f64).powf(alpha);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        let mut pages: Vec<PageId> = (0..n as u64).map(|i| base + i).collect();
        for i in (1..n).rev() {
            pages.swap(i, rng.below(i as u64 + 1) as usize);
        }
        Self { cdf, pages }
    }

    /// One page.
    pub fn sample(&self, rng: &mut Rng) -> PageId {
        let u = rng.unit();
        let rank = self
            .cdf
            .partition_point(|&c| c <= u)
            .min(self.pages.len() - 1);
        self.pages[rank]
    }
}

/// A loop over `pages` pages, repeated to `len` references.
pub fn looping(pages: usize, len: usize) -> Vec<PageId> {
    (0..len).map(|i| (i % pages) as PageId).collect()
}

/// Independent draws from a zipf distribution over `pages` pages.
pub fn zipf(pages: usize, alpha: f64, len: usize, rng: &mut Rng) -> Vec<PageId> {
    let z = Zipf::new(pages, alpha, 0, rng);
    (0..len).map(|_| z.sample(rng)).collect()
}

/// Zipf draws over `pages` pages, and after every `every` of them a scan
/// of `scan` pages never touched before or after.
pub fn zipf_scans(
    pages: usize,
    alpha: f64,
    every: usize,
    scan: usize,
    len: usize,
    rng: &mut Rng,
) -> Vec<PageId> {
    let z = Zipf::new(pages, alpha, 0, rng);
    let mut out = Vec::with_capacity(len);
    let mut fresh = pages as PageId;
    while out.len() < len {
        for _ in 0..every {
            out.push(z.sample(rng));
        }
        for _ in 0..scan {
            out.push(fresh);
            fresh += 1;
        }
    }
    out.truncate(len);
    out
}

/// Phases of `phase` references alternating between two disjoint working
/// sets, each a zipf distribution over `pages` pages.
pub fn phases(pages: usize, alpha: f64, phase: usize, len: usize, rng: &mut Rng) -> Vec<PageId> {
    let sets = [
        Zipf::new(pages, alpha, 0, rng),
        Zipf::new(pages, alpha, pages as PageId, rng),
    ];
    (0..len)
        .map(|i| sets[(i / phase) % 2].sample(rng))
        .collect()
}

/// LIRS2's zigzag: passes over `pages` pages, forward then backward, so a
/// page's reuse distance alternates between short and long.
pub fn zigzag(pages: usize, len: usize) -> Vec<PageId> {
    (0..len)
        .map(|i| {
            let (pass, at) = (i / pages, (i % pages) as PageId);
            if pass % 2 == 0 {
                at
            } else {
                pages as PageId - 1 - at
            }
        })
        .collect()
}

/// A file-system trace: files of geometric length (mean `file_len`
/// pages) read whole; each read is of a new file with probability `new`,
/// else of the file at depth `d` of the stack of files by last read, `d`
/// Pareto-distributed with shape `shape` (recent files are read again
/// most); after each file `meta` zipf draws over `meta_pages` pages stand
/// for directories and inodes. Recency dominates: a file read again is
/// read again soon or not at all.
pub fn files(
    new: f64,
    shape: f64,
    file_len: f64,
    meta: usize,
    meta_pages: usize,
    len: usize,
    rng: &mut Rng,
) -> Vec<PageId> {
    let z = Zipf::new(meta_pages, 1.0, 1 << 40, rng);
    // (first page, pages), most recently read last.
    let mut stack: Vec<(PageId, PageId)> = Vec::new();
    let mut fresh = 0;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let file = if stack.is_empty() || rng.unit() < new {
            let pages = 1 + (-rng.unit().max(1e-12).ln() * file_len) as PageId;
            fresh += pages;
            (fresh - pages, pages)
        } else {
            let depth = (rng.unit().max(1e-12).powf(-1.0 / shape) as usize).saturating_sub(1);
            stack.remove(stack.len() - 1 - depth.min(stack.len() - 1))
        };
        out.extend(file.0..file.0 + file.1);
        out.extend((0..meta).map(|_| z.sample(rng)));
        stack.push(file);
        if stack.len() > 4 * len / file_len.max(1.0) as usize {
            stack.remove(0);
        }
    }
    out.truncate(len);
    out
}

/// A database buffer trace: transactions of `rows` row pages each, drawn
/// with exponentially falling probability behind the newest of a table
/// that grows by `growth` pages a transaction (mean depth `depth` pages),
/// each row reached through an index page (zipf over `index` pages) and
/// read again when the transaction commits.
pub fn database(
    index: usize,
    rows: usize,
    depth: f64,
    growth: f64,
    len: usize,
    rng: &mut Rng,
) -> Vec<PageId> {
    let z = Zipf::new(index, 0.9, 1 << 40, rng);
    let mut out = Vec::with_capacity(len);
    let mut tx = Vec::with_capacity(rows);
    let mut newest = depth * 4.0;
    while out.len() < len {
        tx.clear();
        for _ in 0..rows {
            let back = (-rng.unit().max(1e-12).ln() * depth) as PageId;
            tx.push((newest as PageId).saturating_sub(back));
        }
        for &row in &tx {
            out.push(z.sample(rng));
            out.push(row);
        }
        out.extend(tx.iter().rev());
        newest += growth;
    }
    out.truncate(len);
    out
}

/// Uniform draws over `pages` pages: no policy can do better than chance.
pub fn uniform(pages: usize, len: usize, rng: &mut Rng) -> Vec<PageId> {
    (0..len).map(|_| rng.below(pages as u64)).collect()
}

/// Probability mass of the `k` most probable of `n` zipf(`alpha`) pages.
fn zipf_mass(n: usize, alpha: f64, k: usize) -> f64 {
    let h = |m: usize| (1..=m).map(|r| 1.0 / (r as f64).powf(alpha)).sum::<f64>();
    h(k.min(n)) / h(n)
}

/// A lower bound on the expected faults of any online policy with
/// `frames` frames on the trace `name` of [`suite`]`(suite_frames, _)`,
/// where one can be computed: on the traces drawn independently from a
/// distribution (uniform, zipf, and zipf between scans or within a phase)
/// a reference hits at most with the probability mass of the `frames`
/// most probable pages, whatever the policy holds; a scan page always
/// misses. Loop and zigzag are deterministic, so a policy that knows the
/// pattern reaches OPT: use OPT there. `None` for the others.
pub fn online_bound(name: &str, suite_frames: usize, frames: usize) -> Option<f64> {
    let f = suite_frames.max(1);
    let len = (200 * f) as f64;
    match name {
        "zipf-0.8" => Some(len * (1.0 - zipf_mass(10 * f, 0.8, frames))),
        "zipf-1.0" => Some(len * (1.0 - zipf_mass(10 * f, 1.0, frames))),
        "zipf-scans" => {
            // 10 f zipf draws, then 2 f scan pages.
            let zipf = len * 10.0 / 12.0;
            Some(zipf * (1.0 - zipf_mass(10 * f, 1.0, frames)) + (len - zipf))
        }
        "phase" => Some(len * (1.0 - zipf_mass(3 * f, 0.9, frames))),
        "uniform" => Some(len * (1.0 - (frames as f64 / (10 * f) as f64).min(1.0))),
        _ => None,
    }
}

/// The suite for `frames` frames, from `seed`.
pub fn suite(frames: usize, seed: u64) -> Vec<Trace> {
    let f = frames.max(1);
    let len = 200 * f;
    let mut rng = Rng::new(seed);
    let t = |name, pages| Trace { name, pages };
    Vec::from([
        t("loop", looping(f * 6 / 5, len)),
        t("zipf-0.8", zipf(10 * f, 0.8, len, &mut rng)),
        t("zipf-1.0", zipf(10 * f, 1.0, len, &mut rng)),
        t(
            "zipf-scans",
            zipf_scans(10 * f, 1.0, 10 * f, 2 * f, len, &mut rng),
        ),
        t("phase", phases(3 * f, 0.9, 25 * f, len, &mut rng)),
        t("zigzag", zigzag(f * 3 / 2, len)),
        t("uniform", uniform(10 * f, len, &mut rng)),
        t("files", files(0.3, 1.2, 8.0, 4, 2 * f, len, &mut rng)),
        t(
            "database",
            database(
                f * 3 / 40,
                8,
                f as f64 / 4.0,
                f as f64 / 8000.0,
                len,
                &mut rng,
            ),
        ),
    ])
}

/// One multi-process trace of [`multi_suite`]: references already
/// interleaved (the schedule is part of the workload).
pub struct MultiTrace {
    /// The name the bench prints.
    pub name: &'static str,
    /// How many processes.
    pub processes: u32,
    /// `(process, page)` references in order.
    pub refs: Vec<super::multi::ProcessRef>,
}

/// Processes whose working sets shift: each of `processes` owns `set`
/// pages; first every process touches its whole set in turn (all hold
/// memory); then phases of `phase` references in which `hot` processes
/// make all but `idle_share` of the references (zipf `alpha` over their
/// sets, `quantum` at a time in turn) and the idle ones the rest (uniform
/// over their sets); each phase makes the next processes hot.
#[allow(clippy::too_many_arguments)]
pub fn shifting(
    processes: u32,
    set: usize,
    hot: u32,
    alpha: f64,
    idle_share: f64,
    phase: usize,
    quantum: usize,
    len: usize,
    rng: &mut Rng,
) -> Vec<super::multi::ProcessRef> {
    let z = Zipf::new(set, alpha, 0, rng);
    let mut out = Vec::with_capacity(len);
    for p in 0..processes {
        out.extend((0..set as PageId).map(|page| (p, page)));
    }
    let mut first_hot = 0;
    while out.len() < len {
        let end = (out.len() + phase).min(len);
        let mut turn = 0;
        while out.len() < end {
            if rng.unit() < idle_share && processes > hot {
                let p =
                    (first_hot + hot + rng.below(u64::from(processes - hot)) as u32) % processes;
                out.push((p, rng.below(set as u64)));
            } else {
                let p = (first_hot + turn / quantum as u32 % hot) % processes;
                out.push((p, z.sample(rng)));
                turn += 1;
            }
        }
        first_hot = (first_hot + hot) % processes;
    }
    out.truncate(len);
    out
}

/// The multi-process suite for `frames` frames, from `seed`: two traces
/// with shifting working sets (six processes, two hot at a time; eight
/// processes, three hot) and one where four different patterns run side
/// by side without idling (loop, zipf, scans, phases), 200 f references
/// each.
pub fn multi_suite(frames: usize, seed: u64) -> Vec<MultiTrace> {
    let f = frames.max(1);
    let len = 200 * f;
    let mut rng = Rng::new(seed);
    let mixed = {
        let each = len / 4;
        let traces = [
            looping(f * 2 / 5, each),
            zipf(3 * f, 1.0, each, &mut rng),
            zipf_scans(3 * f, 1.0, 3 * f, f / 2, each, &mut rng),
            phases(f / 2, 0.9, 25 * f / 4, each, &mut rng),
        ];
        super::multi::interleave(&traces, 32).expect("synthetic pages are small")
    };
    Vec::from([
        MultiTrace {
            name: "shift-6",
            processes: 6,
            refs: shifting(6, f * 2 / 5, 2, 0.9, 0.02, 25 * f, 16, len, &mut rng),
        },
        MultiTrace {
            name: "shift-8",
            processes: 8,
            refs: shifting(8, f / 4, 3, 1.0, 0.05, 20 * f, 8, len, &mut rng),
        },
        MultiTrace {
            name: "mixed-4",
            processes: 4,
            refs: mixed,
        },
    ])
}
