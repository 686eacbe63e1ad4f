//! The configuration: [`Config`] mirrors the YAML `config` block, [`Rules`] is what a phase runs
//! (names checked and lowercased, values parsed into [`Template`]s).

use std::fmt;
use std::marker::PhantomData;

use portico_plugin_sdk::{Error, Result};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::template::Template;

/// The YAML `config` of a `header-rewrite` plugin.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub request: RawRules,
    #[serde(default)]
    pub response: RawRules,
}

/// One phase's rules as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default, deserialize_with = "ordered")]
    pub rename: Vec<(String, String)>,
    #[serde(default, deserialize_with = "ordered")]
    pub set: Vec<(String, Text)>,
    #[serde(default, deserialize_with = "ordered")]
    pub add: Vec<(String, OneOrMany)>,
}

/// A value as written: a string, or a number or boolean taken as its text (`x-xss-protection:
/// 0`).
#[derive(Debug)]
pub struct Text(pub String);

/// An `add` value: one, or a list (each added in order).
#[derive(Debug)]
pub struct OneOrMany(pub Vec<Text>);

/// One phase's rules, ready to run, in the order they run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rules {
    pub remove: Vec<String>,
    pub rename: Vec<(String, String)>,
    pub set: Vec<(String, Template)>,
    pub add: Vec<(String, Template)>,
}

/// Headers Portico itself manages (framing, connection, the host): no rule may touch them.
const RESERVED: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

impl Rules {
    /// Checks and compiles `raw`; errors name the phase, the rule and the header at fault
    /// (`response.set.x-frame-options: ...`).
    pub fn compile(phase: &str, raw: RawRules) -> Result<Rules> {
        let fail = |rule: &str, name: &str, why: String| {
            Err(Error::config(format!("{phase}.{rule}.{name}: {why}")))
        };
        let mut rules = Rules::default();
        for name in &raw.remove {
            match header_name(name) {
                Ok(n) => rules.remove.push(n),
                Err(why) => return fail("remove", name, why),
            }
        }
        for (from, to) in &raw.rename {
            let (f, t) = match (header_name(from), header_name(to)) {
                (Ok(f), Ok(t)) => (f, t),
                (Err(why), _) | (_, Err(why)) => return fail("rename", from, why),
            };
            if f == t {
                return fail("rename", from, "renamed to itself".into());
            }
            if rules
                .rename
                .iter()
                .any(|(a, b)| *a == t || *b == f || *a == f)
            {
                return fail(
                    "rename",
                    from,
                    "a header is renamed twice, or renamed and a rename's target: the order \
                     would matter"
                        .into(),
                );
            }
            if rules.rename.iter().any(|(_, b)| *b == t) {
                return fail("rename", from, format!("two headers renamed to {t}"));
            }
            rules.rename.push((f, t));
        }
        for (name, Text(value)) in &raw.set {
            let n = match header_name(name) {
                Ok(n) => n,
                Err(why) => return fail("set", name, why),
            };
            if rules.set.iter().any(|(s, _)| *s == n) {
                return fail("set", name, "set twice".into());
            }
            match Template::parse(value) {
                Ok(t) => rules.set.push((n, t)),
                Err(why) => return fail("set", name, why),
            }
        }
        for (name, OneOrMany(values)) in &raw.add {
            let n = match header_name(name) {
                Ok(n) => n,
                Err(why) => return fail("add", name, why),
            };
            for Text(value) in values {
                match Template::parse(value) {
                    Ok(t) => rules.add.push((n.clone(), t)),
                    Err(why) => return fail("add", name, why),
                }
            }
        }
        Ok(rules)
    }

    /// The values of `set`, then those of `add`: the order their rendered values are kept in.
    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        self.set.iter().chain(&self.add).map(|(_, t)| t)
    }

    /// Whether some value depends on the request.
    pub fn has_placeholders(&self) -> bool {
        self.templates().any(|t| !t.is_literal())
    }
}

/// A header name as rules use it: lowercase, an RFC 9110 token, not a pseudo-header, not one
/// of [`RESERVED`].
fn header_name(name: &str) -> Result<String, String> {
    if name.starts_with(':') {
        return Err(format!(
            "{name:?} is a pseudo-header; change the path or host with the route's rewrite"
        ));
    }
    if !is_token(name) {
        return Err(format!("{name:?} is not a header name"));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) {
        return Err(format!(
            "{lower} is managed by Portico and cannot be rewritten"
        ));
    }
    Ok(lower)
}

/// An RFC 9110 token: what a header name is made of.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A map as a list of pairs. Portico hands the configuration over as JSON with sorted keys, so
/// nothing here may depend on the order a map was written in.
fn ordered<'de, D, V>(d: D) -> Result<Vec<(String, V)>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Pairs<V>(PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for Pairs<V> {
        type Value = Vec<(String, V)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map from header name to value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry::<String, V>()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Pairs(PhantomData))
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Scalar).map(Text)
    }
}

/// A string, number or boolean, as text.
struct Scalar;

impl Visitor<'_> for Scalar {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a header value (a string, number or boolean)")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        Ok(s.to_string())
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<String, E> {
        Ok(n.to_string())
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<String, E> {
        Ok(n.to_string())
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<String, E> {
        Ok(n.to_string())
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<String, E> {
        Ok(b.to_string())
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Values;
        impl<'de> Visitor<'de> for Values {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a header value or a list of them")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<OneOrMany, E> {
                Scalar.visit_str(s).map(|v| OneOrMany(vec![Text(v)]))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<OneOrMany, E> {
                Scalar.visit_u64(n).map(|v| OneOrMany(vec![Text(v)]))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<OneOrMany, E> {
                Scalar.visit_i64(n).map(|v| OneOrMany(vec![Text(v)]))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<OneOrMany, E> {
                Scalar.visit_f64(n).map(|v| OneOrMany(vec![Text(v)]))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<OneOrMany, E> {
                Scalar.visit_bool(b).map(|v| OneOrMany(vec![Text(v)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element::<Text>()? {
                    values.push(v);
                }
                Ok(OneOrMany(values))
            }
        }
        d.deserialize_any(Values)
    }
}
