//! Host-side launcher for kmem's bare-metal kernels.
//!
//! Cargo cannot build one package of a workspace for another target on
//! stable (`forced-target` is nightly and ignores runners), so this crate
//! runs a nested `cargo build --target x86_64-unknown-none` into its own
//! target directory and boots the results in QEMU. `cargo run` at the root
//! runs the demo through the binary; `cargo test` boots every test kernel
//! through `tests/in_vm.rs`.
//!
//! A test kernel is run in two boots: one lists its tests (`list=1` on the
//! command line), the second runs the ones the libtest-style
//! [`Selection`] picks (`only=<hex bit mask>`), and its output is checked
//! against exactly that list.

mod build;
mod qemu;
mod report;
mod select;

pub use build::{build_kernels, workspace_root, Artifact, Kernels, TestKernel};
pub use qemu::{
    boot, parse_size, qemu_binary, timeout_from_env, Boot, Exit, Loader, Run, DEFAULT_TIMEOUT,
};
pub use report::{parse_listing, parse_report, Report, TestResult};
pub use select::{Ignored, Selection};

use std::path::Path;

/// QEMU's status when the kernel wrote its success code (0x10) to the exit port.
pub const SUCCESS_STATUS: i32 = 33;
/// QEMU's status when the kernel reported failure.
pub const FAILURE_STATUS: i32 = 35;
/// The cargo profile kernels are built with.
pub const PROFILE: &str = "kernel";
/// The bare-metal target.
pub const TARGET: &str = "x86_64-unknown-none";

/// Boots `kernel` in listing mode and returns its tests' names, in order.
pub fn list_tests(kernel: &Path, cfg: &Boot) -> Result<Vec<String>, String> {
    let cfg = Boot {
        append: join_args(&cfg.append, "list=1"),
        echo: false,
        ..cfg.clone()
    };
    parse_listing(&boot(kernel, &cfg)?).map_err(|e| format!("{}: {e}", kernel.display()))
}

/// The kernel argument that runs only the tests whose flag is set: a hex
/// number whose bit `i` selects test `i`.
pub fn only_arg(selected: &[bool]) -> String {
    let mut digits = String::new();
    for chunk in selected.chunks(4) {
        let nibble = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &on)| n | (u32::from(on) << i));
        digits.push(char::from_digit(nibble, 16).expect("a nibble is a hex digit"));
    }
    let digits: String = digits.chars().rev().collect();
    format!("only={digits}")
}

/// Boots `kernel` to run the tests of `names` that `selected` marks, and
/// checks the output against exactly those.
pub fn run_tests(
    kernel: &Path,
    cfg: &Boot,
    names: &[String],
    selected: &[bool],
) -> Result<Report, String> {
    let expected: Vec<String> = names
        .iter()
        .zip(selected)
        .filter(|(_, &on)| on)
        .map(|(n, _)| n.clone())
        .collect();
    let cfg = Boot {
        append: join_args(&cfg.append, &only_arg(selected)),
        ..cfg.clone()
    };
    Ok(parse_report(&boot(kernel, &cfg)?, &expected))
}

fn join_args(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a} {b}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_arg_sets_one_bit_per_selected_test() {
        assert_eq!(only_arg(&[true]), "only=1");
        assert_eq!(only_arg(&[false, true, false, true, true]), "only=1a");
        assert_eq!(only_arg(&[false; 6]), "only=00");
    }
}
