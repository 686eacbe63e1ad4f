//! Test kit: temporary configurations, the proxy in-process or as a binary, upstream servers,
//! clients (HTTP/1.1, HTTP/2, TLS with a chosen SNI, raw TCP), certificates, and polling.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico::server::{Options, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// Logs once per process, at warn unless `RUST_LOG` says otherwise.
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        portico::telemetry::log::init(
            portico::telemetry::log::LogFormat::Text,
            Some(&std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())),
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Temporary directories and configurations

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portico-e2e-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    /// Writes a file atomically (write + rename), as editors and ConfigMaps do.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        let tmp = self.0.join(format!(
            ".{}.tmp{}",
            name.replace('/', "_"),
            fastrand::u32(..)
        ));
        std::fs::write(&tmp, contents).expect("write temp file");
        std::fs::rename(&tmp, &path).expect("rename into place");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fast reload settings and no drain delay, appended to every test configuration.
pub const TEST_SETTINGS: &str = r#"
reload: { debounce: 50ms, poll_interval: 1h }
shutdown: { drain_delay: 0s, timeout: 5s }
access_log: false
"#;

// ---------------------------------------------------------------------------------------------
// Proxy-Wasm test plugins

/// The compiled test plugin `test_<name>.wasm` (tests/plugins/README.md), which
/// `bash scripts/build-test-plugins.sh` builds (scripts/test.sh runs it before `cargo test`).
pub fn plugin_wasm(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-plugins/wasm32-wasip1/release")
        .join(format!("test_{name}.wasm"));
    assert!(
        path.is_file(),
        "test plugin {} is missing: run bash scripts/build-test-plugins.sh",
        path.display()
    );
    path
}

/// A first-party plugin (plugins/<name>) or the SDK's example (`hello`), as
/// `bash scripts/build-plugins.sh` builds it (scripts/test.sh runs it before `cargo test`).
pub fn first_party_wasm(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "plugin {} is missing: run bash scripts/build-plugins.sh",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------------------------
// The proxy in-process

/// A Portico started in this process from a YAML file in a temp dir.
pub struct Proxy {
    pub server: Arc<Server>,
    pub dir: TempDir,
    pub config: PathBuf,
}

impl Proxy {
    /// Starts Portico with `yaml` (plus [`TEST_SETTINGS`] unless it sets `reload:` itself).
    /// Watching is on, so rewriting the file reloads it.
    pub async fn start(yaml: &str) -> Proxy {
        Self::start_in(TempDir::new(), yaml).await
    }

    pub async fn start_in(dir: TempDir, yaml: &str) -> Proxy {
        Self::try_start_in(dir, yaml)
            .await
            .unwrap_or_else(|e| panic!("proxy did not start: {e}"))
    }

    pub async fn try_start_in(dir: TempDir, yaml: &str) -> Result<Proxy, String> {
        init_logs();
        let config = dir.write("portico.yaml", with_test_settings(yaml));
        let server = Server::start(Options {
            config: config.clone(),
            watch: true,
            sighup: false,
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(Proxy {
            server,
            dir,
            config,
        })
    }

    /// `http://127.0.0.1:PORT` of a listener.
    pub fn url(&self, listener: &str) -> String {
        format!("http://{}", self.addr(listener))
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.server
            .listener_addr(listener)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }

    pub fn admin(&self) -> String {
        format!(
            "http://{}",
            self.server.admin_addr().expect("admin configured")
        )
    }

    /// Completed reload attempts (any result).
    pub fn reloads(&self) -> u64 {
        self.server.shared().reloads.load(Ordering::Acquire)
    }

    pub fn hash(&self) -> String {
        self.server.shared().current.load().hash.clone()
    }

    /// Rewrites the configuration and waits until the watcher has attempted a reload.
    pub async fn rewrite(&self, yaml: &str) -> portico::server::Status {
        let before = self.reloads();
        self.dir.write("portico.yaml", with_test_settings(yaml));
        wait_for("a reload attempt", || self.reloads() > before).await;
        self.server.shared().status.lock().unwrap().clone()
    }
}

pub fn with_test_settings(yaml: &str) -> String {
    if yaml.contains("\nreload:") || yaml.starts_with("reload:") {
        yaml.to_string()
    } else {
        format!("{yaml}\n{TEST_SETTINGS}")
    }
}

impl Proxy {
    /// Starts Portico on a configuration path of any shape (a file or a directory, symbolic
    /// links included) that lives in `dir`; nothing is written.
    pub async fn start_at(dir: TempDir, config: PathBuf) -> Proxy {
        init_logs();
        let server = Server::start(Options {
            config: config.clone(),
            watch: true,
            sighup: false,
        })
        .await
        .unwrap_or_else(|e| panic!("proxy did not start: {e}"));
        Proxy {
            server,
            dir,
            config,
        }
    }

    /// Rewrites the configuration and waits until a reload attempt ends with `result`
    /// ("success", "failure" or "unchanged"). Unlike [`Proxy::rewrite`], a reload still
    /// triggered by an earlier write (which may have read the old text) does not count.
    pub async fn rewrite_until(&self, yaml: &str, result: &str) -> portico::server::Status {
        let before = self.reloads();
        self.dir.write("portico.yaml", with_test_settings(yaml));
        let status = || self.server.shared().status.lock().unwrap().clone();
        wait_for(&format!("a reload ending with {result:?}"), || {
            self.reloads() > before && status().last_result == Some(result)
        })
        .await;
        status()
    }
}

/// Polls `cond` every 10 ms until it holds (panics after 10 s with `what`).
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`wait_for`] with an async condition (a request, say).
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream servers

/// What an echo upstream saw.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: BTreeMap<String, String>,
    pub body_len: usize,
    pub server: String,
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> futures_util::future::BoxFuture<'static, Response<TestBody>>
        + Send
        + Sync,
>;

/// An upstream test server on 127.0.0.1:0; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Answers every request with a JSON [`Seen`] describing it (the body is read fully).
    pub async fn echo(name: &str) -> Upstream {
        let name = name.to_string();
        Self::with_handler(move |req| {
            let name = name.clone();
            Box::pin(async move { echo_response(&name, req).await })
        })
        .await
    }

    /// Serves HTTP/1.1 and h2c (auto-detected) with any handler.
    pub async fn with_handler<F>(f: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> futures_util::future::BoxFuture<'static, Response<TestBody>>
            + Send
            + Sync
            + 'static,
    {
        let handler: Handler = Arc::new(f);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, c) = (hits.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::Relaxed);
                let handler = handler.clone();
                let hits = h.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::Relaxed);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            hits,
            connections,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

pub async fn echo_response(name: &str, req: Request<Incoming>) -> Response<TestBody> {
    let (parts, body) = req.into_parts();
    let body_len = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let mut headers = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers.insert(
            k.as_str().to_string(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        );
    }
    let seen = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(""),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body_len,
        "server": name,
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .body(full(seen.to_string()))
        .expect("response")
}

/// Answers with the request body it received; with `x-rewrite-body` if asked for by the
/// request's `x-ask-rewrite`.
pub async fn body_echo() -> Upstream {
    Upstream::with_handler(|req| {
        Box::pin(async move {
            let ask = req.headers().contains_key("x-ask-rewrite");
            let body = req.into_body().collect().await.expect("body").to_bytes();
            let mut resp = Response::builder().header("x-received-length", body.len());
            if ask {
                resp = resp.header("x-rewrite-body", "1");
            }
            resp.body(full(body)).expect("response")
        })
    })
    .await
}

/// An address nothing listens on (bound, then closed).
pub async fn dead_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr.to_string()
}

impl Upstream {
    /// Answers "done", each request once the test adds a permit to `gate`.
    pub async fn gated(gate: Arc<tokio::sync::Semaphore>) -> Upstream {
        Self::with_handler(move |_req| {
            let gate = gate.clone();
            Box::pin(async move {
                gate.acquire().await.expect("gate").forget();
                Response::new(full("done"))
            })
        })
        .await
    }

    /// A WebSocket server echoing text messages.
    pub async fn websocket_echo() -> Upstream {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
        use tokio_tungstenite::tungstenite::protocol::Role;
        Self::with_handler(|mut req| {
            Box::pin(async move {
                let Some(accept) = req
                    .headers()
                    .get("sec-websocket-key")
                    .map(|k| derive_accept_key(k.as_bytes()))
                else {
                    return Response::builder()
                        .status(400)
                        .body(full("not a websocket"))
                        .expect("response");
                };
                let on_upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
                Response::builder()
                    .status(101)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-accept", accept)
                    .body(empty())
                    .expect("response")
            })
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A collected response.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn seen(&self) -> Seen {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an echo response ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn collect(resp: Response<Incoming>) -> Got {
    try_collect(resp).await.expect("response body")
}

/// Reads a response to its end; a body that fails is an `Err` with the error text.
pub async fn try_collect(resp: Response<Incoming>) -> Result<Got, String> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Got {
        status: parts.status,
        headers: parts.headers,
        body,
        version: parts.version,
    })
}

/// One HTTP/1.1 GET over a fresh connection, with a Host header.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Got {
    send(
        addr,
        Request::get(path)
            .header("host", host)
            .body(empty())
            .expect("request"),
    )
    .await
}

/// Sends one request over a fresh HTTP/1.1 connection to `addr`.
pub async fn send(addr: SocketAddr, req: Request<TestBody>) -> Got {
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    collect(sender.send_request(req).await.expect("send request")).await
}

/// One request on an open HTTP/1.1 connection, the response read to its end.
pub async fn send_h1(
    sender: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    req: Request<TestBody>,
) -> Got {
    collect(sender.send_request(req).await.expect("send h1 request")).await
}

/// A pooled HTTP/1.1 client (keep-alive) for request streams.
pub fn pooled_client()
-> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>
{
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// HTTP/1.1 over one kept-alive connection.
pub async fn h1_sender(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    sender
}

/// HTTP/2 with prior knowledge (h2c) over one connection.
pub async fn h2c_sender(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

pub async fn send_h2(
    sender: &mut hyper::client::conn::http2::SendRequest<TestBody>,
    req: Request<TestBody>,
) -> Got {
    collect(sender.send_request(req).await.expect("send h2 request")).await
}

/// Writes raw bytes and reads until the server closes or `timeout` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in raw HTTP/1.1 text.
pub fn raw_status(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub type WebSocket = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket handshake to `ws://example.com{path}` at `addr`; the error text on refusal.
pub async fn ws_connect(addr: SocketAddr, path: &str) -> Result<WebSocket, String> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    tokio_tungstenite::client_async(format!("ws://example.com{path}"), stream)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// Sends `text` and expects it back within 5 s.
pub async fn ws_echo(ws: &mut WebSocket, text: &str) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(text)).await.expect("send");
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an echo in time")
        .expect("stream open")
        .expect("a message");
    assert_eq!(got.into_text().expect("text").as_str(), text);
}

// ---------------------------------------------------------------------------------------------
// TLS

/// A CA and certificates it signs, written as PEM files into a directory.
pub struct Pki {
    ca_cert: rcgen::Certificate,
    ca_issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let key = rcgen::KeyPair::generate().expect("ca key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Portico Test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = params.self_signed(&key).expect("self-sign CA");
        let ca_pem = ca_cert.pem();
        let ca_issuer = rcgen::Issuer::new(params, key);
        Pki {
            ca_cert,
            ca_issuer,
            ca_pem,
        }
    }

    /// Issues a server (or client) certificate for `names`; returns (cert PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.ca_issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes `name.crt` and `name.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &TempDir, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(names);
        (
            dir.write(&format!("{name}.crt"), cert),
            dir.write(&format!("{name}.key"), key),
        )
    }

    pub fn write_ca(&self, dir: &TempDir, name: &str) -> PathBuf {
        dir.write(name, &self.ca_pem)
    }

    /// A rustls client config trusting this CA, with optional ALPN and client certificate.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        client_cert: Option<(String, String)>,
    ) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_cert.der().clone()).expect("add CA");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client cert");
                let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .expect("client key");
                builder
                    .with_client_auth_cert(certs, key)
                    .expect("client auth")
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A TLS connection to `addr` with SNI `sni`; returns the stream.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
}

/// The DNS names of the certificate the server presented.
pub fn peer_cert_der(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    let (_, conn) = stream.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default()
}

/// One HTTP/1.1 request over an established TLS stream.
pub async fn send_tls_h1(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    req: Request<TestBody>,
) -> Got {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    collect(sender.send_request(req).await.expect("send")).await
}

/// An HTTP/2 sender over an established TLS stream (ALPN h2 must have been negotiated).
pub async fn tls_h2_sender(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

// ---------------------------------------------------------------------------------------------
// The binary

/// The `portico` binary as a child process, started from a config file; killed on drop.
pub struct Binary {
    pub child: tokio::process::Child,
    pub listeners: BTreeMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    pub fn path() -> &'static str {
        env!("CARGO_BIN_EXE_portico")
    }

    /// Starts `portico run --config PATH --log-format json` and waits until every listener
    /// named in `expect_listeners` (and the admin endpoint, if configured) is bound.
    pub async fn start(config: &Path, expect_listeners: &[&str]) -> Binary {
        Self::start_with_env(config, expect_listeners, &[]).await
    }

    /// [`Binary::start`] with extra environment variables.
    pub async fn start_with_env(
        config: &Path,
        expect_listeners: &[&str],
        env: &[(&str, &str)],
    ) -> Binary {
        let mut child = tokio::process::Command::new(Self::path())
            .envs(env.iter().copied())
            .args(["run", "--config"])
            .arg(config)
            .args(["--log-format", "json", "--log", "info"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn portico");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let log2 = log.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut listeners = BTreeMap::new();
        let mut admin = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while expect_listeners.iter().any(|l| !listeners.contains_key(*l)) {
            let line = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "portico did not bind {expect_listeners:?}; log: {:?}",
                        log.lock().unwrap()
                    )
                })
                .unwrap_or_else(|| panic!("portico exited; log: {:?}", log.lock().unwrap()));
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let msg = v["message"].as_str().unwrap_or("");
            let addr = v["address"].as_str().and_then(|a| a.parse().ok());
            match (msg, addr) {
                ("listening", Some(a)) => {
                    listeners.insert(v["listener"].as_str().unwrap_or("").to_string(), a);
                }
                ("admin listening", Some(a)) => admin = Some(a),
                _ => {}
            }
        }
        Binary {
            child,
            listeners,
            admin,
            log,
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners[listener]
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY-free: libc::kill through std is not available; use the kill command.
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status();
        assert!(
            status.map(|s| s.success()).unwrap_or(false),
            "kill -{sig} {pid} failed"
        );
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

/// Runs `portico check --config PATH`; returns (exit success, stderr + stdout).
pub fn check(config: &Path) -> (bool, String) {
    let (code, text) = check_with(config, &[], &[]);
    (code == Some(0), text)
}

/// Runs `portico check ARGS --config PATH` with `env` added; returns (exit code, stderr +
/// stdout).
pub fn check_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = std::process::Command::new(Binary::path())
        .arg("check")
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .expect("run portico check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.code(), text)
}

/// A GET to the admin endpoint; returns (status, body).
pub async fn admin_get(admin: &str, path: &str) -> (u16, String) {
    let addr: SocketAddr = admin
        .trim_start_matches("http://")
        .parse()
        .expect("admin addr");
    let got = get(addr, "admin", path).await;
    (got.status.as_u16(), got.text())
}

/// The value of one sample in the admin endpoint's Prometheus text, e.g.
/// `portico_config_reload_total{result="success"}` (0 if absent).
pub async fn metric(admin: &str, sample: &str) -> u64 {
    let (_, text) = admin_get(admin, "/metrics").await;
    metric_in(&text, sample)
}

/// The value of one sample in Prometheus text already fetched (0 if absent).
pub fn metric_in(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// The admin endpoint's `/config`.
pub async fn config_json(admin: &str) -> serde_json::Value {
    let (status, text) = admin_get(admin, "/config").await;
    assert_eq!(status, 200);
    serde_json::from_str(&text).expect("/config is JSON")
}
