//! TLS termination for downstream connections: a listener's `tls:` block compiled into a rustls
//! [`ServerConfig`].
//!
//! [`TlsSettings::compile`] reads the PEM files named by a [`TlsSpec`] once, checks them, and
//! builds everything a listener needs to terminate TLS. Nothing here does I/O after `compile`.
//!
//! ```text
//! let tls = Arc::new(TlsSettings::compile(&spec)?);  // every error, each naming its file
//! watch(tls.files());                                  // or spec.files() after a failure
//! let acceptor = TlsAcceptor::from(tls.server_config());
//! let stream = acceptor.accept(tcp).await?;
//! let served = tls.select(stream.get_ref().1.server_name());  // the certificate shown
//! // per request, for HTTP/2 connection reuse across hosts:
//! if served.is_some_and(|i| !tls.cert_covers(i, host)) { /* 421 Misdirected Request */ }
//! ```
//!
//! Decisions:
//!
//! - **Protocols.** TLS 1.3 and 1.2 only, with the aws-lc-rs provider's default (safe) cipher
//!   suites and key exchange groups; no 0-RTT. The server's order of suites decides (AES-128-GCM
//!   first), unless the client puts ChaCha20-Poly1305 first ([`TlsSettings::config_for`]).
//! - **Certificate selection** (SNI). Names come from each end-entity certificate's DNS subject
//!   alternative names; the subject's common name is ignored, as browsers do. An exact name wins
//!   over a wildcard, whatever the order of the certificates; `*.example.com` covers exactly one
//!   label (`a.example.com`, not `a.b.example.com` nor `example.com`), the same rule as route
//!   hosts. When several certificates cover a name, the first listed wins. A client without SNI,
//!   or with a name no certificate covers, gets the default certificate (`default_certificate`,
//!   else the first). The choice depends on SNI alone — not on the client's signature schemes —
//!   so [`TlsSettings::select`] reproduces it exactly after the handshake.
//! - **Client certificates.** Verified against the `client_auth.ca` bundle with webpki; `Required`
//!   aborts the handshake without a valid certificate, `Optional` lets the client in without one
//!   (but still rejects an invalid one). No CRLs yet.
//! - **Session resumption.** Both kinds are on: rustls' default 256-entry session-ID cache, and
//!   stateless tickets (which rustls leaves off by default) from `aws_lc_rs::Ticketer`: AES-256 +
//!   HMAC, keys rotated every 6 hours, 12-hour tickets, two tickets per TLS 1.3 handshake. A
//!   resumed handshake skips the certificate signature, which dominates the cost of a full
//!   handshake, so this matters for handshake-heavy load. Every config reload compiles a new
//!   `TlsSettings`, so the ticketer and session cache are shared with any earlier, still-alive
//!   `TlsSettings` compiled from identical TLS inputs (certificate bytes and order, default
//!   certificate, CA bundle bytes, client-auth mode, ALPN): a reload that only touches routes
//!   keeps every session resumable, while a changed certificate or client-auth policy starts
//!   afresh, so a session authenticated under the old policy is never resumed under the new one
//!   (the hazard rustls documents for shared resumption state).
//! - **Files.** Each file is read once and the bytes parsed with `rustls-pki-types`'
//!   [`PemObject`], so an I/O failure and a PEM problem get distinct messages. Keys may be
//!   PKCS#8, PKCS#1 or SEC1 PEM, unencrypted; a certificate and its key may share one file.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache,
    StoresServerSessions, VerifierBuilderError, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ProtocolVersion, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use webpki::EndEntityCert;

/// One certificate chain and its private key, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// PEM file: the end-entity certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1; not encrypted).
    pub key: PathBuf,
}

/// Whether a client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAuthMode {
    /// The handshake fails without a certificate signed by the configured CA.
    Required,
    /// A client may connect without a certificate; one it does present must verify.
    Optional,
}

/// Client certificate verification, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthSpec {
    /// PEM bundle of one or more CA certificates trusted to sign client certificates.
    pub ca: PathBuf,
    pub mode: ClientAuthMode,
}

/// A listener's `tls:` block, as configured (paths already resolved by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    pub certificates: Vec<CertSpec>,
    /// Index into `certificates` served without SNI or for an unknown name; `None` = the first.
    pub default_certificate: Option<usize>,
    pub client_auth: Option<ClientAuthSpec>,
    /// Offer ALPN `h2` then `http/1.1`; `false` offers `http/1.1` only.
    pub alpn_h2: bool,
}

/// A compiled `tls:` block; immutable and cheap to share in an `Arc`.
#[derive(Debug)]
pub struct TlsSettings {
    config: Arc<ServerConfig>,
    /// `config`, following the client's order of cipher suites (see [`TlsSettings::config_for`]).
    client_order: Arc<ServerConfig>,
    resolver: Arc<CertResolver>,
    files: Vec<PathBuf>,
    /// See [`TlsSettings::admission`].
    admission: u64,
    /// Keeps the resumption state registered while these settings live (see the module docs).
    _resumption: Arc<Resumption>,
}

/// Why a `tls:` block did not compile. Each message names the configuration key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificates: at least one certificate is required")]
    NoCertificates,
    #[error("default_certificate: {index} is out of range ({count} certificates configured)")]
    DefaultOutOfRange { index: usize, count: usize },
    #[error(
        "certificates[{index}]: cannot read certificate file {}: {}",
        .path.display(), io_reason(.error)
    )]
    ReadCertificate {
        index: usize,
        path: PathBuf,
        error: io::Error,
    },
    #[error("certificates[{index}]: {} is not valid PEM: {error}", .path.display())]
    CertificatePem {
        index: usize,
        path: PathBuf,
        error: pem::Error,
    },
    #[error("certificates[{index}]: {} contains no certificate", .path.display())]
    NoCertificate { index: usize, path: PathBuf },
    #[error(
        "certificates[{index}]: the first certificate in {} cannot be parsed: {error}",
        .path.display()
    )]
    InvalidCertificate {
        index: usize,
        path: PathBuf,
        error: webpki::Error,
    },
    #[error(
        "certificates[{index}]: cannot read key file {}: {}",
        .path.display(), io_reason(.error)
    )]
    ReadKey {
        index: usize,
        path: PathBuf,
        error: io::Error,
    },
    #[error("certificates[{index}]: {} is not valid PEM: {error}", .path.display())]
    KeyPem {
        index: usize,
        path: PathBuf,
        error: pem::Error,
    },
    #[error(
        "certificates[{index}]: {} contains no private key \
         (expected an unencrypted PKCS#8, PKCS#1 or SEC1 PEM block)",
        .path.display()
    )]
    NoPrivateKey { index: usize, path: PathBuf },
    #[error("certificates[{index}]: private key {} cannot be used: {error}", .path.display())]
    UnsupportedKey {
        index: usize,
        path: PathBuf,
        error: rustls::Error,
    },
    #[error(
        "certificates[{index}]: private key does not match certificate {} (key file {})",
        .cert.display(), .key.display()
    )]
    KeyMismatch {
        index: usize,
        cert: PathBuf,
        key: PathBuf,
    },
    #[error(
        "certificates[{index}]: cannot check private key {} against certificate {}: {error}",
        .key.display(), .cert.display()
    )]
    KeyCheck {
        index: usize,
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("client_auth.ca: cannot read CA file {}: {}", .path.display(), io_reason(.error))]
    ReadClientCa { path: PathBuf, error: io::Error },
    #[error("client_auth.ca: {} is not valid PEM: {error}", .path.display())]
    ClientCaPem { path: PathBuf, error: pem::Error },
    #[error("client_auth.ca: {} contains no certificate", .path.display())]
    NoClientCa { path: PathBuf },
    #[error(
        "client_auth.ca: certificate {position} in {} is not a usable CA certificate: {error}",
        .path.display()
    )]
    InvalidClientCa {
        path: PathBuf,
        /// 1-based position of the certificate in the bundle.
        position: usize,
        error: rustls::Error,
    },
    #[error("client_auth: cannot build the client certificate verifier: {error}")]
    ClientVerifier { error: VerifierBuilderError },
    #[error("cannot build the TLS configuration: {error}")]
    Config { error: rustls::Error },
}

/// The certificate a client is shown, chosen from SNI alone.
#[derive(Debug)]
struct CertResolver {
    certs: Vec<LoadedCert>,
    /// Lower-case DNS name → first certificate listing it.
    exact: HashMap<String, usize>,
    /// Lower-case suffix of a `*.suffix` name → first certificate listing it.
    wildcard: HashMap<String, usize>,
    default: usize,
}

#[derive(Debug)]
struct LoadedCert {
    /// The certificate file, for messages.
    path: PathBuf,
    key: Arc<CertifiedKey>,
    /// Lower-case DNS SANs without wildcards.
    exact: HashSet<String>,
    /// Lower-case suffixes of the `*.suffix` SANs.
    wildcard: HashSet<String>,
}

/// Session-resumption state shared by settings compiled from identical TLS inputs.
#[derive(Debug)]
struct Resumption {
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
}

/// Everything that decides who a resumed session was authenticated as, and by whom: the parsed
/// certificates, never file bytes, so no private key material is kept here (a key must match
/// its certificate, so the certificate stands for it).
#[derive(Debug, Default, PartialEq, Eq)]
struct ResumptionKey {
    chains: Vec<Vec<CertificateDer<'static>>>,
    default: usize,
    client_auth: Option<(Vec<CertificateDer<'static>>, ClientAuthMode)>,
    alpn_h2: bool,
}

/// Live resumption states, by the inputs that produced them. Entries die with their settings.
static RESUMPTION: Mutex<Vec<(ResumptionKey, Weak<Resumption>)>> = Mutex::new(Vec::new());

impl TlsSpec {
    /// Every file this spec names, in order and without repeats: the caller watches these for
    /// hot reload, also after a failed compile.
    pub fn files(&self) -> Vec<PathBuf> {
        let all = self
            .certificates
            .iter()
            .flat_map(|c| [&c.cert, &c.key])
            .chain(self.client_auth.as_ref().map(|c| &c.ca));
        let mut files: Vec<PathBuf> = Vec::new();
        for path in all {
            if !files.contains(path) {
                files.push(path.clone());
            }
        }
        files
    }
}

impl TlsSettings {
    /// Reads and checks every file of `spec` and builds the server configuration. Collects every
    /// error rather than stopping at the first.
    pub fn compile(spec: &TlsSpec) -> Result<TlsSettings, Vec<TlsError>> {
        let provider = Arc::new(provider());
        let mut errors = Vec::new();
        let mut key = ResumptionKey {
            alpn_h2: spec.alpn_h2,
            ..ResumptionKey::default()
        };

        if spec.certificates.is_empty() {
            errors.push(TlsError::NoCertificates);
        }
        let default = spec.default_certificate.unwrap_or(0);
        if spec.default_certificate.is_some() && default >= spec.certificates.len() {
            errors.push(TlsError::DefaultOutOfRange {
                index: default,
                count: spec.certificates.len(),
            });
        }
        key.default = default;

        let mut certs = Vec::with_capacity(spec.certificates.len());
        for (index, cert_spec) in spec.certificates.iter().enumerate() {
            match load_certificate(index, cert_spec, &provider) {
                Ok(cert) => {
                    key.chains.push(cert.key.cert.clone());
                    certs.push(cert);
                }
                Err(mut errs) => errors.append(&mut errs),
            }
        }

        let verifier = match &spec.client_auth {
            None => None,
            Some(client_auth) => match load_client_verifier(client_auth, &provider) {
                Ok((verifier, cas)) => {
                    key.client_auth = Some((cas, client_auth.mode));
                    Some(verifier)
                }
                Err(err) => {
                    errors.push(err);
                    None
                }
            },
        };

        if !errors.is_empty() {
            return Err(errors);
        }

        let resolver = Arc::new(CertResolver::new(certs, default));
        let admission = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.client_auth.hash(&mut h);
            key.alpn_h2.hash(&mut h);
            h.finish()
        };
        let resumption = resumption_for(key).map_err(|error| vec![TlsError::Config { error }])?;
        let config = build_config(
            provider,
            verifier,
            Arc::clone(&resolver),
            &resumption,
            spec.alpn_h2,
        )
        .map_err(|error| vec![TlsError::Config { error }])?;
        let mut client_order = config.clone();
        client_order.ignore_client_order = false;

        Ok(TlsSettings {
            config: Arc::new(config),
            client_order: Arc::new(client_order),
            resolver,
            files: spec.files(),
            admission,
            _resumption: resumption,
        })
    }

    /// A fingerprint of what a handshake admits a connection under for the connection's life:
    /// the client certificate check (mode and the CA certificates themselves, not their file
    /// names) and the protocols offered by ALPN. The server's certificates are not part of it:
    /// a renewed certificate serves new handshakes while open connections continue.
    pub fn admission(&self) -> u64 {
        self.admission
    }

    /// The rustls configuration for a listener's acceptor: the server's order of cipher suites.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// The configuration for the handshake that `hello` starts: the server's order of cipher
    /// suites (AES-128-GCM first), except for a client whose first supported choice is
    /// ChaCha20-Poly1305 — a client without AES instructions, for which AES is slow — whose own
    /// order is followed. Go's `crypto/tls` chooses the same way.
    pub fn config_for(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        let first = hello.cipher_suites().iter().find(|s| {
            self.config
                .crypto_provider()
                .cipher_suites
                .iter()
                .any(|ours| ours.suite() == **s)
        });
        match first {
            Some(s) if bulk_rank(*s) == Bulk::ChaCha20 => Arc::clone(&self.client_order),
            _ => Arc::clone(&self.config),
        }
    }

    /// Completes a TLS handshake on `stream` with the configuration [`config_for`] chooses.
    ///
    /// [`config_for`]: Self::config_for
    pub async fn accept<IO>(&self, stream: IO) -> io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await?;
        let config = self.config_for(&start.client_hello());
        start.into_stream(config).await
    }

    /// Does certificate `cert_index` (from [`select`](Self::select)) cover `host`, a `Host` or
    /// `:authority` value? Case and a `:port` are ignored. A DNS name is covered by an exact SAN
    /// or a one-label wildcard SAN; an IP literal (`10.0.0.1`, `[::1]:8443`) by an equal IP SAN.
    /// An unknown index covers nothing.
    pub fn cert_covers(&self, cert_index: usize, host: &str) -> bool {
        let Some(cert) = self.resolver.certs.get(cert_index) else {
            return false;
        };
        let host = strip_port(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return cert.covers_ip(ip);
        }
        cert.covers_dns(&normalise_dns(host))
    }

    /// The index of the certificate the resolver shows a client that sent `sni` (`None`: no
    /// SNI). After a handshake, `select(conn.server_name())` is the certificate that was served.
    /// Always `Some` today: the default certificate answers every name no other covers.
    pub fn select(&self, sni: Option<&str>) -> Option<usize> {
        Some(self.resolver.select(sni))
    }

    /// Every file read, in order and without repeats, so the caller can watch them.
    pub fn files(&self) -> Vec<PathBuf> {
        self.files.clone()
    }
}

/// Did the client present a certificate (one the verifier accepted, since the handshake is
/// over)?
pub fn peer_has_client_cert(conn: &ServerConnection) -> bool {
    conn.peer_certificates()
        .is_some_and(|chain| !chain.is_empty())
}

/// The negotiated protocol for logs: `"TLSv1.3"`, `"TLSv1.2"`, or `"unknown"` before the
/// handshake.
pub fn tls_version_str(conn: &ServerConnection) -> &'static str {
    match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    }
}

impl CertResolver {
    fn new(certs: Vec<LoadedCert>, default: usize) -> CertResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (index, cert) in certs.iter().enumerate() {
            for name in &cert.exact {
                exact.entry(name.clone()).or_insert(index);
            }
            for suffix in &cert.wildcard {
                wildcard.entry(suffix.clone()).or_insert(index);
            }
        }
        let served: HashSet<usize> = exact.values().chain(wildcard.values()).copied().collect();
        for (index, cert) in certs.iter().enumerate() {
            if index != default && !served.contains(&index) {
                tracing::warn!(
                    "certificates[{index}]: {} is never served: it is not the default and every \
                     DNS name it covers (if any) is served by an earlier certificate",
                    cert.path.display()
                );
            }
        }
        CertResolver {
            certs,
            exact,
            wildcard,
            default,
        }
    }

    /// Exact name, then one-label wildcard, then the default. Shared by the handshake and
    /// [`TlsSettings::select`].
    fn select(&self, sni: Option<&str>) -> usize {
        let Some(sni) = sni else {
            return self.default;
        };
        let name = normalise_dns(sni);
        if let Some(&index) = self.exact.get(name.as_ref()) {
            return index;
        }
        if let Some(suffix) = wildcard_suffix(&name)
            && let Some(&index) = self.wildcard.get(suffix)
        {
            return index;
        }
        self.default
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let index = self.select(client_hello.server_name());
        self.certs.get(index).map(|cert| Arc::clone(&cert.key))
    }
}

impl LoadedCert {
    fn covers_dns(&self, name: &str) -> bool {
        self.exact.contains(name)
            || wildcard_suffix(name).is_some_and(|suffix| self.wildcard.contains(suffix))
    }

    fn covers_ip(&self, ip: IpAddr) -> bool {
        // webpki does not list IP SANs, but checks them; the chain was parsed at compile time.
        let Some(der) = self.key.cert.first() else {
            return false;
        };
        EndEntityCert::try_from(der).is_ok_and(|cert| {
            cert.verify_is_valid_for_subject_name(&ServerName::IpAddress(ip.into()))
                .is_ok()
        })
    }
}

/// Reads and checks one `certificates[index]` entry.
fn load_certificate(
    index: usize,
    spec: &CertSpec,
    provider: &CryptoProvider,
) -> Result<LoadedCert, Vec<TlsError>> {
    let mut errors = Vec::new();

    let chain = match std::fs::read(&spec.cert) {
        Err(error) => {
            errors.push(TlsError::ReadCertificate {
                index,
                path: spec.cert.clone(),
                error,
            });
            None
        }
        Ok(bytes) => match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(chain) if chain.is_empty() => {
                errors.push(TlsError::NoCertificate {
                    index,
                    path: spec.cert.clone(),
                });
                None
            }
            Ok(chain) => Some(chain),
            Err(error) => {
                errors.push(TlsError::CertificatePem {
                    index,
                    path: spec.cert.clone(),
                    error,
                });
                None
            }
        },
    };

    let signing_key = match std::fs::read(&spec.key) {
        Err(error) => {
            errors.push(TlsError::ReadKey {
                index,
                path: spec.key.clone(),
                error,
            });
            None
        }
        Ok(bytes) => match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(der) => match provider.key_provider.load_private_key(der) {
                Ok(signing_key) => Some(signing_key),
                Err(error) => {
                    errors.push(TlsError::UnsupportedKey {
                        index,
                        path: spec.key.clone(),
                        error,
                    });
                    None
                }
            },
            Err(pem::Error::NoItemsFound) => {
                errors.push(TlsError::NoPrivateKey {
                    index,
                    path: spec.key.clone(),
                });
                None
            }
            Err(error) => {
                errors.push(TlsError::KeyPem {
                    index,
                    path: spec.key.clone(),
                    error,
                });
                None
            }
        },
    };

    let (Some(chain), Some(signing_key)) = (chain, signing_key) else {
        return Err(errors);
    };

    let (exact, wildcard) = match chain.first().map(EndEntityCert::try_from) {
        Some(Ok(end_entity)) => dns_names(&end_entity),
        Some(Err(error)) => {
            return Err(vec![TlsError::InvalidCertificate {
                index,
                path: spec.cert.clone(),
                error,
            }]);
        }
        // Unreachable: an empty chain was reported above.
        None => (HashSet::new(), HashSet::new()),
    };
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        // The provider cannot derive this key's public half; nothing to compare.
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(vec![TlsError::KeyMismatch {
                index,
                cert: spec.cert.clone(),
                key: spec.key.clone(),
            }]);
        }
        Err(error) => {
            return Err(vec![TlsError::KeyCheck {
                index,
                cert: spec.cert.clone(),
                key: spec.key.clone(),
                error,
            }]);
        }
    }

    Ok(LoadedCert {
        path: spec.cert.clone(),
        key: Arc::new(certified),
        exact,
        wildcard,
    })
}

/// The certificate's DNS SANs, lower-cased and split into exact names and wildcard suffixes.
fn dns_names(cert: &EndEntityCert<'_>) -> (HashSet<String>, HashSet<String>) {
    let mut exact = HashSet::new();
    let mut wildcard = HashSet::new();
    for name in cert.valid_dns_names() {
        let name = normalise_dns(name);
        // webpki only yields wildcards of the form `*.rest`.
        match name.strip_prefix("*.") {
            Some(suffix) => wildcard.insert(suffix.to_owned()),
            None => exact.insert(name.into_owned()),
        };
    }
    (exact, wildcard)
}

/// Reads the CA bundle and builds the verifier; returns it with the bundle's certificates.
fn load_client_verifier(
    spec: &ClientAuthSpec,
    provider: &Arc<CryptoProvider>,
) -> Result<(Arc<dyn ClientCertVerifier>, Vec<CertificateDer<'static>>), TlsError> {
    let path = || spec.ca.clone();
    let bytes = std::fs::read(&spec.ca).map_err(|error| TlsError::ReadClientCa {
        path: path(),
        error,
    })?;
    let cas = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::ClientCaPem {
            path: path(),
            error,
        })?;
    if cas.is_empty() {
        return Err(TlsError::NoClientCa { path: path() });
    }
    let mut roots = RootCertStore::empty();
    for (i, ca) in cas.iter().enumerate() {
        roots
            .add(ca.clone())
            .map_err(|error| TlsError::InvalidClientCa {
                path: path(),
                position: i + 1,
                error,
            })?;
    }
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
    let builder = match spec.mode {
        ClientAuthMode::Required => builder,
        ClientAuthMode::Optional => builder.allow_unauthenticated(),
    };
    let verifier = builder
        .build()
        .map_err(|error| TlsError::ClientVerifier { error })?;
    Ok((verifier, cas))
}

/// The resumption state for `key`: the live one compiled from the same inputs, or a new one.
fn resumption_for(key: ResumptionKey) -> Result<Arc<Resumption>, rustls::Error> {
    let mut live = RESUMPTION.lock().unwrap_or_else(PoisonError::into_inner);
    live.retain(|(_, state)| state.strong_count() > 0);
    if let Some(state) = live
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, state)| state.upgrade())
    {
        return Ok(state);
    }
    let state = Arc::new(Resumption {
        ticketer: aws_lc_rs::Ticketer::new()?,
        sessions: ServerSessionMemoryCache::new(256),
    });
    live.push((key, Arc::downgrade(&state)));
    Ok(state)
}

fn build_config(
    provider: Arc<CryptoProvider>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    resolver: Arc<CertResolver>,
    resumption: &Resumption,
    alpn_h2: bool,
) -> Result<ServerConfig, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = if alpn_h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    config.ticketer = Arc::clone(&resumption.ticketer);
    config.session_storage = Arc::clone(&resumption.sessions);
    config.ignore_client_order = true;
    Ok(config)
}

/// The aws-lc-rs provider with its default cipher suites, AES-128-GCM first, AES-256-GCM
/// second and ChaCha20-Poly1305 last, in TLS 1.3 and 1.2 alike. Most clients list AES-256-GCM
/// first, and its SHA-384 key schedule made a full handshake about a tenth dearer here (aws-lc
/// hashes SHA-512 without vector instructions on AMD CPUs); AES-128 is as safe a choice.
fn provider() -> CryptoProvider {
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|s| bulk_rank(s.suite()));
    provider
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Bulk {
    Aes128,
    Other,
    ChaCha20,
}

fn bulk_rank(suite: rustls::CipherSuite) -> Bulk {
    use rustls::CipherSuite as C;
    match suite {
        C::TLS13_AES_128_GCM_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Bulk::Aes128,
        C::TLS13_CHACHA20_POLY1305_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Bulk::ChaCha20,
        _ => Bulk::Other,
    }
}

/// `host` without a `:port` and without the brackets of an IPv6 literal.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        // A bare IPv6 literal has several colons; leave it whole.
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// Lower case, without a trailing root dot; borrows when nothing changes.
fn normalise_dns(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// What a one-label wildcard must cover for `name`: `a.example.com` → `example.com`.
fn wildcard_suffix(name: &str) -> Option<&str> {
    match name.split_once('.') {
        Some((label, suffix)) if !label.is_empty() && !suffix.is_empty() => Some(suffix),
        _ => None,
    }
}

/// An I/O error's reason without the trailing " (os error N)".
fn io_reason(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests;
