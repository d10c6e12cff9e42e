//! Writes the seeds into `fuzz/corpus/<target>/seed-<n>`, the starting
//! corpus of `cargo +nightly fuzz run <target>`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    for (n, (target, data)) in coffer_fuzz_harness::seeds().into_iter().enumerate() {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{n}")), data)?;
    }
    Ok(())
}
