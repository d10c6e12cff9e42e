//! The README's executable walkthroughs: the `sh` blocks between a pair of
//! markers. Shared by the grpcurl walkthrough test here and the CLI's
//! (`cli/tests/readme_cli_walkthrough.rs` includes this file by path).

use std::path::Path;

/// The README at the workspace root; `manifest_dir` is a crate's
/// `CARGO_MANIFEST_DIR`.
pub fn readme(manifest_dir: &str) -> String {
    std::fs::read_to_string(Path::new(manifest_dir).join("../README.md")).expect("read README.md")
}

/// The `sh` blocks between `<!-- NAME:begin -->` and `<!-- NAME:end -->`,
/// as one script.
pub fn shell_blocks(readme: &str, name: &str) -> String {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let start = readme
        .find(&begin)
        .unwrap_or_else(|| panic!("{begin} missing"));
    let stop = readme.find(&end).unwrap_or_else(|| panic!("{end} missing"));
    let mut script = String::new();
    let mut in_block = false;
    for line in readme[start..stop].lines() {
        if line.starts_with("```sh") {
            in_block = true;
        } else if line.starts_with("```") {
            in_block = false;
        } else if in_block {
            script.push_str(line);
            script.push('\n');
        }
    }
    assert!(!script.trim().is_empty(), "{name} has no shell blocks");
    script
}
