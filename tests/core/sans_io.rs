//! `src/proto/` must stay free of IO, async runtimes and clocks: it is what
//! the fuzzers and the table tests drive.

use std::path::Path;

#[test]
fn proto_has_no_io_runtime_or_clock() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proto");
    let forbidden = [
        "tokio",
        "std::net::Tcp",
        "std::net::Udp",
        "TcpStream",
        "std::fs",
        "std::io::Read",
        "std::io::Write",
        "std::time",
        "Instant",
        "SystemTime",
        "std::thread",
        "async fn",
        ".await",
        "rand::",
        "getrandom",
    ];
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("src/proto exists") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        for word in forbidden {
            assert!(!text.contains(word), "{} mentions {word:?}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 6, "found only {checked} files in src/proto");
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            out.push(path);
        }
    }
}

/// `src/proto/` depends on nothing above it: no path out of `crate::proto`
/// (in code or doc links), so that its errors, types and texts are its own
/// and the layers above adapt them (the hints for administrators live there).
#[test]
fn proto_depends_on_nothing_above_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proto");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    assert!(files.len() >= 8, "found only {} files in src/proto", files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        let shown = path.display();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            let line = text[..at].lines().count().max(1);
            assert!(
                rest.starts_with("proto::") || rest.starts_with("proto;") || rest.starts_with("proto}"),
                "{shown}:{line} reaches out of crate::proto: {}",
                rest.lines().next().unwrap_or_default()
            );
        }
        assert!(
            !text.contains("super::super"),
            "{shown} climbs out of its module with super::super"
        );
        if path.file_name().and_then(|n| n.to_str()) == Some("mod.rs") && path.parent() == Some(dir.as_path())
        {
            // `super` of `proto` itself is the crate root.
            assert!(
                !text.contains("super::"),
                "{shown} reaches the crate root through super::"
            );
        }
    }
}
