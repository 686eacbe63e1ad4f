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
    assert!(
        metrics.contains(r#"portico_requests_total{method="GET",route="orders",status="2xx"} 1"#),
        "{metrics}"
    );
    assert_eq!(admin_get(&proxy.admin(), "/ready").await.0, 200);
    assert_eq!(admin_get(&proxy.admin(), "/health").await.0, 200);
}
