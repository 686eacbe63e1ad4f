//! The shortest path through everything: a listener, a route, an upstream, the admin endpoint.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_an_upstream_and_reports_metrics() {
    let up = Upstream::echo("orders").await;
    let proxy = Proxy::start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ orders: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: orders, paths: [{{ type: Prefix, value: /orders }}], upstream: orders }}
"#,
        up.endpoint()
    ))
    .await;
    let got = get(proxy.addr("web"), "shop.example", "/orders/7?x=1").await;
    assert_eq!(got.status, 200);
    let seen = got.seen();
    assert_eq!(seen.path, "/orders/7?x=1");
    assert_eq!(seen.headers["host"], "shop.example");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(got.header("x-request-id").is_some());

    assert_eq!(
        get(proxy.addr("web"), "shop.example", "/nope").await.status,
        404
    );

    let (status, metrics) = admin_get(&proxy.admin(), "/metrics").await;
    assert_eq!(status, 200);
    for (sample, want) in [
        (
            r#"portico_requests_total{method="GET",route="orders",status="2xx"}"#,
            1,
        ),
        (
            r#"portico_requests_total{method="GET",route="",status="4xx"}"#,
            1,
        ),
        (
            r#"portico_request_duration_seconds_count{route="orders"}"#,
            1,
        ),
        (
            r#"portico_upstream_request_duration_seconds_count{upstream="orders"}"#,
            1,
        ),
        (r#"portico_connections_total{listener="web"}"#, 2),
        (
            &format!(r#"portico_config_info{{hash="{}"}}"#, proxy.hash()),
            1,
        ),
    ] {
        assert_eq!(metric_in(&metrics, sample), want, "{sample}\n{metrics}");
    }
    assert!(
        metrics.contains("\nportico_active_connections{listener=\"web\"} "),
        "{metrics}"
    );
    let loaded = metric_in(&metrics, "portico_config_load_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        loaded <= now && now - loaded < 600,
        "loaded at {loaded}, now {now}"
    );
    assert_eq!(admin_get(&proxy.admin(), "/ready").await.0, 200);
    assert_eq!(admin_get(&proxy.admin(), "/health").await.0, 200);
}

/// The binary's `--version` and `--help`, and the commands `--help` lists.
#[test]
fn the_binary_answers_version_and_help() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(Binary::path())
            .args(args)
            .output()
            .expect("run portico");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        run(&["--version"]).trim(),
        format!("portico {}", env!("CARGO_PKG_VERSION"))
    );
    let help = run(&["--help"]);
    for command in ["run", "check", "plugin", "--log-format"] {
        assert!(help.contains(command), "--help lacks {command}: {help}");
    }
    let run_help = run(&["run", "--help"]);
    assert!(run_help.contains("--config"), "{run_help}");
}
