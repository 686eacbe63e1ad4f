//! Certificate selection, errors and real handshakes.

use super::*;

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

type TestResult = Result<(), Box<dyn Error>>;

/// A scratch directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> io::Result<TempDir> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "portico-tls-{}-{name}-{unique}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> io::Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA issuing server and client certificates.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// An issued certificate and its key, as PEM.
struct Issued {
    cert: String,
    key: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new(name: &str) -> Result<TestCa, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(TestCa { issuer })
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<Issued, rcgen::Error> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        })
    }

    fn server(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, name: &str) -> Result<Issued, rcgen::Error> {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Writes `issued` as `<name>.crt` and `<name>.key` and returns their spec.
fn write_pair(dir: &TempDir, name: &str, issued: &Issued) -> io::Result<CertSpec> {
    Ok(CertSpec {
        cert: dir.write(&format!("{name}.crt"), &issued.cert)?,
        key: dir.write(&format!("{name}.key"), &issued.key)?,
    })
}

fn spec(certificates: Vec<CertSpec>) -> TlsSpec {
    TlsSpec {
        certificates,
        default_certificate: None,
        client_auth: None,
        alpn_h2: true,
    }
}

fn compile(spec: &TlsSpec) -> Result<TlsSettings, Box<dyn Error>> {
    TlsSettings::compile(spec).map_err(|errors| messages(&errors).join("\n").into())
}

fn compile_err(spec: &TlsSpec) -> Result<Vec<String>, Box<dyn Error>> {
    match TlsSettings::compile(spec) {
        Ok(_) => Err("compile succeeded unexpectedly".into()),
        Err(errors) => Ok(messages(&errors)),
    }
}

fn messages(errors: &[TlsError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

/// Three certificates: a default, a wildcard listed before the exact name it overlaps.
struct ThreeCerts {
    _dir: TempDir,
    ca: TestCa,
    issued: Vec<Issued>,
    spec: TlsSpec,
}

fn three_certs(name: &str) -> Result<ThreeCerts, Box<dyn Error>> {
    let dir = TempDir::new(name)?;
    let ca = TestCa::new("Portico test server CA")?;
    let issued = vec![
        ca.server(&["default.test", "127.0.0.1"])?,
        ca.server(&["*.example.com", "shop.test"])?,
        ca.server(&["api.example.com", "::1"])?,
    ];
    let mut certificates = Vec::new();
    for (i, cert) in issued.iter().enumerate() {
        certificates.push(write_pair(&dir, &format!("c{i}"), cert)?);
    }
    Ok(ThreeCerts {
        _dir: dir,
        ca,
        issued,
        spec: spec(certificates),
    })
}

#[test]
fn select_prefers_exact_then_wildcard_then_default() -> TestResult {
    let fixture = three_certs("select")?;
    let tls = compile(&fixture.spec)?;
    let cases: &[(Option<&str>, usize)] = &[
        (Some("api.example.com"), 2), // exact beats the earlier wildcard
        (Some("API.Example.COM"), 2),
        (Some("api.example.com."), 2),
        (Some("www.example.com"), 1), // wildcard
        (Some("shop.test"), 1),
        (Some("default.test"), 0),
        (Some("unknown.test"), 0), // nobody covers it: default
        (None, 0),                 // no SNI: default
    ];
    for &(sni, want) in cases {
        assert_eq!(tls.select(sni), Some(want), "sni {sni:?}");
    }

    let mut with_default = fixture.spec.clone();
    with_default.default_certificate = Some(2);
    let tls = compile(&with_default)?;
    assert_eq!(tls.select(None), Some(2));
    assert_eq!(tls.select(Some("unknown.test")), Some(2));
    assert_eq!(tls.select(Some("default.test")), Some(0));
    Ok(())
}

#[test]
fn first_listed_certificate_wins_a_shared_name() -> TestResult {
    let dir = TempDir::new("shared")?;
    let ca = TestCa::new("ca")?;
    let a = write_pair(
        &dir,
        "a",
        &ca.server(&["www.example.com", "*.example.com"])?,
    )?;
    let b = write_pair(
        &dir,
        "b",
        &ca.server(&["www.example.com", "*.example.com"])?,
    )?;
    let tls = compile(&spec(vec![a, b]))?;
    assert_eq!(tls.select(Some("www.example.com")), Some(0));
    assert_eq!(tls.select(Some("x.example.com")), Some(0));
    Ok(())
}

#[test]
fn wildcard_covers_exactly_one_label() -> TestResult {
    let fixture = three_certs("one-label")?;
    let tls = compile(&fixture.spec)?;
    assert_eq!(tls.select(Some("a.b.example.com")), Some(0));
    assert_eq!(tls.select(Some("example.com")), Some(0));
    assert!(!tls.cert_covers(1, "a.b.example.com"));
    assert!(!tls.cert_covers(1, "example.com"));
    assert!(tls.cert_covers(1, "a.example.com"));
    Ok(())
}

#[test]
fn cert_covers_hosts() -> TestResult {
    let fixture = three_certs("covers")?;
    let tls = compile(&fixture.spec)?;
    let cases: &[(usize, &str, bool)] = &[
        (2, "api.example.com", true),
        (2, "API.EXAMPLE.COM:8443", true),
        (2, "api.example.com.", true),
        (2, "api.example.com:", true),
        (2, "www.example.com", false),
        (1, "www.example.com:443", true),
        (1, "WWW.Example.Com", true),
        (1, "api.example.com", true), // covered, though the exact cert is preferred
        (1, "shop.test", true),
        (1, "default.test", false),
        (0, "default.test", true),
        (0, "127.0.0.1", true), // IP SAN
        (0, "127.0.0.1:8443", true),
        (0, "127.0.0.2", false),
        (2, "[::1]:8443", true),
        (2, "[::1]", true),
        (2, "::1", true),
        (2, "[::2]", false),
        (1, "127.0.0.1", false),
        (0, "", false),
        (3, "default.test", false), // no such certificate
    ];
    for &(index, host, want) in cases {
        assert_eq!(
            tls.cert_covers(index, host),
            want,
            "cert {index}, host {host:?}"
        );
    }
    Ok(())
}

#[test]
fn mismatched_key_is_reported() -> TestResult {
    let dir = TempDir::new("mismatch")?;
    let ca = TestCa::new("ca")?;
    let a = ca.server(&["a.test"])?;
    let b = ca.server(&["b.test"])?;
    let cert = dir.write("a.crt", &a.cert)?;
    let key = dir.write("b.key", &b.key)?;
    let errors = compile_err(&spec(vec![CertSpec {
        cert: cert.clone(),
        key: key.clone(),
    }]))?;
    assert_eq!(
        errors,
        [format!(
            "certificates[0]: private key does not match certificate {} (key file {})",
            cert.display(),
            key.display()
        )]
    );
    Ok(())
}

#[test]
fn missing_files_are_all_reported() -> TestResult {
    let dir = TempDir::new("missing")?;
    let ca = TestCa::new("ca")?;
    let good = write_pair(&dir, "good", &ca.server(&["good.test"])?)?;
    let missing_key = CertSpec {
        cert: good.cert.clone(),
        key: dir.path("b.key"),
    };
    let missing_both = CertSpec {
        cert: dir.path("c.crt"),
        key: dir.path("c.key"),
    };
    let mut spec = spec(vec![good, missing_key, missing_both]);
    spec.client_auth = Some(ClientAuthSpec {
        ca: dir.path("ca.crt"),
        mode: ClientAuthMode::Required,
    });
    let errors = compile_err(&spec)?;
    let path = |name: &str| dir.path(name).display().to_string();
    assert_eq!(
        errors,
        [
            format!(
                "certificates[1]: cannot read key file {}: No such file or directory",
                path("b.key")
            ),
            format!(
                "certificates[2]: cannot read certificate file {}: No such file or directory",
                path("c.crt")
            ),
            format!(
                "certificates[2]: cannot read key file {}: No such file or directory",
                path("c.key")
            ),
            format!(
                "client_auth.ca: cannot read CA file {}: No such file or directory",
                path("ca.crt")
            ),
        ]
    );
    Ok(())
}

#[test]
fn file_without_certificate_or_key_is_reported() -> TestResult {
    let dir = TempDir::new("empty")?;
    let ca = TestCa::new("ca")?;
    let issued = ca.server(&["a.test"])?;
    let good = write_pair(&dir, "a", &issued)?;
    let key_only = dir.write("key-only.crt", &issued.key)?;
    let empty = dir.write("empty.pem", "")?;
    let errors = compile_err(&spec(vec![
        good.clone(),
        CertSpec {
            cert: empty.clone(),
            key: good.key.clone(),
        },
        CertSpec {
            cert: key_only.clone(),
            key: good.key.clone(),
        },
        CertSpec {
            cert: good.cert.clone(),
            key: good.cert.clone(),
        },
    ]))?;
    assert_eq!(
        errors,
        [
            format!(
                "certificates[1]: {} contains no certificate",
                empty.display()
            ),
            format!(
                "certificates[2]: {} contains no certificate",
                key_only.display()
            ),
            format!(
                "certificates[3]: {} contains no private key (expected an unencrypted PKCS#8, \
                 PKCS#1 or SEC1 PEM block)",
                good.cert.display()
            ),
        ]
    );
    Ok(())
}

#[test]
fn certificate_and_key_may_share_a_file() -> TestResult {
    let dir = TempDir::new("combined")?;
    let ca = TestCa::new("ca")?;
    let issued = ca.server(&["a.test"])?;
    let both = dir.write("a.pem", format!("{}{}", issued.key, issued.cert))?;
    let tls = compile(&spec(vec![CertSpec {
        cert: both.clone(),
        key: both.clone(),
    }]))?;
    assert_eq!(tls.files(), [both]);
    assert!(tls.cert_covers(0, "a.test"));
    Ok(())
}

#[test]
fn malformed_pem_is_reported() -> TestResult {
    let dir = TempDir::new("malformed")?;
    let ca = TestCa::new("ca")?;
    let good = write_pair(&dir, "a", &ca.server(&["a.test"])?)?;
    let broken = dir.write("broken.crt", "-----BEGIN CERTIFICATE-----\nnot base64!\n")?;
    let garbage = dir.write(
        "garbage.crt",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )?;
    let errors = compile_err(&spec(vec![
        CertSpec {
            cert: broken.clone(),
            key: good.key.clone(),
        },
        CertSpec {
            cert: garbage.clone(),
            key: good.key.clone(),
        },
    ]))?;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!(
            "certificates[0]: {} is not valid PEM: ",
            broken.display()
        )),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with(&format!(
            "certificates[1]: the first certificate in {} cannot be parsed: ",
            garbage.display()
        )),
        "{errors:?}"
    );
    Ok(())
}

#[test]
fn structural_errors() -> TestResult {
    let errors = compile_err(&spec(Vec::new()))?;
    assert_eq!(
        errors,
        ["certificates: at least one certificate is required"]
    );

    let fixture = three_certs("structure")?;
    let mut out_of_range = fixture.spec.clone();
    out_of_range.default_certificate = Some(3);
    let errors = compile_err(&out_of_range)?;
    assert_eq!(
        errors,
        ["default_certificate: 3 is out of range (3 certificates configured)"]
    );
    Ok(())
}

#[test]
fn client_ca_bundle_errors() -> TestResult {
    let fixture = three_certs("ca-errors")?;
    let dir = TempDir::new("ca-bundle")?;
    let empty = dir.write("empty.crt", "")?;
    let mut spec = fixture.spec.clone();
    spec.client_auth = Some(ClientAuthSpec {
        ca: empty.clone(),
        mode: ClientAuthMode::Optional,
    });
    let errors = compile_err(&spec)?;
    assert_eq!(
        errors,
        [format!(
            "client_auth.ca: {} contains no certificate",
            empty.display()
        )]
    );

    let junk = dir.write(
        "junk.crt",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )?;
    spec.client_auth = Some(ClientAuthSpec {
        ca: junk.clone(),
        mode: ClientAuthMode::Optional,
    });
    let errors = compile_err(&spec)?;
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with(&format!(
            "client_auth.ca: certificate 1 in {} is not a usable CA certificate: ",
            junk.display()
        )),
        "{errors:?}"
    );
    Ok(())
}

#[test]
fn files_lists_every_file_once() -> TestResult {
    let fixture = three_certs("files")?;
    let dir = TempDir::new("files-ca")?;
    let ca = dir.write("ca.crt", fixture.ca.pem())?;
    let mut spec = fixture.spec.clone();
    spec.certificates.push(spec.certificates[0].clone());
    spec.client_auth = Some(ClientAuthSpec {
        ca: ca.clone(),
        mode: ClientAuthMode::Required,
    });
    let tls = compile(&spec)?;
    let mut want: Vec<PathBuf> = fixture
        .spec
        .certificates
        .iter()
        .flat_map(|c| [c.cert.clone(), c.key.clone()])
        .collect();
    want.push(ca);
    assert_eq!(tls.files(), want);
    assert_eq!(spec.files(), want);
    Ok(())
}

#[test]
fn alpn_offers_h2_only_when_enabled() -> TestResult {
    let fixture = three_certs("alpn")?;
    let tls = compile(&fixture.spec)?;
    assert_eq!(
        tls.server_config().alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let mut http1 = fixture.spec.clone();
    http1.alpn_h2 = false;
    let tls = compile(&http1)?;
    assert_eq!(tls.server_config().alpn_protocols, [b"http/1.1".to_vec()]);
    Ok(())
}

#[test]
fn resumption_state_survives_an_identical_recompile_only() -> TestResult {
    let fixture = three_certs("resumption")?;
    let dir = TempDir::new("resumption-ca")?;
    let ca = dir.write("ca.crt", fixture.ca.pem())?;
    let mut spec = fixture.spec.clone();
    spec.client_auth = Some(ClientAuthSpec {
        ca,
        mode: ClientAuthMode::Required,
    });

    let first = compile(&spec)?;
    assert!(first.server_config().ticketer.enabled());
    let again = compile(&spec)?;
    assert!(Arc::ptr_eq(
        &first.server_config().ticketer,
        &again.server_config().ticketer
    ));
    assert!(Arc::ptr_eq(
        &first.server_config().session_storage,
        &again.server_config().session_storage
    ));

    let mut optional = spec.clone();
    if let Some(client_auth) = optional.client_auth.as_mut() {
        client_auth.mode = ClientAuthMode::Optional;
    }
    let relaxed = compile(&optional)?;
    assert!(!Arc::ptr_eq(
        &first.server_config().ticketer,
        &relaxed.server_config().ticketer
    ));

    let mut reordered = spec.clone();
    reordered.certificates.swap(0, 1);
    let reordered = compile(&reordered)?;
    assert!(!Arc::ptr_eq(
        &first.server_config().ticketer,
        &reordered.server_config().ticketer
    ));
    Ok(())
}

// Real handshakes over an in-memory duplex stream.

/// What each side saw of a handshake.
struct Handshake {
    server: io::Result<ServerSide>,
    client: io::Result<ClientSide>,
}

struct ServerSide {
    sni: Option<String>,
    selected: Option<usize>,
    client_cert: bool,
    version: &'static str,
    alpn: Option<Vec<u8>>,
    resumed: bool,
    suite: Option<rustls::CipherSuite>,
}

struct ClientSide {
    server_cert: Option<CertificateDer<'static>>,
    /// What the client read after the handshake: the server's greeting or an error.
    greeting: io::Result<Vec<u8>>,
}

fn client_config(
    ca: &TestCa,
    client_cert: Option<&Issued>,
    tls12_only: bool,
) -> Result<ClientConfig, Box<dyn Error>> {
    client_config_with(aws_lc_rs::default_provider(), ca, client_cert, tls12_only)
}

fn client_config_with(
    provider: CryptoProvider,
    ca: &TestCa,
    client_cert: Option<&Issued>,
    tls12_only: bool,
) -> Result<ClientConfig, Box<dyn Error>> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes())?)?;
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)?
        .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(issued) => builder.with_client_auth_cert(
            vec![issued.der.clone()],
            PrivateKeyDer::from_pem_slice(issued.key.as_bytes())?,
        )?,
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn handshake(
    tls: &TlsSettings,
    client: impl Into<Arc<ClientConfig>>,
    name: &str,
) -> Result<Handshake, Box<dyn Error>> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connector = TlsConnector::from(client.into());
    let server_name = ServerName::try_from(name.to_owned())?;

    let server = async {
        // As a listener accepts.
        let mut stream = tls.accept(server_io).await?;
        let (_, conn) = stream.get_ref();
        let side = ServerSide {
            sni: conn.server_name().map(str::to_owned),
            selected: tls.select(conn.server_name()),
            client_cert: peer_has_client_cert(conn),
            version: tls_version_str(conn),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
        };
        stream.write_all(b"hello").await?;
        stream.shutdown().await?;
        Ok(side)
    };
    let client = async {
        let mut stream = connector.connect(server_name, client_io).await?;
        let server_cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first().cloned());
        let mut greeting = Vec::new();
        let greeting = stream.read_to_end(&mut greeting).await.map(|_| greeting);
        Ok(ClientSide {
            server_cert,
            greeting,
        })
    };
    let (server, client) = tokio::join!(server, client);
    Ok(Handshake { server, client })
}

#[tokio::test]
async fn handshake_serves_the_certificate_sni_selects() -> TestResult {
    let fixture = three_certs("hs-sni")?;
    let tls = compile(&fixture.spec)?;
    let cases = [
        ("api.example.com", 2, true),
        ("www.example.com", 1, true),
        ("default.test", 0, true),
        ("default.test", 0, false), // no SNI at all
    ];
    for (name, want, send_sni) in cases {
        let mut client = client_config(&fixture.ca, None, false)?;
        client.enable_sni = send_sni;
        let handshake = handshake(&tls, client, name).await?;
        let server = handshake.server?;
        let client = handshake.client?;
        assert_eq!(server.selected, Some(want), "{name}, sni {send_sni}");
        assert_eq!(server.sni.is_some(), send_sni);
        assert_eq!(client.server_cert.as_ref(), Some(&fixture.issued[want].der));
        assert_eq!(client.greeting?, b"hello");
        assert_eq!(server.version, "TLSv1.3");
        assert_eq!(server.alpn.as_deref(), Some(&b"h2"[..]));
        assert!(!server.client_cert);
    }
    Ok(())
}

#[tokio::test]
async fn handshake_over_tls12() -> TestResult {
    let fixture = three_certs("hs-tls12")?;
    let mut spec = fixture.spec.clone();
    spec.alpn_h2 = false;
    let tls = compile(&spec)?;
    let client = client_config(&fixture.ca, None, true)?;
    let handshake = handshake(&tls, client, "www.example.com").await?;
    let server = handshake.server?;
    assert_eq!(server.version, "TLSv1.2");
    assert_eq!(server.selected, Some(1));
    assert_eq!(server.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(handshake.client?.greeting?, b"hello");
    Ok(())
}

#[tokio::test]
async fn aes_128_gcm_is_preferred_unless_the_client_puts_chacha20_first() -> TestResult {
    use rustls::CipherSuite as C;
    use rustls::crypto::aws_lc_rs::cipher_suite::*;
    let fixture = three_certs("hs-suites")?;
    let tls = compile(&fixture.spec)?;
    let cases = [
        // Most clients' order (OpenSSL's, browsers'): AES-256-GCM first.
        (
            vec![
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
                TLS13_AES_128_GCM_SHA256,
            ],
            false,
            C::TLS13_AES_128_GCM_SHA256,
        ),
        // A client without AES instructions asks for ChaCha20 first, and gets it.
        (
            vec![
                TLS13_CHACHA20_POLY1305_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_AES_128_GCM_SHA256,
            ],
            false,
            C::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        // A client that offers AES-256-GCM alone gets it.
        (
            vec![TLS13_AES_256_GCM_SHA384],
            false,
            C::TLS13_AES_256_GCM_SHA384,
        ),
        // TLS 1.2 alike.
        (
            vec![
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ],
            true,
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            vec![
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ],
            true,
            C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    for (offered, tls12, want) in cases {
        let provider = CryptoProvider {
            cipher_suites: offered.clone(),
            ..aws_lc_rs::default_provider()
        };
        let client = client_config_with(provider, &fixture.ca, None, tls12)?;
        let handshake = handshake(&tls, client, "www.example.com").await?;
        let server = handshake.server?;
        assert_eq!(server.suite, Some(want), "offered {offered:?}");
        assert_eq!(handshake.client?.greeting?, b"hello");
    }
    Ok(())
}

#[tokio::test]
async fn sessions_resume_across_an_identical_recompile_only() -> TestResult {
    let fixture = three_certs("hs-resume")?;
    for tls12 in [false, true] {
        // One client config, so one client session cache, for every connection.
        let client = Arc::new(client_config(&fixture.ca, None, tls12)?);
        let first = compile(&fixture.spec)?;
        let full = handshake(&first, Arc::clone(&client), "api.example.com").await?;
        assert!(!full.server?.resumed);
        assert_eq!(full.client?.greeting?, b"hello");

        // A reload that left the TLS files alone: the old settings still serve meanwhile.
        let reloaded = compile(&fixture.spec)?;
        let resumed = handshake(&reloaded, Arc::clone(&client), "api.example.com").await?;
        let server = resumed.server?;
        assert!(server.resumed, "tls12 {tls12}: session not resumed");
        assert_eq!(server.selected, Some(2));
        assert_eq!(resumed.client?.greeting?, b"hello");

        // A different certificate set: no resumption of the old sessions.
        let mut changed = fixture.spec.clone();
        changed.default_certificate = Some(1);
        let changed = compile(&changed)?;
        let fresh = handshake(&changed, Arc::clone(&client), "api.example.com").await?;
        assert!(
            !fresh.server?.resumed,
            "tls12 {tls12}: resumed across a change"
        );
        drop(first);
    }
    Ok(())
}

/// Server certificates and a separate client CA with one client it signed and one it did
/// not.
struct ClientAuthFixture {
    servers: ThreeCerts,
    _dir: TempDir,
    signed: Issued,
    stranger: Issued,
}

fn client_auth_fixture(
    name: &str,
    mode: ClientAuthMode,
) -> Result<(ClientAuthFixture, TlsSettings), Box<dyn Error>> {
    let mut servers = three_certs(name)?;
    let dir = TempDir::new(&format!("{name}-ca"))?;
    let client_ca = TestCa::new("Portico test client CA")?;
    let other_ca = TestCa::new("Some other CA")?;
    // A bundle of several CAs: the client CA is the second one.
    let bundle = dir.write(
        "clients.crt",
        format!("{}{}", other_ca.pem(), client_ca.pem()),
    )?;
    servers.spec.client_auth = Some(ClientAuthSpec { ca: bundle, mode });
    let tls = compile(&servers.spec)?;
    let fixture = ClientAuthFixture {
        signed: client_ca.client("client.test")?,
        stranger: TestCa::new("Stranger CA")?.client("client.test")?,
        servers,
        _dir: dir,
    };
    Ok((fixture, tls))
}

#[tokio::test]
async fn required_client_auth_rejects_clients_without_a_valid_certificate() -> TestResult {
    let (fixture, tls) = client_auth_fixture("hs-required", ClientAuthMode::Required)?;
    let ca = &fixture.servers.ca;

    let anonymous = handshake(&tls, client_config(ca, None, false)?, "api.example.com").await?;
    assert!(
        anonymous.server.is_err(),
        "server accepted a client without a certificate"
    );
    // TLS 1.3: the client finishes first and learns of the rejection on its first read.
    assert!(anonymous.client.is_err() || anonymous.client.is_ok_and(|c| c.greeting.is_err()));

    let stranger = client_config(ca, Some(&fixture.stranger), false)?;
    let stranger = handshake(&tls, stranger, "api.example.com").await?;
    assert!(
        stranger.server.is_err(),
        "server accepted a certificate from an unknown CA"
    );

    let signed = client_config(ca, Some(&fixture.signed), false)?;
    let signed = handshake(&tls, signed, "api.example.com").await?;
    let server = signed.server?;
    assert!(server.client_cert);
    assert_eq!(server.selected, Some(2));
    assert_eq!(signed.client?.greeting?, b"hello");
    Ok(())
}

#[tokio::test]
async fn optional_client_auth_admits_both() -> TestResult {
    let (fixture, tls) = client_auth_fixture("hs-optional", ClientAuthMode::Optional)?;
    let ca = &fixture.servers.ca;

    let anonymous = handshake(&tls, client_config(ca, None, false)?, "api.example.com").await?;
    assert!(!anonymous.server?.client_cert);
    assert_eq!(anonymous.client?.greeting?, b"hello");

    let signed = client_config(ca, Some(&fixture.signed), false)?;
    let signed = handshake(&tls, signed, "api.example.com").await?;
    assert!(signed.server?.client_cert);
    assert_eq!(signed.client?.greeting?, b"hello");

    // Optional still rejects a certificate that does not verify.
    let stranger = client_config(ca, Some(&fixture.stranger), false)?;
    let stranger = handshake(&tls, stranger, "api.example.com").await?;
    assert!(
        stranger.server.is_err(),
        "server accepted a certificate from an unknown CA"
    );
    Ok(())
}
