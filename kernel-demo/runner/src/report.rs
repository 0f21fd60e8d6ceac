//! Reading a test kernel's serial output: the announced count, one result
//! line per test, the closing count and the exit status. The run passes
//! only if all of them agree with the tests the runner asked for.

use crate::{Exit, Run, FAILURE_STATUS, SUCCESS_STATUS};

/// One test's result, as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// `module::name`.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// The failure reason, or the note after `ok`.
    pub detail: String,
}

/// What one test kernel run amounted to.
#[derive(Debug, Clone)]
pub struct Report {
    /// Every test that printed a result.
    pub results: Vec<TestResult>,
    /// Tests that were asked for but printed no result (the kernel hung,
    /// reset or stopped early).
    pub not_run: Vec<String>,
    /// Why the run as a whole failed beyond its test results (hang,
    /// reset, crash, missing or contradicting summary), naming the test in
    /// progress.
    pub problem: Option<String>,
}

impl Report {
    /// Tests that passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    /// Tests that failed, counting a run-level problem as one failure
    /// when no test result already accounts for it.
    pub fn failed(&self) -> usize {
        let failed = self.results.iter().filter(|r| !r.passed).count();
        failed + usize::from(self.problem.is_some() && failed == 0)
    }

    /// Whether everything asked for ran and passed.
    pub fn ok(&self) -> bool {
        self.failed() == 0 && self.not_run.is_empty()
    }
}

/// Reads the output of a run that was asked to run `expected`, in that
/// order. The success status counts only with a `running N tests` line
/// naming as many tests as were asked for, a result line for each of them
/// and nothing else, a summary matching those lines, and no test in
/// progress: a test that prints a summary and exits early cannot pass the
/// run.
pub fn parse_report(run: &Run, expected: &[String]) -> Report {
    let mut results: Vec<TestResult> = Vec::new();
    let mut in_progress: Option<String> = None;
    let mut announced: Option<usize> = None;
    let mut summary: Option<(usize, usize)> = None;
    let mut stray: Vec<String> = Vec::new();
    for line in run.output.lines() {
        if let Some(rest) = line.strip_prefix("test ") {
            let Some((name, result)) = rest.split_once(" ... ") else {
                in_progress = rest.strip_suffix(" ...").map(str::to_string);
                continue;
            };
            let verdict = if result == "ok" || result.starts_with("ok (") {
                Some(true)
            } else if result == "FAILED" {
                Some(false)
            } else {
                // Output printed by the test itself, or the kernel died
                // mid-line: the test is still in progress.
                None
            };
            match verdict {
                Some(passed) => {
                    let expected_here = expected.get(results.len());
                    if expected_here.is_none_or(|e| e != name) {
                        stray.push(name.to_string());
                    }
                    let detail = if passed {
                        result.strip_prefix("ok").unwrap_or("").trim()
                    } else {
                        ""
                    };
                    results.push(TestResult {
                        name: name.into(),
                        passed,
                        detail: detail.into(),
                    });
                    in_progress = None;
                }
                None => in_progress = Some(name.into()),
            }
        } else if let Some(n) = parse_running(line) {
            if announced.is_none() && results.is_empty() && in_progress.is_none() {
                announced = Some(n);
            }
        } else if let Some(counts) = parse_summary(line) {
            summary = Some(counts);
        } else if let Some(last) = results.last_mut() {
            if !last.passed && in_progress.is_none() && line.starts_with("    ") {
                if !last.detail.is_empty() {
                    last.detail.push('\n');
                }
                last.detail.push_str(line.trim());
            }
        }
    }
    let not_run: Vec<String> = expected
        .iter()
        .filter(|e| !results.iter().any(|r| &r.name == *e) && in_progress.as_ref() != Some(e))
        .cloned()
        .collect();
    let during = |what: &str| match &in_progress {
        Some(test) => format!("{what} during test {test}"),
        None => format!("{what} outside any test"),
    };
    let passed = results.iter().filter(|r| r.passed).count();
    let failed = results.len() - passed;
    let consistency = || -> Option<String> {
        if let Some(test) = &in_progress {
            return Some(format!(
                "the kernel exited while test {test} was in progress"
            ));
        }
        if announced != Some(expected.len()) {
            return Some(match announced {
                None => "the kernel printed no `running N tests` line".into(),
                Some(n) => format!(
                    "the kernel announced {n} tests, {} were asked for",
                    expected.len()
                ),
            });
        }
        if !stray.is_empty() {
            return Some(format!(
                "results for tests not asked for, or out of order: {}",
                stray.join(", ")
            ));
        }
        match summary {
            None => Some("the kernel printed no `N passed, N failed` line".into()),
            Some((p, f)) if (p, f) != (passed, failed) => Some(format!(
                "the summary says {p} passed, {f} failed; the test lines say {passed} passed, {failed} failed"
            )),
            Some(_) => None,
        }
    };
    let problem = match run.exit {
        Exit::TimedOut(t) => Some(during(&format!("timed out after {} s", t.as_secs()))),
        Exit::Status(0) => Some(during("the machine reset (triple fault)")),
        Exit::Signal => Some(during("QEMU was killed by a signal")),
        Exit::Status(SUCCESS_STATUS) if failed > 0 => {
            Some("the kernel exited with success although tests failed".into())
        }
        Exit::Status(SUCCESS_STATUS) => consistency(),
        Exit::Status(FAILURE_STATUS) if failed > 0 => consistency(),
        Exit::Status(code) => Some(during(&format!("the kernel failed (QEMU status {code})"))),
    };
    Report {
        results,
        not_run,
        problem,
    }
}

/// Parses `running N tests` (or `running 1 test`).
fn parse_running(line: &str) -> Option<usize> {
    let rest = line.trim().strip_prefix("running ")?;
    let n = rest
        .strip_suffix(" tests")
        .or_else(|| rest.strip_suffix(" test"))?;
    n.parse().ok()
}

/// Parses `N passed, N failed` alone on a line.
fn parse_summary(line: &str) -> Option<(usize, usize)> {
    let (p, f) = line.trim().split_once(" passed, ")?;
    let f = f.strip_suffix(" failed")?;
    Some((p.parse().ok()?, f.parse().ok()?))
}

/// Reads the output of a listing run: one `<name>: test` line per test,
/// then `N tests`, and the success status.
pub fn parse_listing(run: &Run) -> Result<Vec<String>, String> {
    if !run.succeeded() {
        return Err(format!("listing the tests failed ({:?})", run.exit));
    }
    let names: Vec<String> = run
        .output
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect();
    let count = run
        .output
        .lines()
        .find_map(|l| l.trim().strip_suffix(" tests")?.parse::<usize>().ok());
    if count != Some(names.len()) {
        return Err(format!(
            "the listing names {} tests but its count line says {count:?}",
            names.len()
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run(output: &str, exit: Exit) -> Run {
        Run {
            output: output.into(),
            exit,
            elapsed: Duration::ZERO,
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn clean_run_passes() {
        let r = parse_report(
            &run(
                "running 2 tests\ntest a::x ... ok\ntest a::y ... ok (expected page fault)\n2 passed, 0 failed\n",
                Exit::Status(SUCCESS_STATUS),
            ),
            &names(&["a::x", "a::y"]),
        );
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.passed(), 2);
    }

    #[test]
    fn failed_test_keeps_its_reason() {
        let r = parse_report(
            &run(
                "running 1 test\ntest a::x ... FAILED\n    panicked at x.rs:1:1:\n    boom\n0 passed, 1 failed\n",
                Exit::Status(FAILURE_STATUS),
            ),
            &names(&["a::x"]),
        );
        assert!(!r.ok());
        assert_eq!(r.results[0].name, "a::x");
        assert!(r.results[0].detail.contains("boom"), "{r:?}");
        assert!(r.problem.is_none(), "{r:?}");
    }

    #[test]
    fn success_status_without_summary_fails() {
        let r = parse_report(
            &run(
                "running 1 test\ntest a::x ... ok\n",
                Exit::Status(SUCCESS_STATUS),
            ),
            &names(&["a::x"]),
        );
        assert!(!r.ok());
    }

    #[test]
    fn summary_contradicting_lines_fails() {
        let r = parse_report(
            &run(
                "running 1 test\ntest a::x ... ok\n3 passed, 0 failed\n",
                Exit::Status(SUCCESS_STATUS),
            ),
            &names(&["a::x"]),
        );
        assert!(!r.ok());
    }

    #[test]
    fn a_test_faking_the_summary_and_exiting_fails_the_run() {
        let expected = names(&["a::x", "a::evil", "a::z"]);
        // The fake summary on the test's own line, and on a line of its own.
        for fake in ["8 passed, 0 failed\n", "\n8 passed, 0 failed\n"] {
            let out = format!("running 3 tests\ntest a::x ... ok\ntest a::evil ... {fake}");
            let r = parse_report(&run(&out, Exit::Status(SUCCESS_STATUS)), &expected);
            assert!(!r.ok(), "{r:?}");
            let p = r.problem.clone().unwrap();
            assert!(p.contains("a::evil"), "{p}");
            assert_eq!(r.not_run, ["a::z"]);
        }
        // A test that finishes its own line first still leaves a test unrun.
        let out = "running 3 tests\ntest a::x ... ok\ntest a::evil ... ok\n2 passed, 0 failed\n";
        let r = parse_report(&run(out, Exit::Status(SUCCESS_STATUS)), &expected);
        assert!(!r.ok(), "{r:?}");
        assert_eq!(r.not_run, ["a::z"]);
    }

    #[test]
    fn announced_count_must_match_what_was_asked() {
        let r = parse_report(
            &run(
                "running 1 test\ntest a::x ... ok\n1 passed, 0 failed\n",
                Exit::Status(SUCCESS_STATUS),
            ),
            &names(&["a::x", "a::y"]),
        );
        assert!(!r.ok());
        let r = parse_report(
            &run(
                "test a::x ... ok\n1 passed, 0 failed\n",
                Exit::Status(SUCCESS_STATUS),
            ),
            &names(&["a::x"]),
        );
        assert!(r.problem.unwrap().contains("running N tests"));
    }

    #[test]
    fn results_for_tests_not_asked_for_fail() {
        let r = parse_report(
            &run(
                "running 1 test\ntest a::y ... ok\n1 passed, 0 failed\n",
                Exit::Status(SUCCESS_STATUS),
            ),
            &names(&["a::x"]),
        );
        assert!(!r.ok());
        assert!(r.problem.unwrap().contains("a::y"));
    }

    #[test]
    fn reset_names_the_test_in_progress_and_the_ones_not_run() {
        let r = parse_report(
            &run(
                "running 3 tests\ntest a::x ... ok\ntest a::boom ... ",
                Exit::Status(0),
            ),
            &names(&["a::x", "a::boom", "a::after"]),
        );
        assert!(!r.ok());
        let p = r.problem.unwrap();
        assert!(p.contains("a::boom") && p.contains("triple fault"), "{p}");
        assert_eq!(r.not_run, ["a::after"]);
    }

    #[test]
    fn timeout_names_the_test_in_progress() {
        let r = parse_report(
            &run(
                "running 2 tests\ntest a::spin ... ",
                Exit::TimedOut(Duration::from_secs(3)),
            ),
            &names(&["a::spin", "a::next"]),
        );
        let p = r.problem.unwrap();
        assert!(p.contains("a::spin") && p.contains("timed out"), "{p}");
        assert_eq!(r.not_run, ["a::next"]);
    }

    #[test]
    fn summary_line_parses_only_exact_form() {
        assert_eq!(parse_summary("12 passed, 3 failed"), Some((12, 3)));
        assert_eq!(parse_summary("x passed, 3 failed"), None);
        assert_eq!(parse_summary("12 passed"), None);
        assert_eq!(parse_running("running 3 tests"), Some(3));
        assert_eq!(parse_running("running 1 test"), Some(1));
    }

    #[test]
    fn listing_needs_a_matching_count() {
        let ok = run(
            "a::x: test\na::y: test\n2 tests\n",
            Exit::Status(SUCCESS_STATUS),
        );
        assert_eq!(parse_listing(&ok).unwrap(), ["a::x", "a::y"]);
        let bad = run("a::x: test\n2 tests\n", Exit::Status(SUCCESS_STATUS));
        assert!(parse_listing(&bad).is_err());
        let died = run("a::x: test\n", Exit::Status(0));
        assert!(parse_listing(&died).is_err());
    }
}
