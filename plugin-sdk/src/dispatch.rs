//! The guest's side of the lifecycle: the ABI's callbacks, turned into calls of the plugin's
//! hooks. The exports `#[plugin]` generates call these; so does the native test
//! harness, which is how tests run the same code the host runs.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::Error;
use crate::host::{Buffer, STREAM_REQUEST, STREAM_RESPONSE};
use crate::http::{Body, CallResponse, Flow, Http, LocalResponse};
use crate::{Plugin, Root, sys};

const ACTION_CONTINUE: u32 = 0;
const ACTION_PAUSE: u32 = 1;

struct RootCtx<P> {
    plugin: Option<P>,
}

struct StreamCtx<S> {
    root: u32,
    state: S,
    /// The stream kind a hook paused, so a callout's answer resumes the right one.
    paused: Option<u32>,
    responded: bool,
}

struct Runtime<P: Plugin> {
    roots: ById<RootCtx<P>>,
    streams: ById<StreamCtx<P::State>>,
}

/// Contexts by the id the host gave them. Ids are the host's, not a client's, so they need no
/// keyed hash; SipHash was a visible share of a short hook's time.
type ById<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Hashes a `u32` id by one multiplication (Fibonacci hashing), enough to spread a counter.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

thread_local! {
    static RUNTIME: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    /// Callout token → the context that sent it.
    static CALLOUTS: RefCell<HashMap<u32, u32>> = RefCell::new(HashMap::new());
}

pub(crate) fn remember_callout(token: u32, context: u32) {
    CALLOUTS.with(|c| c.borrow_mut().insert(token, context));
}

thread_local! {
    /// Stream kinds a hook asked to resume (`Http::resume_request`), resumed once the hook has
    /// returned: a host may run callbacks from inside `proxy_continue_stream`, and those must
    /// not find the runtime borrowed.
    static RESUME: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn defer_resume(kind: u32) {
    RESUME.with(|r| r.borrow_mut().push(kind));
}

/// Whether the running hook asked to resume stream kind `kind`.
fn resume_pending(kind: u32) -> bool {
    RESUME.with(|r| r.borrow().contains(&kind))
}

fn flush_resumes() {
    let kinds = RESUME.with(|r| std::mem::take(&mut *r.borrow_mut()));
    for kind in kinds {
        if let Err(e) = sys::continue_stream(kind) {
            crate::error!("cannot resume the request: {e}");
        }
    }
}

/// Drops every context (the test harness starts each plugin afresh).
#[cfg(all(not(target_arch = "wasm32"), feature = "testing"))]
pub(crate) fn reset() {
    RUNTIME.with(|r| *r.borrow_mut() = None);
    CALLOUTS.with(|c| c.borrow_mut().clear());
    RESUME.with(|r| r.borrow_mut().clear());
    crate::shared::reset();
    crate::crypto::reset();
}

fn with<P: Plugin, R>(f: impl FnOnce(&mut Runtime<P>) -> R) -> R {
    RUNTIME.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|b| !b.is::<Runtime<P>>()) {
            install_panic_hook();
            *slot = Some(Box::new(Runtime::<P> {
                roots: ById::default(),
                streams: ById::default(),
            }));
        }
        let rt = slot
            .as_mut()
            .and_then(|b| b.downcast_mut::<Runtime<P>>())
            .expect("installed above");
        f(rt)
    })
}

/// A panic traps the instance (Wasm has no unwinding): say why in the host's log first.
fn install_panic_hook() {
    #[cfg(target_arch = "wasm32")]
    std::panic::set_hook(Box::new(|info| {
        let _ = sys::log(
            crate::log::Level::Critical as u32,
            &format!("panic: {info}"),
        );
    }));
}

pub fn on_context_create<P: Plugin>(id: u32, root: u32) {
    with::<P, _>(|rt| {
        if root == 0 {
            rt.roots.insert(id, RootCtx { plugin: None });
        } else {
            rt.streams.insert(
                id,
                StreamCtx {
                    root,
                    state: Default::default(),
                    paused: None,
                    responded: false,
                },
            );
        }
    })
}

pub fn on_vm_start<P: Plugin>(_root: u32, _size: usize) -> bool {
    true
}

/// Parses the configuration and builds the plugin; a refusal is logged at error level, which
/// Portico puts in the reload error and in `portico check`'s output.
pub fn on_configure<P: Plugin>(root: u32, size: usize) -> bool {
    crate::log::refresh_level();
    let bytes = match sys::get_buffer(Buffer::PluginConfiguration, 0, size) {
        Ok(b) => b.unwrap_or_default(),
        Err(e) => {
            crate::error!("cannot read the configuration: {e}");
            return false;
        }
    };
    let built = parse_config::<P::Config>(&bytes).and_then(|config| {
        let mut root_view = Root { id: root };
        P::configure(config, &mut root_view)
    });
    match built {
        Ok(plugin) => {
            with::<P, _>(|rt| {
                rt.roots
                    .entry(root)
                    .or_insert(RootCtx { plugin: None })
                    .plugin = Some(plugin)
            });
            true
        }
        Err(e) => {
            crate::error!("{e}");
            false
        }
    }
}

/// The configuration as JSON, with the path of the first bad field. A key the `Config` type
/// does not read is refused (whether or not it says `deny_unknown_fields`), so a typo never
/// passes silently. No configuration at all reads as `{}` (or `null` for a `Config` that takes
/// no fields).
pub(crate) fn parse_config<C: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<C, Error> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::config("not UTF-8"))?;
    let text = if text.trim().is_empty() { "{}" } else { text };
    let de = &mut serde_json::Deserializer::from_str(text);
    let mut unknown = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let de = serde_ignored::Deserializer::new(de, &mut note);
    match serde_path_to_error::deserialize::<_, C>(de) {
        Ok(_) if !unknown.is_empty() => Err(Error::config(format!(
            "unknown key {}",
            unknown
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        Ok(c) => Ok(c),
        Err(e) => {
            if text == "{}" || text == "null" {
                // A Config of `()` or `Option<..>` wants null rather than an empty map.
                if let Ok(c) = serde_json::from_str::<C>("null") {
                    return Ok(c);
                }
            }
            let path = e.path().to_string();
            let inner = e.into_inner();
            Err(Error::config(if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            }))
        }
    }
}

/// Runs a stream hook with the plugin and the request's state; an `Err` fails the request with
/// 500 (logged), so a failing plugin never lets a request through by accident.
fn stream_hook<P: Plugin>(
    id: u32,
    kind: u32,
    hook: impl FnOnce(&mut P, &mut Http<'_, P::State>) -> Result<Flow, Error>,
) -> u32 {
    let action = stream_action::<P>(id, kind, hook);
    flush_resumes();
    action
}

fn stream_action<P: Plugin>(
    id: u32,
    kind: u32,
    hook: impl FnOnce(&mut P, &mut Http<'_, P::State>) -> Result<Flow, Error>,
) -> u32 {
    with::<P, _>(|rt| {
        let Runtime { roots, streams } = rt;
        let Some(stream) = streams.get_mut(&id) else {
            return ACTION_CONTINUE;
        };
        // After a local response the request phase is over; the response hooks still run (on
        // the local response), so plugins can add their headers to it.
        if stream.responded && kind == STREAM_REQUEST {
            return ACTION_PAUSE;
        }
        let Some(plugin) = roots.get_mut(&stream.root).and_then(|r| r.plugin.as_mut()) else {
            return ACTION_CONTINUE;
        };
        let mut http = Http {
            id,
            paused: stream.paused,
            responded: &mut stream.responded,
            state: &mut stream.state,
        };
        let flow = hook(plugin, &mut http).unwrap_or_else(|e| fail(&mut http, kind, e));
        match flow {
            Flow::Continue => {
                stream.paused = None;
                ACTION_CONTINUE
            }
            Flow::Pause => {
                // A hook that resumed its own phase explicitly leaves nothing paused.
                stream.paused = (!resume_pending(kind)).then_some(kind);
                ACTION_PAUSE
            }
        }
    })
}

fn fail<S>(http: &mut Http<'_, S>, kind: u32, e: Error) -> Flow {
    crate::error!("request failed: {e}");
    if *http.responded {
        // Already answered: nothing more to say, and holding a response would hang it.
        return if kind == STREAM_REQUEST {
            Flow::Pause
        } else {
            Flow::Continue
        };
    }
    http.respond(
        LocalResponse::new(500)
            .text("plugin error\n")
            .details(format!("plugin error: {e}")),
    )
    .unwrap_or(Flow::Pause)
}

pub fn on_request_headers<P: Plugin>(id: u32, _headers: usize, _eos: bool) -> u32 {
    stream_hook::<P>(id, STREAM_REQUEST, |p, http| p.on_request_headers(http))
}

pub fn on_request_body<P: Plugin>(id: u32, size: usize, eos: bool) -> u32 {
    let body = Body::new(Buffer::RequestBody, size, eos);
    stream_hook::<P>(id, STREAM_REQUEST, |p, http| p.on_request_body(http, body))
}

pub fn on_request_trailers<P: Plugin>(id: u32, _trailers: usize) -> u32 {
    stream_hook::<P>(id, STREAM_REQUEST, |p, http| p.on_request_trailers(http))
}

/// A local response comes back through the response phase, as in Envoy: the plugin that sent
/// it sees it in its response hooks too (to decorate it, say), so the guard that stops the
/// request-phase hooks after [`Http::respond`] is lifted here. Without this, the response hooks
/// of the responding plugin would answer `Pause` and the host would hold the local response
/// until its pause timeout.
pub fn on_response_headers<P: Plugin>(id: u32, _headers: usize, _eos: bool) -> u32 {
    with::<P, _>(|rt| {
        if let Some(stream) = rt.streams.get_mut(&id) {
            stream.responded = false;
        }
    });
    stream_hook::<P>(id, STREAM_RESPONSE, |p, http| p.on_response_headers(http))
}

pub fn on_response_body<P: Plugin>(id: u32, size: usize, eos: bool) -> u32 {
    let body = Body::new(Buffer::ResponseBody, size, eos);
    stream_hook::<P>(id, STREAM_RESPONSE, |p, http| {
        p.on_response_body(http, body)
    })
}

pub fn on_response_trailers<P: Plugin>(id: u32, _trailers: usize) -> u32 {
    stream_hook::<P>(id, STREAM_RESPONSE, |p, http| p.on_response_trailers(http))
}

pub fn on_log<P: Plugin>(id: u32) {
    with::<P, _>(|rt| {
        let Runtime { roots, streams } = rt;
        let Some(stream) = streams.get_mut(&id) else {
            return;
        };
        let Some(plugin) = roots.get_mut(&stream.root).and_then(|r| r.plugin.as_mut()) else {
            return;
        };
        let mut http = Http {
            id,
            paused: None,
            responded: &mut stream.responded,
            state: &mut stream.state,
        };
        plugin.on_log(&mut http);
    })
}

pub fn on_done<P: Plugin>(_id: u32) -> bool {
    true
}

pub fn on_delete<P: Plugin>(id: u32) {
    with::<P, _>(|rt| {
        if rt.streams.remove(&id).is_none() {
            rt.roots.remove(&id);
        }
    });
    // A callout whose request is gone is never answered (the host drops the answer): forget it.
    CALLOUTS.with(|c| c.borrow_mut().retain(|_, context| *context != id));
}

fn root_hook<P: Plugin>(
    root: u32,
    what: &str,
    hook: impl FnOnce(&mut P, &mut Root) -> Result<(), Error>,
) {
    with::<P, _>(|rt| {
        let Some(plugin) = rt.roots.get_mut(&root).and_then(|r| r.plugin.as_mut()) else {
            return;
        };
        if let Err(e) = hook(plugin, &mut Root { id: root }) {
            crate::error!("{what}: {e}");
        }
    });
    flush_resumes();
}

pub fn on_tick<P: Plugin>(root: u32) {
    root_hook::<P>(root, "on_tick", |p, r| p.on_tick(r))
}

pub fn on_queue_ready<P: Plugin>(root: u32, queue: u32) {
    root_hook::<P>(root, "on_queue_ready", |p, r| {
        p.on_queue_ready(r, crate::shared::Queue(queue))
    })
}

pub fn on_http_call_response<P: Plugin>(
    context: u32,
    token: u32,
    headers: usize,
    body: usize,
    _trailers: usize,
) {
    let owner = CALLOUTS
        .with(|c| c.borrow_mut().remove(&token))
        .unwrap_or(context);
    let response = CallResponse::read(token, headers, body);
    let is_stream = with::<P, _>(|rt| rt.streams.contains_key(&owner));
    if !is_stream {
        return root_hook::<P>(owner, "on_root_http_call_response", |p, r| {
            p.on_root_http_call_response(r, response)
        });
    }
    // The answer to a stream's callout: the hook decides, and a Continue resumes the stream
    // where it paused.
    if sys::set_effective_context(owner).is_err() {
        return;
    }
    let resume = with::<P, _>(|rt| rt.streams.get(&owner).and_then(|s| s.paused));
    let action = stream_hook::<P>(owner, resume.unwrap_or(STREAM_REQUEST), |p, http| {
        p.on_http_call_response(http, response)
    });
    if action == ACTION_CONTINUE {
        with::<P, _>(|rt| {
            if let Some(s) = rt.streams.get_mut(&owner) {
                s.paused = None;
            }
        });
        if let Some(kind) = resume
            && let Err(e) = sys::continue_stream(kind)
        {
            crate::error!("cannot resume the request: {e}");
        }
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use crate::testing::{Harness, Outcome};
    use crate::{Flow, Http, LocalResponse, Plugin, Result, Root};

    /// Answers every request with 429, then marks whatever response passes by.
    struct Deny;

    impl Plugin for Deny {
        type Config = ();
        type State = ();

        fn configure(_: (), _: &mut Root) -> Result<Self> {
            Ok(Deny)
        }

        fn on_request_headers(&mut self, http: &mut Http<'_, ()>) -> Result<Flow> {
            http.respond(LocalResponse::new(429))
        }

        fn on_response_headers(&mut self, http: &mut Http<'_, ()>) -> Result<Flow> {
            http.response().set("x-seen-by", "deny")?;
            Ok(Flow::Continue)
        }
    }

    /// Pauses every request on a callout; the answer resumes it explicitly and keeps the hook's
    /// own verdict at `Pause`. A resume where nothing is paused is an error.
    struct Resumer;

    impl Plugin for Resumer {
        type Config = ();
        type State = ();

        fn configure(_: (), _: &mut Root) -> Result<Self> {
            Ok(Resumer)
        }

        fn on_request_headers(&mut self, http: &mut Http<'_, ()>) -> Result<Flow> {
            let err = http.resume_request().unwrap_err();
            assert!(err.is_invalid(), "{err}");
            http.http_call(&crate::Callout::get("auth", "/check"))?;
            Ok(Flow::Pause)
        }

        fn on_http_call_response(
            &mut self,
            http: &mut Http<'_, ()>,
            _: crate::CallResponse,
        ) -> Result<Flow> {
            assert!(http.resume_response().unwrap_err().is_invalid());
            http.resume_request()?;
            Ok(Flow::Pause)
        }

        fn on_request_body(&mut self, http: &mut Http<'_, ()>, _: crate::Body) -> Result<Flow> {
            let err = http.resume_request().unwrap_err();
            assert!(
                err.is_invalid(),
                "still marked paused after the resume: {err}"
            );
            Ok(Flow::Continue)
        }
    }

    #[test]
    fn resume_request_resumes_only_a_paused_request() {
        let h = Harness::<Resumer>::new(serde_json::json!(null)).unwrap();
        let req = h.request();
        assert_eq!(req.on_request_headers(), Outcome::Pause);
        let token = h.callouts()[0].token;
        assert!(!req.resumed());
        h.answer_callout(token, 200, &[], b"");
        assert!(req.resumed(), "resume_request took effect after the hook");
        // Nothing is paused any more: a second resume is refused.
        assert_eq!(req.on_request_body(b"", true), Outcome::Continue);
    }

    #[test]
    fn a_local_response_runs_through_the_response_hooks_of_the_plugin_that_sent_it() {
        let h = Harness::<Deny>::new(serde_json::json!(null)).unwrap();
        let req = h.request();
        assert!(matches!(req.on_request_headers(), Outcome::Respond(r) if r.status == 429));
        // The host hands the local response back through the response phase.
        assert_eq!(req.on_response_headers(429, &[]), Outcome::Continue);
        assert_eq!(req.response_header("x-seen-by").as_deref(), Some("deny"));
        assert_eq!(req.on_response_body(b"", true), Outcome::Continue);
    }
}

#[cfg(test)]
mod config_tests {
    use super::parse_config;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code, reason = "only deserialised")]
    struct Plain {
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code, reason = "only deserialised")]
    struct Inner {
        header: String,
    }

    /// An internally tagged enum: serde buffers the whole mapping before it picks the
    /// variant, out of the unknown-key check's sight.
    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    #[allow(dead_code, reason = "only deserialised")]
    enum Loose {
        Key { header: String },
    }

    /// The same with `deny_unknown_fields`, as the SDK's docs ask of such enums.
    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialised")]
    enum Strict {
        Key { header: String },
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code, reason = "only deserialised")]
    struct WithLoose {
        method: Loose,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code, reason = "only deserialised")]
    struct WithStrict {
        method: Strict,
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let err = parse_config::<Plain>(br#"{"inner":{"header":"x","hedaer":"y"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key `inner.hedaer`"), "{err}");
    }

    /// What the SDK's unknown-key check cannot see (docs/plugins.md, "Configuration"): inside
    /// an internally tagged or untagged enum, or a `#[serde(flatten)]` field, serde reads the
    /// mapping into a buffer of its own. `deny_unknown_fields` on the enum closes the gap.
    #[test]
    fn inside_a_tagged_enum_unknown_keys_need_deny_unknown_fields() {
        let typo = br#"{"method":{"type":"key","header":"x","hedaer":"y"}}"#;
        assert!(
            parse_config::<WithLoose>(typo).is_ok(),
            "serde now reports keys inside tagged enums: the docs' caveat can go"
        );
        let err = parse_config::<WithStrict>(typo).unwrap_err().to_string();
        assert!(
            err.contains("method: unknown field `hedaer`, expected `header`"),
            "{err}"
        );
    }
}
