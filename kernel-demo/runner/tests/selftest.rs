//! The runner's own tests: each kind of breakage in an in-VM test must fail
//! the run and name the broken test. Boots `kernel-demo/selftest/broken.rs`
//! with one selection per case, through the same listing and checking the
//! in-VM suite uses.

use kmem_runner::{build_kernels, list_tests, run_tests, Boot, Report, Selection};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

fn kernel() -> &'static (PathBuf, Vec<String>) {
    static KERNEL: OnceLock<(PathBuf, Vec<String>)> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let kernels = build_kernels().expect("kernels build");
        let path = kernels
            .path("selftest-broken")
            .expect("built")
            .to_path_buf();
        let names = list_tests(&path, &Boot::default()).expect("listing works");
        (path, names)
    })
}

/// Runs the tests whose names end in one of `tests`, as `cargo test --
/// <args>` would select them with `--exact`.
fn run_case(tests: &[&str], timeout: Duration) -> Report {
    let (path, names) = kernel();
    let selection = Selection::from_args(
        tests
            .iter()
            .map(|t| format!("selftest_broken::{t}"))
            .chain(["--exact".to_string()]),
    )
    .unwrap();
    let selected: Vec<bool> = names.iter().map(|n| selection.selects(n)).collect();
    assert_eq!(selected.iter().filter(|&&s| s).count(), tests.len());
    let cfg = Boot {
        timeout,
        echo: false,
        ..Boot::default()
    };
    run_tests(path, &cfg, names, &selected).expect("QEMU starts")
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
fn the_listing_names_every_test_in_order() {
    let (_, names) = kernel();
    assert_eq!(
        names.first().map(String::as_str),
        Some("selftest_broken::passes")
    );
    assert!(names.iter().any(|n| n == "selftest_broken::after_fake"));
}

#[test]
fn a_passing_test_passes() {
    let r = run_case(&["passes"], Duration::from_secs(30));
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.passed(), 1);
}

#[test]
fn failed_assert_fails_and_names_the_test() {
    let r = run_case(&["fails_assert"], Duration::from_secs(30));
    assert_fails_naming(&r, "fails_assert", "arithmetic is broken");
}

#[test]
fn unexpected_page_fault_fails_and_names_the_test() {
    let r = run_case(&["unexpected_page_fault"], Duration::from_secs(30));
    assert_fails_naming(&r, "unexpected_page_fault", "unexpected page fault");
}

#[test]
fn missing_expected_fault_fails() {
    let r = run_case(&["missing_expected_fault"], Duration::from_secs(30));
    assert_fails_naming(&r, "missing_expected_fault", "but the test returned");
}

#[test]
fn a_fault_expectation_prints_the_bits_asked_for() {
    let r = run_case(&["missing_write_fault"], Duration::from_secs(30));
    assert_fails_naming(
        &r,
        "missing_write_fault",
        "expected a page fault with CAUSED_BY_WRITE, but the test returned",
    );
}

#[test]
fn infinite_loop_times_out_names_the_test_and_the_tests_not_run() {
    let r = run_case(&["hangs", "triple_faults"], Duration::from_secs(3));
    assert_fails_naming(&r, "hangs", "timed out");
    assert_eq!(r.not_run, ["selftest_broken::triple_faults"]);
}

#[test]
fn triple_fault_fails_and_names_the_test() {
    let r = run_case(&["triple_faults"], Duration::from_secs(30));
    assert_fails_naming(&r, "triple_faults", "triple fault");
}

#[test]
fn a_test_faking_the_summary_cannot_pass_the_run() {
    let r = run_case(
        &["passes", "fakes_summary", "after_fake"],
        Duration::from_secs(30),
    );
    assert_fails_naming(&r, "fakes_summary", "in progress");
    assert_eq!(r.not_run, ["selftest_broken::after_fake"]);
}
