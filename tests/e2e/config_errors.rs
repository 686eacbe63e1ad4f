//! Bad configurations: `portico check` and a reload of a running proxy both refuse them with
//! the same precise message (file:line:column, YAML path, what is wrong), and the running
//! proxy keeps serving. Also exit codes and `${VAR}` substitution.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

const BASELINE: &str = r#"
listeners: [{ name: web, address: "127.0.0.1:0" }]
routes:
  - { name: baseline, direct_response: { status: 200, body: baseline } }
"#;

/// `portico check` and a reload both refuse `yaml` (with `files` next to it) with exactly
/// `expected`, in which `{dir}` stands for the configuration's directory.
async fn refused(files: &[(&str, &str)], yaml: &str, expected: &str) {
    // portico check
    let dir = TempDir::new();
    for (name, contents) in files {
        dir.write(name, contents);
    }
    let path = dir.write("portico.yaml", with_test_settings(yaml));
    let (code, out) = check_with(&path, &[], &[]);
    let want = expected.replace("{dir}", &dir.path().display().to_string());
    assert_eq!(
        out,
        format!("{want}\n{}: 1 error(s)\n", path.display()),
        "portico check"
    );
    assert_eq!(code, Some(1));

    // A reload of a running proxy
    let proxy = Proxy::start(BASELINE).await;
    for (name, contents) in files {
        proxy.dir.write(name, contents);
    }
    let status = proxy.rewrite_until(yaml, "failure").await;
    let want = expected.replace("{dir}", &proxy.dir.path().display().to_string());
    assert_eq!(status.last_error.as_deref(), Some(want.as_str()), "reload");
    assert_eq!(
        get(proxy.addr("web"), "x", "/").await.text(),
        "baseline",
        "the old configuration keeps serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_is_refused() {
    refused(
        &[],
        r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
routes:
  - name: hello
    direct_respons: { status: 200, body: hi }
"#,
        "{dir}/portico.yaml:4:5: routes[0].direct_respons: unknown field `direct_respons`, expected one of `name`, `hosts`, `paths`, `methods`, `headers`, `query`, `upstream`, `backends`, `redirect`, `direct_response`, `rewrite`, `timeouts`, `max_body`, `plugins`",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_type_is_refused() {
    refused(
        &[],
        r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
limits:
  max_connections: lots
routes:
  - { name: hello, direct_response: { status: 200 } }
"#,
        r#"{dir}/portico.yaml:3:20: limits.max_connections: invalid type: string "lots", expected usize"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_route_name_is_refused() {
    refused(
        &[],
        r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
routes:
  - { name: hello, direct_response: { status: 200 } }
  - { name: hello, direct_response: { status: 204 } }
"#,
        r#"{dir}/portico.yaml:4:7: routes[1].name: duplicate route name "hello" (first defined at {dir}/portico.yaml:3)"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_naming_a_missing_upstream_is_refused() {
    refused(
        &[],
        r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
upstreams:
  orders: { endpoints: ["127.0.0.1:9"] }
routes:
  - name: orders
    upstream: ordrs
"#,
        r#"{dir}/portico.yaml:6:5: routes[0].upstream: unknown upstream "ordrs" (defined: "orders")"#,
    )
    .await;
}

fn tls_listener(cert: &str, key: &str) -> String {
    format!(
        r#"listeners:
  - name: websecure
    address: "127.0.0.1:0"
    tls:
      certificates:
        - {{ cert: {cert}, key: {key} }}
routes:
  - {{ name: hello, direct_response: {{ status: 200 }} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_certificate_is_refused() {
    let (_, key) = Pki::new().issue(&["example.com"]);
    refused(
        &[("site.key", &key)],
        &tls_listener("missing.crt", "site.key"),
        "{dir}/portico.yaml:4:5: listeners[0].tls: certificates[0]: cannot read certificate file {dir}/missing.crt: No such file or directory",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_does_not_match_its_certificate_is_refused() {
    let pki = Pki::new();
    let (cert_a, _) = pki.issue(&["a.example.com"]);
    let (_, key_b) = pki.issue(&["b.example.com"]);
    refused(
        &[("a.crt", &cert_a), ("b.key", &key_b)],
        &tls_listener("a.crt", "b.key"),
        "{dir}/portico.yaml:4:5: listeners[0].tls: certificates[0]: private key does not match certificate {dir}/a.crt (key file {dir}/b.key)",
    )
    .await;
}

/// The configuration does not change, but the key file it names is replaced by one that does
/// not match: the reload fails and the old certificate keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_replaced_by_a_mismatched_key_keeps_the_old_certificate() {
    let pki = Pki::new();
    let (cert_a, key_a) = pki.issue(&["a.example.com"]);
    let (_, key_b) = pki.issue(&["b.example.com"]);
    let dir = TempDir::new();
    dir.write("site.crt", &cert_a);
    dir.write("site.key", &key_a);
    let proxy = Proxy::start_in(dir, &tls_listener("site.crt", "site.key")).await;
    let addr = proxy.addr("websecure");
    let client = pki.client_config(&[b"http/1.1"], None);
    let request = || {
        http::Request::get("/")
            .header("host", "a.example.com")
            .body(empty())
            .expect("request")
    };
    let tls = tls_connect(addr, "a.example.com", client.clone())
        .await
        .expect("handshake");
    assert_eq!(send_tls_h1(tls, request()).await.status, 200);

    let before = proxy.reloads();
    proxy.dir.write("site.key", &key_b);
    let status = || proxy.server.shared().status.lock().unwrap().clone();
    wait_for("the failed reload", || {
        proxy.reloads() > before && status().last_result == Some("failure")
    })
    .await;
    let dir = proxy.dir.path().display();
    assert_eq!(
        status().last_error,
        Some(format!(
            "{dir}/portico.yaml:4:5: listeners[0].tls: certificates[0]: private key does not match certificate {dir}/site.crt (key file {dir}/site.key)"
        ))
    );
    let tls = tls_connect(addr, "a.example.com", client.clone())
        .await
        .expect("the old certificate still serves");
    assert_eq!(send_tls_h1(tls, request()).await.status, 200);

    // Putting the right key back is a no-op that clears the error.
    let before = proxy.reloads();
    proxy.dir.write("site.key", &key_a);
    wait_for("the key to be re-read", || {
        proxy.reloads() > before && status().last_result == Some("unchanged")
    })
    .await;
    assert_eq!(status().last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_listeners_on_one_address_are_refused() {
    let addr = dead_endpoint().await;
    refused(
        &[],
        &format!(
            r#"listeners:
  - {{ name: web, address: "{addr}" }}
  - {{ name: web2, address: "{addr}" }}
routes:
  - {{ name: hello, direct_response: {{ status: 200 }} }}
"#
        ),
        &format!(
            r#"{{dir}}/portico.yaml:3:19: listeners[1].address: address {addr} is already used by listener "web""#
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_variable_without_default_is_refused_with_its_line() {
    refused(
        &[],
        r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
routes:
  - name: hello
    direct_response: { status: 200, body: "${PORTICO_E2E_NEVER_SET}" }
"#,
        "{dir}/portico.yaml:4:44: environment variable \"PORTICO_E2E_NEVER_SET\" is not set (write ${PORTICO_E2E_NEVER_SET:-default} to give a default)",
    )
    .await;
}

/// Two files merged in name order; the error is in the second, and so is its line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_the_second_file_of_a_directory_points_into_that_file() {
    const LISTENERS: &str = r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
upstreams:
  orders: { endpoints: ["127.0.0.1:9"] }
reload: { debounce: 50ms, poll_interval: 1h }
access_log: false
"#;
    let routes = |upstream: &str| {
        format!(
            r#"# Routes live in their own file.

routes:
  - {{ name: hello, paths: [{{ type: Exact, value: /hello }}], direct_response: {{ status: 200, body: hi }} }}
  - name: orders
    paths: [{{ type: Prefix, value: /orders }}]
    upstream: {upstream}
"#
        )
    };
    let expected = |dir: &Path| {
        format!(
            r#"{}/20-routes.yaml:7:5: routes[1].upstream: unknown upstream "ordrs" (defined: "orders")"#,
            dir.display()
        )
    };

    let dir = TempDir::new();
    dir.write("10-listeners.yaml", LISTENERS);
    dir.write("20-routes.yaml", routes("ordrs"));
    let (code, out) = check_with(dir.path(), &[], &[]);
    assert_eq!(
        out,
        format!(
            "{}\n{}: 1 error(s)\n",
            expected(dir.path()),
            dir.path().display()
        )
    );
    assert_eq!(code, Some(1));

    let dir = TempDir::new();
    dir.write("10-listeners.yaml", LISTENERS);
    dir.write("20-routes.yaml", routes("orders"));
    let path = dir.path().to_path_buf();
    let proxy = Proxy::start_at(dir, path.clone()).await;
    let before = proxy.reloads();
    proxy.dir.write("20-routes.yaml", routes("ordrs"));
    wait_for("the failed reload", || {
        proxy.reloads() > before
            && proxy.server.shared().status.lock().unwrap().last_result == Some("failure")
    })
    .await;
    let status = proxy.server.shared().status.lock().unwrap().clone();
    assert_eq!(status.last_error, Some(expected(&path)));
    assert_eq!(get(proxy.addr("web"), "x", "/hello").await.text(), "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_bind_refuses_a_port_in_use() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr");
    let admin_holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = admin_holder.local_addr().expect("addr");
    let dir = TempDir::new();
    let path = dir.write(
        "portico.yaml",
        format!(
            r#"listeners:
  - {{ name: web, address: "{taken}" }}
admin: {{ address: "{admin}" }}
routes:
  - {{ name: hello, direct_response: {{ status: 200 }} }}
"#
        ),
    );
    // Without --bind the file is valid.
    let (code, out) = check_with(&path, &[], &[]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = check_with(&path, &["--bind"], &[]);
    assert_eq!(
        out,
        format!(
            "{p}:2:18: listeners[0].address: listener \"web\" cannot bind {taken}: Address already in use (os error 98)\n\
             {p}:3:10: admin.address: the admin endpoint cannot bind {admin}: Address already in use (os error 98)\n\
             {p}: 2 error(s)\n",
            p = path.display(),
        )
    );
    assert_eq!(code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_every_error_in_one_pass() {
    let dir = TempDir::new();
    let good = dir.write("good.yaml", BASELINE);
    let (code, out) = check_with(&good, &[], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with(&format!(
            "{}: OK (1 listeners, 1 routes, hash ",
            good.display()
        )),
        "{out}"
    );

    let bad = dir.write(
        "bad.yaml",
        r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
routes:
  - { name: a, upstream: nope }
  - { name: b, redirect: { status: 200, host: example.com } }
"#,
    );
    let (code, out) = check_with(&bad, &[], &[]);
    assert_eq!(code, Some(1));
    let file = bad.display();
    assert_eq!(
        out,
        format!(
            "{file}:3:16: routes[0].upstream: unknown upstream \"nope\" (no upstreams are defined)\n\
             {file}:4:28: routes[1].redirect.status: 200 is not a redirect status (301, 302, 303, 307 or 308)\n\
             {file}: 2 error(s)\n"
        )
    );

    // `portico run` refuses to start on it, with the same message and exit code 1.
    let run = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(Binary::path())
            .args(["run", "--config"])
            .arg(&bad)
            .output(),
    )
    .await
    .expect("portico run to exit")
    .expect("run portico");
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!(
            "{file}:3:16: routes[0].upstream: unknown upstream"
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_are_substituted() {
    let dir = TempDir::new();
    let path = dir.write(
        "portico.yaml",
        with_test_settings(
            r#"
listeners: [{ name: web, address: "${PORTICO_E2E_ADDR:-127.0.0.1:0}" }]
routes:
  - name: hello
    direct_response: { status: ${PORTICO_E2E_STATUS:-203}, body: "${PORTICO_E2E_GREETING}" }
"#,
        ),
    );
    let env = [("PORTICO_E2E_GREETING", "hello from the environment")];
    let (code, out) = check_with(&path, &[], &env);
    assert_eq!(code, Some(0), "{out}");

    let bin = Binary::start_with_env(&path, &["web"], &env).await;
    let got = get(bin.addr("web"), "x", "/").await;
    assert_eq!(got.status, 203);
    assert_eq!(got.text(), "hello from the environment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_naming_an_unknown_plugin_is_refused() {
    refused(
        &[],
        r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
routes:
  - name: hello
    direct_response: { status: 200, body: hi }
    plugins: [jwtt]
"#,
        "{dir}/portico.yaml:5:15: routes[0].plugins[0]: unknown plugin \"jwtt\"",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_module_that_cannot_be_read_is_refused() {
    refused(
        &[],
        r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
plugins:
  auth: { module: missing.wasm }
routes:
  - { name: hello, direct_response: { status: 200, body: hi }, plugins: [auth] }
"#,
        "{dir}/portico.yaml:3:11: plugins.auth.module: cannot read module {dir}/missing.wasm: No such file or directory (os error 2)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_limits_out_of_range_are_refused() {
    refused(
        &[("not.wasm", "plain text")],
        r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
plugins:
  auth: { module: not.wasm, limits: { time_per_call: 5ms } }
routes:
  - { name: hello, direct_response: { status: 200, body: hi } }
"#,
        "{dir}/portico.yaml:3:39: plugins.auth.limits.time_per_call: must be between 10ms and 10s",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_foreign_function_is_refused() {
    refused(
        &[("not.wasm", "plain text")],
        r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
plugins:
  auth: { module: not.wasm, foreign_functions: [portico.counter_add, portico.fetch] }
routes:
  - { name: hello, direct_response: { status: 200, body: hi } }
"#,
        "{dir}/portico.yaml:3:70: plugins.auth.foreign_functions[1]: Portico has no foreign \
         function \"portico.fetch\" (it has portico.counter_add, portico.counter_get, \
         portico.verify_signature)",
    )
    .await;
}

/// All plugins' instances share the allocator's 512 slots: a configuration that asks for more
/// is refused at the plugin that goes over, before any of its instances starts.
#[test]
fn plugin_instances_beyond_the_allocator_are_refused() {
    let dir = TempDir::new();
    let path = dir.write(
        "portico.yaml",
        with_test_settings(&format!(
            r#"listeners: [{{ name: web, address: "127.0.0.1:0" }}]
plugins:
  a: {{ limits: {{ instances: 256 }}, module: "{m}" }}
  b: {{ limits: {{ instances: 200 }}, module: "{m}" }}
  c: {{ limits: {{ instances: 100 }}, module: "{m}" }}
routes:
  - {{ name: hello, direct_response: {{ status: 200, body: hi }} }}
"#,
            m = plugin_wasm("rw").display()
        )),
    );
    // (The plugins log when configured; only the verdict is of interest.)
    let (code, out) = check_with(&path, &[], &[("RUST_LOG", "warn")]);
    let p = path.display();
    assert_eq!(
        out,
        format!(
            "{p}:5:18: plugins.c.limits.instances: the plugins' instances add up to 556 with \
             this one's 100, more than the 512 Portico has room for (limits.instances is one per \
             CPU by default)\n{p}: 1 error(s)\n"
        )
    );
    assert_eq!(code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_proxy_wasm_module_is_refused() {
    // A valid WebAssembly module, but no proxy_abi_version_* export.
    let wasm: &[u8] = b"\0asm\x01\0\0\0";
    let text = String::from_utf8(wasm.to_vec()).expect("ascii");
    refused(
        &[("empty.wasm", &text)],
        r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
plugins:
  auth: { module: empty.wasm }
routes:
  - { name: hello, direct_response: { status: 200, body: hi } }
"#,
        "{dir}/portico.yaml:3:3: plugins.auth: plugin \"auth\": the module exports no proxy_abi_version_0_2_1 marker: it is not a Proxy-Wasm plugin",
    )
    .await;
}

/// The content hash does not depend on how the configuration's path is spelt: `portico check`
/// run on `./cfg` and a proxy run on `/etc/portico/cfg` report the same hash for the same
/// files (a referenced certificate included), and a changed certificate changes it.
#[test]
fn the_content_hash_does_not_depend_on_the_spelling_of_the_path() {
    let dir = TempDir::new();
    let pki = Pki::new();
    std::fs::create_dir_all(dir.path().join("certs")).expect("certs dir");
    let (cert, key) = pki.issue(&["example.com"]);
    dir.write("certs/site.crt", &cert);
    dir.write("certs/site.key", &key);
    dir.write(
        "portico.yaml",
        r#"listeners:
  - name: websecure
    address: "127.0.0.1:0"
    tls: { certificates: [{ cert: certs/site.crt, key: certs/site.key }] }
routes:
  - { name: hello, direct_response: { status: 200 } }
"#,
    );
    let hash = |config: &Path| {
        let (code, out) = check_with(config, &[], &[]);
        assert_eq!(code, Some(0), "{out}");
        let at = out.find("hash ").expect("a hash") + 5;
        out[at..at + 16].to_string()
    };
    let plain = hash(dir.path());
    // The same directory through `certs/..`, and its file named through `./`.
    let detour = hash(&dir.path().join("certs").join(".."));
    let file = hash(&dir.path().join(".").join("portico.yaml"));
    let file_plain = hash(&dir.path().join("portico.yaml"));
    assert_eq!(plain, detour);
    assert_eq!(file, file_plain);
    let (cert, key) = pki.issue(&["example.com"]);
    dir.write("certs/site.crt", &cert);
    dir.write("certs/site.key", &key);
    assert_ne!(
        hash(dir.path()),
        plain,
        "a changed certificate changes the hash"
    );
}
