//! How one OTLP exporter reaches its collector: TLS (trusted CA, client
//! certificate), `INSECURE` for gRPC, and the export timeout.
//!
//! opentelemetry-otlp reads none of the spec's certificate variables, so
//! they are resolved here, per signal, and the exporter is handed a ready
//! HTTP client (reqwest with rustls) or tonic TLS configuration:
//!
//! - `OTEL_EXPORTER_OTLP_CERTIFICATE`: PEM CA certificates to trust instead
//!   of the system trust store;
//! - `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and
//!   `OTEL_EXPORTER_OTLP_CLIENT_KEY`: a PEM certificate chain and its key,
//!   for collectors that require mutual TLS;
//! - `OTEL_EXPORTER_OTLP_INSECURE`: for gRPC, `true` means plaintext for an
//!   endpoint given without a scheme (without it such an endpoint gets
//!   TLS); `http://` is always plaintext, `https://` always TLS;
//! - `OTEL_EXPORTER_OTLP_TIMEOUT`: milliseconds per export (default 10 s).
//!
//! The endpoint and headers variables, which the exporter reads itself,
//! are checked here too: an endpoint whose scheme is not `http` or
//! `https`, a `HEADERS` list with an item that is not `key=value` (a
//! header name, a percent-encoded value) and a timeout of 0 stop startup
//! with a message naming the variable, where the exporter would ignore
//! them or fail every export.
//!
//! Each also exists per signal (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`,
//! `OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY`...), which wins over the generic
//! one. Every file is read and checked when export is set up, so a missing
//! or unparsable file stops startup with a message naming the variable and
//! the file instead of failing each export later.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::export::OtlpProtocol;
use crate::w3c::is_token_byte;

/// The export timeout when no variable sets one (the spec's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC endpoint when neither a flag nor the environment names one.
const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";

const PREFIX: &str = "OTEL_EXPORTER_OTLP_";

/// An OTLP signal: each has its own exporter and its own variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Spans.
    Traces,
    /// Metrics.
    Metrics,
}

impl Signal {
    fn infix(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }

    /// The path an HTTP exporter of this signal posts to under a base
    /// endpoint.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// `base` with [`Signal::http_path`] appended (one `/` between them).
    pub fn http_url(self, base: &str) -> String {
        format!("{}{}", base.trim_end_matches('/'), self.http_path())
    }

    /// What this signal exports, as messages name it: `spans` or
    /// `metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "metrics",
        }
    }

    /// The signal-specific variable of `setting` (`CERTIFICATE`...), then
    /// the generic one: the order in which they are consulted.
    pub fn vars(self, setting: &str) -> [String; 2] {
        [
            format!("{PREFIX}{}_{setting}", self.infix()),
            format!("{PREFIX}{setting}"),
        ]
    }
}

/// A connection setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// A file named by a variable could not be read.
    #[error("{var}: cannot read {}: {error}", path.display())]
    Read {
        /// The variable naming the file.
        var: String,
        /// The file.
        path: PathBuf,
        /// Why (in the message, so not also a source).
        error: std::io::Error,
    },
    /// A certificate file holds no usable PEM certificate.
    #[error("{var}: {} is not a PEM certificate file: {reason}", path.display())]
    Certificate {
        /// The variable naming the file.
        var: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A key file holds no usable PEM private key.
    #[error("{var}: {} is not a PEM private key file: {reason}", path.display())]
    Key {
        /// The variable naming the file.
        var: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A client certificate without its key, or a key without its
    /// certificate.
    #[error(
        "{set} is set but {missing} is not: mutual TLS needs both the client certificate and its key"
    )]
    Unpaired {
        /// The variable that is set.
        set: String,
        /// The variables of which one should be set too.
        missing: String,
    },
    /// The client key does not belong to the client certificate.
    #[error(
        "{key_var}: the key in {} does not belong to the certificate in {} ({cert_var}): {reason}",
        key_path.display(),
        cert_path.display()
    )]
    Mismatch {
        /// The certificate's variable.
        cert_var: String,
        /// The certificate file.
        cert_path: PathBuf,
        /// The key's variable.
        key_var: String,
        /// The key file.
        key_path: PathBuf,
        /// Why they do not match.
        reason: String,
    },
    /// An `INSECURE` variable that is neither `true` nor `false`.
    #[error("{var}={value:?}: expected true or false")]
    Insecure {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
    },
    /// A `TIMEOUT` variable that is not a number of milliseconds above 0.
    #[error("{var}={value:?}: expected a whole number of milliseconds, more than 0")]
    Timeout {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
    },
    /// An endpoint whose scheme is neither `http` nor `https`.
    #[error("{var}={value:?}: an OTLP endpoint must be an http:// or https:// URL")]
    Endpoint {
        /// The variable (or flag) naming the endpoint.
        var: String,
        /// Its value.
        value: String,
    },
    /// A `HEADERS` variable that is not a list of `key=value` items. The
    /// values are never shown: they often hold credentials.
    #[error(
        "{var}: item {item} {reason}; expected comma-separated key=value items with percent-encoded values"
    )]
    Headers {
        /// The variable.
        var: String,
        /// The 1-based position of the bad item.
        item: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The HTTP client could not be built with these settings.
    #[error("cannot build the OTLP HTTP client ({signal:?}): {reason}")]
    HttpClient {
        /// The signal whose client it is.
        signal: Signal,
        /// Why.
        reason: String,
    },
}

/// A setting and the variable it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Setting {
    var: String,
    value: String,
}

/// Looks a variable up; `None` when unset (or blank).
type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn setting(env: Lookup<'_>, signal: Signal, name: &str) -> Option<Setting> {
    signal.vars(name).into_iter().find_map(|var| {
        env(&var)
            .filter(|value| !value.trim().is_empty())
            .map(|value| Setting { var, value })
    })
}

/// A PEM file named by a variable, read and checked. `Debug` shows the
/// variable and the path, never the contents (it may be a private key).
#[derive(Clone)]
struct PemFile {
    var: String,
    path: PathBuf,
    pem: Vec<u8>,
}

impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.var, self.path.display())
    }
}

impl PemFile {
    fn read(setting: Setting) -> Result<Self, ConnectionError> {
        let path = PathBuf::from(setting.value);
        match std::fs::read(&path) {
            Ok(pem) => Ok(Self {
                var: setting.var,
                path,
                pem,
            }),
            Err(error) => Err(ConnectionError::Read {
                var: setting.var,
                path,
                error,
            }),
        }
    }

    fn certificate_error(&self, reason: impl Into<String>) -> ConnectionError {
        ConnectionError::Certificate {
            var: self.var.clone(),
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn key_error(&self, reason: impl Into<String>) -> ConnectionError {
        ConnectionError::Key {
            var: self.var.clone(),
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Every certificate of the file, each checked to parse as X.509; at
    /// least one.
    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, ConnectionError> {
        let certs = CertificateDer::pem_slice_iter(&self.pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.certificate_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(self.certificate_error("it holds no CERTIFICATE section"));
        }
        for (index, cert) in certs.iter().enumerate() {
            // Parsing as a trust anchor checks the certificate's structure.
            rustls::RootCertStore::empty()
                .add(cert.clone())
                .map_err(|e| {
                    let detail = match e {
                        rustls::Error::InvalidCertificate(reason) => format!("{reason:?}"),
                        other => other.to_string(),
                    };
                    self.certificate_error(format!(
                        "certificate {} does not parse as X.509 ({detail})",
                        index + 1
                    ))
                })?;
        }
        Ok(certs)
    }

    /// The file's (first) private key.
    fn private_key(&self) -> Result<PrivateKeyDer<'static>, ConnectionError> {
        PrivateKeyDer::from_pem_slice(&self.pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                self.key_error("it holds no PRIVATE KEY section")
            }
            other => self.key_error(other.to_string()),
        })
    }
}

/// A client certificate chain and its key, checked to belong together.
#[derive(Clone, Debug)]
struct ClientIdentity {
    cert: PemFile,
    key: PemFile,
}

impl ClientIdentity {
    fn resolve(env: Lookup<'_>, signal: Signal) -> Result<Option<Self>, ConnectionError> {
        let cert = setting(env, signal, "CLIENT_CERTIFICATE");
        let key = setting(env, signal, "CLIENT_KEY");
        let either = |name: &str| signal.vars(name).join(" or ");
        let (cert, key) = match (cert, key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (PemFile::read(cert)?, PemFile::read(key)?),
            (Some(cert), None) => {
                return Err(ConnectionError::Unpaired {
                    set: cert.var,
                    missing: either("CLIENT_KEY"),
                });
            }
            (None, Some(key)) => {
                return Err(ConnectionError::Unpaired {
                    set: key.var,
                    missing: either("CLIENT_CERTIFICATE"),
                });
            }
        };
        let chain = cert.certificates()?;
        let private_key = key.private_key()?;
        let provider = crypto_provider();
        let signing_key = provider
            .key_provider
            .load_private_key(private_key)
            .map_err(|e| key.key_error(e.to_string()))?;
        match CertifiedKey::new(chain, signing_key).keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => {
                return Err(ConnectionError::Mismatch {
                    cert_var: cert.var,
                    cert_path: cert.path,
                    key_var: key.var,
                    key_path: key.path,
                    reason: e.to_string(),
                });
            }
        }
        Ok(Some(Self { cert, key }))
    }

    /// The certificate chain followed by the key, as reqwest wants them.
    fn combined_pem(&self) -> Vec<u8> {
        let mut pem = self.cert.pem.clone();
        pem.push(b'\n');
        pem.extend_from_slice(&self.key.pem);
        pem
    }
}

/// The crypto provider rustls uses in this process: the installed default
/// (the binary installs ring at startup), else ring.
fn crypto_provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// How one signal's exporter connects to its collector.
#[derive(Clone, Debug)]
pub struct Connection {
    signal: Signal,
    /// CA certificates to trust instead of the system trust store.
    ca: Option<(PemFile, Vec<CertificateDer<'static>>)>,
    identity: Option<ClientIdentity>,
    /// `INSECURE`: plaintext gRPC for an endpoint without a scheme.
    insecure: bool,
    /// The endpoint from the environment (signal-specific, else generic).
    env_endpoint: Option<String>,
    /// Whether that endpoint came from the signal-specific variable.
    env_endpoint_is_signal: bool,
    timeout: Duration,
}

impl Connection {
    /// The settings of `signal` from the process environment, files read
    /// and checked.
    pub fn from_env(signal: Signal) -> Result<Self, ConnectionError> {
        Self::resolve(signal, &|name| std::env::var(name).ok())
    }

    fn resolve(signal: Signal, env: Lookup<'_>) -> Result<Self, ConnectionError> {
        let ca = match setting(env, signal, "CERTIFICATE") {
            Some(setting) => {
                let file = PemFile::read(setting)?;
                let certs = file.certificates()?;
                Some((file, certs))
            }
            None => None,
        };
        let identity = ClientIdentity::resolve(env, signal)?;
        let insecure = match setting(env, signal, "INSECURE") {
            None => false,
            Some(Setting { var, value }) => match value.trim() {
                v if v.eq_ignore_ascii_case("true") => true,
                v if v.eq_ignore_ascii_case("false") => false,
                _ => return Err(ConnectionError::Insecure { var, value }),
            },
        };
        let timeout = match setting(env, signal, "TIMEOUT") {
            None => DEFAULT_TIMEOUT,
            Some(Setting { var, value }) => match value.trim().parse::<u64>() {
                Ok(millis) if millis > 0 => Duration::from_millis(millis),
                _ => return Err(ConnectionError::Timeout { var, value }),
            },
        };
        let env_endpoint = setting(env, signal, "ENDPOINT");
        if let Some(Setting { var, value }) = &env_endpoint {
            check_endpoint(var, value)?;
        }
        if let Some(Setting { var, value }) = setting(env, signal, "HEADERS") {
            check_headers(&var, &value)?;
        }
        Ok(Self {
            signal,
            ca,
            identity,
            insecure,
            env_endpoint_is_signal: env_endpoint
                .as_ref()
                .is_some_and(|s| s.var.contains(signal.infix())),
            env_endpoint: env_endpoint.map(|s| s.value),
            timeout,
        })
    }

    /// The signal these settings are for.
    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// The export timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The endpoint an exporter of `protocol` sends to, as the exporter
    /// resolves it (for messages), with the flag endpoint `flag` when one
    /// is given: [`Connection::grpc_endpoint`] for gRPC, else the HTTP URL.
    pub fn endpoint(&self, protocol: OtlpProtocol, flag: Option<&str>) -> String {
        match protocol {
            OtlpProtocol::Grpc => self.grpc_endpoint(flag),
            OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => self.http_endpoint(flag),
        }
    }

    /// The URL an HTTP exporter posts to: `flag` with the signal's path
    /// (`/v1/traces`) appended, else the signal's variable as given, else
    /// the generic one with the path, else the default
    /// `http://localhost:4318` with the path.
    fn http_endpoint(&self, flag: Option<&str>) -> String {
        match (flag, &self.env_endpoint) {
            (Some(flag), _) => self.signal.http_url(flag),
            (None, Some(env)) if self.env_endpoint_is_signal => env.clone(),
            (None, Some(env)) => self.signal.http_url(env),
            (None, None) => self.signal.http_url("http://localhost:4318"),
        }
    }

    /// The gRPC endpoint: `flag`, else the environment's, else
    /// `http://localhost:4317`; one without a scheme gets `http://` when
    /// `INSECURE` is true and `https://` otherwise.
    pub fn grpc_endpoint(&self, flag: Option<&str>) -> String {
        let endpoint = flag
            .or(self.env_endpoint.as_deref())
            .unwrap_or(DEFAULT_GRPC_ENDPOINT);
        if has_scheme(endpoint) {
            endpoint.to_owned()
        } else if self.insecure {
            format!("http://{endpoint}")
        } else {
            format!("https://{endpoint}")
        }
    }

    /// The tonic TLS configuration for an `https://` gRPC endpoint: the CA
    /// file's certificates, else the system trust store; the client
    /// certificate when one is set.
    pub fn grpc_tls(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new();
        let config = match &self.ca {
            Some((file, _)) => config.ca_certificate(Certificate::from_pem(&file.pem)),
            None => config.with_native_roots(),
        };
        match &self.identity {
            Some(identity) => {
                config.identity(Identity::from_pem(&identity.cert.pem, &identity.key.pem))
            }
            None => config,
        }
    }

    /// The HTTP client for the HTTP protocols: reqwest (blocking, as the
    /// batch processor's thread calls it) with rustls, trusting the CA file
    /// alone when one is set and the platform's trust store otherwise,
    /// presenting the client certificate when one is set, and giving up on
    /// a request after the export timeout.
    pub fn http_client(&self) -> Result<reqwest::blocking::Client, ConnectionError> {
        let failed = |reason: String| ConnectionError::HttpClient {
            signal: self.signal,
            reason,
        };
        // reqwest takes the process's default provider; the binary installs
        // one at startup, this covers any other caller.
        if CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut builder = reqwest::blocking::Client::builder().timeout(self.timeout);
        if let Some((file, certs)) = &self.ca {
            let roots = certs
                .iter()
                .map(|der| reqwest::Certificate::from_der(der))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file.certificate_error(error_chain(&e)))?;
            builder = builder.tls_certs_only(roots);
        }
        if let Some(identity) = &self.identity {
            let id = reqwest::Identity::from_pem(&identity.combined_pem()).map_err(|e| {
                failed(format!(
                    "{} with {}: {}",
                    identity.cert.var,
                    identity.key.var,
                    error_chain(&e)
                ))
            })?;
            builder = builder.identity(id);
        }
        // The blocking client must not be built inside an async runtime.
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("skein-otlp-http-client".into())
                .spawn_scoped(scope, || builder.build())
                .map_err(|e| failed(format!("cannot start a thread: {e}")))?
                .join()
                .map_err(|_| failed("building the client panicked".into()))?
                .map_err(|e| failed(error_chain(&e)))
        })
    }
}

/// Whether `endpoint` starts with a scheme (`://` before any path, query
/// or fragment delimiter).
fn has_scheme(endpoint: &str) -> bool {
    endpoint
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.is_empty() && !scheme.contains(['/', '?', '#']))
}

/// Refuses an endpoint with a scheme other than `http` or `https` (one
/// without a scheme is left to the protocol's rules); `var` names where it
/// came from.
pub fn check_endpoint(var: &str, endpoint: &str) -> Result<(), ConnectionError> {
    let scheme = endpoint.trim().split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some(scheme)
            if has_scheme(endpoint.trim())
                && !scheme.eq_ignore_ascii_case("http")
                && !scheme.eq_ignore_ascii_case("https") =>
        {
            Err(ConnectionError::Endpoint {
                var: var.to_owned(),
                value: endpoint.to_owned(),
            })
        }
        _ => Ok(()),
    }
}

/// Checks a `HEADERS` value: comma-separated `key=value` items (blank
/// items are skipped), each key an HTTP header name, each value
/// percent-encoded and, decoded, a valid header value.
fn check_headers(var: &str, value: &str) -> Result<(), ConnectionError> {
    let items = value.split(',').map(str::trim).filter(|i| !i.is_empty());
    for (index, item) in items.enumerate() {
        let error = |reason| ConnectionError::Headers {
            var: var.to_owned(),
            item: index + 1,
            reason,
        };
        let Some((key, encoded)) = item.split_once('=') else {
            return Err(error("has no '='"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(error("has an empty key"));
        }
        if !key.bytes().all(is_token_byte) {
            return Err(error("has a key that is not an HTTP header name"));
        }
        let decoded = percent_decode(encoded.trim()).ok_or_else(|| error("has a bad %-escape"))?;
        if decoded.is_empty() {
            return Err(error("has an empty value"));
        }
        if decoded
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(error("has a value with a control character"));
        }
    }
    Ok(())
}

/// `%XX` escapes decoded; `None` for a `%` not followed by two hex digits.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// Whether `endpoint` is an `https://` URL.
pub fn is_https(endpoint: &str) -> bool {
    endpoint
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// An error and its sources, on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        move |name| map.get(name).map(|v| (*v).to_owned())
    }

    fn resolve(signal: Signal, vars: &[(&str, &str)]) -> Result<Connection, ConnectionError> {
        Connection::resolve(signal, &env_of(vars))
    }

    #[test]
    fn signal_specific_variables_win_over_generic_ones() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2000"),
        ]);
        assert_eq!(
            setting(&env, Signal::Traces, "TIMEOUT"),
            Some(Setting {
                var: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT".into(),
                value: "2000".into()
            })
        );
        assert_eq!(
            setting(&env, Signal::Metrics, "TIMEOUT"),
            Some(Setting {
                var: "OTEL_EXPORTER_OTLP_TIMEOUT".into(),
                value: "1000".into()
            })
        );
        // A blank signal-specific value counts as unset.
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", " "),
        ]);
        assert_eq!(
            setting(&env, Signal::Metrics, "TIMEOUT").map(|s| s.value),
            Some("1000".into())
        );
    }

    #[test]
    fn timeout_defaults_to_ten_seconds_and_must_be_milliseconds() {
        assert_eq!(
            resolve(Signal::Traces, &[]).expect("no settings").timeout(),
            DEFAULT_TIMEOUT
        );
        let connection = resolve(Signal::Traces, &[("OTEL_EXPORTER_OTLP_TIMEOUT", "250")])
            .expect("a valid timeout");
        assert_eq!(connection.timeout(), Duration::from_millis(250));
        let err = resolve(
            Signal::Metrics,
            &[("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "5s")],
        )
        .expect_err("5s is not milliseconds");
        assert_eq!(
            err.to_string(),
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT=\"5s\": expected a whole number of milliseconds, more than 0"
        );
        let err = resolve(Signal::Traces, &[("OTEL_EXPORTER_OTLP_TIMEOUT", "0")])
            .expect_err("0 is no timeout");
        assert!(
            err.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_TIMEOUT=\"0\": "),
            "{err}"
        );
    }

    #[test]
    fn an_endpoint_must_be_http_or_https() {
        for ok in ["http://c:4318", "HTTPS://c:4318/", "collector:4317"] {
            resolve(Signal::Traces, &[("OTEL_EXPORTER_OTLP_ENDPOINT", ok)])
                .unwrap_or_else(|e| panic!("{ok} is accepted: {e}"));
        }
        let err = resolve(
            Signal::Metrics,
            &[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "ftp://c:21")],
        )
        .expect_err("ftp is refused");
        assert_eq!(
            err.to_string(),
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=\"ftp://c:21\": an OTLP endpoint must be an http:// or https:// URL"
        );
        assert!(check_endpoint("--otlp-endpoint", "unix:///tmp/s").is_err());
    }

    #[test]
    fn headers_must_be_key_value_items_and_values_are_never_shown() {
        let ok = "api-key=s3cret, x-team=a%20b,,";
        resolve(Signal::Traces, &[("OTEL_EXPORTER_OTLP_HEADERS", ok)]).expect("valid headers");
        for (bad, reason) in [
            ("api-key", "item 1 has no '='"),
            ("a=1,=2", "item 2 has an empty key"),
            (
                "bad key=s3cret",
                "item 1 has a key that is not an HTTP header name",
            ),
            ("a=s3cret%zz", "item 1 has a bad %-escape"),
            ("a=", "item 1 has an empty value"),
            (
                "a=s3cret%0d%0aX: y",
                "item 1 has a value with a control character",
            ),
        ] {
            let err = resolve(
                Signal::Traces,
                &[("OTEL_EXPORTER_OTLP_TRACES_HEADERS", bad)],
            )
            .expect_err("malformed headers");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("OTEL_EXPORTER_OTLP_TRACES_HEADERS: {reason};")),
                "{bad}: {text}"
            );
            assert!(!text.contains("s3cret"), "a value is shown: {text}");
        }
    }

    #[test]
    fn insecure_decides_the_scheme_of_a_grpc_endpoint_without_one() {
        let endpoint = |vars: &[(&str, &str)], flag: Option<&str>| {
            resolve(Signal::Traces, vars)
                .expect("valid settings")
                .grpc_endpoint(flag)
        };
        let bare = [("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")];
        assert_eq!(endpoint(&bare, None), "https://collector:4317");
        let insecure = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "TRUE"),
        ];
        assert_eq!(endpoint(&insecure, None), "http://collector:4317");
        // The signal-specific INSECURE wins.
        let specific = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
            ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "false"),
        ];
        assert_eq!(endpoint(&specific, None), "https://collector:4317");
        // A scheme always decides, whatever INSECURE says.
        assert_eq!(
            endpoint(&insecure, Some("https://collector:4317")),
            "https://collector:4317"
        );
        assert_eq!(
            endpoint(&[], Some("http://collector:4317")),
            "http://collector:4317"
        );
        // The flag wins over the environment; the signal's endpoint over
        // the generic one; the default is plaintext localhost.
        assert_eq!(
            endpoint(&bare, Some("https://other:4317")),
            "https://other:4317"
        );
        let both = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces:4317"),
        ];
        assert_eq!(endpoint(&both, None), "https://traces:4317");
        assert_eq!(endpoint(&[], None), "http://localhost:4317");
    }

    #[test]
    fn insecure_must_be_true_or_false() {
        let err = resolve(Signal::Traces, &[("OTEL_EXPORTER_OTLP_INSECURE", "yes")])
            .expect_err("yes is not a boolean");
        assert_eq!(
            err.to_string(),
            "OTEL_EXPORTER_OTLP_INSECURE=\"yes\": expected true or false"
        );
    }

    #[test]
    fn scheme_detection_ignores_separators_after_the_host() {
        assert!(has_scheme("https://collector:4317"));
        assert!(has_scheme("unix:///tmp/socket"));
        assert!(!has_scheme("collector:4317"));
        assert!(!has_scheme("collector:4317/path://x"));
        assert!(!has_scheme("://collector"));
        assert!(is_https("HTTPS://collector"));
        assert!(!is_https("http://collector"));
        assert!(!is_https("https:/"));
    }

    /// Writes `contents` to a file in `dir`, returns its path as text.
    fn file(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path.display().to_string()
    }

    #[test]
    fn a_missing_ca_file_is_an_error_naming_variable_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nowhere.pem").display().to_string();
        let err = resolve(
            Signal::Traces,
            &[("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &missing)],
        )
        .expect_err("the file does not exist");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: cannot read {missing}: "
            )),
            "{text}"
        );
    }

    #[test]
    fn garbage_in_certificate_and_key_files_is_an_error_naming_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = file(&dir, "text.pem", b"not a certificate at all\n");
        let err = resolve(
            Signal::Metrics,
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &text)],
        )
        .expect_err("no PEM section");
        assert_eq!(
            err.to_string(),
            format!(
                "OTEL_EXPORTER_OTLP_CERTIFICATE: {text} is not a PEM certificate file: it holds no CERTIFICATE section"
            )
        );

        // Well-formed PEM around bytes that are no X.509 certificate.
        let bogus = file(
            &dir,
            "bogus.pem",
            b"-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        );
        let err = resolve(
            Signal::Metrics,
            &[("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", &bogus)],
        )
        .expect_err("not a certificate");
        assert!(
            err.to_string().starts_with(&format!(
                "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE: {bogus} is not a PEM certificate file: \
                 certificate 1 does not parse as X.509 ("
            )),
            "{err}"
        );

        // A client key file without a key.
        let err = resolve(
            Signal::Traces,
            &[
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &bogus),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &text),
            ],
        )
        .expect_err("a bad client certificate");
        assert!(
            err.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: "),
            "{err}"
        );
    }

    #[test]
    fn a_client_certificate_without_its_key_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = file(&dir, "cert.pem", b"unused");
        let err = resolve(
            Signal::Traces,
            &[("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", &cert)],
        )
        .expect_err("no key");
        assert_eq!(
            err.to_string(),
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE is set but \
             OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY or OTEL_EXPORTER_OTLP_CLIENT_KEY is not: \
             mutual TLS needs both the client certificate and its key"
        );
        let err = resolve(Signal::Metrics, &[("OTEL_EXPORTER_OTLP_CLIENT_KEY", &cert)])
            .expect_err("no certificate");
        assert_eq!(
            err.to_string(),
            "OTEL_EXPORTER_OTLP_CLIENT_KEY is set but \
             OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE or OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE is not: \
             mutual TLS needs both the client certificate and its key"
        );
    }

    /// A CA and a client certificate it signed, as PEM text.
    struct Pki {
        ca_pem: String,
        client_pem: String,
        client_key_pem: String,
    }

    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let client_key = rcgen::KeyPair::generate().expect("client key");
        let client_cert = rcgen::CertificateParams::new(vec!["skein-client".to_owned()])
            .expect("params")
            .signed_by(&client_key, &issuer)
            .expect("client certificate");
        Pki {
            ca_pem: ca_cert.pem(),
            client_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    #[test]
    fn valid_files_resolve_each_from_its_variable_and_build_an_http_client() {
        let pki = pki();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = file(&dir, "ca.pem", pki.ca_pem.as_bytes());
        let cert = file(&dir, "client.pem", pki.client_pem.as_bytes());
        let key = file(&dir, "client.key", pki.client_key_pem.as_bytes());
        let connection = resolve(
            Signal::Traces,
            &[
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
                ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", &cert),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
            ],
        )
        .expect("valid files");
        assert_eq!(
            connection.ca.as_ref().map(|(_, certs)| certs.len()),
            Some(1)
        );
        let identity = connection.identity.as_ref().expect("an identity");
        assert_eq!(
            identity.cert.var,
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE"
        );
        assert_eq!(identity.key.var, "OTEL_EXPORTER_OTLP_CLIENT_KEY");
        connection.http_client().expect("an HTTP client");
    }

    #[test]
    fn a_client_key_of_another_certificate_is_an_error() {
        let pki = pki();
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = file(&dir, "client.pem", pki.client_pem.as_bytes());
        let other_key = rcgen::KeyPair::generate().expect("key").serialize_pem();
        let key = file(&dir, "other.key", other_key.as_bytes());
        let err = resolve(
            Signal::Metrics,
            &[
                ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE", &cert),
                ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", &key),
            ],
        )
        .expect_err("the key does not match");
        assert!(
            err.to_string().starts_with(&format!(
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY: the key in {key} does not belong to \
                 the certificate in {cert} (OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE): "
            )),
            "{err}"
        );
    }

    #[test]
    fn a_certificate_given_as_the_client_key_is_an_error() {
        let pki = pki();
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = file(&dir, "client.pem", pki.client_pem.as_bytes());
        let err = resolve(
            Signal::Traces,
            &[
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &cert),
            ],
        )
        .expect_err("a certificate is no key");
        assert_eq!(
            err.to_string(),
            format!(
                "OTEL_EXPORTER_OTLP_CLIENT_KEY: {cert} is not a PEM private key file: it holds no PRIVATE KEY section"
            )
        );
    }

    #[test]
    fn pem_file_debug_never_shows_the_contents() {
        let file = PemFile {
            var: "OTEL_EXPORTER_OTLP_CLIENT_KEY".into(),
            path: "/keys/client.key".into(),
            pem: b"-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n".to_vec(),
        };
        let shown = format!("{file:?}");
        assert_eq!(shown, "OTEL_EXPORTER_OTLP_CLIENT_KEY=/keys/client.key");
    }
}
