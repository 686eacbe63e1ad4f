//! The `plugins:` section: each plugin's module is compiled (or its compiled code reused) and
//! started — a canary instance must pass `on_vm_start` and `on_configure` — while the
//! configuration compiles, so a plugin that refuses its configuration fails the reload and the
//! running snapshot keeps serving. A plugin whose module, configuration, limits and upstreams
//! are all unchanged keeps its running instances across the reload.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::raw::{RawFile, RawOnError, RawPlugin};
use super::{ConfigError, Source};
use crate::plugin::{Chain, Limits, OnError, Plugin, PluginDef, PluginHost, foreign};
use crate::upstream::Upstream;

/// The shortest `limits.time_per_call`: a call is stopped at the first epoch tick (every 5ms)
/// past its limit, measured from the first tick it sees, so within its limit plus about 10ms,
/// which is within twice the limit from 10ms up.
const MIN_TIME_PER_CALL: Duration = Duration::from_millis(10);

/// The compiled `plugins:` section.
#[derive(Default)]
pub struct Compiled {
    pub by_name: HashMap<String, Arc<Plugin>>,
    /// Each plugin with the fingerprint a later reload reuses it by.
    pub all: Vec<(u64, Arc<Plugin>)>,
    /// Defined but refused (their error is already reported): chains skip them quietly.
    pub failed: std::collections::HashSet<String>,
}

/// Every plugin defined across the files.
pub fn compile(
    files: &[(&Source, &RawFile)],
    host: &PluginHost,
    previous: &HashMap<u64, Arc<Plugin>>,
    upstreams: &HashMap<String, Arc<Upstream>>,
    upstreams_fingerprint: u64,
    errors: &mut Vec<ConfigError>,
) -> Compiled {
    let mut out = Compiled::default();
    let mut seen: HashMap<&str, &Source> = HashMap::new();
    let mut instances = 0;
    for (source, file) in files {
        for (name, raw) in &file.plugins {
            let at = format!("plugins.{name}");
            if let Some(first) = seen.insert(name, source) {
                errors.push(source.error(
                    &at,
                    format!(
                        "plugin \"{name}\" is already defined in {}",
                        first.path.display()
                    ),
                ));
                continue;
            }
            let Some(def) = definition(name, raw, source, &at, errors) else {
                out.failed.insert(name.clone());
                continue;
            };
            // Said here, with its location, rather than as the allocator's error on start.
            instances += def.limits.instances;
            if instances > crate::plugin::engine::POOL_SLOTS as usize {
                errors.push(source.error(
                    &format!("{at}.limits.instances"),
                    format!(
                        "the plugins' instances add up to {instances} with this one's {}, more \
                         than the {} Portico has room for (limits.instances is one per CPU \
                         by default)",
                        def.limits.instances,
                        crate::plugin::engine::POOL_SLOTS
                    ),
                ));
                out.failed.insert(name.clone());
                continue;
            }
            let wasm_digest = match std::fs::read(&def.module) {
                Ok(bytes) => aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
                    .as_ref()
                    .to_vec(),
                Err(e) => {
                    errors.push(source.error(
                        &format!("{at}.module"),
                        format!("cannot read module {}: {e}", def.module.display()),
                    ));
                    out.failed.insert(name.clone());
                    continue;
                }
            };
            let fingerprint = {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (
                    &def.name,
                    &def.config,
                    def.on_error,
                    &def.limits,
                    def.foreign_functions,
                )
                    .hash(&mut h);
                wasm_digest.hash(&mut h);
                upstreams_fingerprint.hash(&mut h);
                h.finish()
            };
            let plugin = match previous.get(&fingerprint) {
                Some(p) => p.clone(),
                None => match host.load(&def, upstreams.clone()) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(source.error(&at, format!("plugin \"{name}\": {e}")));
                        out.failed.insert(name.clone());
                        continue;
                    }
                },
            };
            out.by_name.insert(name.clone(), plugin.clone());
            out.all.push((fingerprint, plugin));
        }
    }
    out
}

fn definition(
    name: &str,
    raw: &RawPlugin,
    source: &Source,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<PluginDef> {
    let before = errors.len();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        errors.push(source.error(
            at,
            "a plugin name uses only letters, digits, '-', '_' and '.'",
        ));
    }
    let mut limits = Limits::default();
    if let Some(l) = &raw.limits {
        let lat = format!("{at}.limits");
        if let Some(m) = l.memory {
            if !(1 << 20..=crate::plugin::engine::MAX_MEMORY).contains(&m.0) {
                errors
                    .push(source.error(&format!("{lat}.memory"), "must be between 1MiB and 1GiB"));
            }
            limits.memory = m.0;
        }
        if let Some(t) = l.time_per_call {
            // Below 10ms the 5ms epoch tick could not stop a call within twice its limit.
            if !(MIN_TIME_PER_CALL..=Duration::from_secs(10)).contains(&t.0) {
                errors.push(source.error(
                    &format!("{lat}.time_per_call"),
                    "must be between 10ms and 10s",
                ));
            }
            limits.time_per_call = t.0;
        }
        if let Some(n) = l.instances {
            if !(1..=256).contains(&n) {
                errors.push(source.error(&format!("{lat}.instances"), "must be between 1 and 256"));
            }
            limits.instances = n;
        }
        // Body sizes reach the guest as 32-bit numbers, and a guest's memory is at most 1GiB.
        let mut in_range = |key: &str, ok: bool, range: &str| {
            if !ok {
                errors.push(source.error(&format!("{lat}.{key}"), format!("must be {range}")));
            }
        };
        if let Some(b) = l.body_buffer {
            in_range(
                "body_buffer",
                (1..=1 << 30).contains(&b.0),
                "between 1B and 1GiB",
            );
            limits.body_buffer = b.0;
        }
        if let Some(b) = l.callout_body {
            in_range(
                "callout_body",
                (1..=64 << 20).contains(&b.0),
                "between 1B and 64MiB",
            );
            limits.callout_bytes = b.0;
        }
        if let Some(t) = l.callout_timeout {
            let range = Duration::from_millis(1)..=crate::plugin::MAX_CALLOUT_TIMEOUT;
            in_range(
                "callout_timeout",
                range.contains(&t.0),
                "between 1ms and 5m",
            );
            limits.callout_timeout = t.0;
        }
        if let Some(t) = l.pause_timeout {
            let range = Duration::from_millis(1)..=Duration::from_secs(3600);
            in_range("pause_timeout", range.contains(&t.0), "between 1ms and 1h");
            limits.pause_timeout = t.0;
        }
    }
    let mut foreign_functions = foreign::Allowed::default();
    if let Some(names) = &raw.foreign_functions {
        foreign_functions = foreign::Allowed::NONE;
        for (i, name) in names.iter().enumerate() {
            match foreign_functions.with(name) {
                Some(a) => foreign_functions = a,
                None => errors.push(source.error(
                    &format!("{at}.foreign_functions[{i}]"),
                    format!(
                        "Portico has no foreign function \"{name}\" (it has {})",
                        foreign::Allowed::default()
                            .names()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        }
    }
    let config = match &raw.config {
        None => Bytes::new(),
        Some(v) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    };
    if errors.len() > before {
        return None;
    }
    Some(PluginDef {
        name: name.to_string(),
        module: super::compile::resolve(source.base_dir(), &raw.module),
        config,
        on_error: match raw.on_error {
            Some(RawOnError::Allow) => OnError::Allow,
            _ => OnError::Deny,
        },
        limits,
        foreign_functions,
    })
}

/// A list of plugin names as a chain; unknown names are errors at `at[i]`.
pub fn chain(
    names: &[String],
    plugins: &Compiled,
    source: &Source,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Chain {
    let mut chain = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match plugins.by_name.get(name) {
            Some(p) => chain.push(p.clone()),
            None if plugins.failed.contains(name) => {}
            None => errors
                .push(source.error(&format!("{at}[{i}]"), format!("unknown plugin \"{name}\""))),
        }
    }
    Chain::new(chain)
}
