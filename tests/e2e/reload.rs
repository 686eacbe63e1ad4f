//! Live reload: under traffic, on failure, through a Kubernetes ConfigMap's symlink swap, in
//! bursts, on no-op writes, with listeners and long-lived streams reconciled, and on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A route `api` (Prefix /api) to `to`, among upstreams `a` and `b`, plus `extra` YAML.
fn two_upstreams(a: &Upstream, b: &Upstream, to: &str, extra: &str) -> String {
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  a: {{ endpoints: ["{}"] }}
  b: {{ endpoints: ["{}"] }}
routes:
  - {{ name: api, paths: [{{ type: Prefix, value: /api }}], upstream: {to} }}
{extra}"#,
        a.endpoint(),
        b.endpoint()
    )
}

/// Clients looping with keep-alive until stopped, counting answers by upstream and failures.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    by_upstream: Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(url: String, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let by_upstream = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failures, by_upstream, url) = (
                    stop.clone(),
                    ok.clone(),
                    failures.clone(),
                    by_upstream.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    let client = pooled_client();
                    while !stop.load(Ordering::Relaxed) {
                        let req = Request::get(url.as_str()).body(empty()).expect("request");
                        match client.request(req).await {
                            Ok(resp) => {
                                let status = resp.status();
                                let upstream = resp
                                    .headers()
                                    .get("x-upstream")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("-")
                                    .to_string();
                                match resp.into_body().collect().await {
                                    Ok(_) if status == 200 => {
                                        ok.fetch_add(1, Ordering::Relaxed);
                                        *by_upstream
                                            .lock()
                                            .unwrap()
                                            .entry(upstream)
                                            .or_default() += 1;
                                    }
                                    Ok(_) => failures.lock().unwrap().push(format!("{status}")),
                                    Err(e) => failures.lock().unwrap().push(format!("body: {e}")),
                                }
                            }
                            Err(e) => failures.lock().unwrap().push(format!("{e:?}")),
                        }
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            ok,
            failures,
            by_upstream,
            tasks,
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests have succeeded (or one failed).
    async fn progress(&self, n: usize) {
        let target = self.ok() + n;
        wait_for("requests to flow", || {
            self.ok() >= target || !self.failures.lock().unwrap().is_empty()
        })
        .await;
    }

    async fn stop(
        self,
    ) -> (
        usize,
        Vec<String>,
        std::collections::BTreeMap<String, usize>,
    ) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("client task");
        }
        let failures = self.failures.lock().unwrap().clone();
        let by = self.by_upstream.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures, by)
    }
}

/// A body read over a fresh connection.
async fn body_of(addr: std::net::SocketAddr, path: &str) -> String {
    get(addr, "example.com", path).await.text()
}

// ---------------------------------------------------------------------------------------------
// Under traffic

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_a_steady_request_stream_fail_no_request() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let proxy = Proxy::start(&two_upstreams(&a, &b, "a", "")).await;
    let traffic = Traffic::start(format!("{}/api/x", proxy.url("web")), 4);
    traffic.progress(20).await;

    for i in 0..10 {
        let to = if i % 2 == 0 { "b" } else { "a" };
        let status = proxy
            .rewrite_until(&two_upstreams(&a, &b, to, ""), "success")
            .await;
        assert_eq!(status.version, i + 2);
        traffic.progress(10).await;
    }

    let (ok, failures, by) = traffic.stop().await;
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok >= 120, "{ok} requests");
    assert!(by["a"] > 0 && by["b"] > 0, "{by:?}");
    assert_eq!(
        metric(
            &proxy.admin(),
            r#"portico_config_reload_total{result="success"}"#
        )
        .await,
        10
    );
}

// ---------------------------------------------------------------------------------------------
// Failure keeps the old configuration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_keeps_the_old_config_and_reports_the_error() {
    let up = Upstream::echo("orders").await;
    let good = |route_upstream: &str| {
        format!(
            r#"listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  orders: {{ endpoints: ["{}"] }}
routes:
  - name: orders
    upstream: {route_upstream}
"#,
            up.endpoint()
        )
    };
    let proxy = Proxy::start(&good("orders")).await;
    let hash = proxy.hash();
    let file = proxy.config.display().to_string();

    // Malformed YAML.
    let status = proxy
        .rewrite_until(
            "listeners: [{ name: web, address: \"127.0.0.1:0\" }\nroutes: []\n",
            "failure",
        )
        .await;
    let error = status.last_error.expect("an error");
    assert_eq!(
        error,
        format!(
            "{file}:2:1: listeners: did not find expected ',' or ']', while parsing a flow sequence at line 1 column 12"
        )
    );
    assert_eq!(get(proxy.addr("web"), "x", "/").await.status, 200);
    assert_eq!(proxy.hash(), hash);
    let json = config_json(&proxy.admin()).await;
    assert_eq!(json["last_reload"]["result"], "failure");
    assert_eq!(json["last_reload"]["error"], error.as_str());
    assert_eq!(json["hash"], hash.as_str());
    assert_eq!(json["version"], 1);

    // Valid YAML naming an upstream that does not exist.
    let status = proxy.rewrite_until(&good("ordrs"), "failure").await;
    assert_eq!(
        status.last_error.as_deref(),
        Some(
            format!(
                r#"{file}:7:5: routes[0].upstream: unknown upstream "ordrs" (defined: "orders")"#
            )
            .as_str()
        )
    );
    let got = get(proxy.addr("web"), "x", "/still").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.seen().server, "orders");
    assert_eq!(proxy.hash(), hash);
    let admin = proxy.admin();
    assert_eq!(
        metric(&admin, r#"portico_config_reload_total{result="failure"}"#).await,
        2
    );
    assert_eq!(
        config_json(&admin).await["last_reload"]["error"],
        status.last_error.as_deref().unwrap_or_default()
    );

    // Going back to the text that serves is a no-op, and the error is gone.
    let status = proxy.rewrite_until(&good("orders"), "unchanged").await;
    assert_eq!(status.last_error, None);
    assert_eq!(
        config_json(&admin).await["last_reload"]["error"],
        serde_json::Value::Null
    );

    // A new valid text applies.
    let status = proxy
        .rewrite_until(&format!("{}# fixed\n", good("orders")), "success")
        .await;
    assert_eq!(status.last_error, None);
    assert_ne!(proxy.hash(), hash);
    let json = config_json(&admin).await;
    assert_eq!(json["last_reload"]["error"], serde_json::Value::Null);
    assert_eq!(json["version"], 2);
    assert_eq!(
        metric(&admin, r#"portico_config_reload_total{result="success"}"#).await,
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes ConfigMap volume

/// A ConfigMap (or Secret) volume as the kubelet writes it: `..<timestamp>/<file>`, the
/// symlink `..data -> ..<timestamp>`, and `<file> -> ..data/<file>` for each file. An update
/// writes a new timestamped directory, points `..data_tmp` at it, renames that over `..data`,
/// and removes the old directory.
struct Volume {
    root: PathBuf,
    generation: u32,
}

impl Volume {
    fn new(root: &Path, files: &[(&str, &str)]) -> Volume {
        std::fs::create_dir_all(root).expect("volume dir");
        let mut volume = Volume {
            root: root.to_path_buf(),
            generation: 0,
        };
        let ts = volume.write_generation(files);
        std::os::unix::fs::symlink(&ts, root.join("..data")).expect("..data");
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name)).expect("link");
        }
        volume
    }

    fn write_generation(&mut self, files: &[(&str, &str)]) -> String {
        let ts = format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation,
            self.generation + 1
        );
        self.generation += 1;
        std::fs::create_dir(self.root.join(&ts)).expect("timestamped dir");
        for (name, contents) in files {
            std::fs::write(self.root.join(&ts).join(name), contents).expect("write");
        }
        ts
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        let old = std::fs::read_link(self.root.join("..data")).expect("..data is a link");
        let ts = self.write_generation(files);
        std::os::unix::fs::symlink(&ts, self.root.join("..data_tmp")).expect("..data_tmp");
        std::fs::rename(self.root.join("..data_tmp"), self.root.join("..data")).expect("swap");
        std::fs::remove_dir_all(self.root.join(old)).expect("remove old generation");
    }
}

fn direct(body: &str) -> String {
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
routes:
  - {{ name: hello, direct_response: {{ status: 200, body: "{body}" }} }}
"#
    )
}

async fn configmap_swap(config_is_dir: bool) {
    let dir = TempDir::new();
    let yaml = |body: &str| with_test_settings(&direct(body));
    let mut cm = Volume::new(dir.path(), &[("portico.yaml", &yaml("v1"))]);
    let path = if config_is_dir {
        dir.path().to_path_buf()
    } else {
        dir.join("portico.yaml")
    };
    let proxy = Proxy::start_at(dir, path).await;
    let addr = proxy.addr("web");
    assert_eq!(body_of(addr, "/").await, "v1");

    // Twice: a watch on the file itself would die with the first swap.
    for v in ["v2", "v3"] {
        let hash = proxy.hash();
        cm.update(&[("portico.yaml", &yaml(v))]);
        wait_for("the swapped config to apply", || proxy.hash() != hash).await;
        assert_eq!(body_of(addr, "/").await, v);
    }
    let status = proxy.server.shared().status.lock().unwrap().clone();
    assert_eq!(status.last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_reloads_a_file_config() {
    configmap_swap(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_reloads_a_directory_config() {
    configmap_swap(true).await;
}

/// Certificates mounted from a Secret volume (same symlink layout) are re-read on its swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_volume_swap_replaces_the_certificate() {
    use rustls_pki_types::pem::PemObject;
    let pki = Pki::new();
    let (cert1, key1) = pki.issue(&["a.example.com"]);
    let (cert2, key2) = pki.issue(&["a.example.com"]);
    let dir = TempDir::new();
    let mut secret = Volume::new(&dir.join("tls"), &[("tls.crt", &cert1), ("tls.key", &key1)]);
    let proxy = Proxy::start_in(
        dir,
        r#"
listeners:
  - name: websecure
    address: "127.0.0.1:0"
    tls: { certificates: [{ cert: tls/tls.crt, key: tls/tls.key }] }
routes:
  - { name: hello, direct_response: { status: 200 } }
"#,
    )
    .await;
    let addr = proxy.addr("websecure");
    let client = pki.client_config(&[b"http/1.1"], None);
    let served = || async {
        let tls = tls_connect(addr, "a.example.com", client.clone())
            .await
            .expect("handshake");
        peer_cert_der(&tls)
    };
    let der = |pem: &str| {
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("PEM")
            .to_vec()
    };
    assert_eq!(served().await, der(&cert1));

    let hash = proxy.hash();
    secret.update(&[("tls.crt", &cert2), ("tls.key", &key2)]);
    wait_for("the new certificate to load", || proxy.hash() != hash).await;
    assert_eq!(served().await, der(&cert2));
}

// ---------------------------------------------------------------------------------------------
// Bursts and no-ops

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100_writes_costs_a_few_compiles_and_no_failed_request() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let version = |i: usize| {
        format!(
            "  - {{ name: version, paths: [{{ type: Exact, value: /version }}], direct_response: {{ status: 200, body: \"v{i}\" }} }}"
        )
    };
    let proxy = Proxy::start(&two_upstreams(&a, &b, "a", &version(0))).await;
    let admin = proxy.admin();
    let traffic = Traffic::start(format!("{}/api/burst", proxy.url("web")), 2);
    traffic.progress(10).await;
    let before = proxy.reloads();

    let started = Instant::now();
    for i in 1..=100 {
        let to = if i % 2 == 0 { "a" } else { "b" };
        proxy.dir.write(
            "portico.yaml",
            with_test_settings(&two_upstreams(&a, &b, to, &version(i))),
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // pacing, not synchronisation
    }
    let burst = started.elapsed();
    let addr = proxy.addr("web");
    eventually("the last write to serve", || async {
        body_of(addr, "/version").await == "v100"
    })
    .await;
    traffic.progress(10).await;
    let (ok, failures, _) = traffic.stop().await;

    let attempts = proxy.reloads() - before;
    assert!(
        (1..=15).contains(&attempts),
        "{attempts} reload attempts for 100 writes in {burst:?}"
    );
    let mut counted = 0;
    for result in ["success", "failure", "unchanged"] {
        counted += metric(
            &admin,
            &format!(r#"portico_config_reload_total{{result="{result}"}}"#),
        )
        .await;
    }
    assert_eq!(counted, proxy.reloads());
    assert_eq!(
        metric(&admin, r#"portico_config_reload_total{result="failure"}"#).await,
        0
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok > 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_content_is_a_no_op() {
    let yaml = direct("same");
    let proxy = Proxy::start(&yaml).await;
    let hash = proxy.hash();

    let status = proxy.rewrite_until(&yaml, "unchanged").await;
    assert_eq!(status.version, 1);
    assert_eq!(proxy.hash(), hash);

    // A touch (metadata only) is an event too, and changes nothing either.
    let before = proxy.reloads();
    std::fs::File::options()
        .append(true)
        .open(&proxy.config)
        .expect("open")
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .expect("touch");
    wait_for("a reload attempt after the touch", || {
        proxy.reloads() > before
    })
    .await;
    let status = proxy.server.shared().status.lock().unwrap().clone();
    assert_eq!(status.last_result, Some("unchanged"));
    assert_eq!(status.version, 1);
    assert_eq!(proxy.hash(), hash);
    assert_eq!(body_of(proxy.addr("web"), "/").await, "same");
}

// ---------------------------------------------------------------------------------------------
// Listeners

fn listeners(extra: &str) -> String {
    format!(
        r#"
listeners:
  - {{ name: web, address: "127.0.0.1:0" }}
{extra}
routes:
  - {{ name: hello, direct_response: {{ status: 200, body: "hi" }} }}
"#
    )
}

async fn send_on(
    sender: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    path: &str,
) -> String {
    sender.ready().await.expect("connection still open");
    let resp = sender
        .send_request(
            Request::get(path)
                .header("host", "example.com")
                .body(empty())
                .expect("request"),
        )
        .await
        .expect("response on the kept connection");
    assert_eq!(resp.status(), 200);
    String::from_utf8_lossy(&resp.into_body().collect().await.expect("body").to_bytes())
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_reconciled_and_unchanged_ones_keep_their_connections() {
    let proxy = Proxy::start(&listeners("")).await;
    let web = proxy.addr("web");
    let mut kept = h1_sender(web).await;
    assert_eq!(send_on(&mut kept, "/").await, "hi");

    // Adding a listener binds it.
    let status = proxy
        .rewrite_until(
            &listeners(r#"  - { name: extra, address: "127.0.0.1:0" }"#),
            "success",
        )
        .await;
    assert_eq!(status.last_error, None);
    let extra = proxy.addr("extra");
    assert_ne!(extra, web);
    assert_eq!(body_of(extra, "/").await, "hi");
    assert_eq!(send_on(&mut kept, "/").await, "hi");

    // Removing it stops it; `web` and its open connection are untouched.
    proxy.rewrite_until(&listeners(""), "success").await;
    eventually("the removed listener to refuse connections", || async {
        TcpStream::connect(extra).await.is_err()
    })
    .await;
    assert_eq!(proxy.addr("web"), web);
    assert_eq!(send_on(&mut kept, "/").await, "hi");
    assert_eq!(body_of(web, "/").await, "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_a_port_in_use_fails_and_keeps_serving() {
    let proxy = Proxy::start(&listeners("")).await;
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr");
    let yaml = listeners(&format!(r#"  - {{ name: extra, address: "{taken}" }}"#));

    let status = proxy.rewrite_until(&yaml, "failure").await;
    assert_eq!(
        status.last_error.as_deref(),
        Some(
            format!(
                "{}:4:20: listeners[1].address: listener \"extra\" cannot bind {taken}: Address already in use (os error 98)",
                proxy.config.display()
            )
            .as_str()
        )
    );
    assert_eq!(body_of(proxy.addr("web"), "/").await, "hi");
    assert!(proxy.server.listener_addr("extra").is_none());

    // Once the port is free, the same configuration applies.
    drop(holder);
    proxy.rewrite_until(&yaml, "success").await;
    assert_eq!(proxy.addr("extra"), taken);
    assert_eq!(body_of(taken, "/").await, "hi");
}

// ---------------------------------------------------------------------------------------------
// Requests and streams in flight

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_listener_drains_its_connections() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let slow = Upstream::gated(gate.clone()).await;
    let config = |extra: bool| {
        let extra = if extra {
            r#"  - { name: extra, address: "127.0.0.1:0" }"#
        } else {
            ""
        };
        format!(
            r#"
listeners:
  - {{ name: web, address: "127.0.0.1:0" }}
{extra}
upstreams: {{ slow: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: slow, paths: [{{ type: Prefix, value: /slow }}], upstream: slow }}
  - {{ name: hello, direct_response: {{ status: 200, body: "hi" }} }}
"#,
            slow.endpoint()
        )
    };
    let proxy = Proxy::start(&config(true)).await;
    let extra = proxy.addr("extra");
    let mut idle = h1_sender(extra).await;
    assert_eq!(send_on(&mut idle, "/").await, "hi");
    let in_flight = tokio::spawn(async move { get(extra, "example.com", "/slow/1").await });
    wait_for("the request to reach the upstream", || slow.hits() == 1).await;

    proxy.rewrite_until(&config(false), "success").await;
    eventually("the removed listener to refuse connections", || async {
        TcpStream::connect(extra).await.is_err()
    })
    .await;
    wait_for("its idle connection to be closed", || idle.is_closed()).await;
    assert!(!in_flight.is_finished());
    gate.add_permits(1);
    let got = in_flight.await.expect("request task");
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "done"));
    assert_eq!(got.header("connection"), Some("close"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_on_its_old_snapshot() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let slow = Upstream::gated(gate.clone()).await;
    let config = |with_slow: bool| {
        let route = if with_slow {
            "  - { name: slow, paths: [{ type: Prefix, value: /slow }], upstream: slow }"
        } else {
            ""
        };
        format!(
            r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
upstreams: {{ slow: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: other, paths: [{{ type: Prefix, value: /other }}], direct_response: {{ status: 200 }} }}
{route}
"#,
            slow.endpoint()
        )
    };
    let proxy = Proxy::start(&config(true)).await;
    let addr = proxy.addr("web");
    let in_flight = tokio::spawn(async move { get(addr, "example.com", "/slow/1").await });
    wait_for("the request to reach the upstream", || slow.hits() == 1).await;

    proxy.rewrite_until(&config(false), "success").await;
    assert_eq!(get(addr, "example.com", "/slow/2").await.status, 404);

    gate.add_permits(1);
    let got = in_flight.await.expect("request task");
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "done");
}

/// Routes `stream` (Prefix /stream, to `upstream`) if `with_stream`, and `other` answering
/// `other_body`; streams of a removed route are closed 300 ms later.
fn streams_config(upstream: &Upstream, with_stream: bool, other_body: &str) -> String {
    let route = if with_stream {
        "  - { name: stream, paths: [{ type: Prefix, value: /stream }], upstream: up }"
    } else {
        ""
    };
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ up: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: other, paths: [{{ type: Prefix, value: /other }}], direct_response: {{ status: 200, body: "{other_body}" }} }}
{route}
reload: {{ debounce: 50ms, poll_interval: 1h, stream_grace: 300ms }}
shutdown: {{ drain_delay: 0s, timeout: 5s }}
access_log: false
"#,
        upstream.endpoint()
    )
}

const GRACE: Duration = Duration::from_millis(300);

/// Under the `stream` route's prefix.
const WS_PATH: &str = "/stream/ws";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_survives_unrelated_reloads_and_closes_after_grace_when_its_route_goes() {
    let up = Upstream::websocket_echo().await;
    let proxy = Proxy::start(&streams_config(&up, true, "o1")).await;
    let addr = proxy.addr("web");
    let mut ws = ws_connect(addr, WS_PATH)
        .await
        .expect("websocket through the proxy");
    ws_echo(&mut ws, "hello").await;

    // A change to another route leaves the stream alone, well past the grace period.
    proxy
        .rewrite_until(&streams_config(&up, true, "o2"), "success")
        .await;
    assert_eq!(body_of(addr, "/other").await, "o2");
    tokio::time::sleep(GRACE * 2).await; // observing that nothing happens
    ws_echo(&mut ws, "still here").await;
    let closed = r"portico_streams_closed_by_reload_total";
    assert_eq!(metric(&proxy.admin(), closed).await, 0);

    // Removing its route closes it, after the grace period and not before.
    let removed_at = Instant::now();
    proxy
        .rewrite_until(&streams_config(&up, false, "o2"), "success")
        .await;
    assert!(ws_connect(addr, WS_PATH).await.unwrap_err().contains("404"));
    assert!(ws_closed(&mut ws).await, "the websocket was not closed");
    let after = removed_at.elapsed();
    assert!(
        after >= GRACE,
        "closed after {after:?}, before the grace period"
    );
    assert_eq!(metric(&proxy.admin(), closed).await, 1);
}

/// An upstream answering every request with a body that the test feeds chunk by chunk: the
/// receiver gets one feed per request.
async fn streaming_upstream() -> (Upstream, tokio::sync::mpsc::UnboundedReceiver<StreamFeed>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let up = Upstream::with_handler(move |_req| {
        let tx = tx.clone();
        Box::pin(async move {
            let (feed, mut chunks) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
            let _ = tx.send(feed);
            let stream = futures_util::stream::poll_fn(move |cx| {
                chunks.poll_recv(cx).map(|chunk| {
                    chunk.map(|c| {
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(
                            c,
                        ))
                    })
                })
            });
            Response::new(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
        })
    })
    .await;
    (up, rx)
}

type StreamFeed = tokio::sync::mpsc::UnboundedSender<Bytes>;

/// A streaming response in progress: the client's side and the upstream's feed.
struct Stream {
    _sender: hyper::client::conn::http1::SendRequest<TestBody>,
    body: hyper::body::Incoming,
    feed: StreamFeed,
}

impl Stream {
    /// GET /stream/events at `addr`, through the proxy to a [`streaming_upstream`].
    async fn open(
        addr: std::net::SocketAddr,
        feeds: &mut tokio::sync::mpsc::UnboundedReceiver<StreamFeed>,
    ) -> Stream {
        let mut sender = h1_sender(addr).await;
        let resp = sender
            .send_request(
                Request::get("/stream/events")
                    .header("host", "example.com")
                    .body(empty())
                    .expect("request"),
            )
            .await
            .expect("response head");
        assert_eq!(resp.status(), 200);
        let feed = feeds.recv().await.expect("the upstream got the request");
        Stream {
            _sender: sender,
            body: resp.into_body(),
            feed,
        }
    }

    /// The upstream sends `text`; the client receives it.
    async fn chunk(&mut self, text: &'static str) {
        self.feed
            .send(Bytes::from_static(text.as_bytes()))
            .expect("feed");
        let frame = tokio::time::timeout(Duration::from_secs(5), self.body.frame())
            .await
            .expect("a chunk in time")
            .expect("body open")
            .expect("a chunk");
        assert_eq!(frame.into_data().expect("data"), text);
    }

    /// Whether the client sees the response end (cut, in these tests) within 5 s.
    async fn ended(&mut self) -> bool {
        match tokio::time::timeout(Duration::from_secs(5), self.body.frame()).await {
            Ok(Some(Err(_)) | None) => true,
            Ok(Some(Ok(frame))) => panic!("the stream went on: {frame:?}"),
            Err(_) => false,
        }
    }
}

/// Whether the WebSocket is closed (by the proxy, in these tests) within 5 s.
async fn ws_closed(ws: &mut WebSocket) -> bool {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_survives_unrelated_reloads_and_is_cut_after_grace_when_its_route_goes()
 {
    let (up, mut feeds) = streaming_upstream().await;
    let proxy = Proxy::start(&streams_config(&up, true, "o1")).await;
    let mut stream = Stream::open(proxy.addr("web"), &mut feeds).await;
    stream.chunk("one").await;

    proxy
        .rewrite_until(&streams_config(&up, true, "o2"), "success")
        .await;
    tokio::time::sleep(GRACE * 2).await; // observing that nothing happens
    stream.chunk("two").await;

    let removed_at = Instant::now();
    proxy
        .rewrite_until(&streams_config(&up, false, "o2"), "success")
        .await;
    assert!(stream.ended().await, "the stream was not cut");
    let after = removed_at.elapsed();
    assert!(
        after >= GRACE,
        "cut after {after:?}, before the grace period"
    );
}

/// A removed listener's long-lived streams do not outlive it by more than the grace period,
/// even though their route stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_listener_cuts_its_long_lived_streams_after_grace() {
    let (up, mut feeds) = streaming_upstream().await;
    let ws_up = Upstream::websocket_echo().await;
    let config = |extra: bool| {
        let extra = if extra {
            r#"  - { name: extra, address: "127.0.0.1:0" }"#
        } else {
            ""
        };
        format!(
            r#"
listeners:
  - {{ name: web, address: "127.0.0.1:0" }}
{extra}
upstreams:
  up: {{ endpoints: ["{}"] }}
  ws: {{ endpoints: ["{}"] }}
routes:
  - {{ name: stream, paths: [{{ type: Prefix, value: /stream/events }}], upstream: up }}
  - {{ name: ws, paths: [{{ type: Prefix, value: /stream/ws }}], upstream: ws }}
reload: {{ debounce: 50ms, poll_interval: 1h, stream_grace: 300ms }}
shutdown: {{ drain_delay: 0s, timeout: 5s }}
access_log: false
"#,
            up.endpoint(),
            ws_up.endpoint()
        )
    };
    let proxy = Proxy::start(&config(true)).await;
    let extra = proxy.addr("extra");
    let mut ws = ws_connect(extra, WS_PATH).await.expect("websocket");
    ws_echo(&mut ws, "hello").await;
    let mut stream = Stream::open(extra, &mut feeds).await;
    stream.chunk("one").await;

    let removed_at = Instant::now();
    proxy.rewrite_until(&config(false), "success").await;
    assert!(stream.ended().await, "the stream was not cut");
    assert!(ws_closed(&mut ws).await, "the websocket was not closed");
    let after = removed_at.elapsed();
    assert!(
        after >= GRACE,
        "cut after {after:?}, before the grace period"
    );
    // The route itself still serves on the remaining listener.
    let mut ws = ws_connect(proxy.addr("web"), WS_PATH)
        .await
        .expect("websocket on web");
    ws_echo(&mut ws, "still routed").await;
}

// ---------------------------------------------------------------------------------------------
// SIGHUP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary() {
    let dir = TempDir::new();
    let yaml = r#"
listeners: [{ name: web, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
routes:
  - { name: hello, direct_response: { status: 200, body: "hi" } }
"#;
    let config = dir.write("portico.yaml", with_test_settings(yaml));
    let bin = Binary::start(&config, &["web"]).await;
    let admin = format!("http://{}", bin.admin.expect("admin"));
    assert_eq!(config_json(&admin).await["reloads"], 0);

    bin.signal(SIGHUP);
    eventually("a reload attempt after SIGHUP", || async {
        config_json(&admin).await["reloads"] == 1
    })
    .await;
    let json = config_json(&admin).await;
    assert_eq!(json["last_reload"]["result"], "unchanged");
    wait_for("the log to tell", || {
        bin.log_contains("SIGHUP: reloading configuration")
    })
    .await;
    assert_eq!(get(bin.addr("web"), "x", "/").await.text(), "hi");
}

const SIGHUP: i32 = 1;
