//! Durable file replacement, shared by the outbox spool and the profile
//! store.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Which step of [`write_atomic`] failed, and on which path.
pub(crate) struct AtomicWriteError {
    pub(crate) step: &'static str,
    pub(crate) path: PathBuf,
    pub(crate) error: std::io::Error,
}

/// Writes `bytes` to a new file `tmp`, fsyncs it, renames it over `target`
/// and fsyncs `target`'s directory: after `Ok`, `target` holds `bytes`
/// whatever happens next; after an error, `target` is untouched and `tmp`
/// is removed. With `modified`, the file gets that modification time.
pub(crate) fn write_atomic(
    tmp: &Path,
    target: &Path,
    bytes: &[u8],
    modified: Option<SystemTime>,
) -> Result<(), AtomicWriteError> {
    fn fail(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AtomicWriteError {
        let path = path.to_owned();
        move |error| AtomicWriteError { step, path, error }
    }
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(fail("cannot create", tmp))?;
        f.write_all(bytes).map_err(fail("cannot write", tmp))?;
        if let Some(t) = modified {
            f.set_modified(t).map_err(fail("cannot set the time of", tmp))?;
        }
        f.sync_all().map_err(fail("cannot sync", tmp))?;
        fs::rename(tmp, target).map_err(fail("cannot replace", target))?;
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail("cannot sync the directory", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}
