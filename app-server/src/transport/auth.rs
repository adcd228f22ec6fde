//! Authentication of WebSocket upgrades.
//!
//! The client presents `Authorization: Bearer <token>` on the HTTP upgrade
//! request; it is checked before the upgrade, so a client without a valid
//! token never gets a WebSocket. Two modes, named as the Codex app-server
//! names them:
//!
//! - `capability-token`: the token must equal the contents of a file
//!   (compared in constant time);
//! - `signed-bearer-token`: the token is a JWT signed with HS256 under a
//!   shared secret read from a file; `exp` is required, `nbf` honoured, and
//!   the issuer and audience checked when configured.
//!
//! Token and secret files must be private to their owner (no permission
//! bits for group or others), non-empty, and are read once at startup.
//! Neither the expected nor the presented token ever appears in a log line,
//! a span or an error message.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use subtle::ConstantTimeEq;

/// Shortest shared secret accepted for signed bearer tokens (HS256 wants
/// at least as many bytes as its hash output).
pub const MIN_SHARED_SECRET_BYTES: usize = 32;

/// Default allowance for clock differences when checking `exp` and `nbf`.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// How WebSocket upgrades are authenticated.
#[derive(Clone)]
pub enum WsAuth {
    /// No authentication: anyone who can connect may upgrade.
    None,
    /// The bearer token must equal this secret.
    CapabilityToken {
        /// The expected token, trimmed of surrounding whitespace.
        token: Vec<u8>,
    },
    /// The bearer token must be an HS256 JWT signed with the shared secret.
    SignedBearer {
        /// The key built from the shared secret.
        key: DecodingKey,
        /// What the claims must satisfy.
        validation: Box<Validation>,
    },
}

impl fmt::Debug for WsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.write_str(match self {
            WsAuth::None => "WsAuth::None",
            WsAuth::CapabilityToken { .. } => "WsAuth::CapabilityToken",
            WsAuth::SignedBearer { .. } => "WsAuth::SignedBearer",
        })
    }
}

/// Settings for signed bearer tokens.
#[derive(Clone, Debug)]
pub struct SignedBearerSettings {
    /// File holding the shared secret.
    pub secret_file: PathBuf,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of), when set.
    pub audience: Option<String>,
    /// Allowance for clock differences.
    pub max_clock_skew: Duration,
}

/// Why the authentication settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        /// Token or secret.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is empty (or only whitespace).
    #[error("{what} file {path} is empty")]
    Empty {
        /// Token or secret.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// Users other than the owner may read or write the file.
    #[error(
        "{what} file {path} is accessible to other users (mode {mode:o}); make it private with `chmod 600 {path}`"
    )]
    Permissions {
        /// Token or secret.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The shared secret is too short.
    #[error(
        "shared secret file {path} holds {len} bytes; signed bearer tokens need at least {MIN_SHARED_SECRET_BYTES}"
    )]
    SecretTooShort {
        /// The file.
        path: PathBuf,
        /// Its length after trimming.
        len: usize,
    },
}

/// Reads a private, non-empty secret file; returns its contents trimmed of
/// surrounding whitespace (a trailing newline from `echo` is common).
fn read_private_file(what: &'static str, path: &Path) -> Result<Vec<u8>, AuthConfigError> {
    let read_error = |source| AuthConfigError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuthConfigError::Permissions {
            what,
            path: path.to_owned(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(read_error)?;
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return Err(AuthConfigError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(trimmed.to_vec())
}

impl WsAuth {
    /// Capability-token authentication with the token in `path`.
    pub fn capability_token(path: &Path) -> Result<Self, AuthConfigError> {
        Ok(WsAuth::CapabilityToken {
            token: read_private_file("token", path)?,
        })
    }

    /// Signed-bearer-token authentication.
    pub fn signed_bearer(settings: &SignedBearerSettings) -> Result<Self, AuthConfigError> {
        let secret = read_private_file("shared secret", &settings.secret_file)?;
        if secret.len() < MIN_SHARED_SECRET_BYTES {
            return Err(AuthConfigError::SecretTooShort {
                path: settings.secret_file.clone(),
                len: secret.len(),
            });
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = settings.max_clock_skew.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &settings.audience {
            Some(aud) => validation.set_audience(&[aud]),
            // Without a configured audience, a token's `aud` is not checked.
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &settings.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(WsAuth::SignedBearer {
            key: DecodingKey::from_secret(&secret),
            validation: Box::new(validation),
        })
    }

    /// True when upgrades need a token.
    pub fn is_enabled(&self) -> bool {
        !matches!(self, WsAuth::None)
    }

    /// Checks the value of the upgrade request's `Authorization` header.
    /// On refusal, returns a one-line reason for the client, which never
    /// contains the token.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), &'static str> {
        if let WsAuth::None = self {
            return Ok(());
        }
        let Some(value) = authorization else {
            return Err("missing Authorization: Bearer token");
        };
        let token = match value.trim().split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err("the Authorization header must use the Bearer scheme"),
        };
        if token.is_empty() {
            return Err("missing Authorization: Bearer token");
        }
        match self {
            WsAuth::None => Ok(()),
            WsAuth::CapabilityToken { token: expected } => {
                if bool::from(token.as_bytes().ct_eq(expected)) {
                    Ok(())
                } else {
                    Err("invalid token")
                }
            }
            WsAuth::SignedBearer { key, validation } => {
                match jsonwebtoken::decode::<serde_json::Value>(token, key, validation) {
                    Ok(_) => Ok(()),
                    Err(err) => Err(match err.kind() {
                        ErrorKind::ExpiredSignature => "token expired",
                        ErrorKind::ImmatureSignature => "token not yet valid (nbf)",
                        ErrorKind::InvalidAudience => "token audience not accepted",
                        ErrorKind::InvalidIssuer => "token issuer not accepted",
                        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (exp)",
                        ErrorKind::InvalidSignature => "invalid token signature",
                        ErrorKind::InvalidAlgorithm => "token must be signed with HS256",
                        _ => "invalid token",
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn private_file(contents: &[u8], mode: u32) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(contents).expect("write");
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        file
    }

    #[test]
    fn capability_tokens_are_compared_exactly() {
        let file = private_file(b"s3cret-token\n", 0o600);
        let auth = WsAuth::capability_token(file.path()).expect("auth");
        assert_eq!(auth.check(Some("Bearer s3cret-token")), Ok(()));
        assert_eq!(auth.check(Some("bearer  s3cret-token ")), Ok(()));
        assert_eq!(auth.check(Some("Bearer s3cret-toke")), Err("invalid token"));
        assert_eq!(
            auth.check(Some("Bearer s3cret-token2")),
            Err("invalid token")
        );
        assert!(auth.check(Some("Basic s3cret-token")).is_err());
        assert!(auth.check(None).is_err());
    }

    #[test]
    fn token_files_must_be_private_and_non_empty() {
        let open = private_file(b"token", 0o644);
        let err = WsAuth::capability_token(open.path()).expect_err("group readable");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let empty = private_file(b" \n", 0o600);
        let err = WsAuth::capability_token(empty.path()).expect_err("empty");
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = WsAuth::capability_token(Path::new("/nonexistent/token")).expect_err("missing");
        assert!(err.to_string().contains("cannot read token file"), "{err}");
    }

    #[test]
    fn short_shared_secrets_are_refused() {
        let short = private_file(b"too-short", 0o600);
        let err = WsAuth::signed_bearer(&SignedBearerSettings {
            secret_file: short.path().to_owned(),
            issuer: None,
            audience: None,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
        })
        .expect_err("short secret");
        assert!(err.to_string().contains("at least 32"), "{err}");
    }
}
