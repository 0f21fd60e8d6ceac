//! Building the kernels: a nested `cargo build` for the bare-metal target,
//! whose JSON artifact messages name the binaries it just produced.

use crate::{PROFILE, TARGET};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace root (the directory of the `kmem` package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the runner lives in kernel-demo/runner")
        .to_path_buf()
}

/// One kernel binary the build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The executable cargo reported.
    pub executable: PathBuf,
    /// The source file of its `[[bin]]` entry.
    pub src_path: PathBuf,
}

/// The kernel binaries of one build, by `[[bin]]` name. Only what this
/// build reported is here: a binary left in the target directory by an
/// earlier build is never booted.
#[derive(Debug, Clone, Default)]
pub struct Kernels {
    bins: BTreeMap<String, Artifact>,
}

impl Kernels {
    /// Collects the binaries named in cargo's JSON messages (one object
    /// per line; other lines are ignored).
    pub fn from_messages<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let mut bins = BTreeMap::new();
        for line in lines {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            let target = &msg["target"];
            let is_bin = target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
            let (Some(name), Some(exe), Some(src)) = (
                target["name"].as_str(),
                msg["executable"].as_str(),
                target["src_path"].as_str(),
            ) else {
                continue;
            };
            if is_bin {
                bins.insert(
                    name.to_string(),
                    Artifact {
                        executable: exe.into(),
                        src_path: src.into(),
                    },
                );
            }
        }
        Self { bins }
    }

    /// The executable of the binary `name`, or why there is none.
    pub fn path(&self, name: &str) -> Result<&Path, String> {
        self.bins
            .get(name)
            .map(|a| a.executable.as_path())
            .ok_or_else(|| {
                format!(
                    "the build produced no kernel binary `{name}` (built: {})",
                    self.bins.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
    }

    /// The CPU count the `smp=` marker word of binary `name`'s source
    /// asks for (1 without one, or when the source cannot be read).
    pub fn marked_cpus(&self, name: &str) -> u32 {
        self.bins
            .get(name)
            .and_then(|a| std::fs::read_to_string(&a.src_path).ok())
            .map_or(1, |text| cpu_count(&text))
    }

    /// The test kernels: every built binary named `test-*`, sorted by
    /// name. Every file in `test_dir` must be one of them, so a test file
    /// whose `[[bin]]` entry is missing fails instead of going unrun.
    pub fn test_kernels(&self, test_dir: &Path) -> Result<Vec<TestKernel>, String> {
        let mut files = Vec::new();
        let entries =
            std::fs::read_dir(test_dir).map_err(|e| format!("{}: {e}", test_dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
        files.sort();
        self.test_kernels_for(&files)
    }

    /// [`test_kernels`](Self::test_kernels) for a given list of test files.
    pub fn test_kernels_for(&self, files: &[PathBuf]) -> Result<Vec<TestKernel>, String> {
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        for file in files {
            if !self
                .bins
                .iter()
                .any(|(name, a)| name.starts_with("test-") && same(&a.src_path, file))
            {
                let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
                return Err(format!(
                    "{} was not built: kernel-demo/Cargo.toml needs a [[bin]] named \
                     `test-{stem}` with that path",
                    file.display()
                ));
            }
        }
        let mut kernels = Vec::new();
        for (name, artifact) in &self.bins {
            if !name.starts_with("test-") {
                continue;
            }
            let text = std::fs::read_to_string(&artifact.src_path)
                .map_err(|e| format!("{}: {e}", artifact.src_path.display()))?;
            kernels.push(TestKernel {
                binary: name.clone(),
                path: artifact.executable.clone(),
                mems: memory_sizes(&text),
                swap_bytes: marker_words(&text)
                    .find_map(|w| w.strip_prefix("swap="))
                    .and_then(crate::qemu::parse_size),
                cpus: cpu_count(&text),
                loader: if marker_words(&text).any(|w| w == "boot=grub") {
                    crate::Loader::Grub
                } else {
                    crate::Loader::Pvh
                },
            });
        }
        Ok(kernels)
    }
}

/// A test kernel: `kernel-demo/tests/<name>.rs`, binary `test-<name>`.
#[derive(Debug, Clone)]
pub struct TestKernel {
    /// The binary name.
    pub binary: String,
    /// The executable this build produced.
    pub path: PathBuf,
    /// Memory sizes to boot it with (one run each), from a
    /// `// kmem-vm: mem=128M mem=4G` line in the file; `128M` by default.
    pub mems: Vec<String>,
    /// A swap disk to attach (`swap=64M` on that line): q35 + virtio-blk.
    pub swap_bytes: Option<u64>,
    /// `boot=grub` on that line: booted through GRUB 2 and Multiboot2.
    pub loader: crate::Loader,
    /// `smp=4` on that line: QEMU's `-smp 4` (1 by default).
    pub cpus: u32,
}

/// The words of the `// kmem-vm:` lines of a test kernel's source.
fn marker_words(source: &str) -> impl Iterator<Item = &str> {
    source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("// kmem-vm:"))
        .flat_map(|l| l.split_whitespace())
}

fn memory_sizes(source: &str) -> Vec<String> {
    let mut mems: Vec<String> = marker_words(source)
        .filter_map(|w| w.strip_prefix("mem="))
        .map(str::to_string)
        .collect();
    if mems.is_empty() {
        mems.push("128M".into());
    }
    mems
}

/// The `smp=N` word of the marker line (1 without one, or when N is not
/// a number from 1 to 255).
fn cpu_count(source: &str) -> u32 {
    marker_words(source)
        .find_map(|w| w.strip_prefix("smp="))
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=255).contains(n))
        .unwrap_or(1)
}

/// Adds the bare-metal target when the toolchain lacks it: rustup does not
/// add a `rust-toolchain.toml` target to an already-installed toolchain,
/// and without it rustc fails with E0463 ("can't find crate for `core`").
fn ensure_target() -> Result<(), String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .current_dir(workspace_root())
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("could not run {rustc}: {e}"))?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .exists()
    {
        return Ok(());
    }
    eprintln!("kmem-runner: the toolchain lacks {TARGET}; running `rustup target add {TARGET}`");
    let status = Command::new("rustup")
        .current_dir(workspace_root())
        .args(["target", "add", TARGET])
        .status()
        .map_err(|e| format!("{TARGET} is not installed and rustup could not run ({e}): install the target with `rustup target add {TARGET}`"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`rustup target add {TARGET}` failed ({status}); install the target by hand"
        ))
    }
}

/// Builds every kernel binary of `kernel-demo` (demo, test kernels,
/// self-test kernels) and returns what the build produced.
pub fn build_kernels() -> Result<Kernels, String> {
    ensure_target()?;
    let root = workspace_root();
    let target_dir = root.join("target").join("kernel");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo)
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
        .args(["--message-format=json-render-diagnostics"])
        .args(["--profile", PROFILE, "--target-dir"])
        .arg(&target_dir)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run {cargo}: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let lines: Vec<String> = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("building the kernels failed ({status})"));
    }
    Ok(Kernels::from_messages(lines.iter().map(String::as_str)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(name: &str, kind: &str, exe: &str, src: &str) -> String {
        format!(
            r#"{{"reason":"compiler-artifact","target":{{"kind":["{kind}"],"name":"{name}","src_path":"{src}"}},"executable":"{exe}","fresh":true}}"#
        )
    }

    #[test]
    fn only_reported_binaries_are_known() {
        let msgs = [
            message("test-a", "bin", "/t/test-a", "/src/tests/a.rs"),
            message("kmem", "lib", "null", "/src/lib.rs"),
            r#"{"reason":"build-finished","success":true}"#.to_string(),
            "not json".to_string(),
        ];
        let k = Kernels::from_messages(msgs.iter().map(String::as_str));
        assert_eq!(k.path("test-a").unwrap(), Path::new("/t/test-a"));
        let err = k.path("test-b").unwrap_err();
        assert!(err.contains("test-b") && err.contains("test-a"), "{err}");
        assert!(k.path("kmem").is_err());
    }

    #[test]
    fn a_test_file_without_its_binary_is_an_error() {
        let msgs = [message("test-a", "bin", "/t/test-a", "/src/tests/a.rs")];
        let k = Kernels::from_messages(msgs.iter().map(String::as_str));
        let files = [
            PathBuf::from("/src/tests/a.rs"),
            PathBuf::from("/src/tests/b.rs"),
        ];
        let err = k.test_kernels_for(&files).unwrap_err();
        assert!(err.contains("b.rs") && err.contains("test-b"), "{err}");
    }

    #[test]
    fn memory_sizes_come_from_the_marker_line() {
        assert_eq!(
            memory_sizes("x\n// kmem-vm: mem=128M mem=4G\n"),
            ["128M", "4G"]
        );
        assert_eq!(memory_sizes("fn main() {}"), ["128M"]);
    }

    #[test]
    fn cpu_count_comes_from_the_marker_line() {
        assert_eq!(cpu_count("// kmem-vm: mem=256M smp=4\n"), 4);
        assert_eq!(cpu_count("// kmem-vm: mem=256M\n"), 1);
        assert_eq!(cpu_count("// kmem-vm: smp=0\n"), 1);
        assert_eq!(cpu_count("// smp=4\n"), 1);
    }
}
