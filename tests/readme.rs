//! The README's "Use kmem in your kernel" block is the tested adoption glue
//! (`kernel-demo/adopt/memory.rs`, booted by `kernel-demo/tests/adopt.rs`),
//! and its stated line count is right.

fn root(path: &str) -> String {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn section(readme: &str) -> &str {
    let start = readme
        .find("## Use kmem in your kernel")
        .expect("the README has the adoption section");
    let rest = &readme[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

#[test]
fn readme_kernel_section_is_the_tested_glue() {
    let readme = root("README.md");
    let glue = root("kernel-demo/adopt/memory.rs");
    let section = section(&readme);
    let block = section
        .split("```rust\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a rust block");
    assert_eq!(
        block.trim_end(),
        glue.trim_end(),
        "README block differs from the tested file"
    );
}

#[test]
fn readme_states_the_glue_line_count_and_it_is_at_most_25() {
    let glue = root("kernel-demo/adopt/memory.rs");
    let lines = glue
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//"))
        .count();
    let readme = root("README.md");
    let claim = format!("({lines} lines of code");
    assert!(
        section(&readme).contains(&claim),
        "README should say {claim}"
    );
    assert!(lines <= 25, "{lines} lines of glue");
}
