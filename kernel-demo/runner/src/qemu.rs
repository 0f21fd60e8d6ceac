//! Booting one kernel in QEMU (PVH direct boot, or GRUB 2 from an ISO for
//! Multiboot2; serial on stdio, `isa-debug-exit` for the status) and
//! collecting what it printed.

use crate::SUCCESS_STATUS;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Default time a kernel may run before it is killed as hung.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// A swap disk of this many bytes: a fresh sparse image in
    /// `target/`, attached as a virtio-blk PCI device on the q35 machine.
    pub swap_bytes: Option<u64>,
    /// How the kernel is loaded.
    pub loader: Loader,
    /// Virtual CPUs (QEMU's `-smp`).
    pub cpus: u32,
}

/// How QEMU gets the kernel running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Loader {
    /// PVH direct boot: QEMU's `-kernel`, the command line through `-append`.
    #[default]
    Pvh,
    /// GRUB 2 from a `grub-mkrescue` ISO: SeaBIOS, GRUB, then the kernel
    /// through Multiboot2, the command line on GRUB's `multiboot2` line.
    Grub,
}

impl Loader {
    /// `KMEM_BOOT`: `pvh` (default) or `grub`.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("KMEM_BOOT").as_deref() {
            Err(_) | Ok("") | Ok("pvh") => Ok(Self::Pvh),
            Ok("grub") => Ok(Self::Grub),
            Ok(other) => Err(format!("KMEM_BOOT={other:?}: expected `pvh` or `grub`")),
        }
    }
}

impl Default for Boot {
    fn default() -> Self {
        Self {
            mem: "128M".into(),
            append: String::new(),
            timeout: DEFAULT_TIMEOUT,
            echo: true,
            swap_bytes: None,
            loader: Loader::Pvh,
            cpus: 1,
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
    let _iso = match cfg.loader {
        Loader::Pvh => {
            cmd.arg("-kernel").arg(kernel);
            if !cfg.append.is_empty() {
                cmd.args(["-append", &cfg.append]);
            }
            None
        }
        Loader::Grub => {
            let iso = GrubIso::create(kernel, &cfg.append)?;
            cmd.arg("-cdrom").arg(&iso.iso);
            Some(iso)
        }
    };
    cmd.args(["-m", &cfg.mem, "-cpu", "max", "-nodefaults", "-no-reboot"]);
    if cfg.cpus > 1 {
        cmd.args(["-smp", &cfg.cpus.to_string()]);
    }
    cmd.args(["-display", "none", "-serial", "stdio"]);
    cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    let _image = match cfg.swap_bytes {
        Some(bytes) => {
            let image = SwapImage::create(bytes)?;
            cmd.args(["-machine", "q35", "-device", "virtio-blk-pci,drive=swap0"]);
            cmd.arg("-drive").arg(format!(
                "file={},if=none,format=raw,id=swap0,cache=unsafe",
                image.path.display()
            ));
            Some(image)
        }
        None => None,
    };
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

/// The per-kernel timeout: `$KMEM_VM_TIMEOUT` seconds, else 60 s.
pub fn timeout_from_env() -> Duration {
    std::env::var("KMEM_VM_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// A sparse swap image for one boot, removed when the boot is over.
struct SwapImage {
    path: std::path::PathBuf,
}

impl SwapImage {
    fn create(bytes: u64) -> Result<Self, String> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = crate::workspace_root().join("target").join("swap");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("swap-{}-{n}.img", std::process::id()));
        let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        file.set_len(bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for SwapImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A bootable GRUB 2 ISO holding one kernel, removed when the boot is over.
struct GrubIso {
    dir: std::path::PathBuf,
    iso: std::path::PathBuf,
}

impl GrubIso {
    fn create(kernel: &Path, cmdline: &str) -> Result<Self, String> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let cmdline = grub_words(cmdline)?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = crate::workspace_root()
            .join("target")
            .join("grub")
            .join(format!("{}-{n}", std::process::id()));
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        let grub_dir = dir.join("root").join("boot").join("grub");
        std::fs::create_dir_all(&grub_dir).map_err(io)?;
        std::fs::copy(kernel, dir.join("root").join("boot").join("kernel")).map_err(io)?;
        // GRUB's own output goes to the (absent) screen; the kernel's to the serial port.
        let cfg = format!(
            "set timeout=0\nset default=0\nmenuentry \"kmem\" {{\n    multiboot2 /boot/kernel {cmdline}\n    boot\n}}\n"
        );
        std::fs::write(grub_dir.join("grub.cfg"), cfg).map_err(io)?;
        let iso = dir.join("kmem.iso");
        let out = Command::new("grub-mkrescue")
            .arg("-o")
            .arg(&iso)
            .arg(dir.join("root"))
            .output()
            .map_err(|e| {
                format!(
                    "could not run grub-mkrescue: {e} (install GRUB: apt-get install \
                     grub-pc-bin grub-common xorriso mtools)"
                )
            })?;
        let made = Self { dir, iso };
        if !out.status.success() {
            return Err(format!(
                "grub-mkrescue failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(made)
    }
}

impl Drop for GrubIso {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The command line as GRUB script words: each word single-quoted (GRUB
/// expands `$`, splits on `;` and strips quotes otherwise), `'` written as
/// `'\''`. A line break cannot be passed through a `multiboot2` line.
fn grub_words(cmdline: &str) -> Result<String, String> {
    if cmdline.contains(['\n', '\r']) {
        return Err("a kernel command line for GRUB cannot hold a line break".into());
    }
    Ok(cmdline
        .split_whitespace()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" "))
}

/// Parses a size as QEMU writes it: `64M`, `1G`, `512K` or bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::grub_words;

    #[test]
    fn grub_words_are_quoted_literally() {
        assert_eq!(grub_words("a=1 $x;y").unwrap(), "'a=1' '$x;y'");
        assert_eq!(grub_words("it's").unwrap(), r"'it'\''s'");
        assert!(grub_words("a\nb").is_err());
    }
}
