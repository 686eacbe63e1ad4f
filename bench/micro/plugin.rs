//! Criterion micro-benchmarks of the plugin host: one request's whole stream through a chain
//! (`Chain::start`, `request_headers`, `response_headers`, the response body's one frame, then
//! the drop that runs `on_log`, `on_done` and `on_delete`), on a tokio current-thread runtime,
//! through the public API only.
//!
//! The guest is `test_rw.wasm` (tests/plugins/rw, the public `proxy-wasm` SDK), which makes N
//! request-header hostcalls, alternating a read of `x-rw-in` (present, so the value is copied
//! into the guest) and a write of `x-rw-<i>`. The cases:
//!
//! - `no plugins`: an empty chain, the cost of the harness itself (runtime, heads);
//! - `rw hostcalls=0|2|5`: one plugin;
//! - `rw hostcalls=100`: one plugin that makes 100 hostcalls in one callback, so that
//!   (100 − 0) / 100 is the cost of a single hostcall with the callback's own cost spread thin
//!   (half of them add a header of their own, so the map grows to 51 entries);
//! - `4 × rw hostcalls=2`: a chain of four.
//!
//! Run: `bash scripts/build-test-plugins.sh && cargo bench -p portico --bench plugin`.
//! Numbers and how to read them: docs/benchmarks.md ("Micro-benchmarks").

mod harness;

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use http_body_util::BodyExt;
use portico::plugin::{Chain, PluginHost, Verdict};
use tokio::runtime::Runtime;

use harness::{load, request_head, response_head, stream_info};

/// Where scripts/build-test-plugins.sh puts the corpus (it always builds into the repository's
/// target/test-plugins, whatever `CARGO_TARGET_DIR` says).
fn rw_module() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-plugins/wasm32-wasip1/release/test_rw.wasm");
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/build-test-plugins.sh` first",
        path.display()
    );
    path
}

/// One plugin named `name` running `test_rw.wasm` with `{"hostcalls": n}`, one instance (the
/// benchmark is single-threaded).
fn rw_chain(host: &PluginHost, names_and_hostcalls: &[(&str, u32)]) -> Chain {
    let module = rw_module();
    let plugins = names_and_hostcalls
        .iter()
        .map(|&(name, n)| load(host, name, &module, format!("{{\"hostcalls\": {n}}}")))
        .collect();
    Chain::new(plugins)
}

/// One request's whole life through `chain`; the stream's drop ends every plugin's context.
async fn one_stream(chain: &Chain) {
    let stream = chain
        .start(Arc::new(stream_info()))
        .await
        .expect("chain start");
    let mut req = request_head([("x-rw-in", HeaderValue::from_static("1"))]);
    let verdict = stream
        .request_headers(&mut req, true)
        .await
        .expect("request headers");
    assert!(matches!(verdict, Verdict::Continue));
    let mut resp = response_head();
    let verdict = stream
        .response_headers(&mut resp, false)
        .await
        .expect("response headers");
    assert!(matches!(verdict, Verdict::Continue));
    // The backend's body, one frame that ends the stream: one `on_response_body` per plugin.
    let body = stream.response_body(portico::body::full(Bytes::from_static(b"hello\n")));
    let body = body.collect().await.expect("response body").to_bytes();
    black_box((&req, &resp, body));
    drop(stream);
}

fn streams(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let host = PluginHost::default();
    let cases: Vec<(&str, Chain)> = vec![
        ("no plugins", Chain::new(Vec::new())),
        ("rw hostcalls=0", rw_chain(&host, &[("rw0", 0)])),
        ("rw hostcalls=2", rw_chain(&host, &[("rw2", 2)])),
        ("rw hostcalls=5", rw_chain(&host, &[("rw5", 5)])),
        ("rw hostcalls=100", rw_chain(&host, &[("rw100", 100)])),
        (
            "4 × rw hostcalls=2",
            rw_chain(&host, &[("rw-a", 2), ("rw-b", 2), ("rw-c", 2), ("rw-d", 2)]),
        ),
    ];
    // The plugin really ran: a stream through rw hostcalls=2 leaves `x-rw-1` on the request.
    check_rw_ran(&rt, &cases[2].1);

    let mut group = c.benchmark_group("plugin stream");
    for (name, chain) in &cases {
        group.bench_function(*name, |b| b.iter(|| rt.block_on(one_stream(chain))));
    }
    group.finish();
}

fn check_rw_ran(rt: &Runtime, chain: &Chain) {
    rt.block_on(async {
        let stream = chain.start(Arc::new(stream_info())).await.expect("start");
        let mut req = request_head([("x-rw-in", HeaderValue::from_static("1"))]);
        stream
            .request_headers(&mut req, true)
            .await
            .expect("request headers");
        assert_eq!(
            req.headers.get("x-rw-1").map(|v| v.as_bytes()),
            Some(&b"1"[..]),
            "the rw plugin did not set x-rw-1"
        );
    });
}

criterion_group!(benches, streams);
criterion_main!(benches);
