//! Boots every in-VM test kernel (`kernel-demo/tests/*.rs`) in QEMU, once
//! per memory size it asks for, and fails when any test fails, a kernel
//! hangs, resets or crashes. Run alone with `cargo test --test in_vm`;
//! `cargo test --test in_vm -- <substring>` runs only the matching tests.

use kmem_runner::{boot, build_kernels, parse_report, test_kernels, timeout_from_env, Boot};
use std::process::ExitCode;

fn main() -> ExitCode {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let (dir, kernels) = match build_kernels().and_then(|d| Ok((d, test_kernels()?))) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("in-VM tests: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    let mut problems = Vec::new();
    for kernel in &kernels {
        for mem in &kernel.mems {
            println!("\n== {} (-m {mem}) ==", kernel.binary);
            let cfg = Boot {
                mem: mem.clone(),
                append: filter
                    .as_ref()
                    .map(|f| format!("filter={f}"))
                    .unwrap_or_default(),
                timeout: timeout_from_env(),
                echo: true,
            };
            let run = match boot(&dir.join(&kernel.binary), &cfg) {
                Ok(run) => run,
                Err(e) => {
                    eprintln!("in-VM tests: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let report = parse_report(&run);
            if filter.is_some() && report.results.is_empty() && run.succeeded() {
                continue; // the filter selected none of this kernel's tests
            }
            passed += report.passed();
            failed += report.failed();
            for r in report.results.iter().filter(|r| !r.passed) {
                problems.push(format!(
                    "{} (-m {mem}): {} FAILED: {}",
                    kernel.binary, r.name, r.detail
                ));
            }
            if let Some(p) = report.problem {
                println!("\n{} (-m {mem}): {p}", kernel.binary);
                problems.push(format!("{} (-m {mem}): {p}", kernel.binary));
            }
        }
    }
    println!();
    for p in &problems {
        println!("failure: {p}");
    }
    println!("in-VM: {} kernels", kernels.len());
    println!("{passed} passed, {failed} failed");
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
