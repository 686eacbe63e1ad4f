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
        Err(path::PathError::Ambiguous { offset }) => Err(invalid(format!(
            "a backslash (also as %5C), an overlong UTF-8 escape or a dot segment with ';' parameters at byte {offset} (requests like that are refused)"
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
mod tests;
