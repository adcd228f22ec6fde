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
//!   the issuer and audience, when configured, required and checked. A
//!   token with a `crit` header is refused: Skein understands no extension
//!   (RFC 7515 §4.1.11).
//!
//! `jsonwebtoken` checks the signature and the algorithm only; the claims
//! are checked here, because it lets a configured `iss` or `aud` pass when
//! the claim is missing or not a string, and computes `now - leeway` in
//! unsigned arithmetic.
//!
//! Token and secret files must be private to their owner (no permission
//! bits for group or others), non-empty, and are read once at startup.
//! Neither the expected nor the presented token ever appears in a log line,
//! a span or an error message.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// Why a `--ws-token-sha256` value is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "expected the token's SHA-256 digest as 64 hexadecimal digits (e.g. from `printf %s \"$TOKEN\" | sha256sum`), got {0}"
)]
pub struct TokenDigestError(String);

/// The 32 bytes of a SHA-256 digest written as 64 hexadecimal digits.
pub fn parse_sha256_hex(hex: &str) -> Result<[u8; 32], TokenDigestError> {
    let hex = hex.trim();
    let refuse = |what: String| TokenDigestError(what);
    if hex.len() != 64 {
        return Err(refuse(format!("{} characters", hex.chars().count())));
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            // Both below 16: the byte fits.
            (Some(high), Some(low)) => *byte = (high * 16 + low) as u8,
            _ => return Err(refuse("a character that is not a hexadecimal digit".into())),
        }
    }
    Ok(digest)
}

/// Shortest shared secret accepted for signed bearer tokens (HS256 wants
/// at least as many bytes as its hash output).
pub const MIN_SHARED_SECRET_BYTES: usize = 32;

/// Default allowance for clock differences when checking `exp` and `nbf`.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// Largest allowance for clock differences: a day. Clocks further apart
/// are broken, and a larger allowance would accept long-expired tokens.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(86_400);

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
    /// The bearer token's SHA-256 digest must equal this one
    /// (`--ws-token-sha256`).
    CapabilityTokenDigest {
        /// The expected digest.
        digest: [u8; 32],
    },
    /// The bearer token must be an HS256 JWT signed with the shared secret.
    SignedBearer {
        /// The key built from the shared secret.
        key: DecodingKey,
        /// The signature check (`jsonwebtoken` checks no claim).
        validation: Box<Validation>,
        /// What the claims must satisfy.
        claims: ClaimRules,
    },
}

/// What the claims of a signed bearer token must satisfy.
#[derive(Clone, Debug)]
pub struct ClaimRules {
    /// The `iss` required, when set.
    issuer: Option<String>,
    /// The audience that `aud` must name, when set.
    audience: Option<String>,
    /// Allowance for clock differences, in seconds (at most a day).
    leeway_secs: u64,
}

impl ClaimRules {
    /// Checks `claims` at Unix time `now` (seconds). On refusal, returns
    /// a one-line reason for the client.
    pub fn check(&self, claims: &Map<String, Value>, now: u64) -> Result<(), &'static str> {
        let exp = match claims.get("exp") {
            None | Some(Value::Null) => return Err("token lacks a required claim (exp)"),
            Some(exp) => numeric_date(exp).ok_or("token claim exp is not a NumericDate")?,
        };
        // Without underflow: `exp + leeway < now`, not `exp < now - leeway`.
        if exp.saturating_add(self.leeway_secs) < now {
            return Err("token expired");
        }
        match claims.get("nbf") {
            None | Some(Value::Null) => {}
            Some(nbf) => {
                let nbf = numeric_date(nbf).ok_or("token claim nbf is not a NumericDate")?;
                if nbf > now.saturating_add(self.leeway_secs) {
                    return Err("token not yet valid (nbf)");
                }
            }
        }
        if let Some(issuer) = &self.issuer {
            // One string, equal: an array is not an issuer (RFC 7519 §4.1.1).
            match claims.get("iss") {
                None | Some(Value::Null) => return Err("token lacks a required claim (iss)"),
                Some(Value::String(iss)) if iss == issuer => {}
                Some(_) => return Err("token issuer not accepted"),
            }
        }
        if let Some(audience) = &self.audience {
            // A string, or an array of strings, naming this audience
            // (RFC 7519 §4.1.3).
            let named = match claims.get("aud") {
                None | Some(Value::Null) => return Err("token lacks a required claim (aud)"),
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => {
                    auds.iter().all(Value::is_string)
                        && auds.iter().any(|aud| aud.as_str() == Some(audience))
                }
                Some(_) => false,
            };
            if !named {
                return Err("token audience not accepted");
            }
        }
        Ok(())
    }
}

/// A JWT NumericDate (RFC 7519 §2): seconds since the epoch, which may
/// have a fraction (dropped here); `None` when it is not one.
fn numeric_date(value: &Value) -> Option<u64> {
    if let Some(secs) = value.as_u64() {
        return Some(secs);
    }
    let secs = value.as_f64()?;
    // Saturates above u64::MAX; a negative or fractional-negative number
    // is not a date after the epoch.
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}

/// The current Unix time in seconds (0 for a clock before 1970).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl fmt::Debug for WsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.write_str(match self {
            WsAuth::None => "WsAuth::None",
            WsAuth::CapabilityToken { .. } => "WsAuth::CapabilityToken",
            WsAuth::CapabilityTokenDigest { .. } => "WsAuth::CapabilityTokenDigest",
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
    /// Allowance for clock differences: at most [`MAX_CLOCK_SKEW`].
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
    /// The clock skew allowance is beyond [`MAX_CLOCK_SKEW`].
    #[error(
        "--ws-max-clock-skew-seconds {secs} is too large: at most {} (a day)",
        MAX_CLOCK_SKEW.as_secs()
    )]
    ClockSkewTooLarge {
        /// The allowance asked for, in seconds.
        secs: u64,
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
        if settings.max_clock_skew > MAX_CLOCK_SKEW {
            return Err(AuthConfigError::ClockSkewTooLarge {
                secs: settings.max_clock_skew.as_secs(),
            });
        }
        // The signature and the algorithm only: the claims are checked by
        // `ClaimRules`.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // Without a configured audience, a token's `aud` is not checked.
        validation.validate_aud = false;
        validation.set_required_spec_claims::<&str>(&[]);
        Ok(WsAuth::SignedBearer {
            key: DecodingKey::from_secret(&secret),
            validation: Box::new(validation),
            claims: ClaimRules {
                issuer: settings.issuer.clone(),
                audience: settings.audience.clone(),
                leeway_secs: settings.max_clock_skew.as_secs(),
            },
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
            WsAuth::CapabilityTokenDigest { digest } => {
                let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                if bool::from(given.ct_eq(digest)) {
                    Ok(())
                } else {
                    Err("invalid token")
                }
            }
            WsAuth::SignedBearer {
                key,
                validation,
                claims,
            } => {
                let token = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
                    .map_err(|err| match err.kind() {
                        ErrorKind::InvalidSignature => "invalid token signature",
                        ErrorKind::InvalidAlgorithm => "token must be signed with HS256",
                        _ => "invalid token",
                    })?;
                // RFC 7515 §4.1.11: extensions a recipient does not
                // understand make the token invalid; Skein understands none.
                if token.header.crit.is_some() {
                    return Err("token has a crit header; no extension is supported");
                }
                claims.check(&token.claims, unix_now())
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
    fn token_digests_are_64_hex_digits_and_match_only_their_token() {
        // Any 64 hex digits parse.
        let hex = "8c0e0ad3a0e4e5c8e8a5c8e0b0f7ee2b6e0f6f3bd1e8e4d0d1f7a2b56a3c9d10";
        assert!(parse_sha256_hex(hex).is_ok());
        assert!(parse_sha256_hex(&hex.to_uppercase()).is_ok());
        assert!(parse_sha256_hex(&hex[1..]).is_err());
        assert!(parse_sha256_hex(&format!("{}g", &hex[1..])).is_err());
        let digest: [u8; 32] = Sha256::digest(b"s3cret-token").into();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let auth = WsAuth::CapabilityTokenDigest {
            digest: parse_sha256_hex(&hex).expect("digest"),
        };
        assert_eq!(auth.check(Some("Bearer s3cret-token")), Ok(()));
        assert_eq!(
            auth.check(Some("Bearer s3cret-tokeN")),
            Err("invalid token")
        );
        assert_eq!(
            auth.check(Some(&format!("Bearer {hex}"))),
            Err("invalid token")
        );
        assert!(!format!("{auth:?}").contains(&hex[..8]));
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

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-shared";

    /// Signed-bearer authentication requiring `iss` "skein-tests" and
    /// `aud` "skein", with `skew` allowed for clock differences.
    fn signed_bearer(skew: Duration) -> (WsAuth, tempfile::NamedTempFile) {
        let secret = private_file(SECRET, 0o600);
        let auth = WsAuth::signed_bearer(&SignedBearerSettings {
            secret_file: secret.path().to_owned(),
            issuer: Some("skein-tests".into()),
            audience: Some("skein".into()),
            max_clock_skew: skew,
        })
        .expect("auth");
        (auth, secret)
    }

    /// A token with `header` and `claims`, signed with [`SECRET`].
    fn token_with(header: &jsonwebtoken::Header, claims: &Value) -> String {
        let token = jsonwebtoken::encode(
            header,
            claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .expect("sign");
        format!("Bearer {token}")
    }

    fn token(claims: &Value) -> String {
        token_with(&jsonwebtoken::Header::new(Algorithm::HS256), claims)
    }

    /// Valid claims with `changes` applied (a `null` removes a claim).
    fn claims(changes: Value) -> Value {
        let mut claims = serde_json::json!({
            "iss": "skein-tests",
            "aud": "skein",
            "exp": unix_now() + 3600,
        });
        for (key, value) in changes.as_object().expect("object") {
            if value.is_null() {
                claims.as_object_mut().expect("object").remove(key);
            } else {
                claims[key] = value.clone();
            }
        }
        claims
    }

    #[test]
    fn a_configured_issuer_and_audience_are_required_and_must_match() {
        use serde_json::json;
        let (auth, _secret) = signed_bearer(DEFAULT_MAX_CLOCK_SKEW);
        for accepted in [
            claims(json!({})),
            claims(json!({"aud": ["other", "skein"]})),
            claims(json!({"aud": ["skein"]})),
        ] {
            assert_eq!(auth.check(Some(&token(&accepted))), Ok(()), "{accepted}");
        }
        for (refused, reason) in [
            (
                claims(json!({"iss": null})),
                "token lacks a required claim (iss)",
            ),
            (
                json!({"iss": null, "aud": "skein", "exp": unix_now() + 60}),
                "token lacks a required claim (iss)",
            ),
            (claims(json!({"iss": 7})), "token issuer not accepted"),
            (
                claims(json!({"iss": ["skein-tests"]})),
                "token issuer not accepted",
            ),
            (
                claims(json!({"iss": "skein-test"})),
                "token issuer not accepted",
            ),
            (
                claims(json!({"aud": null})),
                "token lacks a required claim (aud)",
            ),
            (
                json!({"iss": "skein-tests", "aud": null, "exp": unix_now() + 60}),
                "token lacks a required claim (aud)",
            ),
            (claims(json!({"aud": 7})), "token audience not accepted"),
            (claims(json!({"aud": []})), "token audience not accepted"),
            (
                claims(json!({"aud": ["other"]})),
                "token audience not accepted",
            ),
            (
                claims(json!({"aud": ["skein", 7]})),
                "token audience not accepted",
            ),
            (
                claims(json!({"aud": {"skein": true}})),
                "token audience not accepted",
            ),
            (
                claims(json!({"exp": null})),
                "token lacks a required claim (exp)",
            ),
            (
                claims(json!({"exp": "soon"})),
                "token claim exp is not a NumericDate",
            ),
            (
                claims(json!({"nbf": -1})),
                "token claim nbf is not a NumericDate",
            ),
        ] {
            assert_eq!(auth.check(Some(&token(&refused))), Err(reason), "{refused}");
        }
    }

    #[test]
    fn a_token_with_a_crit_header_is_refused() {
        let (auth, _secret) = signed_bearer(DEFAULT_MAX_CLOCK_SKEW);
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".into()]);
        let valid = claims(serde_json::json!({}));
        assert_eq!(
            auth.check(Some(&token_with(&header, &valid))),
            Err("token has a crit header; no extension is supported")
        );
        header.crit = Some(Vec::new());
        assert!(auth.check(Some(&token_with(&header, &valid))).is_err());
    }

    #[test]
    fn without_an_issuer_or_audience_configured_neither_is_checked() {
        let secret = private_file(SECRET, 0o600);
        let auth = WsAuth::signed_bearer(&SignedBearerSettings {
            secret_file: secret.path().to_owned(),
            issuer: None,
            audience: None,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
        })
        .expect("auth");
        let claims = serde_json::json!({"iss": 7, "aud": ["x"], "exp": unix_now() + 60});
        assert_eq!(auth.check(Some(&token(&claims))), Ok(()));
    }

    #[test]
    fn the_clock_skew_is_at_most_a_day() {
        let secret = private_file(SECRET, 0o600);
        for secs in [86_401, 2_000_000_000, u64::MAX] {
            let err = WsAuth::signed_bearer(&SignedBearerSettings {
                secret_file: secret.path().to_owned(),
                issuer: None,
                audience: None,
                max_clock_skew: Duration::from_secs(secs),
            })
            .expect_err("skew beyond a day");
            assert!(err.to_string().contains("at most 86400"), "{err}");
        }
        // At the bound: a token expired within a day passes, one expired
        // 40 years ago does not.
        let (auth, _secret) = signed_bearer(MAX_CLOCK_SKEW);
        let now = unix_now();
        let within = claims(serde_json::json!({"exp": now - 3600, "nbf": now + 3600}));
        assert_eq!(auth.check(Some(&token(&within))), Ok(()));
        for (refused, reason) in [
            (claims(serde_json::json!({"exp": 1})), "token expired"),
            (
                claims(serde_json::json!({"exp": now - 86_401})),
                "token expired",
            ),
            (
                claims(serde_json::json!({"nbf": now + 86_401})),
                "token not yet valid (nbf)",
            ),
        ] {
            assert_eq!(auth.check(Some(&token(&refused))), Err(reason), "{refused}");
        }
    }

    #[test]
    fn time_checks_do_not_underflow_or_overflow() {
        let rules = ClaimRules {
            issuer: None,
            audience: None,
            leeway_secs: MAX_CLOCK_SKEW.as_secs(),
        };
        let claims = |value: Value| value.as_object().expect("object").clone();
        // A clock before the allowance (or before 1970: now = 0).
        for now in [0, 10] {
            assert_eq!(
                rules.check(&claims(serde_json::json!({"exp": 0})), now),
                Ok(())
            );
        }
        assert_eq!(
            rules.check(&claims(serde_json::json!({"exp": 0})), 86_401),
            Err("token expired")
        );
        // Dates at the end of time, and fractional ones.
        assert_eq!(
            rules.check(
                &claims(serde_json::json!({"exp": u64::MAX, "nbf": 0})),
                u64::MAX
            ),
            Ok(())
        );
        assert_eq!(
            rules.check(&claims(serde_json::json!({"exp": 1e30, "nbf": 1.5})), 5),
            Ok(())
        );
        assert_eq!(
            rules.check(&claims(serde_json::json!({"exp": 100.9})), 86_500),
            Ok(())
        );
        assert_eq!(
            rules.check(&claims(serde_json::json!({"exp": 100.9})), 86_501),
            Err("token expired")
        );
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
