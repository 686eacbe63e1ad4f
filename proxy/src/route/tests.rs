//! The router's specification, as tables of cases.

use super::*;

/// The path match spelled as in the tables: `"Prefix /foo"`, `"Exact /foo"`,
/// `"RegularExpression /f.*"`.
fn path_match(rule: &str) -> PathMatch {
    let (kind, value) = rule.split_once(' ').expect("a kind and a value");
    let kind = match kind {
        "Exact" => PathKind::Exact,
        "Prefix" => PathKind::Prefix,
        "RegularExpression" => PathKind::RegularExpression,
        other => panic!("unknown path kind {other:?}"),
    };
    validate_path_value(kind, value).unwrap_or_else(|e| panic!("{e}"))
}

/// A rule on `hosts` and a path, with no other conditions; add them with the `with_*`
/// methods below.
fn rule(hosts: &[&str], path: &str) -> RuleSpec {
    RuleSpec {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        path: path_match(path),
        methods: Vec::new(),
        headers: Vec::new(),
        query: Vec::new(),
    }
}

impl RuleSpec {
    fn with_path(mut self, path: PathMatch) -> RuleSpec {
        self.path = path;
        self
    }

    fn with_methods(mut self, methods: &[Method]) -> RuleSpec {
        self.methods = methods.to_vec();
        self
    }

    fn with_header(mut self, name: &'static str, value: ValueMatch) -> RuleSpec {
        let name = HeaderName::from_static(name);
        self.headers.push(HeaderMatch { name, value });
        self
    }

    fn with_query(mut self, name: &str, value: ValueMatch) -> RuleSpec {
        let name = name.to_owned();
        self.query.push(QueryMatch { name, value });
        self
    }
}

fn exact(value: &str) -> ValueMatch {
    ValueMatch::Exact(value.to_owned())
}

fn regex(pattern: &str) -> ValueMatch {
    ValueMatch::Regex(anchored_regex(pattern).unwrap_or_else(|e| panic!("{e}")))
}

const PRESENT: ValueMatch = ValueMatch::Present;

/// A request as a client sends it; the path is normalised as the pipeline does.
struct Req {
    host: &'static str,
    target: &'static str,
    method: Method,
    headers: HeaderMap,
}

/// A request from its first line, written `METHOD host/path?query` (the host may be
/// empty, or carry a port).
fn req(line: &'static str) -> Req {
    let (method, url) = line.split_once(' ').expect("METHOD host/path");
    let slash = url.find('/').expect("a path");
    Req {
        host: &url[..slash],
        target: &url[slash..],
        method: method.parse().expect("a method"),
        headers: HeaderMap::new(),
    }
}

impl Req {
    fn header(mut self, name: &'static str, value: &'static [u8]) -> Req {
        let value = HeaderValue::from_bytes(value).expect("a header value");
        self.headers.append(HeaderName::from_static(name), value);
        self
    }

    fn route<T: Copy>(&self, router: &Router<T>) -> Option<T> {
        let (path, query) = match self.target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (self.target, None),
        };
        let path = path::normalize(path).unwrap_or_else(|e| panic!("{}: {e}", self.target));
        router
            .find(&RouteRequest {
                host: self.host,
                path: &path,
                query,
                method: &self.method,
                headers: &self.headers,
            })
            .copied()
    }
}

/// Routes each request line and checks where it lands.
fn check(router: &Router<&'static str>, cases: &[(&'static str, Option<&'static str>)]) {
    for &(line, expected) in cases {
        assert_eq!(req(line).route(router), expected, "{line}");
    }
}

/// Case id, rule paths, request targets, the rule every request must route to.
type PathCase = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    Option<&'static str>,
);

/// The Kubernetes Ingress table (shared/routing-cases.md), then the cases it implies: each
/// row is one Ingress on one host with these path rules, declared in this order and
/// reversed (no row depends on declaration order); every request must route to the rule
/// written as `expected`, or nowhere.
#[rustfmt::skip]
const INGRESS_CASES: &[PathCase] = &[
    // id     rule paths                                        requests                                expected
    ("A1",  &["Prefix /"],                                    &["/", "/foo", "/aaa/bbb/", "/x/y?z=1"], Some("Prefix /")),
    ("A2",  &["Exact /foo"],                                  &["/foo"],                               Some("Exact /foo")),
    ("A3",  &["Exact /foo"],                                  &["/bar"],                               None),
    ("A4",  &["Exact /foo"],                                  &["/foo/"],                              None),
    ("A5",  &["Exact /foo/"],                                 &["/foo"],                               None),
    ("A6",  &["Prefix /foo"],                                 &["/foo", "/foo/"],                      Some("Prefix /foo")),
    ("A7",  &["Prefix /foo/"],                                &["/foo", "/foo/"],                      Some("Prefix /foo/")),
    ("A8",  &["Prefix /aaa/bb"],                              &["/aaa/bbb"],                           None),
    ("A9",  &["Prefix /aaa/bbb"],                             &["/aaa/bbb"],                           Some("Prefix /aaa/bbb")),
    ("A10", &["Prefix /aaa/bbb/"],                            &["/aaa/bbb"],                           Some("Prefix /aaa/bbb/")),
    ("A11", &["Prefix /aaa/bbb"],                             &["/aaa/bbb/"],                          Some("Prefix /aaa/bbb")),
    ("A12", &["Prefix /aaa/bbb"],                             &["/aaa/bbb/ccc"],                       Some("Prefix /aaa/bbb")),
    ("A13", &["Prefix /aaa/bbb"],                             &["/aaa/bbbxyz"],                        None),
    ("A14", &["Prefix /", "Prefix /aaa"],                     &["/aaa/ccc"],                           Some("Prefix /aaa")),
    ("A15", &["Prefix /", "Prefix /aaa", "Prefix /aaa/bbb"],  &["/aaa/bbb"],                           Some("Prefix /aaa/bbb")),
    ("A16", &["Prefix /", "Prefix /aaa", "Prefix /aaa/bbb"],  &["/ccc"],                               Some("Prefix /")),
    ("A17", &["Prefix /aaa"],                                 &["/ccc"],                               None),
    ("A18", &["Prefix /foo", "Exact /foo"],                   &["/foo"],                               Some("Exact /foo")),
    // Implied: the longest prefix wins, and `/foo/` is longer than `/foo` for `/foo/...`.
    ("X1",  &["Prefix /foo", "Prefix /foo/"],                 &["/foo/", "/foo/bar"],                  Some("Prefix /foo/")),
    // Implied: Exact is case-sensitive; so is Prefix.
    ("X2",  &["Exact /foo"],                                  &["/FOO", "/Foo"],                       None),
    ("X3",  &["Prefix /foo"],                                 &["/FOO", "/Foo/bar"],                   None),
    // Implied: the query string never takes part in path matching.
    ("X4",  &["Exact /foo"],                                  &["/foo?x=1", "/foo?", "/foo?/bar"],     Some("Exact /foo")),
    ("X5",  &["Prefix /foo"],                                 &["/foobar?/foo", "/?foo"],              None),
    // Matching happens on the normalised path (DESIGN.md §4).
    ("N1",  &["Prefix /public", "Prefix /admin"],             &["/public/../admin", "/public/%2e%2e/admin",
                                                                "/public/%2E%2e/admin", "//admin",
                                                                "/./admin/", "/%61dmin"],               Some("Prefix /admin")),
    // An encoded slash is not a separator, for dot segments and prefixes alike.
    ("N2",  &["Prefix /public", "Prefix /admin"],             &["/public/..%2Fadmin", "/public/%2E%2E%2fadmin"], Some("Prefix /public")),
    ("N3",  &["Prefix /public", "Prefix /admin"],             &["/public%2F../admin", "/admin%2Fx"],   None),
    ("N4",  &["Exact /~user"],                                &["/%7Euser", "/%7euser"],               Some("Exact /~user")),
    // Exact beats Prefix whatever their lengths; Regex sits between them.
    ("P1",  &["Prefix /foo/bar", "Exact /foo"],               &["/foo"],                               Some("Exact /foo")),
    ("P2",  &["Prefix /foo", "RegularExpression /fo+"],       &["/foo"],                               Some("RegularExpression /fo+")),
    ("P3",  &["Exact /foo", "RegularExpression /fo+"],        &["/foo"],                               Some("Exact /foo")),
    ("P4",  &["Prefix /foo", "RegularExpression /fo+"],       &["/foo/x"],                             Some("Prefix /foo")),
    // Among regular expressions, the longer pattern wins.
    ("R1",  &["RegularExpression /a/.*", "RegularExpression /a/b.*"], &["/a/bc"],                      Some("RegularExpression /a/b.*")),
    ("R2",  &["RegularExpression /a/.*", "RegularExpression /a/b.*"], &["/a/c"],                       Some("RegularExpression /a/.*")),
    // A regular expression matches the whole path, every alternative included.
    ("R3",  &["RegularExpression /foo"],                      &["/foo/bar", "/x/foo", "/food"],        None),
    ("R4",  &["RegularExpression /foo|/bar"],                 &["/foo", "/bar"],                       Some("RegularExpression /foo|/bar")),
    ("R5",  &["RegularExpression /foo|/bar"],                 &["/foo/x", "/x/bar", "/foo/bar"],       None),
    ("R6",  &["RegularExpression /v[0-9]+/.*"],               &["/v1/", "/v22/users?id=3"],            Some("RegularExpression /v[0-9]+/.*")),
];

#[test]
fn ingress_path_cases() {
    for &(id, paths, targets, expected) in INGRESS_CASES {
        for reversed in [false, true] {
            let mut rules: Vec<(RuleSpec, &str)> = paths
                .iter()
                .map(|p| (rule(&["foo.bar.com"], p), *p))
                .collect();
            if reversed {
                rules.reverse();
            }
            let router = Router::new(rules);
            for &target in targets {
                let request = Req {
                    target,
                    ..req("GET foo.bar.com/")
                };
                let got = request.route(&router);
                assert_eq!(got, expected, "{id}: {target} (rules reversed: {reversed})");
            }
        }
    }
}

/// Host patterns against request hosts, checked both through [`host_matches`] and through a
/// router holding one rule for the pattern.
#[rustfmt::skip]
const HOST_CASES: &[(&str, &str, &str, bool)] = &[
    // id                pattern          request host           matches
    ("H1",              "*.foo.com",     "bar.foo.com",         true),
    ("H2",              "*.foo.com",     "baz.bar.foo.com",     false),
    ("H3",              "*.foo.com",     "foo.com",             false),
    ("exact",           "foo.com",       "foo.com",             true),
    ("exact only",      "foo.com",       "bar.foo.com",         false),
    ("no suffix match", "foo.com",       "xfoo.com",            false),
    ("wildcard label",  "*.foo.com",     "xfoo.com",            false),
    ("empty label",     "*.foo.com",     ".foo.com",            false),
    ("port",            "foo.com",       "foo.com:8080",        true),
    ("case",            "foo.com",       "FOO.Com",             true),
    ("pattern case",    "Foo.COM",       "foo.com",             true),
    ("wildcard case",   "*.foo.com",     "BAR.FOO.COM:443",     true),
    ("trailing dot",    "foo.com",       "foo.com.",            true),
    ("dot and port",    "*.foo.com",     "bar.foo.com.:80",     true),
    ("two dots",        "foo.com",       "foo.com..",           false),
    ("*.com",           "*.com",         "foo.com",             true),
    ("*.com deep",      "*.com",         "a.foo.com",           false),
    ("IPv6 with port",  "[::1]",         "[::1]:8080",          true),
    ("IPv6",            "[::1]",         "[::1]",               true),
    ("IPv6 case",       "[fe80::1]",     "[FE80::1]:443",       true),
    ("IPv6 not cut",    "[:",            "[::1]:8080",          false),
    ("IPv4 with port",  "10.0.0.1",      "10.0.0.1:80",         true),
    ("no host",         "foo.com",       "",                    false),
];

#[test]
fn host_cases() {
    for &(id, pattern, host, expected) in HOST_CASES {
        let by_helper = host_matches(pattern, host);
        assert_eq!(
            by_helper, expected,
            "{id}: host_matches({pattern:?}, {host:?})"
        );
        let router = Router::new(vec![(rule(&[pattern], "Prefix /"), id)]);
        let by_router = Req {
            host,
            ..req("GET /")
        }
        .route(&router)
        .is_some();
        assert_eq!(by_router, expected, "{id}: router, {pattern:?} vs {host:?}");
    }
}

#[test]
fn request_host_normalisation() {
    #[rustfmt::skip]
    let cases = [
        ("example.com",         "example.com"),
        ("Example.COM:8080",    "example.com"),
        ("example.com.",        "example.com"),
        ("example.com.:443",    "example.com"),
        ("[::1]:8080",          "[::1]"),
        ("[::1]",               "[::1]"),
        ("[FE80::1%25eth0]:80", "[fe80::1%25eth0]"),
        ("[::1",                "[::1"),
        ("::1",                 "::1"),
        ("a:b:c",               "a:b:c"),
        (":",                   ""),
        ("",                    ""),
    ];
    for (host, expected) in cases {
        assert_eq!(normalize_host(host), expected, "{host:?}");
    }
    let lower = normalize_host("api.example.com:8080");
    assert!(matches!(lower, Cow::Borrowed(_)), "no allocation");
}

#[test]
fn exact_host_wins_over_wildcard_over_any() {
    // Declared least specific first, so declaration order cannot be what decides.
    let router = Router::new(vec![
        (rule(&[], "Prefix /"), "any"),
        (rule(&["*.example.com"], "Prefix /"), "wildcard"),
        (rule(&["api.example.com"], "Prefix /"), "exact"),
    ]);
    #[rustfmt::skip]
    check(&router, &[
        ("GET api.example.com/x",      Some("exact")),
        ("GET API.example.com:8443/x", Some("exact")),
        ("GET www.example.com/x",      Some("wildcard")),
        ("GET a.api.example.com/x",    Some("any")),
        ("GET example.com/x",          Some("any")),
        ("GET [::1]:8080/x",           Some("any")),
        ("GET /x",                     Some("any")),
    ]);
}

#[test]
fn host_specificity_beats_path_specificity() {
    let router = Router::new(vec![
        (
            rule(&["*.example.com"], "Exact /orders/v1"),
            "wildcard, exact path",
        ),
        (rule(&[], "Prefix /orders/v1"), "any, long prefix"),
        (rule(&["api.example.com"], "Prefix /"), "exact host, root"),
    ]);
    #[rustfmt::skip]
    check(&router, &[
        ("GET api.example.com/orders/v1",   Some("exact host, root")),
        ("GET www.example.com/orders/v1",   Some("wildcard, exact path")),
        ("GET www.example.com/orders/v1/2", Some("any, long prefix")),
    ]);
}

#[test]
fn unmatched_host_group_falls_through() {
    let router = Router::new(vec![
        (rule(&["api.example.com"], "Prefix /api"), "exact host /api"),
        (
            rule(&["api.example.com"], "Prefix /post").with_methods(&[Method::POST]),
            "exact host POST",
        ),
        (rule(&["*.example.com"], "Prefix /wild"), "wildcard /wild"),
        (rule(&[], "Prefix /"), "any"),
    ]);
    #[rustfmt::skip]
    check(&router, &[
        ("GET api.example.com/api/x",   Some("exact host /api")),
        ("GET api.example.com/wild",    Some("wildcard /wild")),
        ("GET api.example.com/other",   Some("any")),
        ("POST api.example.com/post",   Some("exact host POST")),
        ("GET api.example.com/post",    Some("any")),
        ("GET www.example.com/api",     Some("any")),
        ("GET www.example.com/wild/1",  Some("wildcard /wild")),
    ]);

    let no_any = Router::new(vec![(rule(&["api.example.com"], "Prefix /api"), "api")]);
    check(&no_any, &[("GET api.example.com/other", None)]);
}

#[test]
fn a_rule_with_several_hosts_is_in_each_group() {
    let hosts = ["api.example.com", "*.example.com", "API.example.com"];
    let router = Router::new(vec![
        (rule(&hosts, "Prefix /orders"), "orders"),
        (rule(&[], "Prefix /"), "any"),
    ]);
    #[rustfmt::skip]
    check(&router, &[
        ("GET api.example.com/orders/1", Some("orders")),
        ("GET shop.example.com/orders",  Some("orders")),
        ("GET api.example.com/",         Some("any")),
        ("GET example.com/orders",       Some("any")),
    ]);
}

#[test]
fn method_match_beats_no_method() {
    let router = Router::new(vec![
        (rule(&[], "Prefix /a"), "any method"),
        (
            rule(&[], "Prefix /a").with_methods(&[Method::GET, Method::HEAD]),
            "GET or HEAD",
        ),
    ]);
    #[rustfmt::skip]
    check(&router, &[
        ("GET h/a",  Some("GET or HEAD")),
        ("HEAD h/a", Some("GET or HEAD")),
        ("POST h/a", Some("any method")),
    ]);
}

#[test]
fn more_header_matches_win() {
    let router = Router::new(vec![
        (rule(&[], "Prefix /"), "none"),
        (rule(&[], "Prefix /").with_header("x-a", PRESENT), "one"),
        (
            rule(&[], "Prefix /")
                .with_header("x-a", PRESENT)
                .with_header("x-b", exact("1")),
            "two",
        ),
    ]);
    let two = req("GET h/").header("x-a", b"").header("x-b", b"1");
    assert_eq!(two.route(&router), Some("two"));
    let one = req("GET h/").header("x-a", b"").header("x-b", b"2");
    assert_eq!(one.route(&router), Some("one"));
    let one = req("GET h/").header("x-a", b"v");
    assert_eq!(one.route(&router), Some("one"));
    let none = req("GET h/").header("x-b", b"1");
    assert_eq!(none.route(&router), Some("none"));
}

#[test]
fn more_query_matches_win() {
    let router = Router::new(vec![
        (rule(&[], "Prefix /"), "none"),
        (rule(&[], "Prefix /").with_query("a", PRESENT), "one"),
        (
            rule(&[], "Prefix /")
                .with_query("a", PRESENT)
                .with_query("b", exact("1")),
            "two",
        ),
    ]);
    #[rustfmt::skip]
    check(&router, &[
        ("GET h/?a=x&b=1", Some("two")),
        ("GET h/?b=1&a",   Some("two")),
        ("GET h/?a=x&b=2", Some("one")),
        ("GET h/?b=1",     Some("none")),
        ("GET h/",         Some("none")),
    ]);
}

/// Each criterion outranks the ones after it: path, method, headers, query, declaration.
#[test]
fn precedence_ladder() {
    let get = |spec: RuleSpec| spec.with_methods(&[Method::GET]);
    let hdr = |spec: RuleSpec| spec.with_header("x-a", PRESENT);
    let qry = |spec: RuleSpec| spec.with_query("q", PRESENT);
    let router = Router::new(vec![
        (
            get(hdr(qry(rule(&[], "Prefix /a")))),
            "short prefix and all",
        ),
        (rule(&[], "Prefix /a/b"), "long prefix"),
        (hdr(hdr(qry(rule(&[], "Prefix /c")))), "headers and query"),
        (get(rule(&[], "Prefix /c")), "method"),
        (qry(qry(rule(&[], "Prefix /d"))), "two queries"),
        (hdr(rule(&[], "Prefix /d")), "header"),
        (rule(&[], "Prefix /e"), "first"),
        (rule(&[], "Prefix /e"), "second"),
    ]);
    #[rustfmt::skip]
    let cases = [
        ("GET h/a/b?q", "long prefix"),
        ("GET h/c?q",   "method"),
        ("GET h/d?q",   "header"),
        ("GET h/e?q",   "first"),
    ];
    for (line, expected) in cases {
        let got = req(line).header("x-a", b"1").route(&router);
        assert_eq!(got, Some(expected), "{line}");
    }
}

#[test]
fn declaration_order_breaks_ties() {
    for (a, b) in [("first", "second"), ("second", "first")] {
        let router = Router::new(vec![(rule(&[], "Exact /x"), a), (rule(&[], "Exact /x"), b)]);
        check(&router, &[("GET h/x", Some(a))]);
        let router = Router::new(vec![
            (rule(&[], "Prefix /x"), a),
            (rule(&[], "Prefix /x"), b),
        ]);
        check(&router, &[("GET h/x/y", Some(a))]);
    }
    // For `/foo` itself the trailing slash of `/foo/` covers nothing: a tie.
    for (a, b) in [
        ("Prefix /foo", "Prefix /foo/"),
        ("Prefix /foo/", "Prefix /foo"),
    ] {
        let router = Router::new(vec![(rule(&[], a), a), (rule(&[], b), b)]);
        check(
            &router,
            &[("GET h/foo", Some(a)), ("GET h/foo/", Some("Prefix /foo/"))],
        );
    }
    // A rule whose conditions fail gives way to the next in precedence.
    let router = Router::new(vec![
        (
            rule(&[], "Prefix /foo/").with_methods(&[Method::POST]),
            "POST /foo/",
        ),
        (rule(&[], "Prefix /foo"), "/foo"),
    ]);
    check(
        &router,
        &[
            ("GET h/foo/x", Some("/foo")),
            ("POST h/foo/x", Some("POST /foo/")),
        ],
    );
}

#[test]
fn header_values() {
    /// The values of a repeated header, raw.
    type Values = &'static [&'static [u8]];
    let router = Router::new(vec![
        (
            rule(&[], "Prefix /exact").with_header("x-env", exact("canary")),
            "exact",
        ),
        (
            rule(&[], "Prefix /regex").with_header("x-env", regex("canary|beta-[0-9]+")),
            "regex",
        ),
        (
            rule(&[], "Prefix /present").with_header("x-env", PRESENT),
            "present",
        ),
    ]);
    #[rustfmt::skip]
    let cases: [(&str, Values, Option<&str>); 16] = [
        // request             x-env values             expected
        ("GET h/exact",      &[b"canary"],            Some("exact")),
        ("GET h/exact",      &[b"Canary"],            None), // values are case-sensitive
        ("GET h/exact",      &[b"canary "],           None),
        ("GET h/exact",      &[b"other", b"canary"],  None), // only the first value counts
        ("GET h/exact",      &[],                     None),
        ("GET h/exact",      &[b"caf\xe9"],           None), // not UTF-8, and no panic
        ("GET h/regex",      &[b"beta-12"],           Some("regex")),
        ("GET h/regex",      &[b"canary"],            Some("regex")),
        ("GET h/regex",      &[b"beta-12x"],          None), // anchored to the whole value
        ("GET h/regex",      &[b"xcanary"],           None),
        ("GET h/regex",      &[b"caf\xe9"],           None),
        ("GET h/regex",      &[],                     None),
        ("GET h/present",    &[b""],                  Some("present")),
        ("GET h/present",    &[b"a", b"b"],           Some("present")),
        ("GET h/present",    &[b"caf\xe9"],           Some("present")),
        ("GET h/present",    &[],                     None),
    ];
    for (line, values, expected) in cases {
        let request = values.iter().fold(req(line), |r, v| r.header("x-env", v));
        assert_eq!(
            request.route(&router),
            expected,
            "{line} with x-env {values:?}"
        );
    }
}

#[test]
fn query_values() {
    let router = Router::new(vec![
        (
            rule(&[], "Prefix /exact").with_query("v", exact("2")),
            "exact",
        ),
        (
            rule(&[], "Prefix /empty").with_query("v", exact("")),
            "empty",
        ),
        (
            rule(&[], "Prefix /space").with_query("q", exact("a b")),
            "decoded",
        ),
        (
            rule(&[], "Prefix /raw").with_query("q", exact("a%20b")),
            "raw",
        ),
        (
            rule(&[], "Prefix /regex").with_query("v", regex("[0-9]+")),
            "regex",
        ),
        (
            rule(&[], "Prefix /present").with_query("debug", PRESENT),
            "present",
        ),
    ]);
    #[rustfmt::skip]
    check(&router, &[
        ("GET h/exact?v=2",          Some("exact")),
        ("GET h/exact?a=1&v=2&b",    Some("exact")),
        ("GET h/exact?v=1&v=2",      None), // the first occurrence counts
        ("GET h/exact?v=2&v=1",      Some("exact")),
        ("GET h/exact?V=2",          None), // names are case-sensitive
        ("GET h/exact?xv=2",         None),
        ("GET h/exact?v=2=3",        None), // the value is everything after the first `=`
        ("GET h/exact",              None),
        ("GET h/empty?v",            Some("empty")),
        ("GET h/empty?v=",           Some("empty")),
        ("GET h/empty?v=0",          None),
        ("GET h/space?q=a%20b",      None), // raw values: no percent-decoding
        ("GET h/space?q=a+b",        None), // and no `+` for space
        ("GET h/raw?q=a%20b",        Some("raw")),
        ("GET h/regex?v=123",        Some("regex")),
        ("GET h/regex?v=12a",        None), // anchored to the whole value
        ("GET h/regex?v=",           None),
        ("GET h/present?debug",      Some("present")),
        ("GET h/present?&&debug=0&", Some("present")),
        ("GET h/present?debugx=1",   None),
        ("GET h/present?",           None),
    ]);
}

#[test]
fn len_and_is_empty() {
    let router: Router<()> = Router::new(Vec::new());
    assert!(router.is_empty());
    assert_eq!(router.len(), 0);
    assert_eq!(req("GET h/").route(&router), None);

    // A rule listed under several hosts still counts once.
    let router = Router::new(vec![
        (rule(&["a.example", "*.example"], "Prefix /"), 1),
        (rule(&[], "Exact /"), 2),
    ]);
    assert!(!router.is_empty());
    assert_eq!(router.len(), 2);
}

#[test]
fn odd_rules_and_requests_do_not_panic() {
    // Rules as `Router::new` accepts them, unvalidated, and requests as a buggy caller
    // might pass them (paths not normalised, hosts that are not hosts).
    let odd = |path: PathMatch| {
        RuleSpec {
            hosts: ["", "*", "*.", ".", "["].map(String::from).to_vec(),
            ..rule(&[], "Prefix /")
        }
        .with_path(path)
    };
    let router = Router::new(vec![
        (odd(PathMatch::Prefix(String::new())), 1),
        (odd(PathMatch::Prefix("//".into())), 2),
        (odd(PathMatch::Prefix("x".into())), 3),
        (odd(PathMatch::Exact(String::new())), 4),
        (odd(PathMatch::Regex(Regex::new("x").expect("a regex"))), 5),
        (rule(&[], "Prefix /"), 6),
    ]);
    let hosts = [
        "", ":", "[", "]", "[]:", "[:", ".", "..", "*", "*.", "a..b", ".a", "\u{e9}:1",
    ];
    let paths = [
        "", "x", "/", "//", "/a/../", "\u{e9}", "/\u{e9}/", "%", "/x/",
    ];
    let headers = HeaderMap::new();
    for host in hosts {
        for path in paths {
            let query = Some("&=&==");
            let method = &Method::GET;
            let request = RouteRequest {
                host,
                path,
                query,
                method,
                headers: &headers,
            };
            let _ = router.find(&request);
        }
    }
}

#[test]
fn router_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Router<String>>();
    assert_send_sync::<Router<std::sync::Arc<str>>>();
}

#[rustfmt::skip]
#[test]
fn validate_host_cases() {
    let ok = [
        ("example.com",          "example.com"),
        ("API.Example.COM",      "api.example.com"),
        ("*.example.com",        "*.example.com"),
        ("*.Example.com",        "*.example.com"),
        ("*.com",                "*.com"),
        ("localhost",            "localhost"),
        ("my_host-1.internal",   "my_host-1.internal"),
        ("10.0.0.1",             "10.0.0.1"),
        ("xn--caf-dma.example",  "xn--caf-dma.example"),
    ];
    for (host, expected) in ok {
        assert_eq!(validate_host(host).ok().as_deref(), Some(expected), "{host:?}");
    }
    let refused = [
        ("",                     "cannot be empty"),
        ("example.com:8080",     "without a port"),
        ("[::1]",                "without a port"),
        ("caf\u{e9}.example",    "punycode"),
        ("example.com.",         "trailing dot"),
        ("*",                    "`*` is only allowed"),
        ("*.",                   "trailing dot"),
        ("*example.com",         "`*` is only allowed"),
        ("a.*.example.com",      "`*` is only allowed"),
        ("*.*.example.com",      "`*` is only allowed"),
        ("**.example.com",       "`*` is only allowed"),
        ("example.*",            "`*` is only allowed"),
        (".example.com",         "empty label"),
        ("a..example.com",       "empty label"),
        ("*..example.com",       "empty label"),
        ("exa mple.com",         "only letters"),
        ("ex/ample.com",         "only letters"),
    ];
    for (host, reason) in refused {
        match validate_host(host) {
            Err(e @ RouteError::InvalidHost { .. }) => {
                assert!(e.to_string().contains(reason), "{host:?}: {e}");
            }
            other => panic!("{host:?} should be refused, got {other:?}"),
        }
    }
    let long_label = format!("{}.com", "a".repeat(64));
    assert!(validate_host(&long_label).is_err());
    let long_name = ["abcdefghi"; 26].join(".");
    assert!(validate_host(&long_name).is_err());
    assert_eq!(
        validate_host("a.*.com").map_err(|e| e.to_string()),
        Err("invalid host \"a.*.com\": `*` is only allowed as the whole first label, as in `*.example.com`".to_owned())
    );
}

#[rustfmt::skip]
#[test]
fn validate_path_value_cases() {
    use PathKind::{Exact, Prefix, RegularExpression};
    let ok = [
        (Exact, "/"), (Exact, "/foo"), (Exact, "/foo/"), (Exact, "/a%2Fb"), (Exact, "/~user"),
        (Prefix, "/"), (Prefix, "/foo"), (Prefix, "/foo/"), (Prefix, "/.well-known"),
        (RegularExpression, "/foo/[0-9]+"), (RegularExpression, ".*"),
    ];
    for (kind, value) in ok {
        let matched = validate_path_value(kind, value).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(matched.kind(), kind, "{value:?}");
    }
    let refused = [
        (Exact,  "foo",          "invalid Exact path \"foo\": it must start with '/'"),
        (Prefix, "",             "invalid Prefix path \"\": it must start with '/'"),
        (Prefix, "/foo?x=1",     "invalid Prefix path \"/foo?x=1\": the query string and fragment never take part in path matching"),
        (Exact,  "/foo#top",     "invalid Exact path \"/foo#top\": the query string and fragment never take part in path matching"),
        (Prefix, "/a/../b",      "invalid Prefix path \"/a/../b\": requests are matched after normalisation, so this could never match; write \"/b\""),
        (Prefix, "//foo",        "invalid Prefix path \"//foo\": requests are matched after normalisation, so this could never match; write \"/foo\""),
        (Exact,  "/%7Euser",     "invalid Exact path \"/%7Euser\": requests are matched after normalisation, so this could never match; write \"/~user\""),
        (Exact,  "/a%2fb",       "invalid Exact path \"/a%2fb\": requests are matched after normalisation, so this could never match; write \"/a%2Fb\""),
        (Prefix, "/a%zz",        "invalid Prefix path \"/a%zz\": invalid percent-escape at byte 2"),
        (Exact,  "/a\tb",        "invalid Exact path \"/a\\tb\": control byte 0x09 at byte 2"),
    ];
    for (kind, value, message) in refused {
        match validate_path_value(kind, value) {
            Err(e) => assert_eq!(e.to_string(), message),
            Ok(m) => panic!("{value:?} should be refused, got {m:?}"),
        }
    }
    let Err(RouteError::InvalidRegex { pattern, .. }) = validate_path_value(RegularExpression, "/foo(") else {
        panic!("an unclosed group is not a regular expression");
    };
    assert_eq!(pattern, "/foo(");
}

#[test]
fn anchored_regex_matches_whole_values_only() {
    let re = anchored_regex("/a|/b").expect("valid");
    assert_eq!(re.as_str(), "^(?:/a|/b)$");
    assert!(re.is_match("/a") && re.is_match("/b"));
    assert!(!re.is_match("/a/") && !re.is_match("x/b"));
    // Patterns that only parse once wrapped would escape the anchors.
    for pattern in ["a)|(?:b", "a)|(b", ")(", "x)$|^(?:y"] {
        let refused = matches!(
            anchored_regex(pattern),
            Err(RouteError::InvalidRegex { .. })
        );
        assert!(refused, "{pattern:?} must be refused");
    }
    // The length used for precedence is the pattern as written.
    assert_eq!(pattern_len(&re), 5);
    assert_eq!(pattern_len(&Regex::new("/abc").expect("valid")), 4);
}
