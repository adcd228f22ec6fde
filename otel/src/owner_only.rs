//! Directories and files only their owner can use: what Skein writes
//! (thread history, the trace store) is nobody else's business.
//!
//! Directories are created `0700` and files `0600`, set explicitly after
//! creation so that the umask can neither widen nor narrow them. Existing
//! directories are left as they are: `SKEIN_HOME` or `--trace-dir` may name
//! a directory the user shares on purpose.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

/// The mode of the directories Skein creates.
pub const DIR_MODE: u32 = 0o700;
/// The mode of the files Skein creates.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents, each owner-only. Directories that
/// exist already are left alone.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all(parent)?;
    }
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    match builder.create(dir) {
        Ok(()) => set_mode(dir, DIR_MODE),
        // Created by someone else meanwhile: theirs to set.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Options that create a file readable and writable by its owner only;
/// call [`restrict`] on the file once it is open, so that the umask cannot
/// narrow it either.
pub fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options
}

/// Makes an open file Skein created owner-only (`0600`) whatever the umask
/// did to it.
pub fn restrict(file: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if file.metadata()?.permissions().mode() & 0o777 != FILE_MODE {
            file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// Sets the permission bits of `path` to `mode` (nothing where there are
/// none).
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}
