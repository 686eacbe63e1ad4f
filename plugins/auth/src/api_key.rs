//! `type: api_key`: a key in a header (default `x-api-key`) or a query parameter, checked
//! against the SHA-256 digests of the configured keys.
//!
//! Only digests are configured, so the YAML holds no secret. The presented key's digest is
//! compared with every configured digest in full, in constant time; the key is removed before
//! the request goes upstream, and the key's name can go instead.

use portico_plugin_sdk::{Error, Http, LocalResponse, Result};
use serde::Deserialize;

use crate::Verdict;
use crate::util::{self, Digest};

/// `type: api_key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The header that carries the key (default `x-api-key` unless `query` is given).
    #[serde(default)]
    header: Option<String>,
    /// The query parameter that carries the key.
    #[serde(default)]
    query: Option<String>,
    keys: Vec<KeyConfig>,
    /// The header that carries the key's name upstream (`null`: none).
    #[serde(default = "default_name_header")]
    name_header: Option<String>,
    /// Whether to remove the key from what goes upstream.
    #[serde(default = "default_strip")]
    strip: bool,
}

/// One accepted key: a name for logs and upstream, and the key's SHA-256 in hex.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    name: String,
    sha256: String,
}

fn default_name_header() -> Option<String> {
    Some("x-api-key-name".into())
}

fn default_strip() -> bool {
    true
}

/// Where the key is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Header(String),
    Query(String),
}

/// The method, configured.
#[derive(Debug)]
pub struct ApiKey {
    source: Source,
    names: Vec<String>,
    digests: Vec<Digest>,
    name_header: Option<String>,
    strip: bool,
    challenge: String,
}

impl ApiKey {
    pub fn new(config: Config) -> Result<ApiKey> {
        let err = |m: String| Error::config(format!("api_key: {m}"));
        let source = match (config.header, config.query) {
            (Some(_), Some(_)) => return Err(err("give header or query, not both".into())),
            (None, Some(q)) if q.is_empty() => return Err(err("query is empty".into())),
            (None, Some(q)) => Source::Query(q),
            (h, None) => Source::Header(
                util::header_name(h.as_deref().unwrap_or("x-api-key"))
                    .map_err(|e| err(format!("header: {e}")))?,
            ),
        };
        if config.keys.is_empty() {
            return Err(err("keys is empty".into()));
        }
        let mut names: Vec<String> = Vec::new();
        let mut digests: Vec<Digest> = Vec::new();
        for (i, key) in config.keys.into_iter().enumerate() {
            let at = format!("keys[{i}] ({:?})", key.name);
            if key.name.is_empty() || !util::is_header_value(&key.name) {
                return Err(err(format!(
                    "{at}: a name is printable ASCII (it can go upstream in a header)"
                )));
            }
            let digest = util::parse_hex_digest(key.sha256.trim())
                .ok_or_else(|| err(format!("{at}: sha256 is not 64 hex digits")))?;
            if names.contains(&key.name) {
                return Err(err(format!("{at}: a second key with that name")));
            }
            if digests.contains(&digest) {
                return Err(err(format!("{at}: the same key as an earlier entry")));
            }
            names.push(key.name);
            digests.push(digest);
        }
        let name_header = config
            .name_header
            .map(|h| util::header_name(&h))
            .transpose()
            .map_err(|e| err(format!("name_header: {e}")))?;
        let challenge = match &source {
            Source::Header(h) => format!("ApiKey header=\"{h}\""),
            Source::Query(q) => format!("ApiKey query=\"{}\"", q.replace(['"', '\\'], "")),
        };
        Ok(ApiKey {
            source,
            names,
            digests,
            name_header,
            strip: config.strip,
            challenge,
        })
    }

    pub fn describe(&self) -> String {
        let from = match &self.source {
            Source::Header(h) => format!("header {h}"),
            Source::Query(q) => format!("query parameter {q}"),
        };
        format!("api_key, {} keys, from the {from}", self.digests.len())
    }

    pub fn check<S>(&self, http: &mut Http<'_, S>) -> Result<Verdict> {
        let (presented, stripped_path) = match &self.source {
            Source::Header(h) => (http.request().get_bytes(h)?, None),
            Source::Query(q) => {
                let (stripped, count) = util::strip_query_param(&http.path()?, q);
                if count > 1 {
                    return Ok(Verdict::Deny(
                        LocalResponse::new(400)
                            .text("more than one api key\n")
                            .details("api_key: the query names the key more than once"),
                    ));
                }
                (http.query(q)?.map(String::into_bytes), Some(stripped))
            }
        };
        let Some(presented) = presented.filter(|k| !k.is_empty()) else {
            return Ok(self.challenge("no key"));
        };
        let Some(found) = util::find_digest(&self.digests, &util::sha256(&[&presented])) else {
            return Ok(self.challenge("unknown key"));
        };
        let request = http.request();
        if self.strip {
            match (&self.source, stripped_path) {
                (Source::Header(h), _) => request.remove(h)?,
                (Source::Query(_), Some(path)) => request.set(":path", path)?,
                (Source::Query(_), None) => {}
            }
        }
        if let Some(header) = &self.name_header {
            request.set(header, &self.names[found])?;
        }
        Ok(Verdict::Allow)
    }

    fn challenge(&self, why: &str) -> Verdict {
        Verdict::Deny(
            LocalResponse::new(401)
                .header("www-authenticate", self.challenge.clone())
                .text("unauthorized\n")
                .details(format!("api_key: {why}")),
        )
    }
}

#[cfg(test)]
mod tests;
