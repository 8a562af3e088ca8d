//! This process's metrics, in the Prometheus text format (served at `/metrics` together with
//! counts read from the database). Per process by design: Prometheus scrapes each daemon, and
//! nothing here is needed by another daemon.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Bucket upper bounds, in seconds, for durations.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

type Labels = Vec<(&'static str, String)>;

/// Counters and histograms of this process.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
}

const HELP: &[(&str, &str, &str)] = &[
    (
        "pmoflow_step_duration_seconds",
        "histogram",
        "Time from a step's first attempt to its end, by workflow, action and outcome.",
    ),
    (
        "pmoflow_scheduler_lag_seconds",
        "histogram",
        "Time from a scheduled fire to the start of its run.",
    ),
    (
        "pmoflow_imap_polls_total",
        "counter",
        "IMAP poll rounds by result.",
    ),
    (
        "pmoflow_inbound_messages_total",
        "counter",
        "Inbound messages processed by outcome.",
    ),
    (
        "pmoflow_plugin_invocations_total",
        "counter",
        "Plugin invocations by plugin and result (ok, error, limit).",
    ),
];

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect(),
        );
        *self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    /// Records a value (seconds) in a histogram.
    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], seconds: f64) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect(),
        );
        self.histograms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .observe(seconds.max(0.0));
    }

    /// The text exposition of everything recorded.
    pub fn render(&self, out: &mut String) {
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let histograms = self
            .histograms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            if *kind == "counter" {
                for ((n, labels), v) in counters.iter().filter(|((n, _), _)| n == name) {
                    let _ = writeln!(out, "{n}{} {v}", label_text(labels, None));
                }
            } else {
                for ((n, labels), h) in histograms.iter().filter(|((n, _), _)| n == name) {
                    for (i, b) in BUCKETS.iter().enumerate() {
                        let _ = writeln!(
                            out,
                            "{n}_bucket{} {}",
                            label_text(labels, Some(&b.to_string())),
                            h.counts.get(i).copied().unwrap_or(0)
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{n}_bucket{} {}",
                        label_text(labels, Some("+Inf")),
                        h.count
                    );
                    let _ = writeln!(out, "{n}_sum{} {}", label_text(labels, None), h.sum);
                    let _ = writeln!(out, "{n}_count{} {}", label_text(labels, None), h.count);
                }
            }
        }
    }
}

/// `{a="x",b="y"}` with Prometheus escaping.
pub fn label_text(labels: &[(&'static str, String)], le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.inc("pmoflow_imap_polls_total", &[("result", "ok")]);
        m.inc("pmoflow_imap_polls_total", &[("result", "ok")]);
        m.observe(
            "pmoflow_step_duration_seconds",
            &[
                ("workflow", "a\"b"),
                ("action", "log"),
                ("outcome", "succeeded"),
            ],
            0.02,
        );
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("pmoflow_imap_polls_total{result=\"ok\"} 2"),
            "{out}"
        );
        assert!(out.contains("le=\"0.05\"} 1"), "{out}");
        assert!(out.contains("le=\"0.01\"} 0"), "{out}");
        assert!(out.contains("workflow=\"a\\\"b\""), "{out}");
        assert!(
            out.contains("pmoflow_step_duration_seconds_count{"),
            "{out}"
        );
    }
}
