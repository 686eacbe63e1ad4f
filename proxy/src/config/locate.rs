//! Maps a YAML path such as `routes[3].plugins[1]` to the line and column it was written at.
//!
//! `serde_yaml` reports where the YAML itself is malformed, but once a document has parsed, the
//! errors found while deserialising or compiling it only know the path of the value
//! (`serde_path_to_error`). [`LineIndex`] is built once per file from `saphyr-parser`'s events,
//! which carry positions, and turns such a path back into a position, so that every config
//! error reads `config/routes.yaml:14:7: routes[3].plugins[1]: unknown plugin "jwtt"`.
//!
//! ```ignore
//! let index = LineIndex::new(&text);
//! let (line, column) = index.locate("routes[3].plugins[1]").unwrap_or((1, 1));
//! ```
//!
//! # Paths
//!
//! Paths are written the way `serde_path_to_error` prints them:
//!
//! - a mapping key is its text, after a `.` unless it starts the path: `upstreams.orders`;
//! - a sequence index is `[n]`, with no `.` before it: `routes[3].paths[0].value`, `[0].name`;
//! - the document itself is the empty path or `.`.
//!
//! Keys are matched against the key's scalar value (quotes removed), whatever it contains:
//! `upstreams.orders.svc.cluster.local.endpoints[1]` finds the key `orders.svc.cluster.local`,
//! and a key containing `[`, `]` or spaces works too. When keys overlap (`a` and `a.b` in the
//! same mapping), the reading that goes deepest into the document wins.
//!
//! # Positions
//!
//! Positions are 1-based; columns count characters. A path ending at a mapping key gives the
//! position of the key (`routes[3].upstream` points at `upstream:`, not at its value); a path
//! ending at a sequence index gives the start of the element's node (for `- name: web`, the
//! `name`). If the path does not exist, [`LineIndex::locate`] gives the position of its longest
//! existing ancestor, so an error about a missing field lands on the mapping that lacks it,
//! and a path that matches nothing at all lands on the document's first node. (An unknown
//! field needs no fallback: `serde_path_to_error`'s path ends with the field as written.)
//!
//! # What is not followed
//!
//! - Aliases are not expanded: `*base` is a leaf at the alias' position, and a path through it
//!   stops there. Merge keys (`<<: *base`) are ordinary keys for the same reason.
//! - Keys that are not scalars (`? [a, b]`) and aliases used as keys match no path segment;
//!   nor does `serde_path_to_error`'s `?` for a non-string key.
//! - Enum variants written as tags (`!Variant value`) are not path segments here; variants
//!   written as a single-key mapping (`{ Variant: value }`) are ordinary keys.
//! - Only the first document of a multi-document file is indexed.
//! - Text that is not valid YAML gives an empty index: `locate` then returns `None` (`serde_yaml`
//!   reports such errors with their own position).

use saphyr_parser::{Event, Marker, Parser};

/// Positions of the nodes of a YAML document, looked up by path.
#[derive(Debug, Clone, Default)]
pub struct LineIndex {
    /// Every node of the first document; the root, if any, is the first one.
    nodes: Vec<Node>,
}

/// 1-based line and column.
type Position = (usize, usize);

#[derive(Debug, Clone)]
struct Node {
    position: Position,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A scalar or an alias.
    Leaf,
    /// Indices of the elements in `LineIndex::nodes`.
    Sequence(Vec<usize>),
    Mapping(Vec<Entry>),
}

#[derive(Debug, Clone)]
struct Entry {
    /// The key's text; `None` for a key that is a collection or an alias.
    key: Option<String>,
    key_position: Position,
    /// Index of the value in `LineIndex::nodes`.
    value: usize,
}

/// A collection whose end event has not been seen yet, while building.
struct Open {
    node: usize,
    /// For a mapping: the key read, waiting for its value.
    pending_key: Option<(Option<String>, Position)>,
}

/// A node that has been read completely, on its way to its parent.
struct Done {
    node: usize,
    position: Position,
    /// The scalar's text, in case the node is a key.
    text: Option<String>,
}

/// A way of reading the path that has reached `node`, having consumed `consumed` bytes of it.
struct Candidate {
    node: usize,
    consumed: usize,
    position: Position,
}

impl LineIndex {
    /// Indexes the first document of `text`. Never fails: text that does not parse gives an
    /// empty index.
    #[must_use]
    pub fn new(text: &str) -> LineIndex {
        Self::build(text).unwrap_or_default()
    }

    /// The 1-based (line, column) of the node at `path`, or of its longest existing ancestor;
    /// `None` only if the index is empty. See the module documentation for the path syntax.
    #[must_use]
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let root = self.nodes.first()?;
        let path = if path == "." { "" } else { path };

        let mut best = (0, root.position);
        let mut stack = vec![Candidate {
            node: 0,
            consumed: 0,
            position: root.position,
        }];
        while let Some(candidate) = stack.pop() {
            if candidate.consumed > best.0 {
                best = (candidate.consumed, candidate.position);
            }
            let Some(rest) = path.get(candidate.consumed..) else {
                continue;
            };
            if rest.is_empty() {
                // The whole path matched; nothing can go deeper.
                break;
            }
            let Some(node) = self.nodes.get(candidate.node) else {
                continue;
            };
            match &node.kind {
                Kind::Leaf => {}
                Kind::Sequence(elements) => {
                    if let Some((index, len)) = parse_index(rest)
                        && let Some(&element) = elements.get(index)
                        && let Some(element_node) = self.nodes.get(element)
                    {
                        stack.push(Candidate {
                            node: element,
                            consumed: candidate.consumed + len,
                            position: element_node.position,
                        });
                    }
                }
                Kind::Mapping(entries) => {
                    // A key follows a `.`, except at the start of the path.
                    let (key_start, keys) = if candidate.consumed == 0 {
                        (0, rest)
                    } else if let Some(keys) = rest.strip_prefix('.') {
                        (1, keys)
                    } else {
                        continue;
                    };
                    // Pushed in reverse so that, between equally deep readings, the first key
                    // in the document wins.
                    for entry in entries.iter().rev() {
                        let Some(key) = &entry.key else { continue };
                        let Some(after) = keys.strip_prefix(key.as_str()) else {
                            continue;
                        };
                        if after.is_empty() || after.starts_with(['.', '[']) {
                            stack.push(Candidate {
                                node: entry.value,
                                consumed: candidate.consumed + key_start + key.len(),
                                position: entry.key_position,
                            });
                        }
                    }
                }
            }
        }
        Some(best.1)
    }

    /// Builds the index, or `None` if the text is not valid YAML.
    fn build(text: &str) -> Option<LineIndex> {
        let mut nodes = Vec::new();
        let mut open: Vec<Open> = Vec::new();

        for event in Parser::new_from_str(text) {
            let (event, span) = event.ok()?;
            let position = to_position(span.start);
            let done = match event {
                Event::Nothing | Event::StreamStart | Event::DocumentStart(_) => continue,
                Event::DocumentEnd | Event::StreamEnd => break,
                Event::Scalar(value, ..) => {
                    nodes.push(Node {
                        position,
                        kind: Kind::Leaf,
                    });
                    Done {
                        node: nodes.len() - 1,
                        position,
                        text: Some(value.into_owned()),
                    }
                }
                Event::Alias(_) => {
                    nodes.push(Node {
                        position,
                        kind: Kind::Leaf,
                    });
                    Done {
                        node: nodes.len() - 1,
                        position,
                        text: None,
                    }
                }
                Event::SequenceStart(..) | Event::MappingStart(..) => {
                    let kind = if matches!(event, Event::SequenceStart(..)) {
                        Kind::Sequence(Vec::new())
                    } else {
                        Kind::Mapping(Vec::new())
                    };
                    nodes.push(Node { position, kind });
                    open.push(Open {
                        node: nodes.len() - 1,
                        pending_key: None,
                    });
                    continue;
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let closed = open.pop()?;
                    Done {
                        node: closed.node,
                        position: nodes.get(closed.node)?.position,
                        text: None,
                    }
                }
            };

            // Hand the finished node to the collection it belongs to.
            let Some(parent) = open.last_mut() else {
                // The document's root is complete.
                break;
            };
            let pending_key = parent.pending_key.take();
            match &mut nodes.get_mut(parent.node)?.kind {
                Kind::Sequence(elements) => elements.push(done.node),
                Kind::Mapping(entries) => match pending_key {
                    None => parent.pending_key = Some((done.text, done.position)),
                    Some((key, key_position)) => entries.push(Entry {
                        key,
                        key_position,
                        value: done.node,
                    }),
                },
                Kind::Leaf => return None,
            }
        }

        // A document cut short leaves collections open; the parser reports an error first,
        // but do not trust a half-built tree either way.
        open.is_empty().then_some(LineIndex { nodes })
    }
}

fn to_position(marker: Marker) -> Position {
    (marker.line(), marker.col().saturating_add(1))
}

/// Parses a leading `[n]`, returning `n` and the length of `[n]` in bytes.
fn parse_index(s: &str) -> Option<(usize, usize)> {
    let digits = s.strip_prefix('[')?;
    let end = digits.find(']')?;
    let number = digits.get(..end)?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((number.parse().ok()?, end + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `path` is found at the 1-based `(line, column)`.
    #[track_caller]
    fn at(index: &LineIndex, path: &str, expected: (usize, usize)) {
        assert_eq!(index.locate(path), Some(expected), "path {path:?}");
    }

    const BLOCK: &str = "\
listeners:
  - name: web
    address: \"0.0.0.0:8080\"
  - name: websecure
    address: \"0.0.0.0:8443\"
    tls:
      certificates:
        - cert: tls/a.crt
          key: tls/a.key
upstreams:
  orders:
    endpoints:
      - 127.0.0.1:9001
      - orders.shop.svc.cluster.local:8080
routes:
  - name: orders
    hosts:
    - api.example.com
    paths:
      - type: Prefix
        value: /orders
    plugins: [jwt-auth, rate-limit]
    upstream: orders
";

    #[test]
    fn block_style_paths() {
        let index = LineIndex::new(BLOCK);
        at(&index, "listeners", (1, 1));
        at(&index, "listeners[0]", (2, 5));
        at(&index, "listeners[0].name", (2, 5));
        at(&index, "listeners[0].address", (3, 5));
        at(&index, "listeners[1].tls", (6, 5));
        at(&index, "listeners[1].tls.certificates", (7, 7));
        at(&index, "listeners[1].tls.certificates[0]", (8, 11));
        at(&index, "listeners[1].tls.certificates[0].key", (9, 11));
        at(&index, "upstreams.orders", (11, 3));
        at(&index, "upstreams.orders.endpoints", (12, 5));
        at(&index, "upstreams.orders.endpoints[1]", (14, 9));
        at(&index, "routes[0].hosts[0]", (18, 7));
        at(&index, "routes[0].paths[0].value", (21, 9));
        at(&index, "routes[0].upstream", (23, 5));
    }

    #[test]
    fn root_paths() {
        let index = LineIndex::new(BLOCK);
        at(&index, "", (1, 1));
        at(&index, ".", (1, 1));
        let index = LineIndex::new("\n\n  # comment\n- a\n- b\n");
        at(&index, "", (4, 1));
        at(&index, "[1]", (5, 3));
        let index = LineIndex::new("just a scalar\n");
        at(&index, "", (1, 1));
        at(&index, "a.b", (1, 1));
    }

    #[test]
    fn missing_paths_fall_back_to_the_longest_existing_ancestor() {
        let index = LineIndex::new(BLOCK);
        // A missing field: its mapping, which is the sequence element.
        at(&index, "routes[0].priority", (16, 5));
        at(&index, "listeners[1].tls.certificates[0].password", (8, 11));
        // An index past the end: the sequence's key.
        at(&index, "routes[0].paths[7].value", (19, 5));
        at(&index, "routes[9]", (15, 1));
        // Through a scalar.
        at(&index, "routes[0].upstream.name", (23, 5));
        // An index into a mapping, a key into a sequence.
        at(&index, "upstreams[0]", (10, 1));
        at(&index, "listeners.name", (1, 1));
        // Unknown top-level key: the document's first node.
        at(&index, "admin.address", (1, 1));
        // A key that is only a prefix of a real key does not match it.
        at(&index, "upstreams.ord", (10, 1));
        at(&index, "upstreams.ordersx", (10, 1));
        // Malformed indices.
        for path in [
            "routes[",
            "routes[]",
            "routes[x]",
            "routes[-1]",
            "routes[99999999999999999999999]",
        ] {
            at(&index, path, (15, 1));
        }
    }

    #[test]
    fn flow_style() {
        let text = "\
upstreams:
  orders: { endpoints: [\"127.0.0.1:9001\", b:80], weight: 3 }
routes: [{ name: a, paths: [{ type: Exact, value: /x }] }, { name: b }]
plugins:
  jwt:
    config: {issuer: x, audiences: [shop, [nested, deeper]], jwks: {keys: []}}
";
        let index = LineIndex::new(text);
        at(&index, "upstreams.orders", (2, 3));
        at(&index, "upstreams.orders.endpoints", (2, 13));
        at(&index, "upstreams.orders.endpoints[0]", (2, 25));
        at(&index, "upstreams.orders.endpoints[1]", (2, 43));
        at(&index, "upstreams.orders.weight", (2, 50));
        at(&index, "routes[0]", (3, 10));
        at(&index, "routes[0].paths[0].value", (3, 44));
        at(&index, "routes[1]", (3, 60));
        at(&index, "routes[1].name", (3, 62));
        at(&index, "routes[1].hosts", (3, 60));
        at(&index, "plugins.jwt.config.audiences[1][1]", (6, 52));
        at(&index, "plugins.jwt.config.jwks.keys", (6, 69));
        at(&index, "plugins.jwt.config.jwks.keys[0]", (6, 69));
    }

    #[test]
    fn flow_mappings_with_implicit_values_and_pairs_in_sequences() {
        let index = LineIndex::new("a: {x, y: 1, z: }\nb: [k: v, w]\n");
        at(&index, "a.x", (1, 5));
        at(&index, "a.y", (1, 8));
        at(&index, "a.z", (1, 14));
        at(&index, "b[0].k", (2, 5));
        at(&index, "b[1]", (2, 11));
    }

    #[test]
    fn top_level_sequence_and_nested_sequences() {
        let index = LineIndex::new("- name: a\n- - x\n  - - y\n");
        at(&index, "[0].name", (1, 3));
        at(&index, "[1][0]", (2, 5));
        at(&index, "[1][1][0]", (3, 7));
    }

    #[test]
    fn keys_with_dots_brackets_and_quotes() {
        let text = "\
upstreams:
  orders.svc.cluster.local:
    endpoints: [a, b]
  orders:
    endpoints: [c]
  \"odd[0] key\": 1
  'x.y': {z: 2}
  \"\": empty
labels:
  app.kubernetes.io/name: portico
";
        let index = LineIndex::new(text);
        at(&index, "upstreams.orders.svc.cluster.local", (2, 3));
        at(
            &index,
            "upstreams.orders.svc.cluster.local.endpoints[1]",
            (3, 20),
        );
        at(&index, "upstreams.orders.endpoints[0]", (5, 17));
        at(&index, "upstreams.odd[0] key", (6, 3));
        at(&index, "upstreams.x.y.z", (7, 11));
        at(&index, "upstreams.", (8, 3));
        at(&index, "labels.app.kubernetes.io/name", (10, 3));
        // `orders.svc` is not a key; the deepest reading is `orders`, found as a real key.
        at(&index, "upstreams.orders.svc", (4, 3));
    }

    #[test]
    fn overlapping_keys_prefer_the_deepest_reading() {
        let index = LineIndex::new("a:\n  b: {c: 1}\na.b:\n  d: 2\n");
        at(&index, "a.b.c", (2, 7));
        at(&index, "a.b.d", (4, 3));
        at(&index, "a.b", (2, 3));
    }

    #[test]
    fn numeric_and_other_scalar_keys_match_their_text() {
        let index = LineIndex::new("ports:\n  8080: web\n  true: yes\n  ~: null\n");
        at(&index, "ports.8080", (2, 3));
        at(&index, "ports.true", (3, 3));
        at(&index, "ports.~", (4, 3));
    }

    #[test]
    fn anchors_and_aliases_are_not_expanded() {
        let text = "\
base: &base
  timeout: 1s
  retries: 3
routes:
  - &r1 { name: a }
  - *r1
  - <<: *base
    name: c
";
        let index = LineIndex::new(text);
        at(&index, "base.retries", (3, 3));
        at(&index, "routes[0].name", (5, 11));
        at(&index, "routes[1]", (6, 5));
        at(&index, "routes[1].name", (6, 5));
        at(&index, "routes[2].<<", (7, 5));
        at(&index, "routes[2].name", (8, 5));
        at(&index, "routes[2].timeout", (7, 5));
    }

    #[test]
    fn complex_and_alias_keys_are_skipped() {
        let text = "k: &k key\nm:\n  ? [a, b]\n  : 1\n  *k : 2\n  ? plain\n  : 3\n";
        let index = LineIndex::new(text);
        at(&index, "m.plain", (6, 5));
        at(&index, "m.a", (2, 1));
        at(&index, "m.k", (2, 1));
        at(&index, "k", (1, 1));
    }

    #[test]
    fn only_the_first_document_is_indexed() {
        let index = LineIndex::new("---\na: 1\n---\nb: 2\n");
        at(&index, "a", (2, 1));
        at(&index, "b", (2, 1));
        // A broken later document does not matter.
        let index = LineIndex::new("a: 1\n---\n[b: }\n");
        at(&index, "a", (1, 1));
        let index = LineIndex::new("a: 1\n...\n");
        at(&index, "a", (1, 1));
    }

    #[test]
    fn columns_count_characters_and_crlf_is_a_line_break() {
        let index = LineIndex::new("ä: {ö: [ü, x]}\r\nb:\r\n  c: 1\r\n");
        at(&index, "ä.ö[1]", (1, 12));
        at(&index, "b.c", (3, 3));
    }

    #[test]
    fn block_scalars_and_comments_do_not_confuse_lines() {
        let text = "\
# header
a: |
  line one
  line two: not a key
# between
b: >-
  folded
c: 'multi
  line'
d: x # trailing
";
        let index = LineIndex::new(text);
        at(&index, "a", (2, 1));
        at(&index, "b", (6, 1));
        at(&index, "c", (8, 1));
        at(&index, "d", (10, 1));
    }

    #[test]
    fn invalid_or_empty_text_gives_an_empty_index() {
        for text in [
            "",
            "# only a comment\n",
            "a: [1, 2\n",
            "a: b: c\n",
            "a: 'unterminated\n",
            "{",
            "]",
        ] {
            let index = LineIndex::new(text);
            assert_eq!(index.locate(""), None, "{text:?}");
            assert_eq!(index.locate("a"), None, "{text:?}");
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let depth = 50_000;
        let text = format!("a:\n{}x\n", "- ".repeat(depth));
        let index = LineIndex::new(&text);
        let path = format!("a{}", "[0]".repeat(depth));
        at(&index, &path, (2, 2 * depth + 1));
        let too_deep = format!("{path}[0]");
        at(&index, &too_deep, (2, 2 * depth + 1));
        drop(index);

        let index = LineIndex::new(&format!("a: {}", "[".repeat(100_000)));
        assert_eq!(index.locate("a"), None);
    }

    #[test]
    fn paths_printed_by_serde_path_to_error_are_found() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Root {
            listeners: Vec<Listener>,
            #[serde(default)]
            upstreams: std::collections::BTreeMap<String, Upstream>,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Listener {
            name: String,
            address: String,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Upstream {
            endpoints: Vec<String>,
        }

        let cases: &[(&str, &str, (usize, usize))] = &[
            // Unknown field: the field itself.
            (
                "listeners:\n  - name: a\n    adress: x\n",
                "listeners[0].adress",
                (3, 5),
            ),
            // Missing field: the mapping that lacks it.
            ("listeners:\n  - name: a\n", "listeners[0]", (2, 5)),
            ("admn: 1\nlisteners: []\n", "admn", (1, 1)),
            (
                "listeners: []\nupstreams:\n  a.b:\n    endpoints: [x, {y: 1}]\n",
                "upstreams.a.b.endpoints[1]",
                (4, 20),
            ),
            (
                "listeners: [{name: a, address: [x]}]\n",
                "listeners[0].address",
                (1, 23),
            ),
        ];
        for &(text, expected_path, expected) in cases {
            let deserializer = serde_yaml::Deserializer::from_str(text);
            let result: Result<Root, _> = serde_path_to_error::deserialize(deserializer);
            let path = result.unwrap_err().path().to_string();
            assert_eq!(path, expected_path, "{text:?}");
            at(&LineIndex::new(text), &path, expected);
        }
    }

    #[test]
    fn never_panics_on_awkward_paths() {
        let index = LineIndex::new(BLOCK);
        for path in [
            "[",
            "]",
            "[0",
            "..",
            ".listeners",
            "listeners..name",
            "listeners[0]]",
            "é",
            "listeners[0].é[",
            "?",
        ] {
            let _ = index.locate(path);
        }
    }
}
