//! `cargo run` at the workspace root: builds the kernels, boots the demo
//! in QEMU with its serial output on stdout, and exits 0 only when the
//! kernel reported success.
//!
//! Environment: `KMEM_MEM` guest RAM (default `128M`; e.g. `32M`, `4G`,
//! `16G`), `KMEM_APPEND` kernel command line, `KMEM_KERNEL` another kernel
//! binary (e.g. `test-basic`), `KMEM_SWAP` the swap disk (default `64M`,
//! `0` for none; a disk puts QEMU on q35), `KMEM_BOOT=grub` boot through
//! GRUB 2 and Multiboot2 instead of PVH, `KMEM_SMP` virtual CPUs (default
//! 4 for the demo, the `smp=` marker word for a test kernel), `KMEM_VM_TIMEOUT` seconds before a hung
//! kernel is killed (default 60), `KMEM_QEMU` the QEMU binary.

use kmem_runner::{boot, build_kernels, parse_size, timeout_from_env, Boot, Exit, Loader};
use std::process::ExitCode;

fn main() -> ExitCode {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let name = env("KMEM_KERNEL", "kernel-demo");
    let (kernel, marked_cpus) = match build_kernels()
        .and_then(|k| Ok((k.path(&name)?.to_path_buf(), k.marked_cpus(&name))))
    {
        Ok(kernel) => kernel,
        Err(e) => {
            eprintln!("kmem-runner: {e}");
            return ExitCode::FAILURE;
        }
    };
    let swap = env("KMEM_SWAP", "64M");
    let swap_bytes = match swap.as_str() {
        "0" | "none" => None,
        s => match parse_size(s) {
            Some(b) => Some(b),
            None => {
                eprintln!("kmem-runner: KMEM_SWAP={s:?} is not a size (64M, 1G, 0 for none)");
                return ExitCode::FAILURE;
            }
        },
    };
    let loader = match Loader::from_env() {
        Ok(loader) => loader,
        Err(e) => {
            eprintln!("kmem-runner: {e}");
            return ExitCode::FAILURE;
        }
    };
    let default_cpus = if name == "kernel-demo" {
        4
    } else {
        marked_cpus
    };
    let cpus = match std::env::var("KMEM_SMP") {
        Err(_) => default_cpus,
        Ok(n) => match n.parse::<u32>() {
            Ok(n @ 1..=255) => n,
            _ => {
                eprintln!("kmem-runner: KMEM_SMP={n:?} is not a CPU count (1 to 255)");
                return ExitCode::FAILURE;
            }
        },
    };
    let cfg = Boot {
        mem: env("KMEM_MEM", "128M"),
        append: env("KMEM_APPEND", ""),
        timeout: timeout_from_env(),
        echo: true,
        swap_bytes,
        loader,
        cpus,
    };
    eprintln!(
        "kmem-runner: booting {} with -m {} -smp {} ({:?})",
        kernel.display(),
        cfg.mem,
        cfg.cpus,
        cfg.loader
    );
    match boot(&kernel, &cfg) {
        Ok(run) if run.succeeded() => {
            eprintln!(
                "kmem-runner: kernel exited with success in {:.2?}",
                run.elapsed
            );
            ExitCode::SUCCESS
        }
        Ok(run) => {
            let why = match run.exit {
                Exit::Status(0) => "the machine reset (triple fault)".to_string(),
                Exit::Status(c) => format!("QEMU exited with status {c}"),
                Exit::TimedOut(t) => format!("timed out after {} s", t.as_secs()),
                Exit::Signal => "QEMU was killed by a signal".to_string(),
            };
            eprintln!("kmem-runner: kernel failed: {why}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kmem-runner: {e}");
            ExitCode::FAILURE
        }
    }
}
