//! Replays every committed fuzz corpus entry (and every saved crash
//! reproducer) through the same harness the fuzz target runs.

use std::path::Path;

#[test]
fn replay_committed_corpora() {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // A published crate (what `cargo package` builds) leaves out `fuzz/`:
    // cargo never packages a directory that holds another package. Its
    // tests run the harnesses on the unit tests' inputs only.
    if manifest_dir.join("Cargo.toml.orig").exists() {
        println!("skipped: a packaged build has no fuzz/ corpora (they are replayed in the repository)");
        return;
    }
    let root = manifest_dir.join("fuzz/corpus");
    for (name, harness) in relaymail::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        assert!(!entries.is_empty(), "corpus {name} is empty");
        for path in entries {
            let input = std::fs::read(&path).expect("readable");
            let result = std::panic::catch_unwind(|| harness(&input));
            assert!(result.is_ok(), "{name}: {} fails", path.display());
        }
    }
}
