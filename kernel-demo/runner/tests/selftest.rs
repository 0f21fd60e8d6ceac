//! The runner's own tests: each kind of breakage in an in-VM test must fail
//! the run and name the broken test. Boots `kernel-demo/selftest/broken.rs`
//! with one filter per case.

use kmem_runner::{boot, build_kernels, parse_report, Boot, Report};
use std::sync::OnceLock;
use std::time::Duration;

fn run_case(filter: &str, timeout: Duration) -> Report {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| build_kernels().expect("kernels build"));
    let cfg = Boot {
        append: format!("filter={filter}"),
        timeout,
        echo: false,
        ..Boot::default()
    };
    let run = boot(&dir.join("selftest-broken"), &cfg).expect("QEMU starts");
    parse_report(&run)
}

fn assert_fails_naming(report: &Report, test: &str, reason: &str) {
    assert!(!report.ok(), "the run should fail: {report:?}");
    let named = report
        .results
        .iter()
        .any(|r| !r.passed && r.name.ends_with(test) && r.detail.contains(reason))
        || report
            .problem
            .as_deref()
            .is_some_and(|p| p.contains(test) && p.contains(reason));
    assert!(
        named,
        "failure should name {test} with {reason:?}: {report:?}"
    );
}

#[test]
fn a_passing_test_passes() {
    let r = run_case("passes", Duration::from_secs(30));
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.passed(), 1);
}

#[test]
fn failed_assert_fails_and_names_the_test() {
    let r = run_case("fails_assert", Duration::from_secs(30));
    assert_fails_naming(&r, "fails_assert", "arithmetic is broken");
}

#[test]
fn unexpected_page_fault_fails_and_names_the_test() {
    let r = run_case("unexpected_page_fault", Duration::from_secs(30));
    assert_fails_naming(&r, "unexpected_page_fault", "unexpected page fault");
}

#[test]
fn missing_expected_fault_fails() {
    let r = run_case("missing_expected_fault", Duration::from_secs(30));
    assert_fails_naming(&r, "missing_expected_fault", "but the test returned");
}

#[test]
fn infinite_loop_times_out_and_names_the_test() {
    let r = run_case("hangs", Duration::from_secs(3));
    assert_fails_naming(&r, "hangs", "timed out");
}

#[test]
fn triple_fault_fails_and_names_the_test() {
    let r = run_case("triple_faults", Duration::from_secs(30));
    assert_fails_naming(&r, "triple_faults", "triple fault");
}
