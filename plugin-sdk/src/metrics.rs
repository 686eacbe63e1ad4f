//! Metrics the host exports (in Portico: `portico_plugin_counter{plugin,name}` and friends on
//! `/metrics`). Define them once, in `configure`, and keep the handle.

use crate::error::Result;
use crate::host::MetricKind;
use crate::sys;

/// A monotonically increasing count.
#[derive(Debug, Clone, Copy)]
pub struct Counter(u32);

/// A value that goes up and down.
#[derive(Debug, Clone, Copy)]
pub struct Gauge(u32);

/// A distribution of recorded values.
#[derive(Debug, Clone, Copy)]
pub struct Histogram(u32);

impl Counter {
    pub fn define(name: &str) -> Result<Counter> {
        sys::define_metric(MetricKind::Counter, name).map(Counter)
    }

    pub fn increment(&self, by: u64) -> Result<()> {
        sys::increment_metric(self.0, by.min(i64::MAX as u64) as i64)
    }

    pub fn value(&self) -> Result<u64> {
        sys::get_metric(self.0)
    }
}

impl Gauge {
    pub fn define(name: &str) -> Result<Gauge> {
        sys::define_metric(MetricKind::Gauge, name).map(Gauge)
    }

    pub fn set(&self, value: u64) -> Result<()> {
        sys::record_metric(self.0, value)
    }

    pub fn add(&self, delta: i64) -> Result<()> {
        sys::increment_metric(self.0, delta)
    }

    pub fn value(&self) -> Result<u64> {
        sys::get_metric(self.0)
    }
}

impl Histogram {
    pub fn define(name: &str) -> Result<Histogram> {
        sys::define_metric(MetricKind::Histogram, name).map(Histogram)
    }

    pub fn record(&self, value: u64) -> Result<()> {
        sys::record_metric(self.0, value)
    }
}
