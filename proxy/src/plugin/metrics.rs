//! Metrics plugins define with `proxy_define_metric`, exported on `/metrics` as
//! `portico_plugin_counter`, `portico_plugin_gauge` and `portico_plugin_histogram` with the
//! labels `plugin` and `name`. A name keeps its id across instances and reloads of the plugin.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{Histogram, IntCounter, IntGauge};

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

/// A defined metric: its kind, its name, and its series, resolved once when it is defined so
/// that a guest's increment is an atomic add, not a label lookup.
#[derive(Clone)]
struct Defined {
    kind: Kind,
    name: String,
    series: Series,
}

#[derive(Clone)]
enum Series {
    Counter(IntCounter),
    Gauge(IntGauge),
    Histogram(Histogram),
}

pub struct PluginMetrics {
    metrics: Metrics,
    defined: Mutex<HashMap<String, Vec<Defined>>>,
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
        if let Some(i) = list.iter().position(|d| d.kind == kind && d.name == name) {
            return Some(i as u32 + 1);
        }
        if list.len() >= MAX_METRICS_PER_PLUGIN {
            return None;
        }
        let labels = [plugin, name];
        // The series exists from now on, so it shows (as 0) before its first change.
        let series = match kind {
            Kind::Counter => {
                Series::Counter(self.metrics.plugin_counter.with_label_values(&labels))
            }
            Kind::Gauge => Series::Gauge(self.metrics.plugin_gauge.with_label_values(&labels)),
            Kind::Histogram => {
                Series::Histogram(self.metrics.plugin_histogram.with_label_values(&labels))
            }
        };
        list.push(Defined {
            kind,
            name: name.to_string(),
            series,
        });
        Some(list.len() as u32)
    }

    /// The series of metric `id` (1-based) of `plugin`: a reference-counted handle.
    fn lookup(&self, plugin: &str, id: u32) -> Option<Series> {
        let defined = self.defined.lock().unwrap_or_else(|e| e.into_inner());
        let d = defined.get(plugin)?.get((id as usize).checked_sub(1)?)?;
        Some(d.series.clone())
    }

    pub fn increment(&self, plugin: &str, id: u32, offset: i64) -> Status {
        match self.lookup(plugin, id) {
            None => Status::NotFound,
            Some(Series::Counter(c)) if offset >= 0 => {
                c.inc_by(offset as u64);
                Status::Ok
            }
            Some(Series::Gauge(g)) => {
                g.add(offset);
                Status::Ok
            }
            Some(_) => Status::BadArgument,
        }
    }

    pub fn record(&self, plugin: &str, id: u32, value: u64) -> Status {
        match self.lookup(plugin, id) {
            None => return Status::NotFound,
            Some(Series::Counter(c)) => {
                let now = c.get();
                if value >= now {
                    c.inc_by(value - now);
                }
            }
            Some(Series::Gauge(g)) => g.set(value.min(i64::MAX as u64) as i64),
            Some(Series::Histogram(h)) => h.observe(value as f64),
        }
        Status::Ok
    }

    pub fn get(&self, plugin: &str, id: u32) -> Result<u64, Status> {
        match self.lookup(plugin, id).ok_or(Status::NotFound)? {
            Series::Counter(c) => Ok(c.get()),
            Series::Gauge(g) => Ok(g.get().max(0) as u64),
            Series::Histogram(_) => Err(Status::BadArgument),
        }
    }
}
