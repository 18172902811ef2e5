//! Durable file replacement and private files, shared by the outbox spool
//! and the profile store.
//!
//! Spool files hold whole messages (password-reset links …) and the profile
//! store holds sealed settings: on unix, new files are created 0600 and new
//! directories 0700, whatever the process umask allows, and a replaced file
//! keeps the mode it had.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Options that create a file readable and writable by its owner only
/// (0600 on unix; the umask can only narrow it further).
pub(crate) fn private_file() -> OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = OpenOptions::new();
        options.mode(0o600);
        options
    }
    #[cfg(not(unix))]
    OpenOptions::new()
}

/// Creates `dir` and its missing parents, each private to its owner (0700
/// on unix); an existing directory is left as it is (see
/// [`make_private_dir`]).
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Takes group and other permissions away from an existing directory (on
/// unix; elsewhere nothing to do). A symbolic link, or anything but a
/// directory, is refused: nothing is changed through a link planted in
/// place of the directory.
pub(crate) fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a directory (a symbolic link is not followed)",
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode & !0o077))?;
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The permission bits of `target` when it exists (unix only).
fn existing_mode(target: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(target).ok().map(|m| m.permissions().mode() & 0o777)
    }
    #[cfg(not(unix))]
    {
        let _ = target;
        None
    }
}

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
///
/// The new file is created 0600 (on unix); when `target` exists, the new
/// file gets `target`'s permission bits instead, so replacing a file never
/// changes who may read it (a store an administrator set to 0600 stays
/// 0600, and nothing ever gets wider than it was).
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
        let mode = existing_mode(target);
        let mut f = private_file()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(fail("cannot create", tmp))?;
        #[cfg(unix)]
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(fail("cannot set the mode of", tmp))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
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
        sync_dir(dir).map_err(fail("cannot sync the directory", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Makes a rename or removal in `dir` durable: on unix, fsync of the
/// directory. Windows cannot open a directory as a `File` (and NTFS
/// journals its metadata), so there it does nothing.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
