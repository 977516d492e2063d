//! `compare`: reads the JSON results of one `scripts/bench` run
//! (`<target>-<name>.json`, one per scenario and target) and prints a
//! Markdown table of ours against Nchan with the ratio per metric.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

/// Options of `sse-bench compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Directory holding `ours-*.json` and `nchan-*.json`.
    pub dir: PathBuf,
}

#[derive(Clone, Copy)]
enum Better {
    Lower,
    Higher,
    /// Context, not a result (no ratio).
    Neither,
}

/// Metrics shown per scenario: label, JSON pointer, which direction is better.
fn metrics(scenario: &str) -> &'static [(&'static str, &'static str, Better)] {
    use Better::{Higher, Lower, Neither};
    match scenario {
        "hold" => &[
            ("h2 connections (- : HTTP/1.1)", "/h2_connections", Neither),
            ("streams open", "/streams_opened", Higher),
            ("server RSS per stream (bytes)", "/rss_per_stream_bytes", Lower),
            ("server RSS per idle h2 connection (bytes)", "/rss_per_h2_connection_bytes", Lower),
            ("server RSS baseline (KiB)", "/rss_baseline_kb", Lower),
            ("opens/s", "/opens_per_sec", Higher),
        ],
        "fanout" => &[
            ("h2 connections (- : HTTP/1.1)", "/h2_connections", Neither),
            ("streams open", "/streams_opened", Higher),
            ("publishes/s achieved", "/publish_rate_achieved", Higher),
            ("deliveries/s", "/deliveries_per_sec", Higher),
            ("latency p50 (ms)", "/latency/p50_ms", Lower),
            ("latency p90 (ms)", "/latency/p90_ms", Lower),
            ("latency p99 (ms)", "/latency/p99_ms", Lower),
            ("latency max (ms)", "/latency/max_ms", Lower),
            ("arrival latency p50 (ms)", "/latency_arrival/p50_ms", Lower),
            ("arrival latency p99 (ms)", "/latency_arrival/p99_ms", Lower),
            ("arrival latency max (ms)", "/latency_arrival/max_ms", Lower),
            ("missing", "/missing", Lower),
            ("duplicated", "/duplicated", Lower),
            ("out of order", "/out_of_order", Lower),
            ("server CPU (% of one core)", "/cpu/server/percent_of_one_core", Lower),
            ("load generator CPU (% of one core)", "/cpu/load_generator/percent_of_one_core", Neither),
            ("other processes CPU (% of one core)", "/cpu/other_percent_of_one_core", Neither),
        ],
        "send" => &[
            ("sends/s", "/sends_per_sec", Higher),
            ("send rtt p99 (ms)", "/send_rtt/p99_ms", Lower),
            ("latency p99 (ms)", "/latency/p99_ms", Lower),
            ("arrival latency p99 (ms)", "/latency_arrival/p99_ms", Lower),
            ("missing", "/missing", Lower),
            ("server CPU (% of one core)", "/cpu/server/percent_of_one_core", Lower),
            ("load generator CPU (% of one core)", "/cpu/load_generator/percent_of_one_core", Neither),
            ("other processes CPU (% of one core)", "/cpu/other_percent_of_one_core", Neither),
        ],
        "churn" => &[
            ("connects/s", "/connects_per_sec", Higher),
            ("open latency p99 (ms)", "/open_latency/p99_ms", Lower),
            ("errors", "/connect_errors", Lower),
            ("server CPU (% of one core)", "/cpu/server/percent_of_one_core", Lower),
            ("load generator CPU (% of one core)", "/cpu/load_generator/percent_of_one_core", Neither),
            ("other processes CPU (% of one core)", "/cpu/other_percent_of_one_core", Neither),
        ],
        "admin" => &[
            ("streams open", "/streams_opened", Higher),
            ("list all: answer p50 (ms)", "/list_all/latency/p50_ms", Lower),
            ("list all: answer max (ms)", "/list_all/latency/max_ms", Lower),
            ("list all: answer bytes", "/list_all/calls/0/bytes", Neither),
            ("page through broadcast: walk p50 (ms)", "/list_by_key/walk/p50_ms", Lower),
            ("page through broadcast: page max (ms)", "/list_by_key/page/max_ms", Lower),
            ("close one: answer p50 (ms)", "/close_one_answer/p50_ms", Lower),
            ("close one: client saw the end, max (ms)", "/close_one_ended/max_ms", Lower),
            ("close all: answer (ms)", "/close_all/answer_ms", Lower),
            ("close all: every client saw the end (ms)", "/close_all/all_ended_ms", Lower),
            ("close all: every disconnect callback heard (ms)", "/close_all/callbacks_done_ms", Lower),
            ("close all: server CPU (s)", "/close_all/cpu/server/cpu_secs", Lower),
            ("close all: load generator CPU (s)", "/close_all/cpu/load_generator/cpu_secs", Neither),
        ],
        "roster" => &[
            ("streams open", "/streams_opened", Higher),
            ("rosters in the window", "/rosters_in_window", Neither),
            ("roster body bytes", "/roster_bytes_mean", Neither),
            ("server CPU s per interval", "/server_cpu_secs_per_interval", Lower),
            ("server CPU (% of one core)", "/cpu/server/percent_of_one_core", Lower),
            ("backend CPU (% of one core)", "/backend_cpu/server/percent_of_one_core", Lower),
            ("load generator CPU (% of one core)", "/cpu/load_generator/percent_of_one_core", Neither),
            ("other processes CPU (% of one core)", "/cpu/other_percent_of_one_core", Neither),
        ],
        "storm" => &[
            ("clients", "/streams", Neither),
            ("backend-bound minimum (s)", "/backend_bound_secs", Neither),
            ("opening: seconds until all ready", "/open/secs_until_all_ready", Lower),
            ("opening: fatal answers", "/open/fatal", Lower),
            ("opening: retry hints followed", "/open/retry_hints", Neither),
            ("opening: backend peak callbacks at once", "/open/backend_peak_in_flight", Neither),
            ("after kill -9: seconds until all back", "/recovery/secs_until_all_ready", Lower),
            ("after kill -9: one client's wait p50 (ms)", "/recovery/wait/p50_ms", Lower),
            ("after kill -9: one client's wait p99 (ms)", "/recovery/wait/p99_ms", Lower),
            ("after kill -9: fatal answers", "/recovery/fatal", Lower),
            ("after kill -9: retry hints followed", "/recovery/retry_hints", Neither),
            ("after kill -9: failed connections", "/recovery/failed_connections", Neither),
            ("after kill -9: backend peak callbacks at once", "/recovery/backend_peak_in_flight", Neither),
            (
                "after kill -9: load generator CPU (% of one core)",
                "/recovery/cpu/load_generator/percent_of_one_core",
                Neither,
            ),
        ],
        "stall" => &[
            ("healthy streams open", "/healthy_opened", Higher),
            ("healthy streams lost", "/healthy_lost", Lower),
            ("stalled clients answered", "/stalled_answered", Neither),
            ("stalled closed by the server", "/stalled_closed", Neither),
            ("seconds until every stalled one was closed", "/stalled_all_closed_secs", Lower),
            ("publishes/s achieved", "/publish_rate_achieved", Higher),
            ("publishes not sent in the duration", "/publishes_not_sent", Lower),
            ("healthy latency p50 (ms)", "/latency/p50_ms", Lower),
            ("healthy latency p99 (ms)", "/latency/p99_ms", Lower),
            ("healthy latency max (ms)", "/latency/max_ms", Lower),
            ("healthy arrival latency p99 (ms)", "/latency_arrival/p99_ms", Lower),
            ("missing", "/missing", Lower),
            ("server RSS peak (KiB)", "/server_rss_kb_peak", Lower),
            ("TCP memory peak, whole machine (pages)", "/tcp_mem_pages_peak", Lower),
            ("server send queues peak (bytes)", "/server_send_bytes_peak", Lower),
            ("server CPU (% of one core)", "/cpu/server/percent_of_one_core", Lower),
            ("load generator CPU (% of one core)", "/cpu/load_generator/percent_of_one_core", Neither),
            ("other processes CPU (% of one core)", "/cpu/other_percent_of_one_core", Neither),
        ],
        _ => &[],
    }
}

enum Outcome {
    Ran(Value),
    Failed,
    NotRun,
}

fn load(dir: &Path, target: &str, name: &str) -> anyhow::Result<Outcome> {
    let json = dir.join(format!("{target}-{name}.json"));
    if json.exists() {
        let text = std::fs::read_to_string(&json).with_context(|| format!("read {}", json.display()))?;
        let value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", json.display()))?;
        return Ok(Outcome::Ran(value));
    }
    Ok(if dir.join(format!("{target}-{name}.failed")).exists() { Outcome::Failed } else { Outcome::NotRun })
}

fn cell(outcome: &Outcome, pointer: &str) -> (String, Option<f64>) {
    match outcome {
        Outcome::Ran(v) => match v.pointer(pointer).and_then(Value::as_f64) {
            Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => (format!("{x:.0}"), Some(x)),
            Some(x) if x.abs() >= 100.0 => (format!("{x:.0}"), Some(x)),
            Some(x) => (format!("{x:.2}"), Some(x)),
            None => ("-".to_owned(), None),
        },
        Outcome::Failed => ("failed".to_owned(), None),
        Outcome::NotRun => ("not run".to_owned(), None),
    }
}

fn ratio(ours: Option<f64>, nchan: Option<f64>, better: Better) -> String {
    let (Some(o), Some(n)) = (ours, nchan) else { return "-".to_owned() };
    let r = match better {
        Better::Lower => n / o,
        Better::Higher => o / n,
        Better::Neither => return "-".to_owned(),
    };
    if r.is_finite() && r > 0.0 { format!("{r:.2}×") } else { "-".to_owned() }
}

/// The table for the results in `dir`.
pub fn table(dir: &Path) -> anyhow::Result<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let file = entry?.file_name().to_string_lossy().into_owned();
        let stem = file.strip_suffix(".json").or_else(|| file.strip_suffix(".failed"));
        if let Some(name) = stem.and_then(|s| s.strip_prefix("ours-").or_else(|| s.strip_prefix("nchan-"))) {
            names.insert(name.to_owned());
        }
    }
    let mut out = String::from(
        "| scenario | metric | ours | nchan | ours better by (>1: ours better) |\n|---|---|---|---|---|\n",
    );
    for name in &names {
        let ours = load(dir, "ours", name)?;
        let nchan = load(dir, "nchan", name)?;
        let scenario = [&ours, &nchan]
            .iter()
            .find_map(|o| match o {
                Outcome::Ran(v) => v.get("scenario").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            })
            .unwrap_or_default();
        let rows = metrics(&scenario);
        if rows.is_empty() {
            out.push_str(&format!("| {name} | (no results) | {} | {} | - |\n", cell(&ours, "").0, cell(&nchan, "").0));
        }
        for (label, pointer, better) in rows {
            let (o, ov) = cell(&ours, pointer);
            let (n, nv) = cell(&nchan, pointer);
            out.push_str(&format!("| {name} | {label} | {o} | {n} | {} |\n", ratio(ov, nv, *better)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_how_many_times_better_ours_is() {
        assert_eq!(ratio(Some(2.0), Some(12.0), Better::Lower), "6.00×");
        assert_eq!(ratio(Some(30000.0), Some(10000.0), Better::Higher), "3.00×");
        assert_eq!(ratio(Some(0.0), Some(0.0), Better::Lower), "-");
        assert_eq!(ratio(None, Some(1.0), Better::Lower), "-");
    }

    #[test]
    fn table_reads_results_and_marks_failures() {
        let dir = std::env::temp_dir().join(format!("sse-bench-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");
        write("ours-hold.json", r#"{"scenario":"hold","streams_opened":100,"rss_per_stream_bytes":4000.0}"#);
        write("nchan-hold.json", r#"{"scenario":"hold","streams_opened":100,"rss_per_stream_bytes":10000.0}"#);
        write("ours-send.json", r#"{"scenario":"send","sends_per_sec":30000.0}"#);
        write("nchan-churn.failed", "");
        let table = table(&dir).expect("table");
        std::fs::remove_dir_all(&dir).ok();
        assert!(table.contains("| hold | server RSS per stream (bytes) | 4000 | 10000 | 2.50× |"), "{table}");
        assert!(table.contains("| send | sends/s | 30000 | not run | - |"), "{table}");
        assert!(table.contains("| churn | (no results) | not run | failed | - |"), "{table}");
    }
}
