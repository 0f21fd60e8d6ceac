//! Writes the synthetic suite into `traces/`:
//! `cargo run --release --example gen_traces -- [--frames N] [--seed S] [DIR]`
//! (defaults: 1000 frames, seed 14, `traces`). The files are what
//! `replay` reads; the suite itself lives in `kmem::vm::replace::synth`.

use kmem::vm::replace::synth;
use std::fmt::Write as _;

fn main() -> Result<(), String> {
    let (mut frames, mut seed, mut dir) = (1000usize, 14u64, String::from("traces"));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().ok_or(format!("{what} needs a value"));
        match arg.as_str() {
            "--frames" => {
                frames = value("--frames")?
                    .parse()
                    .map_err(|e| format!("--frames: {e}"))?
            }
            "--seed" => {
                seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}")),
            _ => dir = arg,
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{dir}: {e}"))?;
    for t in synth::suite(frames, seed) {
        let mut text = format!(
            "# kmem synthetic trace {}: {} references, suite for {frames} frames, seed {seed}\n",
            t.name,
            t.pages.len()
        );
        for p in &t.pages {
            writeln!(text, "{p}").expect("writing to a String");
        }
        let path = format!("{dir}/{}.trace", t.name);
        std::fs::write(&path, text).map_err(|e| format!("{path}: {e}"))?;
        println!("{path}");
    }
    Ok(())
}
