//! `cargo run` at the workspace root: builds the kernels, boots the demo
//! in QEMU with its serial output on stdout, and exits 0 only when the
//! kernel reported success.
//!
//! Environment: `KMEM_MEM` guest RAM (default `128M`; e.g. `32M`, `4G`,
//! `16G`), `KMEM_APPEND` kernel command line, `KMEM_KERNEL` another kernel
//! binary (e.g. `test-basic`), `KMEM_SWAP` the swap disk (default `64M`,
//! `0` for none; a disk puts QEMU on q35), `KMEM_BOOT=grub` boot through
//! GRUB 2 and Multiboot2 instead of PVH, `KMEM_VM_TIMEOUT` seconds before a hung
//! kernel is killed (default 60), `KMEM_QEMU` the QEMU binary.

use kmem_runner::{boot, build_kernels, parse_size, timeout_from_env, Boot, Exit, Loader};
use std::process::ExitCode;

fn main() -> ExitCode {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let kernel = match build_kernels()
        .and_then(|k| Ok(k.path(&env("KMEM_KERNEL", "kernel-demo"))?.to_path_buf()))
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
    let cfg = Boot {
        mem: env("KMEM_MEM", "128M"),
        append: env("KMEM_APPEND", ""),
        timeout: timeout_from_env(),
        echo: true,
        swap_bytes,
        loader,
    };
    eprintln!(
        "kmem-runner: booting {} with -m {} ({:?})",
        kernel.display(),
        cfg.mem,
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
