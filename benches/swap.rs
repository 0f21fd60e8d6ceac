//! `cargo bench --bench swap`: page-replacement quality on the seeded
//! synthetic suite (`kmem::vm::replace::synth`), against Belady's OPT.
//!
//! The suite is generated for 1000 frames (the mid size: a loop of 1.2x the
//! frames, zipf over 10x, ...) and replayed at 500, 1000 and 2000 frames.
//! For each trace and size: faults of CLOCK, CLOCK-Pro, the adaptive duel
//! of the two, OPT, and the best lower bound on any online policy: OPT, or
//! where the trace is drawn from a distribution the larger of OPT and the
//! distribution's bound (`synth::online_bound`). Then, at the mid size, `ratio
//! <policy>_vs_opt <trace> <x>` (policy faults / OPT faults), `ratio
//! adaptive_vs_bound`, `ratio <policy>_vs_clock <trace> <x>` (CLOCK faults
//! / policy faults) and the geometric means of faults / OPT; then the
//! targets: the adaptive policy at most 1.005x CLOCK's faults on every
//! trace and size, and CLOCK-Pro's lead kept on the loop and the scans.
//!
//! Then the multi-process suite (`synth::multi_suite`): faults of each
//! policy as one policy over every process (global replacement) and as one
//! per process (local: a fault evicts from its own process), and OPT over
//! the merged references; `ratio <policy>_vs_opt multi_<trace> <x>`
//! (global) and `ratio global_vs_local <trace> <policy> <x>`.
//!
//! Then the compressed swap cache (`benches/zswap`): device writes with
//! `kmem::vm::Zswap` ÷ without on traces replayed through a real space
//! (`ratio zswap_writes_vs_disk <trace> <x>`), and major-fault service time
//! with a 50 µs device (`ratio zswap_fault_vs_disk <trace> <x>`).
//!
//! `KMEM_BENCH_QUICK=1`: the mid size only.

mod common;
mod zswap;

use kmem::vm::replace::multi;
use kmem::vm::replace::sim;
use kmem::vm::replace::synth;
use kmem::vm::replace::{Adaptive, Clock, ClockPro, ReplacementPolicy};
use std::time::Instant;

const MID: usize = 1000;
const SEED: u64 = 14;

struct Row {
    trace: &'static str,
    frames: usize,
    opt: u64,
    bound: f64,
    clock: u64,
    pro: u64,
    adaptive: u64,
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
    println!(
        "| trace | frames | OPT | online bound | CLOCK | CLOCK-Pro | adaptive \
         | CLOCK/OPT | CLOCK-Pro/OPT | adaptive/OPT | adaptive/bound | adaptive/CLOCK |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for t in &suite {
        let (dense, pages) = sim::dense(&t.pages);
        for &frames in sizes {
            let opt = sim::opt_faults_dense(&dense, pages, frames);
            // OPT bounds every policy; the distribution's bound, where there
            // is one, bounds the online ones.
            let bound = synth::online_bound(t.name, MID, frames)
                .unwrap_or(0.0)
                .max(opt as f64);
            let clock = faults(&mut Clock::new(frames), &t.pages);
            let pro = faults(&mut ClockPro::new(frames), &t.pages);
            let adaptive = faults(&mut Adaptive::new(frames), &t.pages);
            let of = |x: u64, by: f64| format!("{:.3}", x as f64 / by);
            println!(
                "| {} | {frames} | {opt} | {bound:.0} | {clock} | {pro} | {adaptive} | {} | {} | {} | {} | {} |",
                t.name,
                of(clock, opt as f64),
                of(pro, opt as f64),
                of(adaptive, opt as f64),
                of(adaptive, bound),
                of(adaptive, clock as f64),
            );
            rows.push(Row {
                trace: t.name,
                frames,
                opt,
                bound,
                clock,
                pro,
                adaptive,
            });
        }
    }
    println!();
    let mid: Vec<&Row> = rows.iter().filter(|r| r.frames == MID).collect();
    type Faults = fn(&Row) -> u64;
    let policies: [(&str, Faults); 3] = [
        ("clock", |r| r.clock),
        ("clock-pro", |r| r.pro),
        ("adaptive", |r| r.adaptive),
    ];
    for r in &mid {
        for (name, of) in policies {
            println!(
                "ratio {name}_vs_opt {} {:.3}",
                r.trace,
                of(r) as f64 / r.opt as f64
            );
        }
        println!(
            "ratio adaptive_vs_bound {} {:.3}",
            r.trace,
            r.adaptive as f64 / r.bound
        );
    }
    for r in &mid {
        for (name, of) in &policies[1..] {
            println!(
                "ratio {name}_vs_clock {} {:.3}",
                r.trace,
                r.clock as f64 / of(r) as f64
            );
        }
    }
    for (name, of) in policies {
        let gm = geomean(mid.iter().map(|r| of(r) as f64 / r.opt as f64));
        println!("ratio {name}_vs_opt geomean {gm:.3}");
    }
    for &frames in sizes.iter().filter(|&&f| f != MID) {
        let at: Vec<&Row> = rows.iter().filter(|r| r.frames == frames).collect();
        let gm = |of: fn(&Row) -> u64| geomean(at.iter().map(|r| of(r) as f64 / r.opt as f64));
        println!(
            "geomean at {frames} frames: clock {:.3}, clock-pro {:.3}, adaptive {:.3}",
            gm(policies[0].1),
            gm(policies[1].1),
            gm(policies[2].1)
        );
    }
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "NOT MET" };
    let worst = rows
        .iter()
        .map(|r| (r.adaptive as f64 / r.clock as f64, r))
        .fold(None, |w: Option<(f64, &Row)>, (x, r)| match w {
            Some((y, _)) if y >= x => w,
            _ => Some((x, r)),
        });
    if let Some((x, r)) = worst {
        println!(
            "target adaptive <= 1.005x CLOCK on every trace and size: worst {x:.4} ({} at {} frames), {}",
            r.trace,
            r.frames,
            verdict(x <= 1.005)
        );
    }
    for r in &mid {
        if matches!(r.trace, "loop" | "zipf-scans") {
            println!(
                "target adaptive keeps CLOCK-Pro's lead on {}: {} vs CLOCK {} and CLOCK-Pro {}, {}",
                r.trace,
                r.adaptive,
                r.clock,
                r.pro,
                verdict(r.adaptive < r.clock && r.adaptive as f64 <= r.pro as f64 * 1.01)
            );
        }
    }
    multi_process(sizes);
    zswap::compressed_cache();
    println!("({:.1} s)", start.elapsed().as_secs_f64());
}

type Make = fn(usize) -> Box<dyn ReplacementPolicy>;

/// The multi-process suite: each policy as one policy over every process
/// (global) and as one per process (local, today's reclaim of the
/// faulting space), against OPT over the merged references.
fn multi_process(sizes: &[usize]) {
    let policies: [(&str, Make); 3] = [
        ("clock", |n| Box::new(Clock::new(n))),
        ("clock-pro", |n| Box::new(ClockPro::new(n))),
        ("adaptive", |n| Box::new(Adaptive::new(n))),
    ];
    let suite = synth::multi_suite(MID, SEED);
    println!();
    println!("multi-process suite for {MID} frames, seed {SEED}: faults, global (one policy over all processes) / local (one per process)");
    println!();
    println!("| trace | frames | OPT | CLOCK global / local | CLOCK-Pro global / local | adaptive global / local | adaptive global/OPT | adaptive global/local |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut mid = Vec::new();
    for t in &suite {
        for &frames in sizes {
            let opt = multi::opt_faults(&t.refs, frames);
            let mut cells = Vec::new();
            let mut runs = Vec::new();
            for (name, make) in policies {
                let global = multi::replay_global(&mut *make(frames), &t.refs).faults;
                let mut own: Vec<Box<dyn ReplacementPolicy>> =
                    (0..t.processes).map(|_| make(frames)).collect();
                let local = multi::replay_per_process(&mut own, frames, &t.refs).faults;
                cells.push(format!("{global} / {local}"));
                runs.push((name, global, local));
            }
            let (_, ag, al) = runs[2];
            println!(
                "| {} | {frames} | {opt} | {} | {:.3} | {:.3} |",
                t.name,
                cells.join(" | "),
                ag as f64 / opt as f64,
                ag as f64 / al as f64
            );
            if frames == MID {
                mid.push((t.name, opt, runs));
            }
        }
    }
    println!();
    for (trace, opt, runs) in &mid {
        for (name, global, _) in runs {
            println!(
                "ratio {name}_vs_opt multi_{trace} {:.3}",
                *global as f64 / *opt as f64
            );
        }
        for (name, global, local) in runs {
            println!(
                "ratio global_vs_local {trace} {name} {:.3}",
                *global as f64 / *local as f64
            );
        }
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT MET" };
    for (trace, _, runs) in mid.iter().filter(|(t, _, _)| t.starts_with("shift")) {
        let (_, g, l) = runs[2];
        let x = g as f64 / l as f64;
        println!(
            "target global/local <= 0.5 on {trace} (adaptive): {x:.3}, {}",
            verdict(x <= 0.5)
        );
    }
    let gm = geomean(
        mid.iter()
            .map(|(_, opt, runs)| runs[2].1 as f64 / *opt as f64),
    );
    println!(
        "target global adaptive/OPT geomean <= 1.4: {gm:.3}, {}",
        verdict(gm <= 1.4)
    );
}
