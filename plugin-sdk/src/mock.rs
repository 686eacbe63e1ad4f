//! The native backend of the hostcalls: a mock host in a thread-local, driven by
//! `testing::Harness`. Without a harness every call answers "unsupported", so a plugin crate
//! still builds (and its non-hook code still runs) on the host target.

// What only the harness reads or builds is unused without the `testing` feature.
#![cfg_attr(not(feature = "testing"), allow(dead_code))]

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use crate::error::{Error, Status};
use crate::host::{self, Buffer, Map, MetricKind};
use crate::http::LocalResponse;

/// A header map as the mock keeps it: lower-case names, raw values.
pub(crate) type Pairs = Vec<(String, Vec<u8>)>;

#[derive(Debug, Default)]
pub(crate) struct MockStream {
    pub maps: HashMap<Map, Vec<(String, Vec<u8>)>>,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub properties: HashMap<String, Vec<u8>>,
    pub local_response: Option<LocalResponse>,
    pub resumed: Vec<u32>,
}

/// A callout the plugin sent, waiting for the test to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCallout {
    pub token: u32,
    pub context: u32,
    pub upstream: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
}

#[cfg(feature = "testing")]
impl SentCallout {
    /// The first value of a header (pseudo-headers included), case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub(crate) struct MockHost {
    pub level: u32,
    pub logs: Vec<(u32, String)>,
    pub now: u64,
    pub tick_millis: u32,
    pub config: Vec<u8>,
    pub effective: u32,
    pub streams: HashMap<u32, MockStream>,
    pub globals: HashMap<String, Vec<u8>>,
    /// The callout being answered: headers and body.
    pub answer: Option<(Pairs, Vec<u8>)>,
    pub shared: HashMap<String, (Vec<u8>, u32)>,
    pub queues: Vec<(String, VecDeque<Vec<u8>>)>,
    pub callouts: Vec<SentCallout>,
    pub next_token: u32,
    pub metrics: Vec<(String, MetricKind, i64)>,
    pub counters: HashMap<Vec<u8>, i64>,
    /// Whether Portico's foreign functions exist (off: behave like another Proxy-Wasm host).
    pub portico_functions: bool,
}

impl MockHost {
    pub fn new(config: Vec<u8>) -> MockHost {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        MockHost {
            level: 0,
            logs: Vec::new(),
            now,
            tick_millis: 0,
            config,
            effective: 0,
            streams: HashMap::new(),
            globals: HashMap::new(),
            answer: None,
            shared: HashMap::new(),
            queues: Vec::new(),
            callouts: Vec::new(),
            next_token: 0,
            metrics: Vec::new(),
            counters: HashMap::new(),
            portico_functions: true,
        }
    }

    fn stream(&mut self) -> Result<&mut MockStream, Error> {
        let id = self.effective;
        self.streams
            .get_mut(&id)
            .ok_or_else(|| Error::host("(mock) stream call outside a request", Status::BadArgument))
    }

    fn map(&mut self, kind: Map) -> Result<&mut Vec<(String, Vec<u8>)>, Error> {
        Ok(self.stream()?.maps.entry(kind).or_default())
    }
}

thread_local! {
    pub(crate) static HOST: RefCell<Option<MockHost>> = const { RefCell::new(None) };
}

pub(crate) fn with<R>(f: impl FnOnce(&mut MockHost) -> Result<R, Error>) -> Result<R, Error> {
    HOST.with(|h| match h.borrow_mut().as_mut() {
        Some(host) => f(host),
        None => Err(Error::unsupported(
            "hostcalls outside Wasm (run the plugin's hooks under portico_plugin_sdk::testing)",
        )),
    })
}

pub fn log(level: u32, msg: &str) -> Result<(), Error> {
    with(|h| {
        h.logs.push((level, msg.to_string()));
        Ok(())
    })
}

pub fn log_level() -> Result<u32, Error> {
    with(|h| Ok(h.level))
}

pub fn now_nanos() -> Result<u64, Error> {
    with(|h| Ok(h.now))
}

pub fn set_tick_period(millis: u32) -> Result<(), Error> {
    with(|h| {
        h.tick_millis = millis;
        Ok(())
    })
}

pub fn get_buffer(kind: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, Error> {
    with(|h| {
        let whole = match kind {
            Buffer::PluginConfiguration => h.config.clone(),
            Buffer::VmConfiguration | Buffer::CallData => Vec::new(),
            Buffer::CalloutBody => match &h.answer {
                Some((_, body)) => body.clone(),
                None => return Ok(None),
            },
            Buffer::RequestBody => h.stream()?.request_body.clone(),
            Buffer::ResponseBody => h.stream()?.response_body.clone(),
        };
        let start = start.min(whole.len());
        let end = start.saturating_add(max).min(whole.len());
        Ok(Some(whole[start..end].to_vec()))
    })
}

pub fn set_buffer(kind: Buffer, start: usize, size: usize, data: &[u8]) -> Result<(), Error> {
    with(|h| {
        let s = h.stream()?;
        let buf = match kind {
            Buffer::RequestBody => &mut s.request_body,
            Buffer::ResponseBody => &mut s.response_body,
            _ => return Err(Error::host("proxy_set_buffer_bytes", Status::BadArgument)),
        };
        let start = start.min(buf.len());
        let end = start.saturating_add(size).min(buf.len());
        buf.splice(start..end, data.iter().copied());
        Ok(())
    })
}

pub fn get_map(kind: Map) -> Result<Vec<u8>, Error> {
    with(|h| {
        let pairs: Vec<(String, Vec<u8>)> = match kind {
            Map::CalloutHeaders => h.answer.as_ref().map(|a| a.0.clone()).unwrap_or_default(),
            Map::CalloutTrailers => Vec::new(),
            _ => h.map(kind)?.clone(),
        };
        Ok(host::serialize_pairs(
            pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())),
        ))
    })
}

pub fn set_map(kind: Map, serialized: &[u8]) -> Result<(), Error> {
    with(|h| {
        let pairs = host::deserialize_pairs(serialized)
            .ok_or_else(|| Error::host("proxy_set_header_map_pairs", Status::BadArgument))?;
        *h.map(kind)? = pairs
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).to_ascii_lowercase(), v))
            .collect();
        Ok(())
    })
}

pub fn get_map_value(kind: Map, key: &str) -> Result<Option<Vec<u8>>, Error> {
    with(|h| {
        let map = match kind {
            Map::CalloutHeaders => h.answer.as_ref().map(|a| a.0.clone()).unwrap_or_default(),
            _ => h.map(kind)?.clone(),
        };
        // As Portico: every value of the header, joined with ','.
        let values: Vec<&[u8]> = map
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_slice())
            .collect();
        Ok((!values.is_empty()).then(|| values.join(&b","[..])))
    })
}

/// Portico's rule: a header change with an invalid name or value is dropped (and logged).
fn valid(key: &str, value: &[u8]) -> bool {
    let name_ok = !key.is_empty()
        && key
            .trim_start_matches(':')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    name_ok
        && value
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

pub fn replace_map_value(kind: Map, key: &str, value: &[u8]) -> Result<(), Error> {
    with(|h| {
        if !valid(key, value) {
            h.logs
                .push((3, format!("(mock host) dropped invalid header {key:?}")));
            return Ok(());
        }
        let map = h.map(kind)?;
        let key = key.to_ascii_lowercase();
        match map.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                map[i].1 = value.to_vec();
                let mut n = 0;
                map.retain(|(k, _)| {
                    n += (*k == key) as usize;
                    *k != key || n == 1
                });
            }
            None => map.push((key, value.to_vec())),
        }
        Ok(())
    })
}

pub fn add_map_value(kind: Map, key: &str, value: &[u8]) -> Result<(), Error> {
    with(|h| {
        if !valid(key, value) {
            h.logs
                .push((3, format!("(mock host) dropped invalid header {key:?}")));
            return Ok(());
        }
        h.map(kind)?
            .push((key.to_ascii_lowercase(), value.to_vec()));
        Ok(())
    })
}

pub fn remove_map_value(kind: Map, key: &str) -> Result<(), Error> {
    with(|h| {
        h.map(kind)?.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        Ok(())
    })
}

pub fn get_property(path: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    with(|h| {
        let key = String::from_utf8_lossy(path).replace('\0', ".");
        if let Some(v) = h.globals.get(&key) {
            return Ok(Some(v.clone()));
        }
        let Some(s) = h.streams.get(&h.effective) else {
            return Ok(None);
        };
        if let Some(v) = s.properties.get(&key) {
            return Ok(Some(v.clone()));
        }
        let header = |name: &str| {
            s.maps
                .get(&Map::RequestHeaders)
                .and_then(|m| m.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        };
        Ok(match key.as_str() {
            "request.path" => header(":path"),
            "request.method" => header(":method"),
            "request.host" => header(":authority"),
            "request.scheme" => header(":scheme"),
            "request.id" => header("x-request-id"),
            _ => None,
        })
    })
}

pub fn set_property(path: &[u8], value: &[u8]) -> Result<(), Error> {
    with(|h| {
        let key = String::from_utf8_lossy(path).replace('\0', ".");
        h.stream()?.properties.insert(key, value.to_vec());
        Ok(())
    })
}

pub fn get_shared(key: &str) -> Result<Option<(Vec<u8>, u32)>, Error> {
    with(|h| Ok(h.shared.get(key).cloned()))
}

pub fn set_shared(key: &str, value: &[u8], cas: u32) -> Result<(), Error> {
    with(|h| {
        let mismatch = Error::host("proxy_set_shared_data", Status::CasMismatch);
        match h.shared.get_mut(key) {
            Some((v, token)) => {
                if cas != 0 && cas != *token {
                    return Err(mismatch);
                }
                if value.is_empty() && cas != 0 {
                    h.shared.remove(key);
                    return Ok(());
                }
                *v = value.to_vec();
                *token = token.wrapping_add(1).max(1);
            }
            None if cas != 0 => return Err(mismatch),
            None => {
                h.shared.insert(key.to_string(), (value.to_vec(), 1));
            }
        }
        Ok(())
    })
}

pub fn register_queue(name: &str) -> Result<u32, Error> {
    with(|h| {
        if let Some(i) = h.queues.iter().position(|(n, _)| n == name) {
            return Ok(i as u32 + 1);
        }
        h.queues.push((name.to_string(), VecDeque::new()));
        Ok(h.queues.len() as u32)
    })
}

pub fn resolve_queue(name: &str) -> Result<Option<u32>, Error> {
    with(|h| {
        Ok(h.queues
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| i as u32 + 1))
    })
}

pub fn enqueue(id: u32, value: &[u8]) -> Result<(), Error> {
    with(|h| {
        let q = h
            .queues
            .get_mut((id as usize).wrapping_sub(1))
            .ok_or_else(|| Error::host("proxy_enqueue_shared_queue", Status::NotFound))?;
        q.1.push_back(value.to_vec());
        Ok(())
    })
}

pub fn dequeue(id: u32) -> Result<Option<Vec<u8>>, Error> {
    with(|h| {
        let q = h
            .queues
            .get_mut((id as usize).wrapping_sub(1))
            .ok_or_else(|| Error::host("proxy_dequeue_shared_queue", Status::NotFound))?;
        Ok(q.1.pop_front())
    })
}

pub fn continue_stream(kind: u32) -> Result<(), Error> {
    with(|h| {
        h.stream()?.resumed.push(kind);
        Ok(())
    })
}

pub fn send_local_response(
    status: u16,
    details: &str,
    body: &[u8],
    headers: &[u8],
) -> Result<(), Error> {
    with(|h| {
        let pairs = host::deserialize_pairs(headers)
            .ok_or_else(|| Error::host("proxy_send_local_response", Status::BadArgument))?;
        if !(200..=599).contains(&status) {
            return Err(Error::host(
                "proxy_send_local_response",
                Status::BadArgument,
            ));
        }
        h.stream()?.local_response = Some(LocalResponse {
            status,
            headers: pairs
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
            details: details.to_string(),
        });
        Ok(())
    })
}

pub fn http_call(
    upstream: &str,
    headers: &[u8],
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, Error> {
    with(|h| {
        let pairs = host::deserialize_pairs(headers)
            .ok_or_else(|| Error::host("proxy_http_call", Status::BadArgument))?;
        let headers: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        let has = |n: &str| headers.iter().any(|(k, _)| k == n);
        if !(has(":method") && has(":path") && has(":authority")) {
            return Err(Error::host("proxy_http_call", Status::BadArgument));
        }
        h.next_token += 1;
        let token = h.next_token;
        h.callouts.push(SentCallout {
            token,
            context: h.effective,
            upstream: upstream.to_string(),
            headers,
            body: body.to_vec(),
            timeout_ms,
        });
        Ok(token)
    })
}

pub fn set_effective_context(id: u32) -> Result<(), Error> {
    with(|h| {
        h.effective = id;
        Ok(())
    })
}

pub fn call_foreign(name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    with(|h| {
        if !h.portico_functions {
            return Ok(None);
        }
        let bad = || Error::host("proxy_call_foreign_function", Status::BadArgument);
        match name {
            "portico.counter_add" => {
                let (delta, key) = args.split_at_checked(8).ok_or_else(bad)?;
                let delta = i64::from_le_bytes(delta.try_into().map_err(|_| bad())?);
                let v = h.counters.entry(key.to_vec()).or_insert(0);
                *v = v.wrapping_add(delta);
                Ok(Some(v.to_le_bytes().to_vec()))
            }
            "portico.counter_get" => Ok(Some(
                h.counters
                    .get(args)
                    .copied()
                    .unwrap_or(0)
                    .to_le_bytes()
                    .to_vec(),
            )),
            // Signatures are verified by the SDK's in-guest fallback under the mock.
            _ => Ok(None),
        }
    })
}

pub fn define_metric(kind: MetricKind, name: &str) -> Result<u32, Error> {
    with(|h| {
        if let Some(i) = h
            .metrics
            .iter()
            .position(|(n, k, _)| n == name && *k == kind)
        {
            return Ok(i as u32);
        }
        h.metrics.push((name.to_string(), kind, 0));
        Ok(h.metrics.len() as u32 - 1)
    })
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), Error> {
    with(|h| {
        let m = h
            .metrics
            .get_mut(id as usize)
            .ok_or_else(|| Error::host("proxy_increment_metric", Status::NotFound))?;
        m.2 = m.2.saturating_add(offset);
        Ok(())
    })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Error> {
    with(|h| {
        let m = h
            .metrics
            .get_mut(id as usize)
            .ok_or_else(|| Error::host("proxy_record_metric", Status::NotFound))?;
        m.2 = value.min(i64::MAX as u64) as i64;
        Ok(())
    })
}

pub fn get_metric(id: u32) -> Result<u64, Error> {
    with(|h| {
        let m = h
            .metrics
            .get(id as usize)
            .ok_or_else(|| Error::host("proxy_get_metric", Status::NotFound))?;
        Ok(m.2.max(0) as u64)
    })
}
