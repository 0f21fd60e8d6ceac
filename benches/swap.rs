//! `cargo bench --bench swap`: page-replacement quality on the seeded
//! synthetic suite (`kmem::vm::replace::synth`), against Belady's OPT.
//!
//! The suite is generated for 1000 frames (the mid size: a loop of 1.2x the
//! frames, zipf over 10x, ...) and replayed at 500, 1000 and 2000 frames.
//! For each trace and size: faults of CLOCK, CLOCK-Pro and OPT. Then, at
//! the mid size, `ratio <policy>_vs_opt <trace> <x>` (policy faults / OPT
//! faults), `ratio <policy>_vs_clock <trace> <x>` (CLOCK faults / policy
//! faults) and the geometric means of faults / OPT, checked against the
//! targets in BENCHMARKS.md.
//!
//! `KMEM_BENCH_QUICK=1`: the mid size only.

mod common;

use kmem::vm::replace::sim;
use kmem::vm::replace::synth;
use kmem::vm::replace::{Clock, ClockPro, ReplacementPolicy};
use std::time::Instant;

const MID: usize = 1000;
const SEED: u64 = 14;

struct Row {
    trace: &'static str,
    frames: usize,
    opt: u64,
    clock: u64,
    pro: u64,
}

fn faults(policy: &mut dyn ReplacementPolicy, trace: &[u64]) -> u64 {
    sim::replay(policy, trace).faults
}

fn geomean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x.ln(), n + 1));
    (sum / n as f64).exp()
}

fn main() {
    common::print_provenance("swap");
    let quick = std::env::var_os("KMEM_BENCH_QUICK").is_some();
    let sizes: &[usize] = if quick {
        &[MID]
    } else {
        &[MID / 2, MID, MID * 2]
    };
    let start = Instant::now();
    let suite = synth::suite(MID, SEED);
    let mut rows = Vec::new();
    println!(
        "suite for {MID} frames, seed {SEED}, {} references a trace",
        suite[0].pages.len()
    );
    println!();
    println!("| trace | frames | OPT | CLOCK | CLOCK-Pro | CLOCK/OPT | CLOCK-Pro/OPT |");
    println!("|---|---|---|---|---|---|---|");
    for t in &suite {
        let (dense, pages) = sim::dense(&t.pages);
        for &frames in sizes {
            let opt = sim::opt_faults_dense(&dense, pages, frames);
            let clock = faults(&mut Clock::new(frames), &t.pages);
            let pro = faults(&mut ClockPro::new(frames), &t.pages);
            println!(
                "| {} | {frames} | {opt} | {clock} | {pro} | {:.3} | {:.3} |",
                t.name,
                clock as f64 / opt as f64,
                pro as f64 / opt as f64
            );
            rows.push(Row {
                trace: t.name,
                frames,
                opt,
                clock,
                pro,
            });
        }
    }
    println!();
    let mid: Vec<&Row> = rows.iter().filter(|r| r.frames == MID).collect();
    for r in &mid {
        println!(
            "ratio clock_vs_opt {} {:.3}",
            r.trace,
            r.clock as f64 / r.opt as f64
        );
        println!(
            "ratio clock-pro_vs_opt {} {:.3}",
            r.trace,
            r.pro as f64 / r.opt as f64
        );
    }
    for r in &mid {
        println!(
            "ratio clock-pro_vs_clock {} {:.3}",
            r.trace,
            r.clock as f64 / r.pro as f64
        );
    }
    let gm_clock = geomean(mid.iter().map(|r| r.clock as f64 / r.opt as f64));
    let gm_pro = geomean(mid.iter().map(|r| r.pro as f64 / r.opt as f64));
    println!("ratio clock_vs_opt geomean {gm_clock:.3}");
    println!("ratio clock-pro_vs_opt geomean {gm_pro:.3}");
    for &frames in sizes.iter().filter(|&&f| f != MID) {
        let at: Vec<&Row> = rows.iter().filter(|r| r.frames == frames).collect();
        println!(
            "geomean at {frames} frames: clock {:.3}, clock-pro {:.3}",
            geomean(at.iter().map(|r| r.clock as f64 / r.opt as f64)),
            geomean(at.iter().map(|r| r.pro as f64 / r.opt as f64))
        );
    }
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "NOT MET" };
    println!(
        "target geomean clock-pro/OPT <= 1.30: {gm_pro:.3}, {}",
        verdict(gm_pro <= 1.30)
    );
    for r in &mid {
        let must_win = matches!(
            r.trace,
            "loop" | "zipf-0.8" | "zipf-1.0" | "zipf-scans" | "phase"
        );
        let (ok, want) = if must_win {
            (r.pro < r.clock, "fewer than CLOCK")
        } else {
            (
                r.pro as f64 <= r.clock as f64 * 1.05,
                "at most 5 % more than CLOCK",
            )
        };
        println!(
            "target {} {want}: {} vs {} ({:+.1} %), {}",
            r.trace,
            r.pro,
            r.clock,
            (r.pro as f64 / r.clock as f64 - 1.0) * 100.0,
            verdict(ok)
        );
    }
    println!("({:.1} s)", start.elapsed().as_secs_f64());
}
