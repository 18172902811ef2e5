//! File mode checks under a known umask.
//!
//! A test cannot set its own process's umask here (that needs `unsafe`
//! libc calls, and the crate forbids unsafe code), and the runner's umask
//! varies (022, 002, 077 …). So a mode test runs itself again in a child
//! process started by `sh -c 'umask 022; exec …'`: under 022, files created
//! without an explicit mode come out 0644 and directories 0755, so the
//! exact 0600/0700 the checks assert can only come from the code setting
//! them.

/// In the child (umask 022): `true`, run the checks. In the parent: runs
/// the test named `test` (its full path in the test binary) in the child,
/// fails unless it passed, and returns `false`.
pub(crate) fn in_child_with_umask_022(test: &str) -> bool {
    const MARK: &str = "RELAYMAIL_TEST_UMASK_CHILD";
    if std::env::var_os(MARK).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"umask 022 && exec "$0" --exact "$1" --test-threads=1 --nocapture"#)
        .arg(exe)
        .arg(test)
        .env(MARK, "1")
        .output()
        .expect("sh runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "under umask 022: {report}");
    assert!(report.contains("1 passed"), "the child ran no test: {report}");
    false
}

/// A file's permission bits.
pub(crate) fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}
