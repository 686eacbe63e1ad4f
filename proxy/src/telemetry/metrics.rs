//! Prometheus metrics. Every name is a constant here, so docs and dashboards have one source.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const REQUESTS_TOTAL: &str = "portico_requests_total";
pub const REQUEST_DURATION: &str = "portico_request_duration_seconds";
pub const UPSTREAM_DURATION: &str = "portico_upstream_request_duration_seconds";
pub const ACTIVE_CONNECTIONS: &str = "portico_active_connections";
pub const CONNECTIONS_TOTAL: &str = "portico_connections_total";
pub const CONNECTIONS_REJECTED: &str = "portico_connections_rejected_total";
pub const REQUESTS_REJECTED: &str = "portico_requests_rejected_total";
pub const INFLIGHT: &str = "portico_inflight_requests";
pub const TLS_HANDSHAKE_FAILURES: &str = "portico_tls_handshake_failures_total";
pub const CONFIG_RELOADS: &str = "portico_config_reload_total";
pub const CONFIG_INFO: &str = "portico_config_info";
pub const CONFIG_LOAD_TIME: &str = "portico_config_load_timestamp_seconds";
pub const STREAMS_CLOSED_BY_RELOAD: &str = "portico_streams_closed_by_reload_total";
pub const PLUGIN_FAILURES: &str = "portico_plugin_failures_total";
pub const PLUGIN_INSTANCES_REBUILT: &str = "portico_plugin_instances_rebuilt_total";
pub const PLUGIN_COUNTER: &str = "portico_plugin_counter";
pub const PLUGIN_GAUGE: &str = "portico_plugin_gauge";
pub const PLUGIN_HISTOGRAM: &str = "portico_plugin_histogram";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// All of Portico's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub active_connections: IntGaugeVec,
    pub connections: IntCounterVec,
    pub connections_rejected: IntCounterVec,
    pub requests_rejected: IntCounterVec,
    pub inflight: IntGauge,
    pub tls_handshake_failures: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_info: IntGaugeVec,
    pub config_load_time: IntGauge,
    pub streams_closed_by_reload: IntCounter,
    pub plugin_failures: IntCounterVec,
    pub plugin_instances_rebuilt: IntCounterVec,
    pub plugin_counter: IntCounterVec,
    pub plugin_gauge: IntGaugeVec,
    pub plugin_histogram: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                REQUESTS_TOTAL,
                "Requests answered, by route, method and status class.",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                REQUEST_DURATION,
                "Time from request start to response end, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                UPSTREAM_DURATION,
                "Time until the upstream's response headers, by upstream.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        )
        .expect("valid metric");
        let active_connections = IntGaugeVec::new(
            Opts::new(
                ACTIVE_CONNECTIONS,
                "Open downstream connections, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let connections = IntCounterVec::new(
            Opts::new(
                CONNECTIONS_TOTAL,
                "Downstream connections accepted, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let connections_rejected = IntCounterVec::new(
            Opts::new(
                CONNECTIONS_REJECTED,
                "Connections refused with 503 because max_connections was reached.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let requests_rejected = IntCounterVec::new(
            Opts::new(
                REQUESTS_REJECTED,
                "Requests refused before routing, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let inflight = IntGauge::new(INFLIGHT, "Requests in flight.").expect("valid metric");
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                TLS_HANDSHAKE_FAILURES,
                "Failed or timed out TLS handshakes, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                CONFIG_RELOADS,
                "Configuration reloads by result (success, failure, unchanged).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let config_info = IntGaugeVec::new(
            Opts::new(
                CONFIG_INFO,
                "The configuration serving traffic (value 1), by hash.",
            ),
            &["hash"],
        )
        .expect("valid metric");
        let config_load_time = IntGauge::new(
            CONFIG_LOAD_TIME,
            "Unix time the serving configuration was loaded.",
        )
        .expect("valid metric");
        let streams_closed_by_reload = IntCounter::new(
            STREAMS_CLOSED_BY_RELOAD,
            "Long-lived streams closed after their route was removed or changed.",
        )
        .expect("valid metric");
        let plugin_failures = IntCounterVec::new(
            Opts::new(
                PLUGIN_FAILURES,
                "Plugin calls that failed (trap, timeout, memory, abi), by plugin and kind.",
            ),
            &["plugin", "kind"],
        )
        .expect("valid metric");
        let plugin_instances_rebuilt = IntCounterVec::new(
            Opts::new(
                PLUGIN_INSTANCES_REBUILT,
                "Plugin instances discarded after a failure and rebuilt, by plugin.",
            ),
            &["plugin"],
        )
        .expect("valid metric");
        let plugin_counter = IntCounterVec::new(
            Opts::new(
                PLUGIN_COUNTER,
                "Counters a plugin defined (proxy_define_metric), by plugin and name.",
            ),
            &["plugin", "name"],
        )
        .expect("valid metric");
        let plugin_gauge = IntGaugeVec::new(
            Opts::new(PLUGIN_GAUGE, "Gauges a plugin defined, by plugin and name."),
            &["plugin", "name"],
        )
        .expect("valid metric");
        let plugin_histogram = HistogramVec::new(
            HistogramOpts::new(
                PLUGIN_HISTOGRAM,
                "Histograms a plugin defined, by plugin and name (values as recorded).",
            )
            .buckets(prometheus::exponential_buckets(1.0, 4.0, 16).expect("valid buckets")),
            &["plugin", "name"],
        )
        .expect("valid metric");
        for c in [
            Box::new(plugin_failures.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(plugin_instances_rebuilt.clone()),
            Box::new(plugin_counter.clone()),
            Box::new(plugin_gauge.clone()),
            Box::new(plugin_histogram.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(active_connections.clone()),
            Box::new(connections.clone()),
            Box::new(connections_rejected.clone()),
            Box::new(requests_rejected.clone()),
            Box::new(inflight.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_info.clone()),
            Box::new(config_load_time.clone()),
            Box::new(streams_closed_by_reload.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for r in ["success", "failure", "unchanged"] {
            config_reloads.with_label_values(&[r]);
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            active_connections,
            connections,
            connections_rejected,
            requests_rejected,
            inflight,
            tls_handshake_failures,
            config_reloads,
            config_info,
            config_load_time,
            streams_closed_by_reload,
            plugin_failures,
            plugin_instances_rebuilt,
            plugin_counter,
            plugin_gauge,
            plugin_histogram,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A route's metric children, looked up once and then kept: the per-request cost is an array
/// index instead of hashing label values under the registry's lock. Children are created on
/// first use, so /metrics shows no zero series for combinations never seen.
#[derive(Debug, Default)]
pub struct RouteStats {
    requests: [[OnceLock<IntCounter>; 5]; METHODS],
    duration: OnceLock<Histogram>,
}

impl RouteStats {
    pub fn requests(
        &self,
        m: &Metrics,
        route: &str,
        method: &http::Method,
        status: u16,
    ) -> &IntCounter {
        let (mi, label) = method_index(method);
        let ci = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[mi][ci].get_or_init(|| {
            m.requests
                .with_label_values(&[route, label, status_class(status)])
        })
    }

    pub fn duration(&self, m: &Metrics, route: &str) -> &Histogram {
        self.duration
            .get_or_init(|| m.request_duration.with_label_values(&[route]))
    }
}

const METHODS: usize = 10;

fn method_index(m: &http::Method) -> (usize, &'static str) {
    let label = method_label(m);
    let i = match label {
        "GET" => 0,
        "POST" => 1,
        "PUT" => 2,
        "DELETE" => 3,
        "HEAD" => 4,
        "OPTIONS" => 5,
        "PATCH" => 6,
        "CONNECT" => 7,
        "TRACE" => 8,
        _ => 9,
    };
    (i, label)
}

/// The status label: `2xx`, `4xx`, ...
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The method label, bounded: unknown methods are `OTHER`.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}
