//! Counters and histograms in Prometheus text format. Small on purpose: a name, a few labels, a
//! number (or a histogram over fixed buckets).
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Histogram buckets, in seconds: from a fast store write to a slow cloud phase.
pub const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0];

#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, f64>>,
    /// `name` → `labels` → series.
    histograms: Mutex<BTreeMap<String, BTreeMap<String, Series>>>,
}

/// One histogram series: count per bucket, sum, count.
type Series = ([u64; BUCKETS.len()], f64, u64);

fn labels_of(labels: &[(&str, &str)]) -> String {
    labels.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('"', "'"))).collect::<Vec<_>>().join(",")
}

impl Metrics {
    /// Adds `v` to `name{labels}`; labels are `(key, value)` pairs.
    pub fn add(&self, name: &str, labels: &[(&str, &str)], v: f64) {
        let mut key = format!("ksctl_{name}");
        if !labels.is_empty() {
            key.push_str(&format!("{{{}}}", labels_of(labels)));
        }
        *self.counters.lock().expect("metrics lock").entry(key).or_default() += v;
    }
    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1.0);
    }
    /// Records one observation of `name{labels}` (seconds) in the histogram.
    pub fn observe(&self, name: &str, labels: &[(&str, &str)], v: f64) {
        let mut h = self.histograms.lock().expect("metrics lock");
        let e = h.entry(format!("ksctl_{name}")).or_default().entry(labels_of(labels)).or_insert((
            [0; BUCKETS.len()],
            0.0,
            0,
        ));
        for (i, le) in BUCKETS.iter().enumerate() {
            if v <= *le {
                e.0[i] += 1;
            }
        }
        e.1 += v;
        e.2 += 1;
    }
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, v) in self.counters.lock().expect("metrics lock").iter() {
            out.push_str(&format!("{k} {v}\n"));
        }
        for (name, series) in self.histograms.lock().expect("metrics lock").iter() {
            out.push_str(&format!("# TYPE {name} histogram\n"));
            for (labels, (buckets, sum, count)) in series {
                let sep = if labels.is_empty() { "" } else { "," };
                for (i, le) in BUCKETS.iter().enumerate() {
                    out.push_str(&format!("{name}_bucket{{{labels}{sep}le=\"{le}\"}} {}\n", buckets[i]));
                }
                out.push_str(&format!("{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}\n"));
                let l = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
                out.push_str(&format!("{name}_sum{l} {sum}\n{name}_count{l} {count}\n"));
            }
        }
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
        assert!(r.contains("ksctl_phase_duration_seconds_bucket{phase=\"x\",le=\"0.025\"} 1\n"), "{r}");
        assert!(r.contains("ksctl_phase_duration_seconds_bucket{phase=\"x\",le=\"10\"} 2\n"), "{r}");
        assert!(r.contains("ksctl_phase_duration_seconds_bucket{phase=\"x\",le=\"+Inf\"} 2\n"), "{r}");
        assert!(r.contains("ksctl_phase_duration_seconds_count{phase=\"x\"} 2\n"), "{r}");
        assert!(r.contains("ksctl_phase_duration_seconds_sum{phase=\"x\"} 3.02\n"), "{r}");
    }
}
