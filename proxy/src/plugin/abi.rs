//! The Proxy-Wasm ABI v0.2.1 host functions (module `env`), as modules built with the public
//! `proxy-wasm` crate import them.
//!
//! Status discipline: the reference SDK panics on any status a hostcall is not documented to
//! return, so each function returns only the statuses its SDK wrapper handles. Where Envoy
//! would return an error that the SDK turns into a panic for a harmless condition (a header map
//! that does not exist yet), Portico answers `Ok` with an empty result instead. Nothing here
//! calls back into a guest callback: stream actions are recorded in the stream's effects and
//! take effect after the running callback returns; only `proxy_on_memory_allocate` is called
//! re-entrantly, to hand data to the guest.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use wasmtime::{Caller, Linker};

use super::frozen::Frozen;
use super::instance::{
    CalloutRequest, HostCtx, LocalResponse, ROOT_CONTEXT, RequestHead, ResponseHead,
};
use super::properties;
use super::shared::SetError;

/// Status codes of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
}

/// Caps on what a guest can hand the host in one call.
pub const MAX_KEY_BYTES: usize = 16 << 10;
pub const MAX_VALUE_BYTES: usize = 1 << 20;
pub const MAX_MAP_BYTES: usize = 4 << 20;
/// What a plugin may grow a header or trailer map to: values, and bytes of names and values.
/// Past either, the change traps (the request fails by the plugin's `on_error`).
pub const MAX_MAP_VALUES: usize = 1024;
pub const MAX_LOG_BYTES: usize = 64 << 10;
pub const MAX_CALLOUTS: usize = 4096;
/// The longest timeout a plugin may give a callout.
pub const MAX_CALLOUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

type R = wasmtime::Result<u32>;
type C<'a> = Caller<'a, HostCtx>;

const fn st(s: Status) -> R {
    Ok(s as u32)
}

/// Every host function a Proxy-Wasm 0.2.x module may import from `env`.
pub const HOST_FUNCTIONS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_add_header_map_value",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_status",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_call_foreign_function",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
];

pub fn add_to_linker(linker: &mut Linker<HostCtx>) -> wasmtime::Result<()> {
    let m = "env";
    linker.func_wrap(m, "proxy_log", log)?;
    linker.func_wrap(m, "proxy_get_log_level", get_log_level)?;
    linker.func_wrap(m, "proxy_get_current_time_nanoseconds", current_time)?;
    linker.func_wrap(m, "proxy_set_tick_period_milliseconds", set_tick_period)?;
    linker.func_wrap(m, "proxy_get_buffer_bytes", get_buffer_bytes)?;
    linker.func_wrap(m, "proxy_set_buffer_bytes", set_buffer_bytes)?;
    linker.func_wrap(m, "proxy_get_header_map_pairs", get_map_pairs)?;
    linker.func_wrap(m, "proxy_set_header_map_pairs", set_map_pairs)?;
    linker.func_wrap(m, "proxy_get_header_map_value", get_map_value)?;
    linker.func_wrap(m, "proxy_replace_header_map_value", replace_map_value)?;
    linker.func_wrap(m, "proxy_remove_header_map_value", remove_map_value)?;
    linker.func_wrap(m, "proxy_add_header_map_value", add_map_value)?;
    linker.func_wrap(m, "proxy_get_property", get_property)?;
    linker.func_wrap(m, "proxy_set_property", set_property)?;
    linker.func_wrap(m, "proxy_get_shared_data", get_shared_data)?;
    linker.func_wrap(m, "proxy_set_shared_data", set_shared_data)?;
    linker.func_wrap(m, "proxy_register_shared_queue", register_queue)?;
    linker.func_wrap(m, "proxy_resolve_shared_queue", resolve_queue)?;
    linker.func_wrap(m, "proxy_dequeue_shared_queue", dequeue)?;
    linker.func_wrap(m, "proxy_enqueue_shared_queue", enqueue)?;
    linker.func_wrap(m, "proxy_continue_stream", continue_stream)?;
    linker.func_wrap(m, "proxy_close_stream", close_stream)?;
    linker.func_wrap(m, "proxy_send_local_response", send_local_response)?;
    linker.func_wrap(m, "proxy_http_call", http_call)?;
    linker.func_wrap(
        m,
        "proxy_grpc_call",
        |_: C,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32| { st(Status::InternalFailure) },
    )?;
    linker.func_wrap(
        m,
        "proxy_grpc_stream",
        |_: C, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| {
            st(Status::InternalFailure)
        },
    )?;
    linker.func_wrap(
        m,
        "proxy_grpc_send",
        |_: C, _: u32, _: u32, _: u32, _: u32| st(Status::NotFound),
    )?;
    linker.func_wrap(m, "proxy_grpc_cancel", |_: C, _: u32| st(Status::NotFound))?;
    linker.func_wrap(m, "proxy_grpc_close", |_: C, _: u32| st(Status::NotFound))?;
    linker.func_wrap(m, "proxy_get_status", get_status)?;
    linker.func_wrap(m, "proxy_set_effective_context", set_effective_context)?;
    linker.func_wrap(m, "proxy_done", |_: C| st(Status::Ok))?;
    linker.func_wrap(m, "proxy_call_foreign_function", call_foreign_function)?;
    linker.func_wrap(m, "proxy_define_metric", define_metric)?;
    linker.func_wrap(m, "proxy_increment_metric", increment_metric)?;
    linker.func_wrap(m, "proxy_record_metric", record_metric)?;
    linker.func_wrap(m, "proxy_get_metric", get_metric)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Guest memory

fn oob() -> wasmtime::Error {
    wasmtime::format_err!("plugin passed a pointer outside its memory")
}

/// Copies `len` bytes at `ptr` out of guest memory.
pub fn read(caller: &mut C, ptr: u32, len: u32, cap: usize) -> wasmtime::Result<Vec<u8>> {
    if len as usize > cap {
        return Err(wasmtime::format_err!(
            "plugin passed {len} bytes to a hostcall that accepts at most {cap}"
        ));
    }
    let memory = caller.data().memory.ok_or_else(oob)?;
    let data = memory.data(&caller);
    let start = ptr as usize;
    let end = start.checked_add(len as usize).ok_or_else(oob)?;
    Ok(data.get(start..end).ok_or_else(oob)?.to_vec())
}

fn write_u32(caller: &mut C, ptr: u32, value: u32) -> wasmtime::Result<()> {
    write_bytes(caller, ptr, &value.to_le_bytes())
}

fn write_bytes(caller: &mut C, ptr: u32, bytes: &[u8]) -> wasmtime::Result<()> {
    let memory = caller.data().memory.ok_or_else(oob)?;
    let data = memory.data_mut(caller);
    let start = ptr as usize;
    let end = start.checked_add(bytes.len()).ok_or_else(oob)?;
    data.get_mut(start..end)
        .ok_or_else(oob)?
        .copy_from_slice(bytes);
    Ok(())
}

/// Hands `bytes` to the guest: allocated with its own allocator, pointer and length written
/// to `ret_ptr` / `ret_len`. Empty data is returned as a null pointer, as the SDK expects.
pub fn give(caller: &mut C, bytes: &[u8], ret_ptr: u32, ret_len: u32) -> wasmtime::Result<()> {
    let ptr = if bytes.is_empty() {
        0
    } else {
        // Taken out for the call and put back: a `TypedFunc` clone would cost more than the
        // allocation itself.
        let malloc = caller.data_mut().malloc.take().ok_or_else(oob)?;
        let ptr = malloc.call(&mut *caller, bytes.len() as u32);
        caller.data_mut().malloc = Some(malloc);
        let ptr = ptr?;
        if ptr == 0 {
            return Err(wasmtime::format_err!("plugin's allocator returned null"));
        }
        write_bytes(caller, ptr, bytes)?;
        ptr
    };
    write_u32(caller, ret_ptr, ptr)?;
    write_u32(caller, ret_len, bytes.len() as u32)
}

// ---------------------------------------------------------------------------------------------
// Logging, time, ticks

fn log(mut caller: C, level: u32, ptr: u32, len: u32) -> R {
    let bytes = read(
        &mut caller,
        ptr,
        len.min(MAX_LOG_BYTES as u32),
        MAX_LOG_BYTES,
    )?;
    let msg = String::from_utf8_lossy(&bytes);
    let ctx = caller.data_mut();
    emit(ctx, level, &msg);
    st(Status::Ok)
}

/// Writes a plugin's log line to tracing under the plugin's name.
pub fn emit(ctx: &mut HostCtx, level: u32, msg: &str) {
    let plugin = ctx.spec.name.as_str();
    match level {
        0 => tracing::trace!(target: "portico::plugin", plugin, "{msg}"),
        1 => tracing::debug!(target: "portico::plugin", plugin, "{msg}"),
        2 => tracing::info!(target: "portico::plugin", plugin, "{msg}"),
        3 => tracing::warn!(target: "portico::plugin", plugin, "{msg}"),
        _ => tracing::error!(target: "portico::plugin", plugin, "{msg}"),
    }
    ctx.remember_log(msg.to_string());
}

/// Lines of stdout or stderr logged per guest call; the rest are counted, not logged.
const MAX_OUTPUT_LINES: usize = 256;

/// Logs what the guest wrote to stdout and stderr, line by line. Called after every guest
/// call, which almost always wrote nothing.
#[inline]
pub fn flush_output(ctx: &mut HostCtx) {
    if !ctx.stdout.is_empty() || !ctx.stderr.is_empty() {
        flush_written(ctx);
    }
}

#[cold]
fn flush_written(ctx: &mut HostCtx) {
    for (err, level) in [(false, 2), (true, 3)] {
        let buf = if err {
            &mut ctx.stderr
        } else {
            &mut ctx.stdout
        };
        if buf.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(buf).into_owned();
        buf.clear();
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        for line in lines.by_ref().take(MAX_OUTPUT_LINES) {
            emit(ctx, level, line);
        }
        let dropped = lines.count();
        if dropped > 0 {
            emit(
                ctx,
                level,
                &format!("[{dropped} more lines of output from this call dropped]"),
            );
        }
    }
}

fn get_log_level(mut caller: C, ret: u32) -> R {
    use tracing::level_filters::LevelFilter;
    let level = match LevelFilter::current() {
        LevelFilter::TRACE => 0,
        LevelFilter::DEBUG => 1,
        LevelFilter::INFO => 2,
        LevelFilter::WARN => 3,
        LevelFilter::ERROR => 4,
        _ => 5,
    };
    write_u32(&mut caller, ret, level)?;
    st(Status::Ok)
}

fn current_time(mut caller: C, ret: u32) -> R {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    write_bytes(&mut caller, ret, &now.to_le_bytes())?;
    st(Status::Ok)
}

fn set_tick_period(mut caller: C, millis: u32) -> R {
    let period = (millis > 0).then(|| std::time::Duration::from_millis(millis.max(1) as u64));
    let ctx = caller.data_mut();
    ctx.tick_period = period;
    ctx.deferred.tick_period = Some(period.unwrap_or_default());
    st(Status::Ok)
}

// ---------------------------------------------------------------------------------------------
// Buffers

const BUF_REQUEST_BODY: u32 = 0;
const BUF_RESPONSE_BODY: u32 = 1;
const BUF_CALLOUT_BODY: u32 = 4;
const BUF_VM_CONFIG: u32 = 6;
const BUF_PLUGIN_CONFIG: u32 = 7;
const BUF_CALL_DATA: u32 = 8;

fn get_buffer_bytes(
    mut caller: C,
    kind: u32,
    start: u32,
    max: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> R {
    let ctx = caller.data_mut();
    let whole: Bytes = match kind {
        BUF_REQUEST_BODY | BUF_RESPONSE_BODY => match ctx.stream() {
            Some(s) if kind == BUF_REQUEST_BODY => s.request_body.clone(),
            Some(s) => s.response_body.clone(),
            None => return st(Status::NotFound),
        },
        BUF_CALLOUT_BODY => match &ctx.callout {
            Some(c) => c.body.clone(),
            None => return st(Status::NotFound),
        },
        BUF_VM_CONFIG => ctx.spec.vm_config.clone(),
        BUF_PLUGIN_CONFIG => ctx.spec.config.clone(),
        BUF_CALL_DATA => ctx.call_data.clone(),
        _ => return st(Status::NotFound),
    };
    let start = (start as usize).min(whole.len());
    let end = start.saturating_add(max as usize).min(whole.len());
    give(&mut caller, &whole[start..end], ret_ptr, ret_len)?;
    st(Status::Ok)
}

fn set_buffer_bytes(mut caller: C, kind: u32, start: u32, size: u32, ptr: u32, len: u32) -> R {
    let cap = caller.data().spec.limits.body_buffer as usize;
    let data = read(&mut caller, ptr, len, cap)?;
    let ctx = caller.data_mut();
    let Some(stream) = ctx.stream() else {
        return st(Status::BadArgument);
    };
    let buf: &mut Bytes = match kind {
        BUF_REQUEST_BODY => &mut stream.request_body,
        BUF_RESPONSE_BODY => &mut stream.response_body,
        _ => return st(Status::BadArgument),
    };
    let start = (start as usize).min(buf.len());
    let end = start.saturating_add(size as usize).min(buf.len());
    if buf.len() - (end - start) + data.len() > cap {
        return st(Status::BadArgument);
    }
    let mut next = BytesMut::with_capacity(buf.len() - (end - start) + data.len());
    next.extend_from_slice(&buf[..start]);
    next.extend_from_slice(&data);
    next.extend_from_slice(&buf[end..]);
    *buf = next.freeze();
    st(Status::Ok)
}

// ---------------------------------------------------------------------------------------------
// Header maps

const MAP_REQUEST_HEADERS: u32 = 0;
const MAP_REQUEST_TRAILERS: u32 = 1;
const MAP_RESPONSE_HEADERS: u32 = 2;
const MAP_RESPONSE_TRAILERS: u32 = 3;
const MAP_CALLOUT_HEADERS: u32 = 6;
const MAP_CALLOUT_TRAILERS: u32 = 7;

/// The map a hostcall addresses, with its pseudo-headers.
enum MapRef<'a> {
    Request(&'a mut RequestHead),
    Response(&'a mut ResponseHead),
    Plain(&'a mut HeaderMap),
    /// A callout's answer: read-only pairs.
    Pairs(&'a [(Bytes, Bytes)]),
    /// The request or response head after its own phase (as Envoy keeps them readable for
    /// the later callbacks, `on_log` included): read-only.
    Frozen(&'a Frozen),
}

/// What reading a [`MapRef`] sees.
enum View<'a> {
    Request(&'a RequestHead),
    Response(&'a ResponseHead),
    Plain(&'a HeaderMap),
    Pairs(&'a [(Bytes, Bytes)]),
    Frozen(&'a Frozen),
}

/// `None`: the map does not exist now (e.g. response headers during the request phase).
fn map_of(ctx: &mut HostCtx, kind: u32) -> Result<Option<MapRef<'_>>, Status> {
    if kind == MAP_CALLOUT_HEADERS || kind == MAP_CALLOUT_TRAILERS {
        return Ok(ctx.callout.as_ref().map(|c| {
            MapRef::Pairs(if kind == MAP_CALLOUT_HEADERS {
                &c.headers
            } else {
                &c.trailers
            })
        }));
    }
    let Some(stream) = ctx.streams.get_mut(&ctx.effective) else {
        return Ok(None);
    };
    Ok(match kind {
        MAP_REQUEST_HEADERS if stream.request.is_none() => {
            stream.info.later.request.get().map(MapRef::Frozen)
        }
        MAP_REQUEST_HEADERS => stream.request.as_deref_mut().map(MapRef::Request),
        MAP_REQUEST_TRAILERS => stream.request_trailers.as_deref_mut().map(MapRef::Plain),
        MAP_RESPONSE_HEADERS if stream.response.is_none() => {
            stream.info.later.response.get().map(MapRef::Frozen)
        }
        MAP_RESPONSE_HEADERS => stream.response.as_deref_mut().map(MapRef::Response),
        MAP_RESPONSE_TRAILERS => stream.response_trailers.as_deref_mut().map(MapRef::Plain),
        _ => return Err(Status::BadArgument),
    })
}

impl MapRef<'_> {
    fn view(&self) -> View<'_> {
        match self {
            MapRef::Request(r) => View::Request(r),
            MapRef::Response(r) => View::Response(r),
            MapRef::Frozen(f) => View::Frozen(f),
            MapRef::Plain(h) => View::Plain(h),
            MapRef::Pairs(p) => View::Pairs(p),
        }
    }

    fn pairs(&self) -> Vec<(&[u8], &[u8])> {
        let mut out: Vec<(&[u8], &[u8])> = Vec::new();
        let headers = match self.view() {
            View::Request(r) => {
                out.push((b":authority", r.authority.as_bytes()));
                out.push((b":path", r.path.as_bytes()));
                out.push((b":method", r.method.as_str().as_bytes()));
                out.push((b":scheme", r.scheme.as_bytes()));
                &r.headers
            }
            View::Response(r) => {
                out.push((b":status", r.status.as_str().as_bytes()));
                &r.headers
            }
            View::Plain(h) => h,
            View::Pairs(p) => return p.iter().map(|(k, v)| (&k[..], &v[..])).collect(),
            View::Frozen(f) => return f.pairs().collect(),
        };
        for (k, v) in headers.iter() {
            out.push((k.as_str().as_bytes(), v.as_bytes()));
        }
        out
    }

    fn get(&self, key: &[u8]) -> Option<Value> {
        // Keys in any case, pseudo-headers included, as Envoy lowercases them.
        let lower;
        let key = if key.iter().any(u8::is_ascii_uppercase) {
            lower = key.to_ascii_lowercase();
            &lower[..]
        } else {
            key
        };
        let owned = |b: &[u8]| Some(Value::Owned(b.to_vec()));
        match (self.view(), key) {
            (View::Request(r), b":authority") => return owned(r.authority.as_bytes()),
            (View::Request(r), b":path") => return owned(r.path.as_bytes()),
            (View::Request(r), b":method") => return owned(r.method.as_str().as_bytes()),
            (View::Request(r), b":scheme") => return owned(r.scheme.as_bytes()),
            (View::Response(r), b":status") => return owned(r.status.as_str().as_bytes()),
            (View::Pairs(p), _) => {
                let values: Vec<&[u8]> = p
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| &v[..])
                    .collect();
                return (!values.is_empty()).then(|| Value::Owned(values.join(&b","[..])));
            }
            (View::Frozen(f), _) => {
                let mut values = f.get_all(key);
                let mut out = values.next()?.to_vec();
                for v in values {
                    out.push(b',');
                    out.extend_from_slice(v);
                }
                return Some(Value::Owned(out));
            }
            _ => {}
        }
        let headers = self.headers()?;
        // A `&str` key is looked up without building a `HeaderName` (no allocation).
        let name = std::str::from_utf8(key).ok()?;
        let mut values = headers.get_all(name).iter();
        let first = values.next()?;
        let Some(second) = values.next() else {
            return Some(Value::Header(first.clone()));
        };
        let mut out = first.as_bytes().to_vec();
        for v in std::iter::once(second).chain(values) {
            out.push(b',');
            out.extend_from_slice(v.as_bytes());
        }
        Some(Value::Owned(out))
    }

    fn headers(&self) -> Option<&HeaderMap> {
        match self.view() {
            View::Request(r) => Some(&r.headers),
            View::Response(r) => Some(&r.headers),
            View::Plain(h) => Some(h),
            View::Pairs(_) | View::Frozen(_) => None,
        }
    }

    fn headers_mut(&mut self) -> Option<&mut HeaderMap> {
        match self {
            MapRef::Request(r) => Some(&mut r.headers),
            MapRef::Response(r) => Some(&mut r.headers),
            MapRef::Plain(h) => Some(h),
            MapRef::Pairs(_) | MapRef::Frozen(_) => None,
        }
    }

    /// Refuses (as a trap) a change that would grow the map past [`MAX_MAP_VALUES`] values or
    /// [`MAX_MAP_BYTES`] bytes: a guest could otherwise grow host memory without bound, one
    /// hostcall at a time, outside its own memory limit.
    fn check_growth(&mut self, op: Op, key: &[u8], value: &[u8]) -> wasmtime::Result<()> {
        let Some(headers) = self.headers_mut().filter(|_| op != Op::Remove) else {
            return Ok(());
        };
        let bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        if headers.len() >= MAX_MAP_VALUES || bytes + key.len() + value.len() > MAX_MAP_BYTES {
            return Err(wasmtime::format_err!(
                "plugin grew a header map past its cap ({MAX_MAP_VALUES} values, {MAX_MAP_BYTES} bytes)"
            ));
        }
        Ok(())
    }

    /// Sets a pseudo-header; `Err` when the value is not valid for it.
    fn set_pseudo(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(value).map_err(|_| "not UTF-8".to_string())?;
        match (self, key) {
            (MapRef::Request(r), b":authority") => {
                http::uri::Authority::try_from(text).map_err(|e| e.to_string())?;
                r.authority = text.to_string();
            }
            (MapRef::Request(r), b":path") => {
                if !text.starts_with('/') {
                    return Err("must start with /".into());
                }
                http::uri::PathAndQuery::try_from(text).map_err(|e| e.to_string())?;
                r.path = text.to_string();
            }
            (MapRef::Request(r), b":method") => {
                r.method = Method::from_bytes(value).map_err(|e| e.to_string())?;
            }
            (MapRef::Request(_), b":scheme") => {}
            (MapRef::Response(r), b":status") => {
                r.status = text
                    .parse::<u16>()
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or_else(|| "not a status code".to_string())?;
            }
            _ => return Err("unknown pseudo-header".into()),
        }
        Ok(())
    }

    /// Applies a change; invalid names or values are refused with a message.
    fn apply(&mut self, op: Op, key: &[u8], value: &[u8]) -> Result<(), String> {
        if matches!(self, MapRef::Frozen(_)) {
            return Err("the map is read-only after its own phase".into());
        }
        if key.first() == Some(&b':') {
            return match op {
                Op::Remove => Ok(()),
                _ => self.set_pseudo(key, value),
            };
        }
        let headers = self.headers_mut().ok_or("the map is read-only")?;
        let name = HeaderName::from_bytes(key).map_err(|_| "invalid header name".to_string())?;
        if op != Op::Remove && std::str::from_utf8(value).is_err() {
            // Plugins read header values as text (the reference SDK panics on other bytes), so
            // no plugin gets to hand the next one a value it cannot read.
            return Err("the value is not UTF-8".into());
        }
        match op {
            Op::Remove => {
                headers.remove(&name);
            }
            Op::Replace => {
                let v = HeaderValue::from_bytes(value).map_err(|_| "invalid header value")?;
                headers.try_insert(name, v).map_err(|_| "the map is full")?;
            }
            Op::Add => {
                let v = HeaderValue::from_bytes(value).map_err(|_| "invalid header value")?;
                headers.try_append(name, v).map_err(|_| "the map is full")?;
            }
        }
        Ok(())
    }
}

/// A header value read for the guest.
enum Value {
    Header(HeaderValue),
    Owned(Vec<u8>),
}

impl Value {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Header(v) => v.as_bytes(),
            Value::Owned(v) => v,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Replace,
    Remove,
}

/// Serialises pairs as the ABI expects: count, (key length, value length) per pair, then each
/// key and value followed by a NUL.
pub fn serialize_pairs(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The inverse of [`serialize_pairs`]; `None` when malformed.
pub fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(Bytes, Bytes)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let n = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let mut sizes = Vec::with_capacity(n.min(1024));
    let mut at = 4usize;
    for _ in 0..n {
        let k = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        sizes.push((k, v));
        at += 8;
    }
    let mut out = Vec::with_capacity(n.min(1024));
    for (k, v) in sizes {
        let key = bytes.get(at..at.checked_add(k)?)?;
        at += k + 1;
        let value = bytes.get(at..at.checked_add(v)?)?;
        at += v + 1;
        if at > bytes.len() {
            return None;
        }
        out.push((Bytes::copy_from_slice(key), Bytes::copy_from_slice(value)));
    }
    Some(out)
}

fn get_map_pairs(mut caller: C, kind: u32, ret_ptr: u32, ret_len: u32) -> R {
    let data = match map_of(caller.data_mut(), kind) {
        Err(s) => return st(s),
        Ok(None) => serialize_pairs(&[]),
        // A frozen head is already in this encoding.
        Ok(Some(MapRef::Frozen(f))) => {
            let f = f.clone();
            give(&mut caller, f.wire(), ret_ptr, ret_len)?;
            return st(Status::Ok);
        }
        Ok(Some(map)) => serialize_pairs(&map.pairs()),
    };
    give(&mut caller, &data, ret_ptr, ret_len)?;
    st(Status::Ok)
}

fn set_map_pairs(mut caller: C, kind: u32, ptr: u32, len: u32) -> R {
    let data = read(&mut caller, ptr, len, MAX_MAP_BYTES)?;
    let Some(pairs) = deserialize_pairs(&data) else {
        return st(Status::BadArgument);
    };
    let plugin = caller.data().spec.name.clone();
    let Ok(Some(mut map)) = map_of(caller.data_mut(), kind) else {
        return st(Status::Ok);
    };
    if let Some(h) = map.headers_mut() {
        h.clear();
    }
    for (k, v) in pairs {
        let k = k.to_ascii_lowercase();
        map.check_growth(Op::Add, &k, &v)?;
        if let Err(e) = map.apply(Op::Add, &k, &v) {
            refused(&plugin, &k, &e);
        }
    }
    st(Status::Ok)
}

fn get_map_value(mut caller: C, kind: u32, kp: u32, kl: u32, ret_ptr: u32, ret_len: u32) -> R {
    // The key is read in place and the value borrowed (a header value clone shares its bytes):
    // the only copy is into the guest's buffer.
    let memory = caller.data().memory.ok_or_else(oob)?;
    let (mem, ctx) = memory.data_and_store_mut(&mut caller);
    let key = slice(mem, kp, kl, MAX_KEY_BYTES)?;
    let value = match map_of(ctx, kind) {
        Err(s) => return st(s),
        Ok(None) => None,
        Ok(Some(map)) => map.get(key),
    };
    match value {
        Some(v) => {
            give(&mut caller, v.as_bytes(), ret_ptr, ret_len)?;
            st(Status::Ok)
        }
        None => st(Status::NotFound),
    }
}

fn change(mut caller: C, op: Op, kind: u32, kp: u32, kl: u32, vp: u32, vl: u32) -> R {
    let memory = caller.data().memory.ok_or_else(oob)?;
    let (mem, ctx) = memory.data_and_store_mut(&mut caller);
    let key = slice(mem, kp, kl, MAX_KEY_BYTES)?;
    let value = match op {
        Op::Remove => &[][..],
        _ => slice(mem, vp, vl, MAX_VALUE_BYTES)?,
    };
    let outcome = match map_of(ctx, kind) {
        Err(s) => return st(s),
        // Changing a map that does not exist now changes nothing.
        Ok(None) => Ok(()),
        Ok(Some(mut map)) => {
            map.check_growth(op, key, value)?;
            map.apply(op, key, value)
        }
    };
    if let Err(e) = outcome {
        refused(&ctx.spec.name, key, &e);
    }
    st(Status::Ok)
}

/// `len` bytes at `ptr` of guest memory, in place.
fn slice(mem: &[u8], ptr: u32, len: u32, cap: usize) -> wasmtime::Result<&[u8]> {
    if len as usize > cap {
        return Err(wasmtime::format_err!(
            "plugin passed {len} bytes to a hostcall that accepts at most {cap}"
        ));
    }
    let start = ptr as usize;
    let end = start.checked_add(len as usize).ok_or_else(oob)?;
    mem.get(start..end).ok_or_else(oob)
}

/// An invalid header change is dropped, not fatal: the SDK panics on any status but `Ok`.
fn refused(plugin: &str, key: &[u8], reason: &str) {
    tracing::warn!(
        target: "portico::plugin",
        plugin,
        header = %String::from_utf8_lossy(key),
        "header change ignored: {reason}"
    );
}

fn replace_map_value(caller: C, kind: u32, kp: u32, kl: u32, vp: u32, vl: u32) -> R {
    change(caller, Op::Replace, kind, kp, kl, vp, vl)
}

fn add_map_value(caller: C, kind: u32, kp: u32, kl: u32, vp: u32, vl: u32) -> R {
    change(caller, Op::Add, kind, kp, kl, vp, vl)
}

fn remove_map_value(caller: C, kind: u32, kp: u32, kl: u32) -> R {
    change(caller, Op::Remove, kind, kp, kl, 0, 0)
}

// ---------------------------------------------------------------------------------------------
// Properties

fn get_property(mut caller: C, pp: u32, pl: u32, ret_ptr: u32, ret_len: u32) -> R {
    // The path is read in place, as header keys are.
    let memory = caller.data().memory.ok_or_else(oob)?;
    let (mem, ctx) = memory.data_and_store_mut(&mut caller);
    let path = slice(mem, pp, pl, MAX_KEY_BYTES)?;
    match properties::get(ctx, path) {
        Some(v) => {
            give(&mut caller, &v, ret_ptr, ret_len)?;
            st(Status::Ok)
        }
        None => st(Status::NotFound),
    }
}

fn set_property(mut caller: C, pp: u32, pl: u32, vp: u32, vl: u32) -> R {
    let path = read(&mut caller, pp, pl, MAX_KEY_BYTES)?;
    let value = read(&mut caller, vp, vl, MAX_VALUE_BYTES)?;
    properties::set(caller.data_mut(), &path, Bytes::from(value))
        .map_err(|e| wasmtime::format_err!("{e}"))?;
    st(Status::Ok)
}

// ---------------------------------------------------------------------------------------------
// Shared data and queues

fn get_shared_data(mut caller: C, kp: u32, kl: u32, ret_ptr: u32, ret_len: u32, ret_cas: u32) -> R {
    let key = read(&mut caller, kp, kl, MAX_KEY_BYTES)?;
    let spec = caller.data().spec.clone();
    match spec.host.shared.get(&spec.name, &key) {
        Some((value, cas)) => {
            give(&mut caller, &value, ret_ptr, ret_len)?;
            write_u32(&mut caller, ret_cas, cas)?;
            st(Status::Ok)
        }
        None => st(Status::NotFound),
    }
}

fn set_shared_data(mut caller: C, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32) -> R {
    let key = read(&mut caller, kp, kl, MAX_KEY_BYTES)?;
    let value = read(&mut caller, vp, vl, MAX_VALUE_BYTES)?;
    let spec = caller.data().spec.clone();
    match spec.host.shared.set(&spec.name, &key, &value, cas) {
        Ok(_) => st(Status::Ok),
        Err(SetError::CasMismatch) => st(Status::CasMismatch),
        Err(SetError::TooLarge) => st(Status::BadArgument),
    }
}

fn register_queue(mut caller: C, np: u32, nl: u32, ret_id: u32) -> R {
    let name = read(&mut caller, np, nl, MAX_KEY_BYTES)?;
    let ctx = caller.data();
    let Some(id) =
        ctx.spec
            .host
            .shared
            .register_queue(&ctx.spec.name, &name, ctx.slot.clone(), ROOT_CONTEXT)
    else {
        // A cap hit fails the call (and with it the callback), with a message that says why.
        return Err(wasmtime::format_err!(
            "plugin registered more than {} shared queues",
            super::shared::MAX_QUEUES_PER_SCOPE
        ));
    };
    write_u32(&mut caller, ret_id, id)?;
    st(Status::Ok)
}

fn resolve_queue(mut caller: C, _vp: u32, _vl: u32, np: u32, nl: u32, ret_id: u32) -> R {
    let name = read(&mut caller, np, nl, MAX_KEY_BYTES)?;
    let ctx = caller.data();
    match ctx.spec.host.shared.resolve_queue(&ctx.spec.name, &name) {
        Some(id) => {
            write_u32(&mut caller, ret_id, id)?;
            st(Status::Ok)
        }
        None => st(Status::NotFound),
    }
}

fn dequeue(mut caller: C, id: u32, ret_ptr: u32, ret_len: u32) -> R {
    let spec = caller.data().spec.clone();
    match spec.host.shared.dequeue(id) {
        Ok(Some(item)) => {
            give(&mut caller, &item, ret_ptr, ret_len)?;
            st(Status::Ok)
        }
        Ok(None) => st(Status::Empty),
        Err(()) => st(Status::NotFound),
    }
}

fn enqueue(mut caller: C, id: u32, vp: u32, vl: u32) -> R {
    let value = read(&mut caller, vp, vl, MAX_VALUE_BYTES)?;
    let ctx = caller.data_mut();
    match ctx.spec.host.shared.enqueue(id, &value) {
        Some((owner, root)) => {
            ctx.deferred.queue_ready.push((owner, root, id));
            st(Status::Ok)
        }
        None => st(Status::NotFound),
    }
}

// ---------------------------------------------------------------------------------------------
// Stream control

fn continue_stream(mut caller: C, kind: u32) -> R {
    let Some(stream) = caller.data_mut().stream() else {
        return st(Status::BadArgument);
    };
    match kind {
        0 => stream.effects.resume_request = true,
        1 => stream.effects.resume_response = true,
        _ => return st(Status::BadArgument),
    }
    if let Some(wake) = &stream.wake {
        wake.notify_one();
    }
    st(Status::Ok)
}

fn close_stream(mut caller: C, _kind: u32) -> R {
    let Some(stream) = caller.data_mut().stream() else {
        return st(Status::BadArgument);
    };
    stream.effects.close = true;
    if let Some(wake) = &stream.wake {
        wake.notify_one();
    }
    st(Status::Ok)
}

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    mut caller: C,
    status: u32,
    dp: u32,
    dl: u32,
    bp: u32,
    bl: u32,
    hp: u32,
    hl: u32,
    _grpc: i32,
) -> R {
    let details = read(&mut caller, dp, dl, MAX_KEY_BYTES)?;
    let cap = MAX_VALUE_BYTES.max(caller.data().spec.limits.body_buffer as usize);
    let body = read(&mut caller, bp, bl, cap)?;
    let headers = read(&mut caller, hp, hl, MAX_MAP_BYTES)?;
    let Some(headers) = deserialize_pairs(&headers) else {
        return st(Status::BadArgument);
    };
    if !(200..=599).contains(&status) {
        return st(Status::BadArgument);
    }
    let Some(stream) = caller.data_mut().stream() else {
        return st(Status::BadArgument);
    };
    stream.effects.local_response = Some(Box::new(LocalResponse {
        status: status as u16,
        headers,
        body: Bytes::from(body),
        details: String::from_utf8_lossy(&details).into_owned(),
    }));
    if let Some(wake) = &stream.wake {
        wake.notify_one();
    }
    st(Status::Ok)
}

#[allow(clippy::too_many_arguments)]
fn http_call(
    mut caller: C,
    up: u32,
    ul: u32,
    hp: u32,
    hl: u32,
    bp: u32,
    bl: u32,
    tp: u32,
    tl: u32,
    timeout_ms: u32,
    ret_token: u32,
) -> R {
    let upstream = read(&mut caller, up, ul, MAX_KEY_BYTES)?;
    let headers = read(&mut caller, hp, hl, MAX_MAP_BYTES)?;
    let cap = caller.data().spec.limits.callout_bytes as usize;
    let body = read(&mut caller, bp, bl, cap)?;
    let _trailers = read(&mut caller, tp, tl, MAX_MAP_BYTES)?;
    let (Ok(upstream), Some(headers)) = (String::from_utf8(upstream), deserialize_pairs(&headers))
    else {
        return st(Status::BadArgument);
    };
    let ctx = caller.data_mut();
    if !ctx.spec.upstreams.contains_key(&upstream) {
        tracing::warn!(target: "portico::plugin", plugin = %ctx.spec.name, upstream, "callout to an upstream that is not configured");
        return st(Status::BadArgument);
    }
    let has = |name: &[u8]| headers.iter().any(|(k, _)| &k[..] == name);
    if !(has(b":method") && has(b":path") && has(b":authority")) {
        return st(Status::BadArgument);
    }
    let inflight = ctx
        .spec
        .callouts_inflight
        .load(std::sync::atomic::Ordering::Acquire);
    if inflight + ctx.deferred.callouts.len() >= MAX_CALLOUTS {
        return st(Status::InternalFailure);
    }
    ctx.next_token = ctx.next_token.wrapping_add(1).max(1);
    let token = ctx.next_token;
    // The plugin's own timeout, at most `MAX_CALLOUT_TIMEOUT`: an abandoned callout holds one
    // of the plugin's in-flight slots (and its pool) until it ends.
    let timeout = if timeout_ms == 0 {
        ctx.spec.limits.callout_timeout
    } else {
        std::time::Duration::from_millis(timeout_ms as u64).min(MAX_CALLOUT_TIMEOUT)
    };
    let ended = ctx
        .streams
        .get_mut(&ctx.effective)
        .filter(|s| !s.ending)
        .map(|s| s.ended.get_or_insert_with(Default::default).clone());
    ctx.deferred.callouts.push(CalloutRequest {
        token,
        context: ctx.effective,
        ended,
        upstream,
        headers,
        body: Bytes::from(body),
        timeout,
    });
    write_u32(&mut caller, ret_token, token)?;
    st(Status::Ok)
}

fn get_status(mut caller: C, ret_code: u32, ret_ptr: u32, ret_len: u32) -> R {
    write_u32(&mut caller, ret_code, 0)?;
    give(&mut caller, b"", ret_ptr, ret_len)?;
    st(Status::Ok)
}

fn set_effective_context(mut caller: C, id: u32) -> R {
    let ctx = caller.data_mut();
    if id == ROOT_CONTEXT || ctx.streams.contains_key(&id) {
        ctx.effective = id;
        st(Status::Ok)
    } else {
        st(Status::BadArgument)
    }
}

// ---------------------------------------------------------------------------------------------
// Foreign functions

fn call_foreign_function(
    mut caller: C,
    np: u32,
    nl: u32,
    ap: u32,
    al: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> R {
    let name = read(&mut caller, np, nl, MAX_KEY_BYTES)?;
    let args = read(&mut caller, ap, al, MAX_MAP_BYTES)?;
    let spec = caller.data().spec.clone();
    let Some(f) = std::str::from_utf8(&name)
        .ok()
        .and_then(|n| super::foreign::lookup(n, spec.foreign_functions))
    else {
        return st(Status::NotFound);
    };
    match f(&spec, &args) {
        Ok(out) => {
            give(&mut caller, &out, ret_ptr, ret_len)?;
            st(Status::Ok)
        }
        Err(super::foreign::Error::BadArgument) => st(Status::BadArgument),
        Err(super::foreign::Error::Internal) => st(Status::InternalFailure),
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

fn define_metric(mut caller: C, kind: u32, np: u32, nl: u32, ret_id: u32) -> R {
    let name = read(&mut caller, np, nl, MAX_KEY_BYTES)?;
    let Ok(name) = String::from_utf8(name) else {
        return st(Status::BadArgument);
    };
    let spec = caller.data().spec.clone();
    match spec.host.metrics.define(&spec.name, kind, &name) {
        Some(id) => {
            write_u32(&mut caller, ret_id, id)?;
            st(Status::Ok)
        }
        None => st(Status::BadArgument),
    }
}

fn increment_metric(caller: C, id: u32, offset: i64) -> R {
    let spec = &caller.data().spec;
    st(spec.host.metrics.increment(&spec.name, id, offset))
}

fn record_metric(caller: C, id: u32, value: u64) -> R {
    let spec = &caller.data().spec;
    st(spec.host.metrics.record(&spec.name, id, value))
}

fn get_metric(mut caller: C, id: u32, ret: u32) -> R {
    let spec = caller.data().spec.clone();
    match spec.host.metrics.get(&spec.name, id) {
        Ok(v) => {
            write_bytes(&mut caller, ret, &v.to_le_bytes())?;
            st(Status::Ok)
        }
        Err(s) => st(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/a"), (b"x-k", b""), (b"k", b"v\xff")];
        let bytes = serialize_pairs(&pairs);
        let back = deserialize_pairs(&bytes).unwrap();
        let back: Vec<(&[u8], &[u8])> = back.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(back, pairs);
        assert_eq!(deserialize_pairs(&[]).unwrap(), vec![]);
    }

    #[test]
    fn header_values_a_plugin_sets_must_be_utf8() {
        let mut headers = HeaderMap::new();
        let mut map = MapRef::Plain(&mut headers);
        for op in [Op::Add, Op::Replace] {
            assert_eq!(
                map.apply(op, b"x-bin", b"a\xffb"),
                Err("the value is not UTF-8".to_string())
            );
            assert_eq!(map.apply(op, b"x-text", "é".as_bytes()), Ok(()));
        }
        assert_eq!(map.apply(Op::Remove, b"x-text", b""), Ok(()));
        assert!(headers.is_empty(), "{headers:?}");
    }

    #[test]
    fn malformed_pairs_are_refused() {
        let bytes = serialize_pairs(&[(b"key", b"value")]);
        for cut in 1..bytes.len() {
            assert!(deserialize_pairs(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        // A count far beyond the data.
        assert!(deserialize_pairs(&u32::MAX.to_le_bytes()).is_none());
    }
}
