//! What every benchmark prints first: the commit and build its figures
//! belong to, so a table pasted into BENCHMARKS.md names where it came from.

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
