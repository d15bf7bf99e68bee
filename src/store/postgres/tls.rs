//! TLS to the database: what a libpq-style URL's `sslmode` and `sslrootcert` ask for, and the
//! rustls connector every connection kiln makes to PostgreSQL goes through (the pool, the
//! feed's LISTEN connection, `kiln migrate-to`, `kiln token`), so that they all encrypt and
//! verify alike.
//!
//! Why it is here rather than in [`tokio_postgres`]: that crate knows only `disable`, `prefer`
//! and `require`, rejects `verify-ca`, `verify-full` and `sslrootcert` as unknown, and leaves
//! verification to the connector. So the URL's TLS parameters are taken out before the rest
//! goes to [`tokio_postgres::Config`], and the connector built from them decides what a
//! server's certificate must prove:
//!
//! | `sslmode`     | encrypted                   | certificate checked                      |
//! |---------------|-----------------------------|------------------------------------------|
//! | `disable`     | never                       | —                                        |
//! | `prefer`      | if the server offers TLS    | only against `sslrootcert`, if given     |
//! | `require`     | always                      | only against `sslrootcert`, if given     |
//! | `verify-ca`   | always                      | chain to a trusted root                  |
//! | `verify-full` | always                      | chain to a trusted root, and host name   |
//!
//! As libpq does, `prefer` is the default, and `prefer` or `require` without a root
//! certificate encrypt without checking whom they talk to: that stops a passive eavesdropper,
//! not a machine in the middle. The handshake's signatures are still checked, so the server
//! must hold the key of the certificate it shows. Also as libpq does, giving `sslrootcert` to
//! `prefer` or `require` checks the chain (as `verify-ca`). The trusted roots are the
//! certificates of the `sslrootcert` file, or, without one (or with `sslrootcert=system`), the
//! Mozilla root set built into kiln (`webpki-roots`): a managed database's own CA (RDS, Cloud
//! SQL) is not in it, so give its bundle as `sslrootcert`. `PGSSLMODE` and `PGSSLROOTCERT`
//! stand in for a parameter the URL leaves out. Client certificates (`sslcert`, `sslkey`) are
//! not supported, and are refused rather than ignored.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use super::PgError;

/// What the URL asks of the connection's encryption, in libpq's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, PgError> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            // libpq's `allow` tries without TLS first; tokio-postgres can only try TLS first.
            "allow" => Err(PgError::Url(
                "sslmode=allow is not supported; use prefer (TLS if the server offers it) or \
                 disable"
                    .into(),
            )),
            other => Err(PgError::Url(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode tokio-postgres negotiates with: it knows whether to ask for TLS, not what to
    /// check once it has it.
    fn negotiated(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// Where the trusted roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// No `sslrootcert`: the built-in set for `verify-*`, none (no check) for `prefer`/`require`.
    Unset,
    /// `sslrootcert=system`: the built-in Mozilla set.
    System,
    /// `sslrootcert=PATH`: the PEM certificates of that file.
    File(PathBuf),
}

/// The TLS parameters of a database URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub roots: Roots,
}

/// Splits `url` into what tokio-postgres takes and the TLS settings kiln handles itself,
/// reading `PGSSLMODE`/`PGSSLROOTCERT` through `env` for a parameter the URL does not give.
/// A `key=value` connection string (not a URL) goes to tokio-postgres whole, with only the
/// modes it knows.
pub fn parse(
    url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(tokio_postgres::Config, TlsSettings), PgError> {
    let bad_url = |e: tokio_postgres::Error| PgError::Url(with_causes(&e));
    let Some((head, query)) = split_query(url) else {
        let config: tokio_postgres::Config = url.parse().map_err(bad_url)?;
        let mode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        let roots = Roots::Unset;
        return Ok((config, TlsSettings { mode, roots }));
    };
    let mut mode = None;
    let mut roots = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(key)?.as_str() {
            "sslmode" => mode = Some(SslMode::parse(&decode(value)?)?),
            "sslrootcert" => roots = Some(roots_from(&decode(value)?)),
            refused @ ("sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir") => {
                return Err(PgError::Url(format!(
                    "{refused} is not supported: kiln does not present client certificates \
                     or check revocation lists"
                )));
            }
            _ => kept.push(pair),
        }
    }
    let mode = match mode {
        Some(mode) => mode,
        None => match env("PGSSLMODE").filter(|v| !v.is_empty()) {
            Some(value) => SslMode::parse(&value)?,
            None => SslMode::Prefer,
        },
    };
    let roots = roots
        .or_else(|| {
            env("PGSSLROOTCERT")
                .filter(|v| !v.is_empty())
                .map(|v| roots_from(&v))
        })
        .unwrap_or(Roots::Unset);
    let rest = if kept.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    let mut config: tokio_postgres::Config = rest.parse().map_err(bad_url)?;
    config.ssl_mode(mode.negotiated());
    Ok((config, TlsSettings { mode, roots }))
}

/// `url` before and after its `?`, if it is a URL; the `?` is looked for after the
/// credentials, as tokio-postgres does.
fn split_query(url: &str) -> Option<(&str, &str)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let after_credentials = rest.find('@').map_or(0, |at| at + 1);
    let start = url.len() - rest.len() + after_credentials;
    match url[start..].find('?') {
        Some(q) => Some((&url[..start + q], &url[start + q + 1..])),
        None => Some((url, "")),
    }
}

fn roots_from(value: &str) -> Roots {
    if value == "system" {
        Roots::System
    } else {
        Roots::File(PathBuf::from(value))
    }
}

/// A URL parameter's text with its `%XX` escapes decoded; a `+` stays a `+`, as in libpq.
fn decode(text: &str) -> Result<String, PgError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| PgError::Url(format!("bad %-escape in {text:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PgError::Url(format!("{text:?} is not UTF-8")))
}

/// The connector every connection to the database goes through. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    /// How the connection was asked for, for the errors.
    shown: Arc<str>,
}

impl Tls {
    /// The connector for `settings`, its root certificates read now, so that a missing or
    /// empty file fails at startup rather than at the first connection.
    pub fn new(settings: &TlsSettings) -> Result<Tls, PgError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match (&settings.roots, settings.mode) {
            (Roots::File(path), _) => Some(read_roots(path)?),
            (Roots::System, _) | (Roots::Unset, SslMode::VerifyCa | SslMode::VerifyFull) => {
                let mut store = RootCertStore::empty();
                store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                Some(store)
            }
            (Roots::Unset, _) => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match roots {
            None => Arc::new(Unverified {
                algorithms: provider.signature_verification_algorithms,
            }),
            Some(roots) => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| {
                            PgError::Tls(format!("cannot use the root certificates: {e}"))
                        })?;
                if settings.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly { webpki })
                }
            }
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // What PostgreSQL 17 expects, and requires with `sslnegotiation=direct`; older servers
        // ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        let shown = match &settings.roots {
            Roots::File(path) => format!(
                "sslmode={}, root certificates from {}",
                settings.mode.name(),
                path.display()
            ),
            Roots::System => format!(
                "sslmode={}, built-in root certificates",
                settings.mode.name()
            ),
            Roots::Unset => format!("sslmode={}", settings.mode.name()),
        };
        Ok(Tls {
            config: Arc::new(config),
            shown: shown.into(),
        })
    }
}

/// The root certificates of the PEM file at `path`.
fn read_roots(path: &std::path::Path) -> Result<RootCertStore, PgError> {
    let unreadable = |reason: String| {
        PgError::Tls(format!(
            "cannot read the root certificates of sslrootcert={}: {reason}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(e.to_string()))?;
    if certs.is_empty() {
        return Err(unreadable("no PEM certificate in it".into()));
    }
    let mut store = RootCertStore::empty();
    for cert in certs {
        store.add(cert).map_err(|e| unreadable(e.to_string()))?;
    }
    Ok(store)
}

impl<S> MakeTlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Handshake;
    type Error = HandshakeError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Handshake, HandshakeError> {
        let name = ServerName::try_from(domain.to_owned()).map_err(|e| HandshakeError {
            shown: self.shown.clone(),
            reason: format!("{domain:?} is not a host name TLS can check: {e}"),
        })?;
        Ok(Handshake {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
            shown: self.shown.clone(),
        })
    }
}

/// One connection's handshake, to the server named `name`.
pub struct Handshake {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    shown: Arc<str>,
}

impl<S> TlsConnect<S> for Handshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream<S>, HandshakeError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            match self.connector.connect(self.name, stream).await {
                Ok(stream) => Ok(TlsStream(stream)),
                Err(e) => Err(HandshakeError {
                    shown: self.shown,
                    reason: describe(&e),
                }),
            }
        })
    }
}

/// A failed TLS handshake, said in an operator's terms: the settings it ran under and why the
/// server was not accepted.
#[derive(Debug)]
pub struct HandshakeError {
    shown: Arc<str>,
    reason: String,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.shown)
    }
}

impl std::error::Error for HandshakeError {}

/// Why a handshake failed: a certificate that did not pass verification is named as such.
fn describe(e: &std::io::Error) -> String {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "the database server's certificate failed verification: it was not issued by any \
             of the trusted root certificates (UnknownIssuer)"
                .to_owned()
        }
        Some(rustls::Error::InvalidCertificate(why)) => {
            format!("the database server's certificate failed verification: {why}")
        }
        Some(other) => format!("TLS handshake with the database server failed: {other}"),
        None => format!("TLS handshake with the database server failed: {e}"),
    }
}

/// An encrypted connection to the database.
pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    /// None: SCRAM then authenticates without binding to the channel (`SCRAM-SHA-256`, not
    /// `-PLUS`), which `channel_binding=prefer`, the default, accepts.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// `prefer` and `require` without a root certificate, as libpq: any certificate is taken, but
/// the handshake must be signed by its key.
#[derive(Debug)]
struct Unverified {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root, whatever name the certificate is for.
/// The web PKI verifier checks the chain before the name, so a wrong name is all that is
/// forgiven.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `e` and each error beneath it, joined with `: `, leaving out a cause its parent already
/// says: tokio-postgres and deadpool name only their own layer ("error performing TLS
/// handshake"), and the reason is beneath it.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn settings(url: &str) -> TlsSettings {
        parse(url, no_env)
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .1
    }

    #[test]
    fn without_sslmode_tls_is_preferred_as_libpq_does() {
        let (config, tls) = parse("postgres://kiln@db:5432/kiln", no_env).unwrap();
        assert_eq!(tls.mode, SslMode::Prefer);
        assert_eq!(tls.roots, Roots::Unset);
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
    }

    #[test]
    fn each_libpq_mode_is_understood_and_the_verifying_ones_insist_on_tls() {
        use tokio_postgres::config::SslMode as Negotiated;
        for (given, mode, negotiated) in [
            ("disable", SslMode::Disable, Negotiated::Disable),
            ("prefer", SslMode::Prefer, Negotiated::Prefer),
            ("require", SslMode::Require, Negotiated::Require),
            ("verify-ca", SslMode::VerifyCa, Negotiated::Require),
            ("verify-full", SslMode::VerifyFull, Negotiated::Require),
        ] {
            let url = format!("postgres://kiln@db/kiln?sslmode={given}");
            let (config, tls) = parse(&url, no_env).unwrap();
            assert_eq!(tls.mode, mode, "{given}");
            assert_eq!(config.get_ssl_mode(), negotiated, "{given}");
        }
    }

    #[test]
    fn the_tls_parameters_are_taken_out_and_the_others_left_to_tokio_postgres() {
        let (config, tls) = parse(
            "postgres://kiln:pw@db:6432/jobs?application_name=node1&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fkiln%2Fca.pem&connect_timeout=3",
            no_env,
        )
        .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.roots, Roots::File("/etc/kiln/ca.pem".into()));
        assert_eq!(config.get_application_name(), Some("node1"));
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(config.get_dbname(), Some("jobs"));
        assert_eq!(config.get_password(), Some(&b"pw"[..]));
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_start_of_the_parameters() {
        let (config, tls) = parse("postgres://kiln:a?b@db/kiln?sslmode=require", no_env).unwrap();
        assert_eq!(config.get_password(), Some(&b"a?b"[..]));
        assert_eq!(tls.mode, SslMode::Require);
    }

    #[test]
    fn sslrootcert_system_means_the_built_in_roots() {
        let tls = settings("postgresql://db/kiln?sslmode=verify-full&sslrootcert=system");
        assert_eq!(tls.roots, Roots::System);
    }

    #[test]
    fn the_environment_fills_in_what_the_url_leaves_out_and_no_more() {
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("verify-ca".to_owned()),
            "PGSSLROOTCERT" => Some("/env/ca.pem".to_owned()),
            _ => None,
        };
        let (_, from_env) = parse("postgres://db/kiln", env).unwrap();
        assert_eq!(from_env.mode, SslMode::VerifyCa);
        assert_eq!(from_env.roots, Roots::File("/env/ca.pem".into()));
        let (_, from_url) = parse(
            "postgres://db/kiln?sslmode=disable&sslrootcert=/url.pem",
            env,
        )
        .unwrap();
        assert_eq!(from_url.mode, SslMode::Disable);
        assert_eq!(from_url.roots, Roots::File("/url.pem".into()));
    }

    #[test]
    fn unsupported_modes_and_client_certificates_are_refused_by_name() {
        for (url, said) in [
            (
                "postgres://db/kiln?sslmode=allow",
                "sslmode=allow is not supported",
            ),
            (
                "postgres://db/kiln?sslmode=verify",
                "sslmode=verify is not one of",
            ),
            (
                "postgres://db/kiln?sslcert=/c.pem",
                "sslcert is not supported",
            ),
            (
                "postgres://db/kiln?sslkey=/k.pem",
                "sslkey is not supported",
            ),
        ] {
            let err = parse(url, no_env).expect_err(url);
            assert!(matches!(err, PgError::Url(_)), "{url}: {err:?}");
            assert!(err.to_string().contains(said), "{url}: {err}");
        }
        let bad_env = |_: &str| Some("sometimes".to_owned());
        let err = parse("postgres://db/kiln", bad_env).expect_err("PGSSLMODE");
        assert!(err.to_string().contains("sslmode=sometimes"), "{err}");
    }

    #[test]
    fn a_connection_string_of_keywords_goes_to_tokio_postgres_whole() {
        let (config, tls) = parse("host=db dbname=kiln sslmode=require", no_env).unwrap();
        assert_eq!(config.get_dbname(), Some("kiln"));
        assert_eq!(tls.mode, SslMode::Require);
    }

    #[test]
    fn a_root_certificate_file_that_is_missing_or_holds_none_fails_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [dir.path().join("missing.pem"), empty] {
            let settings = TlsSettings {
                mode: SslMode::VerifyFull,
                roots: Roots::File(path.clone()),
            };
            let err = Tls::new(&settings).err().expect("no roots");
            assert!(matches!(err, PgError::Tls(_)), "{err:?}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn every_mode_builds_a_connector_from_the_built_in_roots() {
        for mode in [
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            let settings = TlsSettings {
                mode,
                roots: Roots::Unset,
            };
            assert!(Tls::new(&settings).is_ok(), "{mode:?}");
        }
    }
}
