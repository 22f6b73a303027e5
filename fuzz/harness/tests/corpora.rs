//! Replays every stored fuzz input through its target: the corpora the
//! fuzzer grew (`fuzz/corpus/<target>/`) and the inputs that once broke
//! weft (`fuzz/regressions/<target>/`). CI runs this, not the fuzzer.

#![allow(clippy::unwrap_used)] // a test: an unreadable corpus is a failure

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

fn replay(kind: &str) -> usize {
    let mut total = 0;
    for (name, body) in weft_fuzz_harness::TARGETS {
        for path in inputs(&root().join(kind).join(name)) {
            let data = std::fs::read(&path).unwrap();
            let run = std::panic::catch_unwind(|| body(&data));
            assert!(run.is_ok(), "{name}: {} fails", path.display());
            total += 1;
        }
    }
    total
}

#[test]
fn every_corpus_input_passes_its_target() {
    let n = replay("corpus");
    // Each target has a corpus: an empty one would test nothing.
    for (name, _) in weft_fuzz_harness::TARGETS {
        let dir = root().join("corpus").join(name);
        assert!(!inputs(&dir).is_empty(), "{} is empty", dir.display());
    }
    println!("{n} corpus inputs replayed");
}

#[test]
fn every_regression_input_passes_its_target() {
    let n = replay("regressions");
    println!("{n} regression inputs replayed");
}
