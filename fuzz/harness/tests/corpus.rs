//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) and the
//! seeds through the fuzz targets' bodies on stable Rust: every input that
//! once crashed a target, or taught the fuzzer something, stays a test.

use std::path::PathBuf;

use coffer_fuzz_harness::{seeds, TARGETS};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target)
}

#[test]
fn every_corpus_input_passes_its_target() {
    for (target, run) in TARGETS {
        let dir = corpus_dir(target);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus input");
            run(&data);
            inputs += 1;
        }
        assert!(inputs > 0, "the corpus of {target} is empty");
    }
}

#[test]
fn every_seed_passes_its_target() {
    for (target, data) in seeds() {
        let (_, run) = TARGETS
            .iter()
            .find(|(name, _)| *name == target)
            .expect("a seed names a target");
        run(&data);
    }
}
