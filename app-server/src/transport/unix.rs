//! The Unix domain socket a `unix://PATH` listener binds: WebSocket over
//! it is served by [`super::websocket`], as over TCP.
//!
//! No TCP port is open, and only the user's own processes can connect: the
//! socket file is made owner-only (`0600`, which Linux enforces on
//! `connect`), and the folders Skein creates for it are owner-only
//! (`0700`). A folder that exists already is left as it is (warned about
//! when others may use it), except the default one, `$SKEIN_HOME/run`,
//! which is Skein's own and made owner-only.
//!
//! A socket file left by a process that died is replaced; one a live
//! server still answers on is refused, naming the path. The file is removed
//! when the server stops (if it is still the one this process bound).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// The folder of the default socket, under `SKEIN_HOME`.
pub const DEFAULT_SOCKET_DIR: &str = "run";
/// The default socket's file name.
pub const DEFAULT_SOCKET_NAME: &str = "app-server.sock";

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum UnixBindError {
    /// The folder could not be created or made owner-only.
    #[error("cannot create the socket folder {dir}: {source}")]
    Dir {
        /// The folder.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another server answers on the socket.
    #[error(
        "another server is listening on unix://{path}: stop it, or choose another path (a socket file left by a process that died would be replaced)"
    )]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Something other than a socket is at the path.
    #[error("cannot listen on unix://{path}: the path exists and is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Binding, or making the socket owner-only, failed.
    #[error("cannot listen on unix://{path}: {source}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// A bound socket; dropping it removes the socket file, if it is still
/// the one bound here.
#[derive(Debug)]
pub struct BoundSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    /// Device and inode of the file bound.
    identity: (u64, u64),
}

impl BoundSocket {
    /// The listener (once).
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        // Another server may have replaced a file it found unanswered.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds `path` as described in the module's documentation. `default_dir`
/// is the folder of the default socket when `path` is that socket.
pub async fn bind(path: &Path, default_dir: bool) -> Result<BoundSocket, UnixBindError> {
    let bind_error = |source| UnixBindError::Bind {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let dir_error = |source| UnixBindError::Dir {
        dir: dir.clone(),
        source,
    };
    skein_otel::owner_only::create_dir_all(&dir).map_err(dir_error)?;
    let dir_mode = std::fs::metadata(&dir).map_err(dir_error)?.mode() & 0o777;
    if dir_mode & 0o077 != 0 {
        if default_dir {
            skein_otel::owner_only::set_mode(&dir, skein_otel::owner_only::DIR_MODE)
                .map_err(dir_error)?;
        } else {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{dir_mode:o}"),
                "the socket's folder is open to other users; the socket itself is owner-only, \
                 but an owner-only folder (mode 700) keeps others from replacing it"
            );
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(UnixBindError::InUse {
                    path: path.to_owned(),
                });
            }
            tracing::info!(path = %path.display(), "replacing a socket file no server answers on");
            std::fs::remove_file(path).map_err(bind_error)?;
        }
        Ok(_) => {
            return Err(UnixBindError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_error(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    skein_otel::owner_only::set_mode(path, skein_otel::owner_only::FILE_MODE)
        .map_err(bind_error)?;
    let meta = std::fs::symlink_metadata(path).map_err(bind_error)?;
    Ok(BoundSocket {
        listener: Some(listener),
        path: path.to_owned(),
        identity: (meta.dev(), meta.ino()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("s.sock");
        let mut first = bind(&path, false).await.expect("bind");
        let mode = std::fs::metadata(&path).expect("socket").mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(dir.path().join("sub"))
            .expect("dir")
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let err = bind(&path, false).await.expect_err("live");
        assert!(matches!(err, UnixBindError::InUse { .. }), "{err}");
        // The process "dies": its listener closes, the file stays.
        drop(first.take_listener());
        std::mem::forget(first);
        let second = bind(&path, false).await.expect("stale replaced");
        drop(second);
        assert!(!path.exists(), "removed on drop");
        std::fs::write(&path, "x").expect("file");
        let err = bind(&path, false).await.expect_err("not a socket");
        assert!(matches!(err, UnixBindError::NotASocket { .. }), "{err}");
    }
}
