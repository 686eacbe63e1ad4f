//! A request as a hook sees it: headers, body, properties, local responses and callouts.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::host::{self, Buffer, Map, STREAM_REQUEST, STREAM_RESPONSE};
use crate::sys;

/// What the request does after a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flow {
    /// Go on to the next plugin, then upstream (or downstream).
    Continue,
    /// Hold the request here until the plugin resumes it (after a callout), or — in a body hook
    /// — buffer the body until its end.
    Pause,
}

/// One header map of a request: the request's or the response's headers or trailers. Names are
/// case-insensitive; pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`, `:status`)
/// are present as Envoy presents them.
#[derive(Debug, Clone, Copy)]
pub struct Headers {
    map: Map,
}

impl Headers {
    pub(crate) fn new(map: Map) -> Headers {
        Headers { map }
    }

    /// The value of `name` as text (several values joined with `,`, as Portico and Envoy
    /// present them); `None` when absent. A value that is not UTF-8 is an
    /// error (Portico refuses such requests before plugins run, other hosts may not).
    pub fn get(&self, name: &str) -> Result<Option<String>> {
        match self.get_bytes(name)? {
            None => Ok(None),
            Some(v) => String::from_utf8(v)
                .map(Some)
                .map_err(|_| Error::invalid(format!("header {name} is not UTF-8"))),
        }
    }

    /// The value of `name` as bytes (several values joined with `,`).
    pub fn get_bytes(&self, name: &str) -> Result<Option<Vec<u8>>> {
        sys::get_map_value(self.map, name)
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> Result<bool> {
        Ok(self.get_bytes(name)?.is_some())
    }

    /// Sets `name` to `value`, replacing every value it had. An invalid name or value is an
    /// error ([`Error::is_invalid`]), never silently dropped.
    pub fn set(&self, name: &str, value: impl AsRef<[u8]>) -> Result<()> {
        check_header(name, value.as_ref())?;
        sys::replace_map_value(self.map, name, value.as_ref())
    }

    /// Adds a value to `name`, keeping those it had. An invalid name or value is an error.
    pub fn add(&self, name: &str, value: impl AsRef<[u8]>) -> Result<()> {
        check_header(name, value.as_ref())?;
        sys::add_map_value(self.map, name, value.as_ref())
    }

    /// Removes every value of `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        sys::remove_map_value(self.map, name)
    }

    /// Every header in order, values as text (lossy for the rare value that is not UTF-8).
    pub fn all(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .all_bytes()?
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect())
    }

    /// Every header in order, values as bytes.
    pub fn all_bytes(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let raw = sys::get_map(self.map)?;
        let pairs = host::deserialize_pairs(&raw)
            .ok_or_else(|| Error::invalid("the host sent a malformed header map"))?;
        Ok(pairs
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }

    /// Replaces the whole map.
    pub fn replace_all<K: AsRef<[u8]>, V: AsRef<[u8]>>(&self, pairs: &[(K, V)]) -> Result<()> {
        let bytes = host::serialize_pairs(pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
        sys::set_map(self.map, &bytes)
    }
}

/// RFC 9110's `tchar`, by byte: checked once per byte of every header a plugin sets.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

/// Whether `name` and `value` can be a header (RFC 9110: a token name, or a pseudo-header; a
/// value of visible characters, spaces and tabs). Hosts drop invalid changes quietly, and the
/// ABI gives no way to tell, so the SDK checks before it asks.
pub fn check_header(name: &str, value: &[u8]) -> Result<()> {
    let token = name.strip_prefix(':').unwrap_or(name);
    let name_ok = !token.is_empty() && token.bytes().all(|b| TCHAR[b as usize]);
    if !name_ok {
        return Err(Error::invalid(format!(
            "{name:?} is not a valid header name"
        )));
    }
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(Error::invalid(format!(
            "the value for header {name} has a control character"
        )));
    }
    Ok(())
}

/// A body chunk as a body hook sees it. With [`Flow::Pause`] the host buffers chunks until the
/// end of the stream, so the last call sees the whole body.
#[derive(Debug, Clone, Copy)]
pub struct Body {
    buffer: Buffer,
    size: usize,
    end_of_stream: bool,
}

impl Body {
    pub(crate) fn new(buffer: Buffer, size: usize, end_of_stream: bool) -> Body {
        Body {
            buffer,
            size,
            end_of_stream,
        }
    }

    /// Bytes available now (the buffered body so far).
    pub fn len(&self) -> usize {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Whether this is the last chunk.
    pub fn end_of_stream(&self) -> bool {
        self.end_of_stream
    }

    /// The bytes available now.
    pub fn read(&self) -> Result<Vec<u8>> {
        self.read_range(0, self.size)
    }

    /// Up to `len` bytes from `start`.
    pub fn read_range(&self, start: usize, len: usize) -> Result<Vec<u8>> {
        Ok(sys::get_buffer(self.buffer, start, len)?.unwrap_or_default())
    }

    /// Replaces the available bytes with `data`.
    pub fn replace(&self, data: &[u8]) -> Result<()> {
        sys::set_buffer(self.buffer, 0, self.size, data)
    }
}

/// A response the plugin answers with instead of the upstream's.
///
/// ```
/// use portico_plugin_sdk::LocalResponse;
/// let denied = LocalResponse::new(401)
///     .header("www-authenticate", "Bearer")
///     .body("unauthorized\n");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Why, for the log (`details` of `proxy_send_local_response`).
    pub details: String,
}

impl LocalResponse {
    pub fn new(status: u16) -> LocalResponse {
        LocalResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            details: String::new(),
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> LocalResponse {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> LocalResponse {
        self.body = body.into();
        self
    }

    /// A `text/plain` body.
    pub fn text(self, body: impl Into<String>) -> LocalResponse {
        self.header("content-type", "text/plain; charset=utf-8")
            .body(body.into())
    }

    pub fn details(mut self, details: impl Into<String>) -> LocalResponse {
        self.details = details.into();
        self
    }

    pub(crate) fn send(&self) -> Result<()> {
        let headers = host::serialize_pairs(
            self.headers
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        );
        sys::send_local_response(self.status, &self.details, &self.body, &headers)
    }
}

/// An HTTP request to one of the plugin's upstreams (`proxy_http_call`). The answer arrives in
/// the `on_*http_call_response` hook of the context that sent it.
#[derive(Debug, Clone)]
pub struct Callout {
    upstream: String,
    method: String,
    path: String,
    authority: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Duration,
}

impl Callout {
    /// A request to `upstream` (a name from the proxy's `upstreams:`).
    pub fn new(
        upstream: impl Into<String>,
        method: impl Into<String>,
        path: impl Into<String>,
    ) -> Callout {
        Callout {
            upstream: upstream.into(),
            method: method.into(),
            path: path.into(),
            authority: None,
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(1),
        }
    }

    pub fn get(upstream: impl Into<String>, path: impl Into<String>) -> Callout {
        Callout::new(upstream, "GET", path)
    }

    /// The `:authority`; the upstream's name by default.
    pub fn authority(mut self, authority: impl Into<String>) -> Callout {
        self.authority = Some(authority.into());
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Callout {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Callout {
        self.body = body.into();
        self
    }

    /// How long to wait for the answer (default 1 s); at most `u32::MAX` milliseconds.
    pub fn timeout(mut self, timeout: Duration) -> Callout {
        self.timeout = timeout;
        self
    }

    pub(crate) fn send(&self, context: u32) -> Result<u32> {
        let authority = self.authority.as_deref().unwrap_or(&self.upstream);
        let pseudo = [
            (":method", self.method.as_str()),
            (":path", self.path.as_str()),
            (":authority", authority),
            (":scheme", "http"),
        ];
        let headers = host::serialize_pairs(
            pseudo
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                .chain(
                    self.headers
                        .iter()
                        .map(|(k, v)| (k.as_bytes(), v.as_bytes())),
                ),
        );
        let millis = u32::try_from(self.timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let token = sys::http_call(&self.upstream, &headers, &self.body, millis)?;
        crate::dispatch::remember_callout(token, context);
        Ok(token)
    }
}

/// A callout's answer. A callout that failed (timeout, connection refused, unknown upstream)
/// arrives with status 0 and no headers: check [`CallResponse::is_failure`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallResponse {
    /// The token [`Http::http_call`] or [`crate::Root::http_call`] returned.
    pub token: u32,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CallResponse {
    /// No answer came (timeout or error).
    pub fn is_failure(&self) -> bool {
        self.status == 0
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn read(token: u32, num_headers: usize, body_size: usize) -> CallResponse {
        let headers = if num_headers == 0 {
            Vec::new()
        } else {
            Headers::new(Map::CalloutHeaders).all().unwrap_or_default()
        };
        let status = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let body = if body_size == 0 {
            Vec::new()
        } else {
            sys::get_buffer(Buffer::CalloutBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        CallResponse {
            token,
            status,
            headers,
            body,
        }
    }
}

/// The request a stream hook runs for, with the plugin's per-request state.
#[derive(Debug)]
pub struct Http<'a, S> {
    pub(crate) id: u32,
    /// The phase the stream was paused in when the hook started (`STREAM_REQUEST` or
    /// `STREAM_RESPONSE`), if it was.
    pub(crate) paused: Option<u32>,
    pub(crate) responded: &'a mut bool,
    /// The plugin's state for this request (`Plugin::State`), fresh for every request.
    pub state: &'a mut S,
}

impl<S> Http<'_, S> {
    /// The request headers (readable and writable in the request hooks).
    pub fn request(&self) -> Headers {
        Headers::new(Map::RequestHeaders)
    }

    /// The request trailers (in `on_request_trailers`).
    pub fn request_trailers(&self) -> Headers {
        Headers::new(Map::RequestTrailers)
    }

    /// The response headers (in the response hooks).
    pub fn response(&self) -> Headers {
        Headers::new(Map::ResponseHeaders)
    }

    /// The response trailers (in `on_response_trailers`).
    pub fn response_trailers(&self) -> Headers {
        Headers::new(Map::ResponseTrailers)
    }

    fn pseudo_or_property(&self, header: &str, property: &str) -> Result<String> {
        if let Some(v) = self.request().get(header)? {
            return Ok(v);
        }
        Ok(crate::property::string(&["request", property])?.unwrap_or_default())
    }

    /// The request method.
    pub fn method(&self) -> Result<String> {
        self.pseudo_or_property(":method", "method")
    }

    /// The request path with its query.
    pub fn path(&self) -> Result<String> {
        self.pseudo_or_property(":path", "path")
    }

    /// The `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub fn authority(&self) -> Result<String> {
        self.pseudo_or_property(":authority", "host")
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> Result<String> {
        self.pseudo_or_property(":scheme", "scheme")
    }

    /// The value of query parameter `name` (percent-decoded), if present.
    pub fn query(&self, name: &str) -> Result<Option<String>> {
        let path = self.path()?;
        Ok(crate::util::query_param(&path, name))
    }

    /// The value of cookie `name`, if present.
    pub fn cookie(&self, name: &str) -> Result<Option<String>> {
        let Some(header) = self.request().get("cookie")? else {
            return Ok(None);
        };
        Ok(crate::util::cookie(&header, name).map(str::to_string))
    }

    /// The response status, in the response hooks.
    pub fn status(&self) -> Result<Option<u16>> {
        Ok(self.response().get(":status")?.and_then(|s| s.parse().ok()))
    }

    /// The client's address (`source.address`), as `ip:port`.
    pub fn source_address(&self) -> Result<Option<String>> {
        crate::property::string(&["source", "address"])
    }

    /// The client's IP address.
    pub fn client_ip(&self) -> Result<Option<std::net::IpAddr>> {
        Ok(self
            .source_address()?
            .and_then(|a| crate::util::parse_ip(&a)))
    }

    /// The name of the route the request matched (Portico's `route_name`).
    pub fn route_name(&self) -> Result<Option<String>> {
        crate::property::string(&["route_name"])
    }

    /// The request's id (`x-request-id`, kept or generated by the proxy).
    pub fn request_id(&self) -> Result<Option<String>> {
        crate::property::string(&["request", "id"])
    }

    /// A property by path, raw (see [`crate::property`] for typed getters).
    pub fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>> {
        crate::property::get(path)
    }

    /// Answers the request with `response` instead of the upstream's and stops the chain.
    /// Return the [`Flow`] it gives from the hook.
    pub fn respond(&mut self, response: LocalResponse) -> Result<Flow> {
        response.send()?;
        *self.responded = true;
        Ok(Flow::Pause)
    }

    /// Sends a callout; its answer comes to `Plugin::on_http_call_response` for this request.
    /// Return [`Flow::Pause`] from the hook to hold the request until then.
    pub fn http_call(&mut self, callout: &Callout) -> Result<u32> {
        callout.send(self.id)
    }

    /// Resumes a request paused in the request phase (normally done for you when
    /// `on_http_call_response` returns `Flow::Continue`). It takes effect when the hook
    /// returns, as in every host (so no other hook runs inside this one); should the host then
    /// refuse it, that is logged, the hook having returned. `Err` (`is_invalid`) when the
    /// request is not paused in the request phase.
    pub fn resume_request(&self) -> Result<()> {
        self.resume(STREAM_REQUEST, "request")
    }

    /// Resumes a request paused in the response phase; see [`Http::resume_request`].
    pub fn resume_response(&self) -> Result<()> {
        self.resume(STREAM_RESPONSE, "response")
    }

    fn resume(&self, kind: u32, phase: &str) -> Result<()> {
        if self.paused != Some(kind) {
            return Err(Error::invalid(format!("the {phase} is not paused")));
        }
        crate::dispatch::defer_resume(kind);
        Ok(())
    }
}
