//! Runs the tests that only exist under optional features (`tracking`
//! and the bootloader adapters), and the heap's tests again with every
//! feature on (tracking changes what the heap maps and how big it is), so
//! `cargo test` covers them too.
//!
//! A feature changes the library every test binary links, so they are run
//! by a nested `cargo test --all-features` of this package into its own
//! target directory (sharing this build's directory would wait on its
//! lock). Arguments are passed on, so filters and `--list` work as usual.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let root = env!("CARGO_MANIFEST_DIR");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args([
            "test",
            "-p",
            "kmem",
            "--all-features",
            "--lib",
            "--test",
            "heap_tracking",
            "--test",
            "heap_model",
            "--test",
            "heap_reclaim",
            "--test",
            "smp_stress",
            "--test",
            "smp_model",
            "--test",
            "adoption",
        ])
        // With `tracking` a `LockedHeap` is 233 KB, and debug builds copy it
        // through the stack a few times when a test builds one at run time.
        .env("RUST_MIN_STACK", (16 << 20).to_string())
        .arg("--target-dir")
        .arg(std::path::Path::new(root).join("target").join("features"))
        .arg("--")
        .args(std::env::args().skip(1))
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("feature-gated tests failed ({s})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("feature-gated tests: could not run {cargo}: {e}");
            ExitCode::FAILURE
        }
    }
}
