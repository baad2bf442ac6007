//! The plugins' metrics in the Prometheus text format (what the gateway's
//! `/admin/metrics` appends): per plugin and version, calls, failures, instances made,
//! the circuit's state and a call-latency histogram; the declared counters; the idle
//! warm instances of the whole host.

use std::fmt::Write;
use std::sync::Arc;

use crate::host::LoadedPlugin;
use crate::metrics::{LATENCY_BUCKETS_US, MetricsSnapshot};

/// A label value with `\`, `"` and line feeds escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

type Counter = (&'static str, &'static str, fn(&MetricsSnapshot) -> u64);

const COUNTERS: [Counter; 6] = [
    ("relay_plugin_calls_total", "Hook calls made.", |m| m.calls),
    (
        "relay_plugin_errors_total",
        "Hook calls that trapped or returned something invalid.",
        |m| m.errors,
    ),
    (
        "relay_plugin_timeouts_total",
        "Hook calls stopped at their deadline.",
        |m| m.timeouts,
    ),
    (
        "relay_plugin_rejected_open_total",
        "Hook calls not made because the circuit was open.",
        |m| m.rejected_open,
    ),
    (
        "relay_plugin_logs_dropped_total",
        "Guest log lines dropped by the rate limit.",
        |m| m.logs_dropped,
    ),
    (
        "relay_plugin_instances_total",
        "Instances made (fresh per request, or warm for stateless plugins).",
        |m| m.instances,
    ),
];

/// Render the metrics of `plugins`, and `warm_idle` idle warm instances.
pub(crate) fn render(plugins: &[Arc<LoadedPlugin>], warm_idle: usize) -> String {
    let mut out = String::new();
    let snapshots: Vec<(String, MetricsSnapshot, bool)> = plugins
        .iter()
        .map(|p| {
            (
                format!(
                    "plugin=\"{}\",version=\"{}\"",
                    label(&p.name),
                    label(&p.version)
                ),
                p.metrics(),
                p.circuit_open(),
            )
        })
        .collect();
    for (name, help, value) in COUNTERS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, m, _) in &snapshots {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(m));
        }
    }
    let _ = writeln!(
        out,
        "# HELP relay_plugin_circuit_open Whether the plugin's circuit breaker is open.\n\
         # TYPE relay_plugin_circuit_open gauge"
    );
    for (labels, _, open) in &snapshots {
        let _ = writeln!(
            out,
            "relay_plugin_circuit_open{{{labels}}} {}",
            u8::from(*open)
        );
    }
    let name = "relay_plugin_call_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Hook call latency.\n# TYPE {name} histogram"
    );
    for (labels, m, _) in &snapshots {
        let mut cumulative = 0u64;
        for (i, count) in m.latency_buckets.iter().enumerate() {
            cumulative += count;
            let le = match LATENCY_BUCKETS_US.get(i) {
                Some(us) => format!("{}", *us as f64 / 1e6),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {}",
            m.latency_ns_total as f64 / 1e9,
            m.calls
        );
    }
    let name = "relay_plugin_counter_total";
    let _ = writeln!(
        out,
        "# HELP {name} Counters the plugins declare (host.metric-add).\n# TYPE {name} counter"
    );
    for (labels, m, _) in &snapshots {
        for (counter, value) in &m.counters {
            let _ = writeln!(
                out,
                "{name}{{{labels},name=\"{}\"}} {value}",
                label(counter)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP relay_plugin_warm_instances Idle warm instances of stateless plugins.\n\
         # TYPE relay_plugin_warm_instances gauge\nrelay_plugin_warm_instances {warm_idle}"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("x\ny"), "x\\ny");
    }

    #[test]
    fn no_plugins_still_gives_valid_families() {
        let text = render(&[], 0);
        assert!(text.contains("# TYPE relay_plugin_calls_total counter"));
        assert!(text.contains("relay_plugin_warm_instances 0"));
        assert!(!text.contains("{plugin="), "{text}");
    }
}
