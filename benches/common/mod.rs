//! What the benchmarks share: the provenance line every one prints first
//! (the commit and build its figures belong to, so a table pasted into
//! BENCHMARKS.md names where it came from) and the workload PRNG.

// Each benchmark is its own crate and uses part of this module.
#![allow(dead_code)]

/// Prints `<name> at <commit>[-dirty], profile <p>` from `git describe`.
pub fn print_provenance(name: &str) {
    let commit = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=10"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "an unknown commit (no git)".into());
    let profile = if cfg!(debug_assertions) {
        "with debug assertions"
    } else {
        "optimized"
    };
    println!("{name} benchmark at commit {commit}, {profile}");
}

/// wyrand: small, fast, good enough for workload generation; the same
/// stream for every contender.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[inline]
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    }

    /// Uniform in `lo..hi`.
    #[inline]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + ((u128::from(self.next()) * (hi - lo) as u128) >> 64) as usize
    }
}
