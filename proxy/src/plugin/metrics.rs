//! Metrics plugins define with `proxy_define_metric`, exported on `/metrics` as
//! `portico_plugin_counter`, `portico_plugin_gauge` and `portico_plugin_histogram` with the
//! labels `plugin` and `name`. A name keeps its id across instances and reloads of the plugin.

use std::collections::HashMap;
use std::sync::Mutex;

use super::abi::Status;
use crate::telemetry::metrics::Metrics;

/// Names a plugin may define, so a guest cannot grow the exposition without bound.
const MAX_METRICS_PER_PLUGIN: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

pub struct PluginMetrics {
    metrics: Metrics,
    defined: Mutex<HashMap<String, Vec<(Kind, String)>>>,
}

impl std::fmt::Debug for PluginMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginMetrics").finish_non_exhaustive()
    }
}

impl PluginMetrics {
    pub fn new(metrics: Metrics) -> PluginMetrics {
        PluginMetrics {
            metrics,
            defined: Mutex::new(HashMap::new()),
        }
    }

    pub fn define(&self, plugin: &str, kind: u32, name: &str) -> Option<u32> {
        let kind = match kind {
            0 => Kind::Counter,
            1 => Kind::Gauge,
            2 => Kind::Histogram,
            _ => return None,
        };
        let mut defined = self.defined.lock().unwrap_or_else(|e| e.into_inner());
        let list = defined.entry(plugin.to_string()).or_default();
        if let Some(i) = list.iter().position(|(k, n)| *k == kind && n == name) {
            return Some(i as u32 + 1);
        }
        if list.len() >= MAX_METRICS_PER_PLUGIN {
            return None;
        }
        list.push((kind, name.to_string()));
        let labels = [plugin, name];
        // Create the series now so it shows (as 0) before its first change.
        match kind {
            Kind::Counter => drop(self.metrics.plugin_counter.with_label_values(&labels)),
            Kind::Gauge => drop(self.metrics.plugin_gauge.with_label_values(&labels)),
            Kind::Histogram => drop(self.metrics.plugin_histogram.with_label_values(&labels)),
        }
        Some(list.len() as u32)
    }

    fn lookup(&self, plugin: &str, id: u32) -> Option<(Kind, String)> {
        let defined = self.defined.lock().unwrap_or_else(|e| e.into_inner());
        defined
            .get(plugin)?
            .get((id as usize).checked_sub(1)?)
            .cloned()
    }

    pub fn increment(&self, plugin: &str, id: u32, offset: i64) -> Status {
        let Some((kind, name)) = self.lookup(plugin, id) else {
            return Status::NotFound;
        };
        let labels = [plugin, name.as_str()];
        match kind {
            Kind::Counter if offset >= 0 => self
                .metrics
                .plugin_counter
                .with_label_values(&labels)
                .inc_by(offset as u64),
            Kind::Gauge => self
                .metrics
                .plugin_gauge
                .with_label_values(&labels)
                .add(offset),
            _ => return Status::BadArgument,
        }
        Status::Ok
    }

    pub fn record(&self, plugin: &str, id: u32, value: u64) -> Status {
        let Some((kind, name)) = self.lookup(plugin, id) else {
            return Status::NotFound;
        };
        let labels = [plugin, name.as_str()];
        match kind {
            Kind::Counter => {
                let c = self.metrics.plugin_counter.with_label_values(&labels);
                let now = c.get();
                if value >= now {
                    c.inc_by(value - now);
                }
            }
            Kind::Gauge => self
                .metrics
                .plugin_gauge
                .with_label_values(&labels)
                .set(value.min(i64::MAX as u64) as i64),
            Kind::Histogram => self
                .metrics
                .plugin_histogram
                .with_label_values(&labels)
                .observe(value as f64),
        }
        Status::Ok
    }

    pub fn get(&self, plugin: &str, id: u32) -> Result<u64, Status> {
        let (kind, name) = self.lookup(plugin, id).ok_or(Status::NotFound)?;
        let labels = [plugin, name.as_str()];
        match kind {
            Kind::Counter => Ok(self.metrics.plugin_counter.with_label_values(&labels).get()),
            Kind::Gauge => Ok(self
                .metrics
                .plugin_gauge
                .with_label_values(&labels)
                .get()
                .max(0) as u64),
            Kind::Histogram => Err(Status::BadArgument),
        }
    }
}
