//! Replays page-reference traces against the replacement policies and
//! Belady's OPT.
//!
//! ```text
//! cargo run --release --example replay -- --frames N TRACE...
//! cargo run --release --example replay -- --curve MIN..MAX [--points K] [--svg FILE] TRACE...
//! cargo run --release --example replay -- --frames N --interleave Q TRACE...
//! ```
//!
//! A trace is text, one page number per line (decimal or 0x hex), `#`
//! comments. With `--frames`: `faults <policy> <trace> <frames> <count>`
//! for each policy and OPT, then `ratio <policy>_vs_opt <trace> <x>`.
//! With `--curve`: the same `faults` lines at `K` frame counts from `MIN`
//! to `MAX` (default 16), and with `--svg` the miss-ratio curves (faults ÷
//! references against frames), one panel per trace, one line per policy.
//! With `--interleave`: each trace is one process with its own address
//! space, run round-robin `Q` references at a time over the `N` frames;
//! `faults <policy> <label> <N> <count>` for each policy as one policy over
//! every process (global reclaim), then per process (label suffix
//! `-local`: a fault evicts from its own process), then OPT over the
//! merged references; the label joins the traces' names with `+`.

use kmem::vm::replace::{multi, sim};
use kmem::vm::replace::{trace, Adaptive, Clock, ClockPro, ReplacementPolicy};
use plotters::prelude::*;
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage: replay --frames N [--interleave Q] TRACE...\n       \
                     replay --curve MIN..MAX [--points K] [--svg FILE] TRACE...";

/// The policies in the order they are printed and drawn, OPT last.
const NAMES: [&str; 4] = ["clock", "clock-pro", "adaptive", "opt"];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replay: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    frames: Option<usize>,
    curve: Option<(usize, usize)>,
    points: usize,
    svg: Option<String>,
    interleave: Option<usize>,
    files: Vec<String>,
}

fn count(what: &str, n: &str) -> Result<usize, String> {
    n.parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{what} takes a positive count, not {n:?}\n{USAGE}"))
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        frames: None,
        curve: None,
        points: 16,
        svg: None,
        interleave: None,
        files: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).ok_or(USAGE);
        match flag.as_str() {
            "--frames" => a.frames = Some(count("--frames", &value()?)?),
            "--points" => a.points = count("--points", &value()?)?.max(2),
            "--svg" => a.svg = Some(value()?),
            "--interleave" => a.interleave = Some(count("--interleave", &value()?)?),
            "--curve" => {
                let v = value()?;
                let (lo, hi) = v
                    .split_once("..")
                    .ok_or_else(|| format!("--curve takes MIN..MAX, not {v:?}\n{USAGE}"))?;
                let (lo, hi) = (count("--curve", lo)?, count("--curve", hi)?);
                if lo >= hi {
                    return Err(format!("--curve {v}: MIN must be below MAX"));
                }
                a.curve = Some((lo, hi));
            }
            f if f.starts_with("--") => return Err(format!("unknown option {f}\n{USAGE}")),
            _ => a.files.push(arg),
        }
    }
    if a.files.is_empty() || a.frames.is_some() == a.curve.is_some() {
        return Err(USAGE.into());
    }
    if a.svg.is_some() && a.curve.is_none() {
        return Err(format!("--svg draws a --curve\n{USAGE}"));
    }
    if a.interleave.is_some() && a.frames.is_none() {
        return Err(format!("--interleave replays at --frames N\n{USAGE}"));
    }
    Ok(a)
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let mut traces = Vec::new();
    for file in &args.files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        let pages = trace::parse(&text).map_err(|e| format!("{file}: {e}"))?;
        if pages.is_empty() {
            return Err(format!("{file}: no references"));
        }
        let name = Path::new(file)
            .file_stem()
            .map_or_else(|| file.clone(), |s| s.to_string_lossy().into_owned());
        traces.push((name, pages));
    }
    if let (Some(frames), Some(quantum)) = (args.frames, args.interleave) {
        return processes(&traces, frames, quantum);
    }
    if let Some(frames) = args.frames {
        for (name, pages) in &traces {
            let faults = faults_at(pages, frames);
            for (policy, n) in NAMES.iter().zip(faults) {
                println!("faults {policy} {name} {frames} {n}");
            }
            for (policy, n) in NAMES.iter().zip(faults).take(3) {
                println!(
                    "ratio {policy}_vs_opt {name} {:.3}",
                    n as f64 / faults[3].max(1) as f64
                );
            }
        }
        return Ok(());
    }
    let (lo, hi) = args.curve.expect("one of --frames and --curve");
    let sizes: Vec<usize> = (0..args.points)
        .map(|i| lo + (hi - lo) * i / (args.points - 1))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut curves = Vec::new();
    for (name, pages) in &traces {
        let mut curve = Vec::new();
        for &frames in &sizes {
            let faults = faults_at(pages, frames);
            for (policy, n) in NAMES.iter().zip(faults) {
                println!("faults {policy} {name} {frames} {n}");
            }
            curve.push((frames, faults.map(|n| n as f64 / pages.len() as f64)));
        }
        curves.push((name.clone(), curve));
    }
    if let Some(svg) = &args.svg {
        draw(svg, &curves).map_err(|e| format!("{svg}: {e}"))?;
        println!("wrote {svg}");
    }
    Ok(())
}

/// Each trace a process, interleaved `quantum` references at a time over
/// `frames` frames: every policy global and local, then OPT.
fn processes(traces: &[(String, Vec<u64>)], frames: usize, quantum: usize) -> Result<(), String> {
    let pages: Vec<Vec<u64>> = traces.iter().map(|(_, p)| p.clone()).collect();
    let refs = multi::interleave(&pages, quantum)
        .map_err(|e| format!("{}: {e}", traces[e.process as usize].0))?;
    let label = traces
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join("+");
    type Make = fn(usize) -> Box<dyn ReplacementPolicy>;
    let policies: [(&str, Make); 3] = [
        ("clock", |n| Box::new(Clock::new(n))),
        ("clock-pro", |n| Box::new(ClockPro::new(n))),
        ("adaptive", |n| Box::new(Adaptive::new(n))),
    ];
    for (name, make) in policies {
        let global = multi::replay_global(&mut *make(frames), &refs);
        println!("faults {name} {label} {frames} {}", global.faults);
        let mut own: Vec<Box<dyn ReplacementPolicy>> =
            traces.iter().map(|_| make(frames)).collect();
        let local = multi::replay_per_process(&mut own, frames, &refs);
        println!("faults {name} {label}-local {frames} {}", local.faults);
    }
    println!(
        "faults opt {label} {frames} {}",
        multi::opt_faults(&refs, frames)
    );
    Ok(())
}

/// Faults of each policy of [`NAMES`] on `pages` with `frames` frames.
fn faults_at(pages: &[u64], frames: usize) -> [u64; 4] {
    let mut policies: [Box<dyn ReplacementPolicy>; 3] = [
        Box::new(Clock::new(frames)),
        Box::new(ClockPro::new(frames)),
        Box::new(Adaptive::new(frames)),
    ];
    let [c, p, a] = policies
        .each_mut()
        .map(|p| sim::replay(p.as_mut(), pages).faults);
    [c, p, a, sim::opt_faults(pages, frames)]
}

type Curve = Vec<(usize, [f64; 4])>;

/// One panel per trace: miss ratio against frames, a line per policy.
fn draw(path: &str, curves: &[(String, Curve)]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (800, 420 * curves.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let colors = [RED, BLUE, RGBColor(0, 150, 0), BLACK];
    for ((name, curve), area) in curves.iter().zip(root.split_evenly((curves.len(), 1))) {
        let x = (curve[0].0 as f64)..(curve[curve.len() - 1].0 as f64);
        let top = curve
            .iter()
            .flat_map(|(_, r)| r.iter().copied())
            .fold(0.0f64, f64::max);
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!("{name}: miss ratio against frames"),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x, 0.0..(top * 1.05).max(1e-3))?;
        chart
            .configure_mesh()
            .x_desc("frames")
            .y_desc("faults / references")
            .draw()?;
        for (i, policy) in NAMES.iter().enumerate() {
            let color = colors[i];
            chart
                .draw_series(LineSeries::new(
                    curve.iter().map(|(f, r)| (*f as f64, r[i])),
                    color.stroke_width(2),
                ))?
                .label(*policy)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
