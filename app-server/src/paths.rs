//! Where Skein keeps its files.

use std::path::PathBuf;

/// Why a path could not be resolved.
#[derive(Debug, thiserror::Error)]
#[error("neither SKEIN_HOME nor HOME is set; set SKEIN_HOME (or pass --trace-dir)")]
pub struct NoHomeError;

/// `$SKEIN_HOME`, defaulting to `~/.skein`.
pub fn skein_home() -> Result<PathBuf, NoHomeError> {
    if let Some(home) = std::env::var_os("SKEIN_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(NoHomeError)?;
    Ok(PathBuf::from(home).join(".skein"))
}

/// The local trace store directory: `dir` when given, else
/// `$SKEIN_HOME/traces`. (`SKEIN_TRACE_DIR` reaches here through the
/// command line's `env` fallback.)
pub fn trace_dir(dir: Option<&str>) -> Result<PathBuf, NoHomeError> {
    match dir {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => Ok(skein_home()?.join("traces")),
    }
}
