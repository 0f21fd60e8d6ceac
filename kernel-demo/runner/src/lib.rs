//! Host-side launcher for kmem's bare-metal kernels.
//!
//! Cargo cannot build one package of a workspace for another target on
//! stable (`forced-target` is nightly and ignores runners), so this crate
//! runs a nested `cargo build --target x86_64-unknown-none` into its own
//! target directory and boots the results in QEMU (PVH direct boot, serial
//! on stdio, `isa-debug-exit` for the status). `cargo run` at the root runs
//! the demo through the binary; `cargo test` boots every test kernel
//! through `tests/in_vm.rs`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// QEMU's status when the kernel wrote its success code (0x10) to the exit port.
pub const SUCCESS_STATUS: i32 = 33;
/// QEMU's status when the kernel reported failure.
pub const FAILURE_STATUS: i32 = 35;
/// Default time a kernel may run before it is killed as hung.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The cargo profile kernels are built with.
pub const PROFILE: &str = "kernel";
/// The bare-metal target.
pub const TARGET: &str = "x86_64-unknown-none";

/// The workspace root (the directory of the `kmem` package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the runner lives in kernel-demo/runner")
        .to_path_buf()
}

/// Builds every kernel binary of `kernel-demo` (demo, test kernels,
/// self-test kernels) and returns the directory holding them.
pub fn build_kernels() -> Result<PathBuf, String> {
    let root = workspace_root();
    let target_dir = root.join("target").join("kernel");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(&root)
        // Host flags would replace the kernel's `[target.*].rustflags`.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args([
            "build",
            "--quiet",
            "-p",
            "kernel-demo",
            "--bins",
            "--target",
            TARGET,
        ])
        .args(["--profile", PROFILE, "--target-dir"])
        .arg(&target_dir)
        .status()
        .map_err(|e| format!("could not run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("building the kernels failed ({status})"));
    }
    Ok(target_dir.join(TARGET).join(PROFILE))
}

/// How to boot one kernel.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Guest RAM, as QEMU's `-m` takes it (`128M`, `4G`).
    pub mem: String,
    /// Kernel command line (`-append`).
    pub append: String,
    /// Time after which the kernel is killed as hung.
    pub timeout: Duration,
    /// Echo the serial output to stdout while it runs.
    pub echo: bool,
}

impl Default for Boot {
    fn default() -> Self {
        Self {
            mem: "128M".into(),
            append: String::new(),
            timeout: DEFAULT_TIMEOUT,
            echo: true,
        }
    }
}

/// How a QEMU run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// QEMU exited with this status (33 = success, 35 = failure,
    /// 0 = reset, i.e. a triple fault under `-no-reboot`).
    Status(i32),
    /// Killed by a signal.
    Signal,
    /// Killed after the timeout.
    TimedOut(Duration),
}

/// The serial output and the end of one run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Everything the kernel printed.
    pub output: String,
    /// How it ended.
    pub exit: Exit,
    /// Wall time from QEMU's start to its exit.
    pub elapsed: Duration,
}

impl Run {
    /// Whether the kernel reported success.
    pub fn succeeded(&self) -> bool {
        self.exit == Exit::Status(SUCCESS_STATUS)
    }
}

/// The QEMU binary: `$KMEM_QEMU` or `qemu-system-x86_64`.
pub fn qemu_binary() -> String {
    std::env::var("KMEM_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// Boots `kernel` in QEMU and collects its serial output.
pub fn boot(kernel: &Path, cfg: &Boot) -> Result<Run, String> {
    let qemu = qemu_binary();
    let mut cmd = Command::new(&qemu);
    cmd.arg("-kernel").arg(kernel);
    cmd.args(["-m", &cfg.mem, "-cpu", "max", "-nodefaults", "-no-reboot"]);
    cmd.args(["-display", "none", "-serial", "stdio"]);
    cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    if !cfg.append.is_empty() {
        cmd.args(["-append", &cfg.append]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        format!("could not start {qemu}: {e} (install QEMU: apt-get install qemu-system-x86)")
    })?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = start + cfg.timeout;
    let mut output = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => {
                if cfg.echo {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(
                        &chunk
                            .iter()
                            .copied()
                            .filter(|&b| b != b'\r')
                            .collect::<Vec<_>>(),
                    );
                    let _ = out.flush();
                }
                output.extend_from_slice(&chunk);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for QEMU: {e}"))?;
    let _ = reader.join();
    let elapsed = start.elapsed();
    let exit = match (timed_out, status.code()) {
        (true, _) => Exit::TimedOut(cfg.timeout),
        (false, Some(code)) => Exit::Status(code),
        (false, None) => Exit::Signal,
    };
    let output = String::from_utf8_lossy(&output).replace('\r', "");
    Ok(Run {
        output,
        exit,
        elapsed,
    })
}

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
    /// Why the run as a whole failed beyond its test results (hang,
    /// reset, crash, missing summary), naming the test in progress.
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

    /// Whether everything passed.
    pub fn ok(&self) -> bool {
        self.failed() == 0
    }
}

/// Reads a test kernel's output: per-test lines, the closing count, and
/// the exit status. Only the success status with a consistent count and
/// no failed test is a pass.
pub fn parse_report(run: &Run) -> Report {
    let mut results: Vec<TestResult> = Vec::new();
    let mut in_progress: Option<String> = None;
    let mut summary: Option<(usize, usize)> = None;
    for line in run.output.lines() {
        if let Some(rest) = line.strip_prefix("test ") {
            let Some((name, result)) = rest.split_once(" ... ") else {
                in_progress = rest.strip_suffix(" ...").map(str::to_string);
                continue;
            };
            if let Some(note) = result.strip_prefix("ok") {
                results.push(TestResult {
                    name: name.into(),
                    passed: true,
                    detail: note.trim().into(),
                });
                in_progress = None;
            } else if result.starts_with("FAILED") {
                results.push(TestResult {
                    name: name.into(),
                    passed: false,
                    detail: String::new(),
                });
                in_progress = None;
            } else {
                // Output printed by the test itself, or the kernel died
                // mid-line: the test is still in progress.
                in_progress = Some(name.into());
            }
        } else if let Some(counts) = parse_summary(line) {
            summary = Some(counts);
        } else if let Some(last) = results.last_mut() {
            if !last.passed && line.starts_with("    ") {
                if !last.detail.is_empty() {
                    last.detail.push('\n');
                }
                last.detail.push_str(line.trim());
            } else if in_progress.is_none() && !last.passed && line.starts_with("UNEXPECTED") {
                last.detail.push_str(line);
            }
        }
    }
    let during = |what: &str| match &in_progress {
        Some(test) => format!("{what} during test {test}"),
        None => format!("{what} outside any test"),
    };
    let problem = match run.exit {
        Exit::TimedOut(t) => Some(during(&format!("timed out after {} s", t.as_secs()))),
        Exit::Status(0) => Some(during("the machine reset (triple fault)")),
        Exit::Signal => Some(during("QEMU was killed by a signal")),
        Exit::Status(SUCCESS_STATUS) => match summary {
            None => Some(
                "the kernel exited with success but printed no `N passed, N failed` line".into(),
            ),
            Some((p, f)) if p != results.iter().filter(|r| r.passed).count() || f != 0 => Some(
                format!("summary says {p} passed, {f} failed, which the test lines contradict"),
            ),
            Some(_) if results.is_empty() => Some("the kernel ran no test".into()),
            Some(_) => None,
        },
        Exit::Status(FAILURE_STATUS) if results.iter().any(|r| !r.passed) => None,
        Exit::Status(code) => Some(during(&format!("the kernel failed (QEMU status {code})"))),
    };
    Report { results, problem }
}

/// Parses `N passed, N failed` alone on a line.
fn parse_summary(line: &str) -> Option<(usize, usize)> {
    let (p, f) = line.trim().split_once(" passed, ")?;
    let f = f.strip_suffix(" failed")?;
    Some((p.parse().ok()?, f.parse().ok()?))
}

/// A test kernel: `kernel-demo/tests/<name>.rs`, binary `test-<name>`.
#[derive(Debug, Clone)]
pub struct TestKernel {
    /// The binary name.
    pub binary: String,
    /// Memory sizes to boot it with (one run each), from a
    /// `// kmem-vm: mem=128M mem=4G` line in the file; `128M` by default.
    pub mems: Vec<String>,
}

/// Lists the test kernels in `kernel-demo/tests/`, sorted by name.
pub fn test_kernels() -> Result<Vec<TestKernel>, String> {
    let dir = workspace_root().join("kernel-demo").join("tests");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut kernels = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or("bad file name")?;
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut mems: Vec<String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("// kmem-vm:"))
            .flat_map(|l| l.split_whitespace())
            .filter_map(|w| w.strip_prefix("mem="))
            .map(str::to_string)
            .collect();
        if mems.is_empty() {
            mems.push("128M".into());
        }
        kernels.push(TestKernel {
            binary: format!("test-{stem}"),
            mems,
        });
    }
    kernels.sort_by(|a, b| a.binary.cmp(&b.binary));
    Ok(kernels)
}

/// The per-kernel timeout: `$KMEM_VM_TIMEOUT` seconds, else 60 s.
pub fn timeout_from_env() -> Duration {
    std::env::var("KMEM_VM_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(output: &str, exit: Exit) -> Run {
        Run {
            output: output.into(),
            exit,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn clean_run_passes() {
        let r = parse_report(&run(
            "running 2 tests\ntest a::x ... ok\ntest a::y ... ok (expected page fault)\n2 passed, 0 failed\n",
            Exit::Status(SUCCESS_STATUS),
        ));
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.passed(), 2);
    }

    #[test]
    fn failed_test_keeps_its_reason() {
        let r = parse_report(&run(
            "test a::x ... FAILED\n    panicked at x.rs:1:1:\n    boom\n0 passed, 1 failed\n",
            Exit::Status(FAILURE_STATUS),
        ));
        assert!(!r.ok());
        assert_eq!(r.results[0].name, "a::x");
        assert!(r.results[0].detail.contains("boom"), "{r:?}");
    }

    #[test]
    fn success_status_without_summary_fails() {
        let r = parse_report(&run("test a::x ... ok\n", Exit::Status(SUCCESS_STATUS)));
        assert!(!r.ok());
    }

    #[test]
    fn summary_contradicting_lines_fails() {
        let r = parse_report(&run(
            "test a::x ... ok\n3 passed, 0 failed\n",
            Exit::Status(SUCCESS_STATUS),
        ));
        assert!(!r.ok());
    }

    #[test]
    fn reset_names_the_test_in_progress() {
        let r = parse_report(&run("test a::x ... ok\ntest a::boom ... ", Exit::Status(0)));
        assert!(!r.ok());
        let p = r.problem.unwrap();
        assert!(p.contains("a::boom") && p.contains("triple fault"), "{p}");
    }

    #[test]
    fn timeout_names_the_test_in_progress() {
        let r = parse_report(&run(
            "test a::spin ... ",
            Exit::TimedOut(Duration::from_secs(3)),
        ));
        let p = r.problem.unwrap();
        assert!(p.contains("a::spin") && p.contains("timed out"), "{p}");
    }

    #[test]
    fn summary_line_parses_only_exact_form() {
        assert_eq!(parse_summary("12 passed, 3 failed"), Some((12, 3)));
        assert_eq!(parse_summary("x passed, 3 failed"), None);
        assert_eq!(parse_summary("12 passed"), None);
    }
}
