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
