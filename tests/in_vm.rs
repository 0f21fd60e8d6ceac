//! Boots every in-VM test kernel (`kernel-demo/tests/*.rs`) in QEMU, once
//! per memory size it asks for, and fails when any test fails, a kernel
//! hangs, resets or crashes, or a test asked for prints no result. Takes
//! libtest's selection flags: `cargo test --test in_vm -- <filter>...
//! [--skip <name>] [--exact] [--list] [--ignored] [--include-ignored]`.

use kmem_runner::{
    build_kernels, list_tests, run_tests, timeout_from_env, workspace_root, Boot, Loader, Selection,
};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("in-VM tests: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let selection = Selection::from_args(std::env::args().skip(1))?;
    let kernels = build_kernels()?;
    let kernels = kernels.test_kernels(&workspace_root().join("kernel-demo").join("tests"))?;
    let (mut passed, mut failed, mut not_run, mut selected_total) = (0, 0, 0, 0);
    let mut problems = Vec::new();
    for kernel in &kernels {
        let base = Boot {
            timeout: timeout_from_env(),
            ..Boot::default()
        };
        let listing = Boot {
            swap_bytes: kernel.swap_bytes,
            ..base.clone()
        };
        let names = list_tests(&kernel.path, &listing)?;
        if selection.list {
            for name in names.iter().filter(|n| selection.selects(n)) {
                println!("{name}: test");
                selected_total += 1;
            }
            continue;
        }
        let selected: Vec<bool> = names.iter().map(|n| selection.selects(n)).collect();
        let count = selected.iter().filter(|&&s| s).count();
        if count == 0 {
            continue;
        }
        for mem in &kernel.mems {
            let via = match kernel.loader {
                Loader::Pvh => "",
                Loader::Grub => ", through GRUB",
            };
            let smp = if kernel.cpus > 1 {
                format!(" -smp {}", kernel.cpus)
            } else {
                String::new()
            };
            println!("\n== {} (-m {mem}{smp}{via}) ==", kernel.binary);
            // The listing boot above goes through PVH (same binary, seconds faster).
            let cfg = Boot {
                mem: mem.clone(),
                swap_bytes: kernel.swap_bytes,
                loader: kernel.loader,
                cpus: kernel.cpus,
                ..base.clone()
            };
            selected_total += count;
            let report = run_tests(&kernel.path, &cfg, &names, &selected)?;
            passed += report.passed();
            failed += report.failed();
            not_run += report.not_run.len();
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
            for name in &report.not_run {
                problems.push(format!("{} (-m {mem}): {name} NOT RUN", kernel.binary));
            }
        }
    }
    if selection.list {
        println!("\n{selected_total} tests, 0 benchmarks");
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    for p in &problems {
        println!("failure: {p}");
    }
    println!(
        "in-VM: {} kernels, {selected_total} tests selected",
        kernels.len()
    );
    if not_run > 0 {
        println!("{not_run} tests not run");
    }
    println!("{passed} passed, {failed} failed");
    let nothing_ran = passed == 0 && !selection.narrows();
    Ok(if failed == 0 && not_run == 0 && !nothing_ran {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
