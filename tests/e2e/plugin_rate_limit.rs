//! The rate-limit plugin (plugins/rate-limit) end to end: the real proxy, its plugin instances
//! on several threads, real clients and an echo upstream; and behind the jwt plugin, keyed on
//! the user it forwards.

// The jwt tests' token minting; plugin_jwt.rs includes it too, privately.
#[allow(clippy::duplicate_mod)]
#[path = "../../plugins/jwt/testdata/mint.rs"]
mod mint;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Request;
use serde_json::json;

use crate::support::*;

/// Listener `web`, the admin endpoint, upstream `up`, plugin entries `plugins` (each
/// `NAME: { config }` on one line, all running rate-limit.wasm with `limits`), and `routes`.
fn config(up: &Upstream, plugins: &[(&str, &str)], limits: &str, routes: &str) -> String {
    let module = first_party_wasm("rate-limit");
    let plugins: String = plugins
        .iter()
        .map(|(name, config)| {
            format!(
                "  {name}: {{ module: \"{}\", config: {config}, limits: {{ {limits} }} }}\n",
                module.display()
            )
        })
        .collect();
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  up: {{ endpoints: ["{}"] }}
plugins:
{plugins}
routes:
{routes}
"#,
        up.endpoint()
    )
}

/// One plugin `limit` with `plugin_config` on a route that takes everything.
async fn proxy(up: &Upstream, plugin_config: &str, limits: &str) -> Proxy {
    Proxy::start(&config(
        up,
        &[("limit", plugin_config)],
        limits,
        "  - { name: all, upstream: up, plugins: [limit] }",
    ))
    .await
}

/// A GET of `path` with `headers` over a fresh connection.
async fn get_with(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::get(path).header("host", "limits.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(proxy.addr("web"), req.body(empty()).expect("request")).await
}

fn number(got: &Got, name: &str) -> u64 {
    got.header(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name}: {:?}", got.headers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_burst_requests_pass_then_429_with_retry_after() {
    let up = Upstream::echo("up").await;
    let proxy = proxy(&up, "{ rate: 1, per: 1h, burst: 5, headers: true }", "").await;
    let mut statuses = Vec::new();
    let mut remaining = Vec::new();
    for _ in 0..8 {
        let got = get_with(&proxy, "/", &[]).await;
        statuses.push(got.status.as_u16());
        assert_eq!(number(&got, "ratelimit-limit"), 5);
        remaining.push(number(&got, "ratelimit-remaining"));
        if got.status == 429 {
            // One request an hour: the next fits in (just under) an hour.
            let retry = number(&got, "retry-after");
            assert!((3_590..=3_600).contains(&retry), "Retry-After {retry}");
            assert_eq!(got.text(), "too many requests\n");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(remaining, [4, 3, 2, 1, 0, 0, 0, 0]);
    assert_eq!(up.hits(), 5, "refused requests never reach the upstream");
    let sample = |name: &str| format!(r#"portico_plugin_counter{{name="{name}",plugin="limit"}}"#);
    assert_eq!(metric(&proxy.admin(), &sample("requests_allowed")).await, 5);
    assert_eq!(metric(&proxy.admin(), &sample("requests_limited")).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_are_exact_with_all_worker_threads_busy() {
    let up = Upstream::echo("up").await;
    // Four instances on four runtime threads, 800 requests at once on a cold key.
    let proxy = proxy(
        &up,
        "{ rate: 1, per: 1h, burst: 200, headers: true }",
        "instances: 4",
    )
    .await;
    let addr = proxy.addr("web");
    let tasks: Vec<_> = (0..800)
        .map(|_| {
            tokio::spawn(async move {
                let req = Request::get("/").header("host", "limits.test");
                send(addr, req.body(empty()).expect("request")).await
            })
        })
        .collect();
    let mut passed_remaining = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let got = t.await.expect("request task");
        match got.status.as_u16() {
            200 => passed_remaining.push(number(&got, "ratelimit-remaining")),
            429 => refused += 1,
            other => panic!("status {other}: {}", got.text()),
        }
    }
    assert_eq!((passed_remaining.len(), refused), (200, 600));
    // Every admission saw its own place in the bucket: none was counted twice or lost.
    passed_remaining.sort_unstable();
    assert_eq!(passed_remaining, (0..200).collect::<Vec<u64>>());
    assert_eq!(up.hits(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_refills_at_the_rate() {
    let up = Upstream::echo("up").await;
    // 20 a second: one every 50 ms, two at once.
    let proxy = proxy(&up, "{ rate: 20, per: 1s, burst: 2 }", "").await;
    let interval = Duration::from_millis(50);
    let mut sender = h1_sender(proxy.addr("web")).await;
    let mut next = async || {
        let req = Request::get("/").header("host", "limits.test");
        sender.ready().await.expect("the connection stays open");
        let sent = Instant::now();
        let got = send_h1(&mut sender, req.body(empty()).expect("request")).await;
        (sent, got)
    };

    let mut burst = Vec::new();
    let first_refusal = loop {
        let (sent, got) = next().await;
        if got.status == 429 {
            assert_eq!(got.header("retry-after"), Some("1"), "50 ms, rounded up");
            break sent;
        }
        burst.push(got.status.as_u16());
        assert!(burst.len() <= 2, "more than the burst passed");
    };
    assert_eq!(burst, [200, 200]);

    // From the first refusal on, the bucket is empty: each further pass needs a new interval,
    // so ten passes take more than nine intervals however fast the client asks; a proxy that
    // refilled too slowly would need seconds.
    let deadline = first_refusal + Duration::from_secs(10);
    let mut passes = 0;
    let mut polls = 0;
    let last = loop {
        let (_, got) = next().await;
        polls += 1;
        match got.status.as_u16() {
            200 => passes += 1,
            429 => tokio::time::sleep(Duration::from_millis(2)).await,
            other => panic!("status {other}"),
        }
        if passes == 10 {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{passes} passes in 10 s ({polls} polls)"
        );
    };
    let took = last - first_refusal;
    assert!(
        took > interval * 9,
        "10 passes in {took:?}: faster than the rate"
    );
    assert!(
        took < interval * 10 + Duration::from_secs(3),
        "10 passes took {took:?}: slower than the rate"
    );
    assert!(
        polls > passes,
        "the client was refused in between ({polls} polls)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_client_keys_are_independent() {
    let up = Upstream::echo("up").await;
    let proxy = proxy(
        &up,
        "{ rate: 1, per: 1h, burst: 2, key: \"header:x-client\" }",
        "",
    )
    .await;
    let statuses = async |client: Option<&str>| {
        let mut out = Vec::new();
        for _ in 0..3 {
            let headers: Vec<(&str, &str)> = client.map(|c| ("x-client", c)).into_iter().collect();
            let got = get_with(&proxy, "/", &headers).await;
            assert_eq!(got.header("ratelimit-limit"), None, "headers are off");
            if got.status == 429 {
                assert!(got.header("retry-after").is_some());
            }
            out.push(got.status.as_u16());
        }
        out
    };
    assert_eq!(statuses(Some("a")).await, [200, 200, 429]);
    assert_eq!(statuses(Some("b")).await, [200, 200, 429]);
    // Without the header: the client's address is the key.
    assert_eq!(statuses(None).await, [200, 200, 429]);
    assert_eq!(statuses(Some("a")).await, [429, 429, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_share_a_plugin_s_buckets_unless_the_key_names_the_route() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config(
        &up,
        &[
            ("shared", "{ rate: 1, per: 1h, burst: 1 }"),
            (
                "split",
                "{ rate: 1, per: 1h, burst: 1, key: [route, client_ip] }",
            ),
        ],
        "",
        r#"
  - { name: s1, paths: [{ type: Prefix, value: /s1 }], upstream: up, plugins: [shared] }
  - { name: s2, paths: [{ type: Prefix, value: /s2 }], upstream: up, plugins: [shared] }
  - { name: p1, paths: [{ type: Prefix, value: /p1 }], upstream: up, plugins: [split] }
  - { name: p2, paths: [{ type: Prefix, value: /p2 }], upstream: up, plugins: [split] }
"#,
    ))
    .await;
    let status = async |path: &str| get_with(&proxy, path, &[]).await.status.as_u16();
    assert_eq!(status("/s1").await, 200);
    assert_eq!(
        status("/s2").await,
        429,
        "one plugin entry, one bucket per client"
    );
    assert_eq!(
        status("/p1").await,
        200,
        "another plugin entry has its own buckets"
    );
    assert_eq!(status("/p2").await, 200, "the route is part of the key");
    assert_eq!(status("/p1").await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_fails_the_start_naming_the_key() {
    let up = Upstream::echo("up").await;
    let cases = [
        ("{ rate: 0 }", "rate: must be at least 1"),
        ("{ rate: 1, per: 10 }", "per: duration 10 has no unit"),
        ("{ rate: 1, key: ip }", "key: unknown key \"ip\""),
    ];
    for (plugin_config, want) in cases {
        let yaml = config(
            &up,
            &[("limit", plugin_config)],
            "",
            "  - { name: all, upstream: up, plugins: [limit] }",
        );
        let err = Proxy::try_start_in(TempDir::new(), &yaml)
            .await
            .err()
            .unwrap_or_else(|| panic!("{plugin_config} started"));
        assert!(err.contains(want), "{plugin_config}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_header_values_that_collide_unkeyed_keep_their_own_buckets() {
    // Two x-api-key values, 69 bytes each, the same up to the last 15 and the same FNV-1a as
    // keys: once stored as one key, so either client could drain the other's bucket.
    let up = Upstream::echo("up").await;
    let proxy = proxy(
        &up,
        "{ rate: 1, per: 1h, burst: 1, key: \"header:x-api-key\" }",
        "instances: 2",
    )
    .await;
    let value = |suffix: &str| format!("{}{suffix}", "A".repeat(54));
    let (a, b) = (value(COLLIDING.0), value(COLLIDING.1));
    let status = async |v: &str| {
        get_with(&proxy, "/", &[("x-api-key", v)])
            .await
            .status
            .as_u16()
    };
    assert_eq!(status(&a).await, 200);
    assert_eq!(status(&b).await, 200, "b has a bucket of its own");
    assert_eq!(status(&a).await, 429);
    assert_eq!(status(&b).await, 429);
}

/// The suffixes of plugins/rate-limit/src/table.rs's colliding keys.
const COLLIDING: (&str, &str) = ("0EE52031FC9248!", "30CA853B7EAC36^");

/// The jwt plugin (HS256 key `hmac` inline, `sub` forwarded as `x-user`) before a rate limit
/// keyed on `x-user`: two a hour per user.
fn per_user_config(up: &Upstream) -> String {
    let jwt = json!({
        "jwks": mint::jwks(&["hmac"]),
        "forward_claims": { "sub": "x-user" },
    });
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  up: {{ endpoints: ["{}"] }}
plugins:
  jwt: {{ module: "{}", config: {jwt} }}
  per-user:
    module: "{}"
    config: {{ rate: 1, per: 1h, burst: 2, key: "header:x-user", headers: true }}
routes:
  - {{ name: api, upstream: up, plugins: [jwt, per-user] }}
"#,
        up.endpoint(),
        first_party_wasm("jwt").display(),
        first_party_wasm("rate-limit").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_forwarded_by_the_jwt_plugin_has_a_bucket_the_client_cannot_pick() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&per_user_config(&up)).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let token = |sub: &str| {
        let claims = mint::claims(now, json!({ "sub": sub }));
        format!("Bearer {}", mint::mint(mint::Alg::HS256, &claims))
    };
    let (alice, bob) = (token("alice"), token("bob"));
    // (status, RateLimit-Remaining) of a request with `authorization` and, if given, the
    // client's own x-user; a request that passes reaches the upstream as its token's user.
    let ask = async |authorization: &str, x_user: Option<&str>, user: &str| {
        let mut headers = vec![("authorization", authorization)];
        headers.extend(x_user.map(|v| ("x-user", v)));
        let got = get_with(&proxy, "/api", &headers).await;
        if got.status == 200 {
            assert_eq!(
                got.seen().headers.get("x-user").map(String::as_str),
                Some(user),
                "the upstream's x-user"
            );
        }
        (got.status.as_u16(), number(&got, "ratelimit-remaining"))
    };

    // alice spends her two; a name of her choosing in x-user does not buy her more.
    assert_eq!(ask(&alice, None, "alice").await, (200, 1));
    assert_eq!(ask(&alice, Some("mallory"), "alice").await, (200, 0));
    assert_eq!(ask(&alice, None, "alice").await, (429, 0));
    assert_eq!(ask(&alice, Some("fresh-bucket"), "alice").await, (429, 0));
    assert_eq!(ask(&alice, Some(""), "alice").await, (429, 0));
    // bob's bucket is his own: alice's drained one is not his, even when he names her.
    assert_eq!(ask(&bob, Some("alice"), "bob").await, (200, 1));
    assert_eq!(ask(&bob, None, "bob").await, (200, 0));
    assert_eq!(ask(&bob, None, "bob").await, (429, 0));
    // Without a token the jwt plugin answers; the limiter never sees the request.
    let got = get_with(&proxy, "/api", &[("x-user", "carol")]).await;
    assert_eq!(got.status, 401);
    assert_eq!(got.header("ratelimit-limit"), None);
    assert_eq!(up.hits(), 4);
}
