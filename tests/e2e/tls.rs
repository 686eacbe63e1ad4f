//! TLS termination end to end: certificate selection by SNI, ALPN, protocol versions,
//! certificate hot swap, client certificates, 421 Misdirected Request, the plain listener's
//! redirect to HTTPS, and the handshake-failure metric.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Helpers

const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A route that answers every request itself, so TLS tests need no upstream.
const HELLO_ROUTE: &str = r#"
routes:
  - { name: hello, direct_response: { status: 200, body: "hello\n" } }
"#;

/// Accepts any server certificate (signatures are still checked), so a test can look at the
/// certificate served for names it does not cover.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration: trusting `ca` (a PEM bundle) or, with `None`, any certificate;
/// offering `versions` and `alpn`; presenting `client_cert` (cert PEM, key PEM) if given.
fn client(
    ca: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
    client_cert: Option<&(String, String)>,
) -> ClientConfig {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("protocol versions");
    let builder = match ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.expect("CA PEM")).expect("add CA");
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider))),
    };
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client cert PEM"),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key PEM"),
            )
            .expect("client auth"),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// The DER of the (first) certificate in a PEM string.
fn der(cert_pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .expect("certificate PEM")
        .as_ref()
        .to_vec()
}

/// Connects with SNI `sni` (or none) and returns the DER of the certificate served.
async fn served_cert(addr: SocketAddr, sni: Option<&str>) -> Vec<u8> {
    let mut config = client(None, BOTH, &[], None);
    config.enable_sni = sni.is_some();
    let stream = tls_connect(addr, sni.unwrap_or("no-sni.invalid"), Arc::new(config))
        .await
        .unwrap_or_else(|e| panic!("handshake with SNI {sni:?}: {e}"));
    peer_cert_der(&stream)
}

/// One HTTP/1.1 request over a new TLS connection; any TLS or HTTP failure is an `Err`.
async fn try_tls_get(
    addr: SocketAddr,
    sni: &str,
    config: ClientConfig,
    host: &str,
) -> Result<Got, String> {
    let stream = tls_connect(addr, sni, Arc::new(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("h1 handshake: {e}"))?;
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", host)
        .body(empty())
        .expect("request");
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    try_collect(resp).await
}

/// Listener `websecure` serving `site.crt`/`site.key`, with `tls_lines` (indented under
/// `tls:`) added, in front of [`HELLO_ROUTE`].
fn websecure_with(tls_lines: &str) -> String {
    format!(
        r#"
listeners:
  - name: websecure
    address: "127.0.0.1:0"
    tls:
      certificates: [{{ cert: site.crt, key: site.key }}]
{tls_lines}
{HELLO_ROUTE}"#
    )
}

/// An HTTP/1.1 keep-alive and an HTTP/2 connection to `app.example` at `addr` (trusting the CA
/// `ca_pem`, no client certificate), each proven by a request answered 200, with the tasks
/// that drive them (they end when the connection closes).
struct OpenConnections {
    h1: hyper::client::conn::http1::SendRequest<TestBody>,
    h1_conn: tokio::task::JoinHandle<hyper::Result<()>>,
    h2: hyper::client::conn::http2::SendRequest<TestBody>,
    h2_conn: tokio::task::JoinHandle<hyper::Result<()>>,
    /// The DER of the certificate the HTTP/1.1 connection was served.
    cert: Vec<u8>,
}

impl OpenConnections {
    async fn open(addr: SocketAddr, ca_pem: &str) -> OpenConnections {
        let config = Arc::new(client(Some(ca_pem), BOTH, &[], None));
        let stream = tls_connect(addr, "app.example", config)
            .await
            .expect("handshake");
        let cert = peer_cert_der(&stream);
        let (h1, h1_conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("h1 handshake");
        let h1_conn = tokio::spawn(h1_conn);
        let h2_config = Arc::new(client(Some(ca_pem), BOTH, &[b"h2"], None));
        let stream = tls_connect(addr, "app.example", h2_config)
            .await
            .expect("handshake");
        let (h2, h2_conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        let h2_conn = tokio::spawn(h2_conn);
        let mut open = OpenConnections {
            h1,
            h1_conn,
            h2,
            h2_conn,
            cert,
        };
        open.both_answer().await;
        open
    }

    /// One request on each connection; both must answer 200.
    async fn both_answer(&mut self) {
        let h1_get = Request::get("/")
            .header("host", "app.example")
            .body(empty())
            .expect("request");
        assert_eq!(send_h1(&mut self.h1, h1_get).await.status, 200);
        let h2_get = Request::get("https://app.example/")
            .body(empty())
            .expect("request");
        assert_eq!(send_h2(&mut self.h2, h2_get).await.status, 200);
    }
}

/// A ClientHello as a TLS 1.0/1.1-only client sends it: legacy version `version` and no
/// supported_versions extension. It offers the suites, groups and signature schemes a TLS 1.2
/// server accepts, so the version is the only thing wrong with it.
fn legacy_client_hello(version: [u8; 2], sni: &str) -> Vec<u8> {
    let mut hello = Vec::new();
    hello.extend(version);
    hello.extend([0x42; 32]); // random
    hello.push(0); // no session id
    let suites: [u16; 6] = [0xc02b, 0xc02f, 0xc013, 0xc014, 0x002f, 0x0035];
    hello.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend(s.to_be_bytes());
    }
    hello.extend([1, 0]); // compression: null
    let name = sni.as_bytes();
    let mut sni_ext = Vec::new();
    sni_ext.extend(((name.len() + 3) as u16).to_be_bytes());
    sni_ext.push(0); // host_name
    sni_ext.extend((name.len() as u16).to_be_bytes());
    sni_ext.extend(name);
    let groups: &[u8] = &[0, 4, 0, 0x1d, 0, 0x17]; // x25519, secp256r1
    let point_formats: &[u8] = &[1, 0]; // uncompressed
    let sig_algs: &[u8] = &[0, 6, 4, 3, 8, 4, 4, 1]; // ecdsa_p256_sha256, rsa_pss, rsa_pkcs1
    let mut extensions = Vec::new();
    for (kind, body) in [
        (0u16, &sni_ext[..]), // server_name
        (10, groups),         // supported_groups
        (11, point_formats),  // ec_point_formats
        (13, sig_algs),       // signature_algorithms
    ] {
        extensions.extend(kind.to_be_bytes());
        extensions.extend((body.len() as u16).to_be_bytes());
        extensions.extend(body);
    }
    hello.extend((extensions.len() as u16).to_be_bytes());
    hello.extend(extensions);

    let mut handshake = vec![1]; // client_hello
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Sends `bytes` and returns everything the server writes until it closes.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    out
}

/// Sends `bytes` and returns the first bytes the server writes.
async fn raw_exchange_first(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut out))
        .await
        .expect("an answer")
        .expect("read");
    out.truncate(n);
    out
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_exact_wildcard_and_default_certificates() {
    let pki = Pki::new();
    let dir = TempDir::new();
    let issue = |name: &str, names: &[&str]| {
        let (cert, key) = pki.issue(names);
        dir.write(&format!("{name}.crt"), &cert);
        dir.write(&format!("{name}.key"), key);
        der(&cert)
    };
    let a = issue("a", &["a.example.com"]);
    let wild = issue("wild", &["*.wild.example"]);
    // An exact name wins over a wildcard listed earlier.
    let exact = issue("exact", &["x.wild.example"]);
    // Listed last, but marked as the default.
    let default = issue("default", &["default.example"]);
    let proxy = Proxy::start_in(
        dir,
        &format!(
            r#"
listeners:
  - name: websecure
    address: "127.0.0.1:0"
    tls:
      certificates:
        - {{ cert: a.crt, key: a.key }}
        - {{ cert: wild.crt, key: wild.key }}
        - {{ cert: exact.crt, key: exact.key }}
        - {{ cert: default.crt, key: default.key, default: true }}
{HELLO_ROUTE}"#
        ),
    )
    .await;
    let addr = proxy.addr("websecure");

    let cases: &[(Option<&str>, &Vec<u8>, &str)] = &[
        (Some("a.example.com"), &a, "exact SAN"),
        (Some("A.Example.COM"), &a, "SNI is case-insensitive"),
        (Some("y.wild.example"), &wild, "wildcard SAN, one label"),
        (Some("x.wild.example"), &exact, "exact beats wildcard"),
        (
            Some("a.b.wild.example"),
            &default,
            "wildcard covers one label only",
        ),
        (
            Some("wild.example"),
            &default,
            "wildcard does not cover its base",
        ),
        (Some("unknown.example"), &default, "unknown name"),
        (None, &default, "no SNI"),
    ];
    for (sni, want, why) in cases {
        assert!(
            served_cert(addr, *sni).await == **want,
            "SNI {sni:?} ({why}): wrong certificate served"
        );
    }

    // A verifying client gets through end to end.
    let got = try_tls_get(
        addr,
        "y.wild.example",
        client(Some(&pki.ca_pem), BOTH, &[], None),
        "y.wild.example",
    )
    .await
    .expect("request over TLS");
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "hello\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_and_http11_reach_an_http11_upstream() {
    let pki = Pki::new();
    let up = Upstream::echo("app").await;
    let dir = TempDir::new();
    pki.write(&dir, "site", &["app.example"]);
    let proxy = Proxy::start_in(
        dir,
        &format!(
            r#"
listeners:
  - name: websecure
    address: "127.0.0.1:0"
    tls: {{ certificates: [{{ cert: site.crt, key: site.key }}] }}
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: app, upstream: app }}
"#,
            up.endpoint()
        ),
    )
    .await;
    let addr = proxy.addr("websecure");

    // ALPN h2: HTTP/2 to the proxy, HTTP/1.1 to the upstream.
    let stream = tls_connect(
        addr,
        "app.example",
        Arc::new(client(Some(&pki.ca_pem), BOTH, &[b"h2", b"http/1.1"], None)),
    )
    .await
    .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = tls_h2_sender(stream).await;
    for i in 0..3 {
        let got = send_h2(
            &mut h2,
            Request::get(format!("https://app.example/h2/{i}"))
                .body(empty())
                .expect("request"),
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.version, Version::HTTP_2);
        let seen = got.seen();
        assert_eq!(seen.version, "HTTP/1.1");
        assert_eq!(seen.path, format!("/h2/{i}"));
        assert_eq!(seen.headers["host"], "app.example");
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
    }

    // ALPN http/1.1, and no ALPN at all: HTTP/1.1 throughout.
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let stream = tls_connect(
            addr,
            "app.example",
            Arc::new(client(Some(&pki.ca_pem), BOTH, alpn, None)),
        )
        .await
        .expect("handshake");
        let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(negotiated, alpn.first().map(|p| p.to_vec()));
        let got = send_tls_h1(
            stream,
            Request::get("/h1")
                .header("host", "app.example")
                .body(empty())
                .expect("request"),
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.version, Version::HTTP_11);
        assert_eq!(got.seen().version, "HTTP/1.1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_can_be_switched_off_in_alpn() {
    let pki = Pki::new();
    let dir = TempDir::new();
    pki.write(&dir, "site", &["app.example"]);
    let proxy = Proxy::start_in(
        dir,
        &format!(
            r#"
listeners:
  - name: websecure
    address: "127.0.0.1:0"
    tls: {{ http2: false, certificates: [{{ cert: site.crt, key: site.key }}] }}
{HELLO_ROUTE}"#
        ),
    )
    .await;
    let stream = tls_connect(
        proxy.addr("websecure"),
        "app.example",
        Arc::new(client(Some(&pki.ca_pem), BOTH, &[b"h2", b"http/1.1"], None)),
    )
    .await
    .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let got = send_tls_h1(
        stream,
        Request::get("/")
            .header("host", "app.example")
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(got.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_accepted_older_versions_refused() {
    let pki = Pki::new();
    let dir = TempDir::new();
    pki.write(&dir, "site", &["app.example"]);
    let proxy = Proxy::start_in(
        dir,
        &format!(
            r#"
listeners:
  - name: websecure
    address: "127.0.0.1:0"
    tls: {{ certificates: [{{ cert: site.crt, key: site.key }}] }}
{HELLO_ROUTE}"#
        ),
    )
    .await;
    let addr = proxy.addr("websecure");

    for (versions, want) in [
        (TLS12, ProtocolVersion::TLSv1_2),
        (TLS13, ProtocolVersion::TLSv1_3),
        (BOTH, ProtocolVersion::TLSv1_3),
    ] {
        let config = client(Some(&pki.ca_pem), versions, &[], None);
        let stream = tls_connect(addr, "app.example", Arc::new(config))
            .await
            .unwrap_or_else(|e| panic!("{want:?} handshake: {e}"));
        assert_eq!(stream.get_ref().1.protocol_version(), Some(want));
        let got = send_tls_h1(
            stream,
            Request::get("/")
                .header("host", "app.example")
                .body(empty())
                .expect("request"),
        )
        .await;
        assert_eq!(got.status, 200, "{want:?}");
    }

    // The same ClientHello with version 1.2 gets a ServerHello (a handshake record) ...
    let answer = raw_exchange_first(addr, &legacy_client_hello([3, 3], "app.example")).await;
    assert_eq!(answer.first(), Some(&0x16), "TLS 1.2: {answer:02x?}");
    // ... while a TLS 1.0 or 1.1 client gets a fatal protocol_version alert.
    for (version, name) in [([3, 1], "TLS 1.0"), ([3, 2], "TLS 1.1")] {
        let answer = raw_exchange(addr, &legacy_client_hello(version, "app.example")).await;
        assert!(
            answer.len() >= 7 && answer[0] == 0x15,
            "{name}: expected an alert record, got {answer:02x?}"
        );
        assert_eq!(
            &answer[5..7],
            &[2, 70],
            "{name}: expected a fatal protocol_version alert"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_hot_swap_serves_new_handshakes_and_keeps_open_connections() {
    let pki = Pki::new();
    let dir = TempDir::new();
    let (old_cert, old_key) = pki.issue(&["app.example"]);
    dir.write("site.crt", &old_cert);
    dir.write("site.key", &old_key);
    let proxy = Proxy::start_in(
        dir,
        &format!(
            r#"
listeners:
  - name: websecure
    address: "127.0.0.1:0"
    tls: {{ certificates: [{{ cert: site.crt, key: site.key }}] }}
{HELLO_ROUTE}"#
        ),
    )
    .await;
    let addr = proxy.addr("websecure");
    let old = der(&old_cert);
    assert!(served_cert(addr, Some("app.example")).await == old);

    // Connections opened before the swap, HTTP/1.1 keep-alive and HTTP/2.
    let mut open = OpenConnections::open(addr, &pki.ca_pem).await;
    assert!(open.cert == old);
    let config = client(Some(&pki.ca_pem), BOTH, &[], None);

    // Swap the files on disk, each with an atomic rename.
    let (new_cert, new_key) = pki.issue(&["app.example"]);
    let new = der(&new_cert);
    assert!(new != old);
    proxy.dir.write("site.crt", &new_cert);
    proxy.dir.write("site.key", &new_key);
    eventually("new handshakes to get the new certificate", || async {
        served_cert(addr, Some("app.example")).await == new
    })
    .await;
    let got = try_tls_get(addr, "app.example", config, "app.example")
        .await
        .expect("request with the new certificate");
    assert_eq!(got.status, 200);

    // The connections opened before the swap still work.
    for _ in 0..2 {
        open.both_answer().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_required_and_optional() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let trusted = pki.issue(&["client.example"]);
    let untrusted = stranger.issue(&["client.example"]);

    for mode in ["required", "optional"] {
        let dir = TempDir::new();
        pki.write(&dir, "site", &["app.example"]);
        pki.write_ca(&dir, "clients-ca.pem");
        let proxy = Proxy::start_in(
            dir,
            &websecure_with(&format!(
                "      client_auth: {{ ca: clients-ca.pem, mode: {mode} }}"
            )),
        )
        .await;
        let addr = proxy.addr("websecure");

        for versions in [TLS13, TLS12] {
            let get = |cert: Option<&(String, String)>| {
                try_tls_get(
                    addr,
                    "app.example",
                    client(Some(&pki.ca_pem), versions, &[], cert),
                    "app.example",
                )
            };
            let with_trusted = get(Some(&trusted)).await;
            assert_eq!(
                with_trusted.map(|g| g.status),
                Ok(StatusCode::OK),
                "{mode}, {versions:?}: a certificate signed by the CA is accepted"
            );
            let without = get(None).await.map(|g| g.status);
            if mode == "required" {
                assert!(
                    without.is_err(),
                    "{mode}, {versions:?}: no certificate must fail, got {without:?}"
                );
            } else {
                assert_eq!(
                    without,
                    Ok(StatusCode::OK),
                    "{mode}, {versions:?}: no certificate is allowed"
                );
            }
            let with_untrusted = get(Some(&untrusted)).await.map(|g| g.status);
            assert!(
                with_untrusted.is_err(),
                "{mode}, {versions:?}: a certificate from another CA must fail, got {with_untrusted:?}"
            );
        }

        // With TLS 1.2 the server's verdict comes before the handshake completes.
        let config = client(Some(&pki.ca_pem), TLS12, &[], Some(&untrusted));
        assert!(
            tls_connect(addr, "app.example", Arc::new(config))
                .await
                .is_err(),
            "{mode}: TLS 1.2 handshake with an untrusted certificate must fail"
        );
        if mode == "required" {
            let config = client(Some(&pki.ca_pem), TLS12, &[], None);
            assert!(
                tls_connect(addr, "app.example", Arc::new(config))
                    .await
                    .is_err(),
                "required: TLS 1.2 handshake without a certificate must fail"
            );
        }
    }
}

/// A reload that turns on client certificates closes the connections opened without one
/// (gracefully: HTTP/1.1 after the response in progress, HTTP/2 with GOAWAY). Certificate
/// renewals do not (see the hot-swap test above); only what a connection was admitted under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_on_client_certificates_closes_connections_opened_without_one() {
    let pki = Pki::new();
    let dir = TempDir::new();
    pki.write(&dir, "site", &["app.example"]);
    pki.write_ca(&dir, "clients-ca.pem");
    let proxy = Proxy::start_in(dir, &websecure_with("")).await;
    let addr = proxy.addr("websecure");

    let open = OpenConnections::open(addr, &pki.ca_pem).await;

    proxy
        .rewrite_until(
            &websecure_with("      client_auth: { ca: clients-ca.pem, mode: required }"),
            "success",
        )
        .await;
    let guard = Duration::from_secs(10);
    assert!(
        tokio::time::timeout(guard, open.h1_conn).await.is_ok(),
        "the HTTP/1.1 connection opened without a certificate is still open"
    );
    assert!(
        tokio::time::timeout(guard, open.h2_conn).await.is_ok(),
        "the HTTP/2 connection opened without a certificate is still open"
    );
    let config = client(Some(&pki.ca_pem), BOTH, &[], None);
    assert!(
        try_tls_get(addr, "app.example", config, "app.example")
            .await
            .is_err(),
        "a new connection without a certificate is refused"
    );
    let trusted = pki.issue(&["client.example"]);
    let with_cert = client(Some(&pki.ca_pem), BOTH, &[], Some(&trusted));
    let got = try_tls_get(addr, "app.example", with_cert, "app.example")
        .await
        .expect("a new connection with a certificate");
    assert_eq!(got.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_not_covered_by_the_sni_certificate_gets_421() {
    let pki = Pki::new();
    let dir = TempDir::new();
    pki.write(&dir, "a", &["a.example.com"]);
    pki.write(&dir, "wild", &["*.wild.example"]);
    let proxy = Proxy::start_in(
        dir,
        &format!(
            r#"
listeners:
  - name: websecure
    address: "127.0.0.1:0"
    tls:
      certificates:
        - {{ cert: a.crt, key: a.key }}
        - {{ cert: wild.crt, key: wild.key }}
{HELLO_ROUTE}"#
        ),
    )
    .await;
    let addr = proxy.addr("websecure");
    let verifying = || client(Some(&pki.ca_pem), BOTH, &[], None);

    for (sni, host, want) in [
        ("a.example.com", "a.example.com", 200),
        ("a.example.com", "A.EXAMPLE.COM:8443", 200),
        ("a.example.com", "b.example.com", 421),
        // Covered by another certificate of this listener, but not by the one served.
        ("a.example.com", "x.wild.example", 421),
        ("x.wild.example", "y.wild.example", 200),
        ("x.wild.example", "y.z.wild.example", 421),
    ] {
        let got = try_tls_get(addr, sni, verifying(), host)
            .await
            .unwrap_or_else(|e| panic!("SNI {sni}, Host {host}: {e}"));
        assert_eq!(got.status.as_u16(), want, "SNI {sni}, Host {host}");
    }

    // HTTP/2 connection reuse for another origin: :authority decides.
    let stream = tls_connect(
        addr,
        "a.example.com",
        Arc::new(client(Some(&pki.ca_pem), BOTH, &[b"h2"], None)),
    )
    .await
    .expect("handshake");
    let mut h2 = tls_h2_sender(stream).await;
    for (authority, want) in [("a.example.com", 200), ("other.example", 421)] {
        let got = send_h2(
            &mut h2,
            Request::get(format!("https://{authority}/"))
                .body(empty())
                .expect("request"),
        )
        .await;
        assert_eq!(got.status.as_u16(), want, ":authority {authority}");
    }

    // Without SNI there is nothing to be misdirected from.
    let mut config = verifying();
    config.enable_sni = false;
    let got = try_tls_get(addr, "a.example.com", config, "b.example.com")
        .await
        .expect("request without SNI");
    assert_eq!(got.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_redirects_to_https_with_308() {
    let up = Upstream::echo("app").await;
    let yaml = |redirect: &str| {
        format!(
            r#"
listeners:
  - {{ name: web, address: "127.0.0.1:0", redirect_https: {redirect} }}
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: app, upstream: app }}
"#,
            up.endpoint()
        )
    };

    let proxy = Proxy::start(&yaml("{ port: 8443 }")).await;
    let addr = proxy.addr("web");
    let got = get(addr, "shop.example:8080", "/a/b?x=1&y=2").await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        got.header("location"),
        Some("https://shop.example:8443/a/b?x=1&y=2")
    );
    // HTTP/2 with prior knowledge too.
    let mut h2 = h2c_sender(addr).await;
    let got = send_h2(
        &mut h2,
        Request::post("http://shop.example/form")
            .body(full("x"))
            .expect("request"),
    )
    .await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        got.header("location"),
        Some("https://shop.example:8443/form")
    );

    // Without a port: the scheme's default, not written.
    let proxy = Proxy::start(&yaml("{}")).await;
    let got = get(proxy.addr("web"), "shop.example:8080", "/a?q").await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(got.header("location"), Some("https://shop.example/a?q"));

    assert_eq!(
        up.hits(),
        0,
        "a redirected request never reaches the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_failures_are_counted_in_metrics() {
    let pki = Pki::new();
    let dir = TempDir::new();
    pki.write(&dir, "site", &["app.example"]);
    let proxy = Proxy::start_in(
        dir,
        &format!(
            r#"
listeners:
  - name: websecure
    address: "127.0.0.1:0"
    tls: {{ certificates: [{{ cert: site.crt, key: site.key }}] }}
admin: {{ address: "127.0.0.1:0" }}
{HELLO_ROUTE}"#
        ),
    )
    .await;
    let addr = proxy.addr("websecure");
    let series = r#"portico_tls_handshake_failures_total{listener="websecure"}"#;
    let failures = || async {
        let (status, text) = admin_get(&proxy.admin(), "/metrics").await;
        assert_eq!(status, 200);
        metric_in(&text, series)
    };
    assert_eq!(failures().await, 0);

    // Plain HTTP to the TLS port.
    raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n").await;
    eventually("1 failure", || async { failures().await == 1 }).await;
    // A client that does not trust the certificate aborts the handshake.
    let stranger = Pki::new();
    let config = client(Some(&stranger.ca_pem), BOTH, &[], None);
    assert!(
        tls_connect(addr, "app.example", Arc::new(config))
            .await
            .is_err()
    );
    eventually("2 failures", || async { failures().await == 2 }).await;
    // A TLS 1.1 client.
    raw_exchange(addr, &legacy_client_hello([3, 2], "app.example")).await;
    eventually("3 failures", || async { failures().await == 3 }).await;

    // Good handshakes are not failures.
    let got = try_tls_get(
        addr,
        "app.example",
        client(Some(&pki.ca_pem), BOTH, &[], None),
        "app.example",
    )
    .await
    .expect("request");
    assert_eq!(got.status, 200);
    assert_eq!(failures().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshake_is_closed_after_tls_handshake_timeout() {
    let pki = Pki::new();
    let dir = TempDir::new();
    pki.write(&dir, "site", &["app.example"]);
    let proxy = Proxy::start_in(
        dir,
        &format!(
            r#"
listeners:
  - name: websecure
    address: "127.0.0.1:0"
    tls: {{ certificates: [{{ cert: site.crt, key: site.key }}] }}
admin: {{ address: "127.0.0.1:0" }}
limits: {{ tls_handshake_timeout: 300ms }}
{HELLO_ROUTE}"#
        ),
    )
    .await;
    // Half a ClientHello, then nothing.
    let hello = legacy_client_hello([3, 3], "app.example");
    let started = Instant::now();
    let answer = raw_exchange(proxy.addr("websecure"), &hello[..hello.len() / 2]).await;
    let waited = started.elapsed();
    assert!(answer.is_empty(), "{answer:02x?}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}, expected about 300ms"
    );
    let (_, text) = admin_get(&proxy.admin(), "/metrics").await;
    assert_eq!(
        metric_in(
            &text,
            r#"portico_tls_handshake_failures_total{listener="websecure"}"#
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_leads_to_the_tls_listener_of_the_same_proxy() {
    let pki = Pki::new();
    let dir = TempDir::new();
    pki.write(&dir, "site", &["shop.example"]);
    let yaml = |port: u16| {
        format!(
            r#"
listeners:
  - {{ name: web, address: "127.0.0.1:0", redirect_https: {{ port: {port} }} }}
  - name: websecure
    address: "127.0.0.1:0"
    tls: {{ certificates: [{{ cert: site.crt, key: site.key }}] }}
{HELLO_ROUTE}"#
        )
    };
    let proxy = Proxy::start_in(dir, &yaml(1)).await;
    let (web, websecure) = (proxy.addr("web"), proxy.addr("websecure"));
    assert_ne!(web, websecure, "two listeners on port 0 get two sockets");
    // Now that the TLS port is known, point the redirect at it.
    let status = proxy.rewrite(&yaml(websecure.port())).await;
    assert!(status.last_error.is_none(), "{status:?}");
    assert_eq!(
        (proxy.addr("web"), proxy.addr("websecure")),
        (web, websecure)
    );

    let got = get(web, "shop.example", "/cart?id=1").await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT);
    let location = got.header("location").expect("location").to_string();
    assert_eq!(
        location,
        format!("https://shop.example:{}/cart?id=1", websecure.port())
    );
    let got = try_tls_get(
        websecure,
        "shop.example",
        client(Some(&pki.ca_pem), BOTH, &[], None),
        "shop.example",
    )
    .await
    .expect("the redirect target answers over TLS");
    assert_eq!(got.status, 200);
}
