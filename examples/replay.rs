//! Replays page-reference traces against the replacement policies and
//! Belady's OPT: `cargo run --release --example replay -- --frames N TRACE...`
//!
//! A trace is text, one page number per line (decimal or 0x hex), `#`
//! comments. Prints `faults <policy> <trace> <frames> <count>` for each
//! policy and OPT, then `ratio <policy>_vs_opt <trace> <x>`.

use kmem::vm::replace::sim::{self, Outcome};
use kmem::vm::replace::{trace, Clock, ClockPro, ReplacementPolicy};
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage: replay --frames N TRACE...";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut frames = None;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--frames" {
            let n = args.next().ok_or(USAGE)?;
            frames = Some(
                n.parse::<usize>()
                    .map_err(|_| format!("--frames takes a positive count, not {n:?}\n{USAGE}"))?,
            );
        } else if let Some(n) = arg.strip_prefix("--frames=") {
            frames = Some(
                n.parse()
                    .map_err(|_| format!("bad frame count {n:?}\n{USAGE}"))?,
            );
        } else if arg.starts_with("--") {
            return Err(format!("unknown option {arg}\n{USAGE}"));
        } else {
            files.push(arg);
        }
    }
    let frames = frames.filter(|&n| n > 0).ok_or(USAGE)?;
    if files.is_empty() {
        return Err(USAGE.into());
    }
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        let pages = trace::parse(&text).map_err(|e| format!("{file}: {e}"))?;
        let name = Path::new(file)
            .file_stem()
            .map_or_else(|| file.clone(), |s| s.to_string_lossy().into_owned());
        report(&name, &pages, frames);
    }
    Ok(())
}

fn report(name: &str, pages: &[u64], frames: usize) {
    let opt = sim::opt_faults(pages, frames);
    let mut policies: [Box<dyn ReplacementPolicy>; 2] = [
        Box::new(Clock::new(frames)),
        Box::new(ClockPro::new(frames)),
    ];
    let runs: Vec<(&str, Outcome)> = policies
        .iter_mut()
        .map(|p| (p.name(), sim::replay(p.as_mut(), pages)))
        .collect();
    for (policy, out) in &runs {
        println!("faults {policy} {name} {frames} {}", out.faults);
    }
    println!("faults opt {name} {frames} {opt}");
    for (policy, out) in &runs {
        println!(
            "ratio {policy}_vs_opt {name} {:.3}",
            out.faults as f64 / opt.max(1) as f64
        );
    }
}
