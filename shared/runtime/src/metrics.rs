//! Counters in Prometheus text format. Small on purpose: a name, a few labels, a number.
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, f64>>,
}

impl Metrics {
    /// Adds `v` to `name{labels}`; labels are `(key, value)` pairs.
    pub fn add(&self, name: &str, labels: &[(&str, &str)], v: f64) {
        let mut key = format!("ksctl_{name}");
        if !labels.is_empty() {
            let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('"', "'"))).collect();
            key.push_str(&format!("{{{}}}", parts.join(",")));
        }
        *self.counters.lock().expect("metrics lock").entry(key).or_default() += v;
    }
    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1.0);
    }
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, v) in self.counters.lock().expect("metrics lock").iter() {
            out.push_str(&format!("{k} {v}\n"));
        }
        out
    }
}
