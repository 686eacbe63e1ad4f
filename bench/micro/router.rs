//! Criterion micro-benchmarks of the per-request routing work: path normalisation and
//! `Router::find` on a realistic table (200 routes over 20 hosts, wildcards, regexes).
//! Run: `cargo bench -p portico --bench router`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use portico::route::path::normalize;
use portico::route::{PathKind, RouteRequest, Router, RuleSpec, validate_path_value};

fn table() -> Router<usize> {
    let mut rules = Vec::new();
    for h in 0..20 {
        for p in 0..8 {
            rules.push((
                RuleSpec {
                    hosts: vec![format!("svc{h}.example.com")],
                    path: validate_path_value(PathKind::Prefix, &format!("/api/v{p}"))
                        .expect("prefix"),
                    methods: vec![],
                    headers: vec![],
                    query: vec![],
                },
                rules.len(),
            ));
        }
        rules.push((
            RuleSpec {
                hosts: vec![format!("svc{h}.example.com")],
                path: validate_path_value(PathKind::Exact, "/healthz").expect("exact"),
                methods: vec![],
                headers: vec![],
                query: vec![],
            },
            rules.len(),
        ));
        rules.push((
            RuleSpec {
                hosts: vec![format!("*.tenant{h}.example.com")],
                path: validate_path_value(PathKind::RegularExpression, "/items/[0-9]+")
                    .expect("regex"),
                methods: vec![],
                headers: vec![],
                query: vec![],
            },
            rules.len(),
        ));
    }
    rules.push((
        RuleSpec {
            hosts: vec![],
            path: validate_path_value(PathKind::Prefix, "/").expect("root"),
            methods: vec![],
            headers: vec![],
            query: vec![],
        },
        rules.len(),
    ));
    Router::new(rules)
}

fn bench(c: &mut Criterion) {
    let router = table();
    let headers = HeaderMap::new();
    let get = Method::GET;
    let find = |host: &'static str, path: &'static str| {
        let router = &router;
        let headers = &headers;
        let get = &get;
        move || {
            let req = RouteRequest {
                host: black_box(host),
                path: black_box(path),
                query: None,
                method: get,
                headers,
            };
            black_box(router.find(&req));
        }
    };
    c.bench_function("router/exact-host-prefix", |b| {
        b.iter(find("svc7.example.com", "/api/v3/orders/42"))
    });
    c.bench_function("router/exact-path", |b| {
        b.iter(find("svc7.example.com:8443", "/healthz"))
    });
    c.bench_function("router/wildcard-regex", |b| {
        b.iter(find("a.tenant3.example.com", "/items/12345"))
    });
    c.bench_function("router/fallthrough-default", |b| {
        b.iter(find("unknown.example.org", "/x/y/z"))
    });
    c.bench_function("normalize/clean", |b| {
        b.iter(|| black_box(normalize(black_box("/api/v3/orders/42")).is_ok()))
    });
    c.bench_function("normalize/dirty", |b| {
        b.iter(|| black_box(normalize(black_box("/public/%2e%2e//admin/./x%7e")).is_ok()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
