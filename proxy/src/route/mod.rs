//! Routing: which route serves a request, by host, path, method, headers and query.
//!
//! A [`Router`] is built once per configuration snapshot from a list of rules — one
//! [`RuleSpec`] per (route, path) pair, each carrying a payload `T` (for the proxy, whatever
//! identifies the route) — and is immutable afterwards. [`Router::find`] returns the payload of
//! the best rule for a request, or `None` (a 404, or the configured default route).
//!
//! The semantics are those of Kubernetes Ingress, extended the way the Gateway API extends them
//! (DESIGN.md §4):
//!
//! - **Hosts.** A rule's `hosts` are exact names (`api.example.com`) or single-label wildcards
//!   (`*.example.com` matches `a.example.com`, never `a.b.example.com` nor `example.com`); a
//!   rule with no hosts matches any host. The request host is compared without its port
//!   (`[::1]:8080` is `[::1]`), without a trailing dot, and case-insensitively.
//! - **Host specificity comes first.** The rules are searched in three groups: those listing the
//!   request's exact host, then those with the wildcard that matches it, then those without
//!   hosts. The best match of the first group that has one wins; a group with no matching rule
//!   falls through to the next.
//! - **Paths.** `Exact` compares the whole path, case-sensitively (`/foo` is not `/foo/`).
//!   `Prefix` compares element by element: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, never
//!   `/foobar`; a trailing slash in the rule is ignored (`/foo/` also matches `/foo`), and `/`
//!   matches every path. `RegularExpression` must match the whole path (the
//!   [`anchored_regex`] wrapping). Paths are matched after [`path::normalize`], and the query
//!   string never takes part.
//! - **Precedence within a group**, highest first:
//!   1. the path kind: `Exact`, then `RegularExpression`, then `Prefix`;
//!   2. among prefixes, the longer one: the number of characters of the request path the prefix
//!      covers. A rule's trailing slash is ignored for matching but counts when the request
//!      continues past it, so for `/foo/bar` the rule `/foo/` (5 characters) beats `/foo` (4),
//!      while for `/foo` they tie and the next criteria decide. Among regular expressions, the
//!      longer pattern (in characters, as written);
//!   3. a rule that restricts the method, over one that does not;
//!   4. more header matches;
//!   5. more query parameter matches;
//!   6. declaration order (the rule's index in the list given to [`Router::new`]).
//!
//!   A rule matches only if its path, method, every header match and every query match do.
//! - **Headers.** Names are case-insensitive (they are [`HeaderName`]s); values are compared
//!   case-sensitively with the request's *first* value for that name. A regular expression
//!   must match the whole value, which must be valid UTF-8.
//! - **Query.** The raw query is split on `&` and each pair at its first `=` (a pair without
//!   `=` has the empty value). The *first* pair with the name counts, and values are compared
//!   byte for byte as they arrive: no percent-decoding and no `+` for space, so
//!   `q=a%20b` does not equal `a b`.
//!
//! All precedence is decided in [`Router::new`]: each group indexes its `Exact` rules and its
//! prefixes by path in hash maps, with the candidates for each key already in precedence
//! order, and keeps its regular expressions in a sorted list. [`Router::find`] does one host
//! lookup per group, one exact-path lookup, the regular expressions in order, then one
//! hash lookup per distinct prefix length that falls on an element boundary of the path,
//! longest first, and stops at the first rule whose conditions hold.
//!
//! The `validate_*` functions and [`anchored_regex`] are for the configuration compiler: they
//! turn what the operator wrote into [`RuleSpec`] parts, or say precisely what is wrong.
//! The router itself accepts any `RuleSpec` and never panics, on any rule or any request.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;

pub mod path;

/// The compiled routing table of one configuration snapshot.
///
/// Each rule's payload is stored once and returned by reference, so `T` needs no `Clone`: a
/// rule listing several hosts is indexed under each of them by its position. `Router<T>` is
/// `Send + Sync` when `T` is.
#[derive(Debug, Clone)]
pub struct Router<T> {
    rules: Vec<Rule<T>>,
    /// Groups of rules listing an exact host, by lower-case host.
    exact_hosts: HashMap<Box<str>, Group>,
    /// Groups of rules listing a wildcard host, by the lower-case suffix after `*.`.
    wildcard_hosts: HashMap<Box<str>, Group>,
    /// Rules without hosts.
    any_host: Group,
}

/// One routing rule: the conditions under which a request belongs to a route.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// Exact hosts and `*.suffix` wildcards; empty means any host.
    pub hosts: Vec<String>,
    /// How the normalised path must match.
    pub path: PathMatch,
    /// Accepted methods; empty means any.
    pub methods: Vec<Method>,
    /// Header conditions; all must hold.
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions; all must hold.
    pub query: Vec<QueryMatch>,
}

/// How a rule matches the request path. Build one with [`validate_path_value`].
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The whole path, case-sensitively.
    Exact(String),
    /// Element-wise prefix; a trailing slash is ignored.
    Prefix(String),
    /// A regular expression that must match the whole path: build it with [`anchored_regex`]
    /// (the router uses it as given).
    Regex(Regex),
}

/// The kinds of path match, spelled as in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// `Exact`
    Exact,
    /// `Prefix`
    Prefix,
    /// `RegularExpression`
    RegularExpression,
}

/// A condition on a request header.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// The header; matched case-insensitively, as header names are.
    pub name: HeaderName,
    /// The condition on its first value.
    pub value: ValueMatch,
}

/// A condition on a query parameter.
#[derive(Debug, Clone)]
pub struct QueryMatch {
    /// The parameter name, compared exactly.
    pub name: String,
    /// The condition on its first raw (undecoded) value.
    pub value: ValueMatch,
}

/// A condition on a header or query value.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// The value equals this string, byte for byte.
    Exact(String),
    /// The regular expression matches; build it with [`anchored_regex`] to match the whole value.
    Regex(Regex),
    /// The header or parameter is present, with any value.
    Present,
}

/// What the router looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// The `Host` header or `:authority`, as received (port and case are handled here).
    pub host: &'a str,
    /// The path after [`path::normalize`], without the query string.
    pub path: &'a str,
    /// The raw query string, without the `?`.
    pub query: Option<&'a str>,
    /// The request method.
    pub method: &'a Method,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

/// A configuration value the router cannot use. Messages are written for the operator; the
/// configuration compiler prefixes them with the location (`routes[3].paths[0]: ...`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// A host name in `hosts`.
    #[error("invalid host {host:?}: {reason}")]
    InvalidHost {
        /// The host as written.
        host: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `Exact` or `Prefix` path value.
    #[error("invalid {kind} path {value:?}: {reason}")]
    InvalidPath {
        /// The kind of match.
        kind: PathKind,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A regular expression (for a path, header or query value).
    #[error("invalid regular expression {pattern:?}: {error}")]
    InvalidRegex {
        /// The pattern as written.
        pattern: String,
        /// The regex compiler's explanation.
        error: regex::Error,
    },
}

/// A rule and its payload.
#[derive(Debug, Clone)]
struct Rule<T> {
    spec: RuleSpec,
    value: T,
}

/// The rules of one host group, indexed for lookup in precedence order (see the module docs).
#[derive(Debug, Clone, Default)]
struct Group {
    /// `Exact` rules by path, each list in condition order.
    exact: HashMap<Box<str>, Vec<usize>>,
    /// `RegularExpression` rules, longest pattern first, then condition order.
    regex: Vec<usize>,
    /// `Prefix` rules by prefix without its trailing slash.
    prefix: HashMap<Box<str>, PrefixBucket>,
    /// The distinct key lengths of `prefix`, longest first.
    prefix_lens: Vec<usize>,
}

/// The prefix rules sharing one prefix (`/foo` and `/foo/`), in the two orders precedence needs.
#[derive(Debug, Clone, Default)]
struct PrefixBucket {
    /// When the request path continues past the prefix (`/foo/...`): rules written with a
    /// trailing slash cover one character more, so they come first, then condition order.
    beyond: Vec<usize>,
    /// When the request path is the prefix itself (`/foo`): condition order only.
    at_end: Vec<usize>,
}

impl<T> Router<T> {
    /// Compiles the rules into a router. Precedence between rules is decided here, once.
    ///
    /// Hosts are lower-cased and a trailing dot is dropped; other than that the specs are used
    /// as given, so they should come from the `validate_*` helpers.
    pub fn new(rules: Vec<(RuleSpec, T)>) -> Router<T> {
        let rules: Vec<Rule<T>> = rules
            .into_iter()
            .map(|(spec, value)| Rule { spec, value })
            .collect();

        let mut exact_hosts: HashMap<Box<str>, Vec<usize>> = HashMap::new();
        let mut wildcard_hosts: HashMap<Box<str>, Vec<usize>> = HashMap::new();
        let mut any_host = Vec::new();
        for (id, rule) in rules.iter().enumerate() {
            if rule.spec.hosts.is_empty() {
                any_host.push(id);
                continue;
            }
            let mut hosts: Vec<String> = rule
                .spec
                .hosts
                .iter()
                .map(|host| host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase())
                .collect();
            hosts.sort_unstable();
            hosts.dedup();
            for host in hosts {
                match host.strip_prefix("*.") {
                    Some(suffix) => wildcard_hosts.entry(suffix.into()).or_default().push(id),
                    None => exact_hosts.entry(host.into()).or_default().push(id),
                }
            }
        }

        let build = |(host, ids): (Box<str>, Vec<usize>)| (host, Group::new(&rules, ids));
        Router {
            exact_hosts: exact_hosts.into_iter().map(build).collect(),
            wildcard_hosts: wildcard_hosts.into_iter().map(build).collect(),
            any_host: Group::new(&rules, any_host),
            rules,
        }
    }

    /// The payload of the best rule for `req`, or `None` if no rule matches.
    pub fn find(&self, req: &RouteRequest<'_>) -> Option<&T> {
        let host = normalize_host(req.host);
        if let Some(group) = self.exact_hosts.get(&*host)
            && let Some(id) = group.find(&self.rules, req)
        {
            return self.payload(id);
        }
        if let Some(suffix) = wildcard_suffix(&host)
            && let Some(group) = self.wildcard_hosts.get(suffix)
            && let Some(id) = group.find(&self.rules, req)
        {
            return self.payload(id);
        }
        self.any_host
            .find(&self.rules, req)
            .and_then(|id| self.payload(id))
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules (every request is unrouted).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn payload(&self, id: usize) -> Option<&T> {
        self.rules.get(id).map(|rule| &rule.value)
    }
}

/// Whether a request `host` (as received: any case, maybe a port or a trailing dot) matches a
/// `hosts` entry: an exact name or a `*.suffix` wildcard, with the router's semantics.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let host = normalize_host(host);
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    match pattern.strip_prefix("*.") {
        Some(suffix) => wildcard_suffix(&host).is_some_and(|s| s.eq_ignore_ascii_case(suffix)),
        None => host.eq_ignore_ascii_case(pattern),
    }
}

/// Checks a `hosts` entry and returns it lower-cased.
///
/// Accepted: DNS names of letters, digits, `-` and `_` (labels of 1 to 63 characters, 253 in
/// all), optionally behind one leading `*.` label (`*.com` included). Refused: ports, `*`
/// anywhere else, empty labels, a trailing dot, IP literals in brackets and non-ASCII names
/// (write those in punycode).
pub fn validate_host(host: &str) -> Result<String, RouteError> {
    let invalid = |reason: &str| RouteError::InvalidHost {
        host: host.to_owned(),
        reason: reason.to_owned(),
    };
    if host.is_empty() {
        return Err(invalid(
            "a host cannot be empty; leave `hosts` out to match any host",
        ));
    }
    if host.contains(':') {
        return Err(invalid(
            "a host cannot contain ':'; write it without a port (the request's port is ignored when matching)",
        ));
    }
    if !host.is_ascii() {
        return Err(invalid(
            "write internationalised names in their ASCII form (punycode, `xn--...`)",
        ));
    }
    if host.ends_with('.') {
        return Err(invalid(
            "remove the trailing dot (requests for `example.com.` already match `example.com`)",
        ));
    }
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    if name.len() > 253 {
        return Err(invalid("a host name is at most 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(invalid("empty label (two dots in a row, or a leading dot)"));
        }
        if label.contains('*') {
            return Err(invalid(
                "`*` is only allowed as the whole first label, as in `*.example.com`",
            ));
        }
        if label.len() > 63 {
            return Err(invalid("a label is at most 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "a label may contain only letters, digits, '-' and '_'",
            ));
        }
    }
    Ok(lower)
}

/// Checks a path value of the given kind and builds its [`PathMatch`].
///
/// `Exact` and `Prefix` values must start with `/`, carry no `?` or `#`, and be in normal form
/// (requests are matched after [`path::normalize`], so `/a/../b` or `/%7Ea` could never match;
/// the error names the form to write). `RegularExpression` values go through
/// [`anchored_regex`].
pub fn validate_path_value(kind: PathKind, value: &str) -> Result<PathMatch, RouteError> {
    let invalid = |reason: String| RouteError::InvalidPath {
        kind,
        value: value.to_owned(),
        reason,
    };
    let literal = match kind {
        PathKind::RegularExpression => return anchored_regex(value).map(PathMatch::Regex),
        PathKind::Exact => PathMatch::Exact(value.to_owned()),
        PathKind::Prefix => PathMatch::Prefix(value.to_owned()),
    };
    if value.contains(['?', '#']) {
        return Err(invalid(
            "the query string and fragment never take part in path matching".to_owned(),
        ));
    }
    match path::normalize(value) {
        Ok(normal) if normal == value => Ok(literal),
        Ok(normal) => Err(invalid(format!(
            "requests are matched after normalisation, so this could never match; write {normal:?}"
        ))),
        Err(path::PathError::NotAbsolute) => Err(invalid("it must start with '/'".to_owned())),
        Err(path::PathError::BadEscape { offset }) => {
            Err(invalid(format!("invalid percent-escape at byte {offset}")))
        }
        Err(path::PathError::BadByte { byte, offset }) => Err(invalid(format!(
            "control byte 0x{byte:02x} at byte {offset}"
        ))),
    }
}

/// Compiles a regular expression that must match a whole path or value: `pattern` becomes
/// `^(?:pattern)$`.
///
/// The pattern is first compiled on its own, so one that only parses once wrapped (such as
/// `a)|(?:b`, which would escape the anchors) is refused.
pub fn anchored_regex(pattern: &str) -> Result<Regex, RouteError> {
    let invalid = |error| RouteError::InvalidRegex {
        pattern: pattern.to_owned(),
        error,
    };
    Regex::new(pattern).map_err(invalid)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)
}

impl PathMatch {
    /// The kind of this match.
    pub fn kind(&self) -> PathKind {
        match self {
            PathMatch::Exact(_) => PathKind::Exact,
            PathMatch::Prefix(_) => PathKind::Prefix,
            PathMatch::Regex(_) => PathKind::RegularExpression,
        }
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Exact => "Exact",
            PathKind::Prefix => "Prefix",
            PathKind::RegularExpression => "RegularExpression",
        })
    }
}

impl ValueMatch {
    fn matches(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (_, None) => false,
            (ValueMatch::Present, Some(_)) => true,
            (ValueMatch::Exact(expected), Some(value)) => expected.as_bytes() == value,
            (ValueMatch::Regex(regex), Some(value)) => {
                std::str::from_utf8(value).is_ok_and(|value| regex.is_match(value))
            }
        }
    }
}

impl<T> Rule<T> {
    /// Whether the method, header and query conditions hold (the path is checked by the caller).
    fn conditions_match(&self, req: &RouteRequest<'_>) -> bool {
        let spec = &self.spec;
        (spec.methods.is_empty() || spec.methods.contains(req.method))
            && spec.headers.iter().all(|h| {
                let value = req.headers.get(&h.name).map(HeaderValue::as_bytes);
                h.value.matches(value)
            })
            && spec.query.iter().all(|q| {
                let value = query_param(req.query, &q.name).map(str::as_bytes);
                q.value.matches(value)
            })
    }

    /// Precedence after the path: method match, more headers, more query matches, declaration.
    fn condition_rank(&self, id: usize) -> (Reverse<bool>, Reverse<usize>, Reverse<usize>, usize) {
        let spec = &self.spec;
        (
            Reverse(!spec.methods.is_empty()),
            Reverse(spec.headers.len()),
            Reverse(spec.query.len()),
            id,
        )
    }
}

impl Group {
    fn new<T>(rules: &[Rule<T>], ids: Vec<usize>) -> Group {
        let mut group = Group::default();
        let mut prefixes: HashMap<Box<str>, Vec<usize>> = HashMap::new();
        for id in ids {
            let Some(rule) = rules.get(id) else { continue };
            match &rule.spec.path {
                PathMatch::Exact(path) => group
                    .exact
                    .entry(path.as_str().into())
                    .or_default()
                    .push(id),
                PathMatch::Regex(_) => group.regex.push(id),
                PathMatch::Prefix(prefix) => prefixes
                    .entry(prefix.trim_end_matches('/').into())
                    .or_default()
                    .push(id),
            }
        }

        let rank = |&id: &usize| rules.get(id).map(|rule| rule.condition_rank(id));
        for ids in group.exact.values_mut() {
            ids.sort_by_key(rank);
        }
        group.regex.sort_by_key(|id| {
            let len = rules.get(*id).map_or(0, |rule| match &rule.spec.path {
                PathMatch::Regex(regex) => pattern_len(regex),
                _ => 0,
            });
            (Reverse(len), rank(id))
        });
        for (prefix, mut at_end) in prefixes {
            at_end.sort_by_key(rank);
            let mut beyond = at_end.clone();
            beyond.sort_by_key(|id| {
                let slash = rules.get(*id).is_some_and(
                    |rule| matches!(&rule.spec.path, PathMatch::Prefix(p) if p.ends_with('/')),
                );
                (Reverse(slash), rank(id))
            });
            group.prefix_lens.push(prefix.len());
            group.prefix.insert(prefix, PrefixBucket { beyond, at_end });
        }
        group.prefix_lens.sort_unstable_by_key(|&len| Reverse(len));
        group.prefix_lens.dedup();
        group
    }

    /// The best rule of this group for `req`, as an index into `rules`.
    fn find<T>(&self, rules: &[Rule<T>], req: &RouteRequest<'_>) -> Option<usize> {
        let path = req.path;
        let holds = |id: &&usize| {
            rules
                .get(**id)
                .is_some_and(|rule| rule.conditions_match(req))
        };

        if let Some(ids) = self.exact.get(path)
            && let Some(&id) = ids.iter().find(holds)
        {
            return Some(id);
        }

        let regex_holds = |id: &&usize| {
            rules.get(**id).is_some_and(|rule| {
                matches!(&rule.spec.path, PathMatch::Regex(regex) if regex.is_match(path))
                    && rule.conditions_match(req)
            })
        };
        if let Some(&id) = self.regex.iter().find(regex_holds) {
            return Some(id);
        }

        for &len in &self.prefix_lens {
            // A prefix matches only up to an element boundary; the empty one (rule `/`) always.
            let at_end = path.len() == len;
            if !(len == 0 || at_end || path.as_bytes().get(len) == Some(&b'/')) {
                continue;
            }
            let Some(bucket) = path.get(..len).and_then(|key| self.prefix.get(key)) else {
                continue;
            };
            let order = if at_end {
                &bucket.at_end
            } else {
                &bucket.beyond
            };
            if let Some(&id) = order.iter().find(holds) {
                return Some(id);
            }
        }
        None
    }
}

/// The request host as the router compares it: without a port or a trailing dot, lower-case.
/// Borrows unless the host has upper-case letters.
fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = if host.starts_with('[') {
        // An IPv6 literal: the port, if any, follows the `]`.
        host.find(']')
            .and_then(|end| host.get(..=end))
            .unwrap_or(host)
    } else {
        match host.rsplit_once(':') {
            Some((name, _port)) if !name.contains(':') => name,
            _ => host,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The part of `host` a `*.` wildcard must equal: everything after a non-empty first label.
fn wildcard_suffix(host: &str) -> Option<&str> {
    match host.split_once('.') {
        Some((label, suffix)) if !label.is_empty() && !suffix.is_empty() => Some(suffix),
        _ => None,
    }
}

/// The raw value of the first `name` parameter in `query` (`""` for a bare `name`).
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// The length in characters of the pattern the operator wrote, without the anchoring wrapper.
fn pattern_len(regex: &Regex) -> usize {
    let pattern = regex.as_str();
    pattern
        .strip_prefix("^(?:")
        .and_then(|inner| inner.strip_suffix(")$"))
        .unwrap_or(pattern)
        .chars()
        .count()
}

#[cfg(test)]
mod tests {
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
}
