//! ksctl's counters and histograms, kept and rendered (OpenMetrics text) by `prometheus-client`.
//! A metric is named and registered on first use, so call sites stay one line: a name, a few
//! labels, a number.
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// Histogram buckets, in seconds: from a fast store write to a slow cloud phase.
pub const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

fn seconds_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// One registered metric family.
enum Series {
    Count(Family<Labels, Counter>),
    Seconds(Family<Labels, Counter<f64, AtomicU64>>),
    Histogram(Family<Labels, Histogram, fn() -> Histogram>),
}

pub struct Metrics {
    registry: Mutex<Registry>,
    /// By name (without the `ksctl_` prefix); registered in `registry` on first use.
    series: Mutex<BTreeMap<String, Series>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self { registry: Mutex::new(Registry::with_prefix("ksctl")), series: Mutex::default() }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn labels_of(labels: &[(&str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Metrics {
    /// The family `name`, made and registered by `make` on first use. Counters are named
    /// `<x>_total` at call sites; OpenMetrics registers them as `<x>` and renders `<x>_total`.
    fn with<R>(&self, name: &str, make: impl FnOnce() -> Series, f: impl FnOnce(&Series) -> R) -> R {
        // Keyed as registered: `x_total` and `x` would be two families named `ksctl_x`.
        let base = name.strip_suffix("_total").unwrap_or(name);
        let mut series = self.series.lock().expect("metrics lock");
        if !series.contains_key(base) {
            let made = make();
            let help = format!("ksctl-rs {}", base.replace('_', " "));
            let mut registry = self.registry.lock().expect("metrics lock");
            match &made {
                Series::Count(c) => registry.register(base, help, c.clone()),
                Series::Seconds(c) => registry.register(base, help, c.clone()),
                Series::Histogram(h) => registry.register(base, help, h.clone()),
            }
            series.insert(base.to_string(), made);
        }
        f(&series[base])
    }

    /// Adds `v` seconds to the counter `name{labels}`; labels are `(key, value)` pairs.
    pub fn add(&self, name: &str, labels: &[(&str, &str)], v: f64) {
        debug_assert!(name.ends_with("_seconds_total"), "{name}: counters of seconds end in _seconds_total");
        self.with(
            name,
            || Series::Seconds(Family::default()),
            |s| match s {
                Series::Seconds(c) => {
                    c.get_or_create(&labels_of(labels)).inc_by(v);
                }
                _ => tracing::warn!(metric = name, "not a counter of seconds; not counted"),
            },
        )
    }

    /// Counts one event in `name{labels}`.
    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        debug_assert!(name.ends_with("_total"), "{name}: counters end in _total");
        self.with(
            name,
            || Series::Count(Family::default()),
            |s| match s {
                Series::Count(c) => {
                    c.get_or_create(&labels_of(labels)).inc();
                }
                _ => tracing::warn!(metric = name, "not a counter of events; not counted"),
            },
        )
    }

    /// Records one observation of `name{labels}` (seconds) in the histogram.
    pub fn observe(&self, name: &str, labels: &[(&str, &str)], v: f64) {
        debug_assert!(!name.ends_with("_total"), "{name}: a histogram is not a counter");
        self.with(
            name,
            || Series::Histogram(Family::new_with_constructor(seconds_histogram as fn() -> Histogram)),
            |s| match s {
                Series::Histogram(h) => h.get_or_create(&labels_of(labels)).observe(v),
                _ => tracing::warn!(metric = name, "not a histogram; not observed"),
            },
        )
    }

    /// Everything, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry.lock().expect("metrics lock")).expect("writing to a String");
        out
    }
}

/// A label value from outside (a subject's token): itself if it is one of `allowed`, else
/// `unknown`, so no sender can make a series per value it invents.
pub fn known_label(value: &str, allowed: &[&'static str]) -> &'static str {
    allowed.iter().find(|a| **a == value).copied().unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    #[test]
    fn histogram_renders_cumulative_buckets() {
        let m = super::Metrics::default();
        m.observe("phase_duration_seconds", &[("phase", "x")], 0.02);
        m.observe("phase_duration_seconds", &[("phase", "x")], 3.0);
        let r = m.render();
        assert!(r.contains("# TYPE ksctl_phase_duration_seconds histogram\n"), "{r}");
        assert!(r.contains("ksctl_phase_duration_seconds_bucket{le=\"0.025\",phase=\"x\"} 1\n"), "{r}");
        assert!(r.contains("ksctl_phase_duration_seconds_bucket{le=\"10.0\",phase=\"x\"} 2\n"), "{r}");
        assert!(r.contains("ksctl_phase_duration_seconds_count{phase=\"x\"} 2\n"), "{r}");
        assert!(r.contains("ksctl_phase_duration_seconds_sum{phase=\"x\"} 3.02\n"), "{r}");
        assert!(r.ends_with("# EOF\n"), "{r}");
    }

    #[test]
    fn counters_escape_label_values_and_keep_their_names() {
        let m = super::Metrics::default();
        m.inc("requests_total", &[("request", "create"), ("outcome", "accepted")]);
        m.inc("requests_total", &[("request", "create"), ("outcome", "accepted")]);
        m.add("operation_seconds_total", &[("kind", "a\"b\\c\nd")], 1.5);
        let r = m.render();
        assert!(r.contains("# TYPE ksctl_requests counter\n"), "{r}");
        assert!(r.contains("ksctl_requests_total{request=\"create\",outcome=\"accepted\"} 2\n"), "{r}");
        assert!(r.contains("ksctl_operation_seconds_total{kind=\"a\\\"b\\\\c\\nd\"} 1.5\n"), "{r}");
    }
}
