//! `compare`: reads the JSON results of one `scripts/bench` run
//! (`<target>-<name>.json`, one per scenario and target) and prints a
//! Markdown table of ours against Nchan with the ratio per metric; for
//! `scripts/bench --history`, history off against on and the resume runs;
//! with floor results (`scripts/bench --floor`), ours and Nchan against the
//! ideal server `floor-server` and the loopback write cost alone.

use std::collections::{BTreeMap, BTreeSet};
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
        "resume" => &[
            ("events missed", "/events", Neither),
            ("verified: all replayed before ready, in order, then live (1 = yes)", "/verified", Higher),
            ("request to ready (ms)", "/runs/0/ready_ms", Lower),
            ("request to first replayed event (ms)", "/runs/0/first_event_ms", Lower),
            ("replayed events/s", "/runs/0/replay_rate", Higher),
            ("server CPU, request to ready (ms)", "/runs/0/server_cpu_ms", Lower),
            ("load generator CPU, request to ready (ms)", "/runs/0/load_generator_cpu_ms", Neither),
            ("publishing the missed events (events/s)", "/runs/0/publish_rate", Neither),
            ("history catch-up before the reconnect (s)", "/runs/0/catch_up_secs", Neither),
            ("live event after ready (ms)", "/runs/0/live_ms", Lower),
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
        "soak" => &[
            ("streams open", "/streams_opened", Higher),
            ("streams lost", "/streams_lost", Lower),
            ("minutes of publishing", "/minutes", Neither),
            ("broadcasts/s requested", "/rate_requested", Neither),
            ("publishes/s achieved", "/publish_rate_achieved", Higher),
            ("publishes not sent in the minutes", "/publishes_not_sent", Lower),
            ("deliveries expected", "/deliveries_expected", Neither),
            ("deliveries received", "/deliveries_received", Neither),
            ("missing", "/missing", Lower),
            ("duplicated", "/duplicated", Lower),
            ("out of order", "/out_of_order", Lower),
            ("streams incomplete", "/streams_incomplete", Lower),
            ("latency p50 (ms)", "/latency/p50_ms", Lower),
            ("latency p99 (ms)", "/latency/p99_ms", Lower),
            ("latency max (ms)", "/latency/max_ms", Lower),
            ("arrival latency p99 (ms)", "/latency_arrival/p99_ms", Lower),
            ("server RSS before the streams (bytes)", "/rss_before_open_bytes", Lower),
            ("server RSS first sample (bytes)", "/rss_first_bytes", Lower),
            ("server RSS last sample (bytes)", "/rss_last_bytes", Lower),
            ("server RSS peak (bytes)", "/rss_peak_bytes", Lower),
            // Slopes near 0 make ratios meaningless: shown, not compared.
            ("RSS slope, all samples (bytes/min)", "/rss_slope/bytes_per_min", Neither),
            ("RSS slope, all samples (bytes per stream per hour)", "/rss_slope/bytes_per_stream_per_hour", Neither),
            ("RSS slope, all samples (r²)", "/rss_slope/r_squared", Neither),
            ("RSS slope, second half (bytes/min)", "/rss_slope_second_half/bytes_per_min", Neither),
            (
                "RSS slope, second half (bytes per stream per hour)",
                "/rss_slope_second_half/bytes_per_stream_per_hour",
                Neither,
            ),
            ("server CPU (% of one core)", "/cpu/server/percent_of_one_core", Lower),
            ("load generator CPU (% of one core)", "/cpu/load_generator/percent_of_one_core", Neither),
            ("other processes CPU (% of one core)", "/cpu/other_percent_of_one_core", Neither),
        ],
        _ => &[],
    }
}

/// Rows of a soak's sample table at most (every k-th sample, and the last).
const SOAK_ROWS: usize = 30;

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
        // A boolean reads 1 (true) or 0.
        Outcome::Ran(v) => match v.pointer(pointer).and_then(|x| x.as_f64().or_else(|| x.as_bool().map(f64::from))) {
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

/// `scripts/bench --history` names its results `<base>-history-off<run>`
/// and `<base>-history-on<run>`: compared with each other, not with Nchan.
const HISTORY_OFF: &str = "-history-off";
const HISTORY_ON: &str = "-history-on";
/// The ideal server's targets (`floor-server` with 1 and 2 writer threads).
const FLOORS: [&str; 2] = ["floor1", "floor2"];
/// The floor server's own counts next to a result: `<target>-<name>.writes.json`.
const WRITES: &str = ".writes";
/// Results of the `resume` scenario (our gateway alone, HTTP or RabbitMQ mode).
const RESUME: &str = "resume";
/// Results of the `soak` scenario: in the main table, and their samples in one table each.
const SOAK: &str = "soak";

/// The tables for the results in `dir`: ours against Nchan, then (when
/// present) history off against on, and the resume runs.
pub fn table(dir: &Path) -> anyhow::Result<String> {
    let mut names = BTreeSet::new();
    // base -> run suffixes, for the off/on pairs
    let mut history: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut resumes = BTreeSet::new();
    let mut soaks = BTreeSet::new();
    let mut floors = BTreeSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let file = entry?.file_name().to_string_lossy().into_owned();
        let Some(stem) = file.strip_suffix(".json").or_else(|| file.strip_suffix(".failed")) else { continue };
        let Some((target, name)) = stem.split_once('-') else { continue };
        if name.starts_with(RESUME) && (target == "ours" || target == "amqp") {
            resumes.insert(stem.to_owned());
        } else if FLOORS.contains(&target) {
            if !name.ends_with(WRITES) {
                floors.insert(name.to_owned());
            }
        } else if target != "ours" && target != "nchan" {
            continue;
        } else if let Some((base, run)) = name.split_once(HISTORY_OFF).or_else(|| name.split_once(HISTORY_ON)) {
            history.entry(base.to_owned()).or_default().insert(run.to_owned());
        } else {
            if name.starts_with(SOAK) && file.ends_with(".json") {
                soaks.insert(stem.to_owned());
            }
            names.insert(name.to_owned());
        }
    }
    let mut out = if names.is_empty() && !(history.is_empty() && resumes.is_empty()) {
        String::new()
    } else {
        main_table(dir, &names)?
    };
    if !history.is_empty() {
        out.push_str(&history_table(dir, &history)?);
    }
    if !resumes.is_empty() {
        out.push_str(&resume_table(dir, &resumes)?);
    }
    if !floors.is_empty() {
        out.push_str(&floor_table(dir, &floors)?);
    }
    for stem in &soaks {
        out.push_str(&soak_table(dir, stem)?);
    }
    Ok(out)
}

/// The samples of one soak result (`<target>-soak...`): time, server RSS,
/// server CPU and latency of the window, at most [`SOAK_ROWS`] rows.
fn soak_table(dir: &Path, stem: &str) -> anyhow::Result<String> {
    let (target, name) = stem.split_once('-').unwrap_or((stem, ""));
    let Outcome::Ran(v) = load(dir, target, name)? else { return Ok(String::new()) };
    let samples = v.get("samples").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let step = samples.len().div_ceil(SOAK_ROWS).max(1);
    let mut out = format!(
        "\nSoak samples, {stem} (every {step}. of {}):\n\n\
         | t (s) | server RSS (MiB) | server CPU (% of one core) | window p50 (ms) | window p99 (ms) | window max (ms) | lost |\n\
         |---|---|---|---|---|---|---|\n",
        samples.len()
    );
    let num = |s: &Value, pointer: &str| s.pointer(pointer).and_then(Value::as_f64);
    let fmt = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.2}"));
    for (i, s) in samples.iter().enumerate() {
        if i % step != 0 && i + 1 != samples.len() {
            continue;
        }
        // A window without events (the first sample) has no latency.
        let events = num(s, "/latency/count").is_none_or(|n| n > 0.0);
        let latency = |pointer: &str| fmt(num(s, pointer).filter(|_| events));
        out.push_str(&format!(
            "| {:.0} | {} | {} | {} | {} | {} | {} |\n",
            num(s, "/t_secs").unwrap_or(0.0),
            fmt(num(s, "/rss_bytes").map(|b| b / 1048576.0)),
            fmt(num(s, "/cpu/server/percent_of_one_core")),
            latency("/latency/p50_ms"),
            latency("/latency/p99_ms"),
            latency("/latency/max_ms"),
            num(s, "/streams_lost").map_or("-".to_owned(), |x| format!("{x:.0}")),
        ));
    }
    Ok(out)
}

/// Ours against Nchan, one row per scenario and metric; with a `base`
/// column when the run has results of an earlier build (`base-*.json`).
fn main_table(dir: &Path, names: &BTreeSet<String>) -> anyhow::Result<String> {
    let has_base = names.iter().any(|n| dir.join(format!("base-{n}.json")).exists());
    let mut out = if has_base {
        String::from(
            "| scenario | metric | ours | base | nchan | ours better by (>1: ours better) |\n|---|---|---|---|---|---|\n",
        )
    } else {
        String::from("| scenario | metric | ours | nchan | ours better by (>1: ours better) |\n|---|---|---|---|---|\n")
    };
    for name in names {
        let ours = load(dir, "ours", name)?;
        let nchan = load(dir, "nchan", name)?;
        let base = if has_base { Some(load(dir, "base", name)?) } else { None };
        let scenario = [&ours, &nchan].into_iter().find_map(scenario_of).unwrap_or_default();
        let base_cell = |pointer: &str| base.as_ref().map(|b| format!(" {} |", cell(b, pointer).0)).unwrap_or_default();
        let rows = metrics(&scenario);
        if rows.is_empty() {
            out.push_str(&format!(
                "| {name} | (no results) | {} |{} {} | - |\n",
                cell(&ours, "").0,
                base_cell(""),
                cell(&nchan, "").0
            ));
        }
        for (label, pointer, better) in rows {
            let (o, ov) = cell(&ours, pointer);
            let (n, nv) = cell(&nchan, pointer);
            out.push_str(&format!(
                "| {name} | {label} | {o} |{} {n} | {} |\n",
                base_cell(pointer),
                ratio(ov, nv, *better)
            ));
        }
    }
    Ok(out)
}

/// History off against on (our gateway), every run of each, and the
/// ratio of the medians.
fn history_table(dir: &Path, pairs: &BTreeMap<String, BTreeSet<String>>) -> anyhow::Result<String> {
    let mut out = String::from(
        "\nHistory off against on (HISTORY_SECONDS), every run:\n\n\
         | scenario | metric | off | on | on / off (medians) |\n|---|---|---|---|---|\n",
    );
    for (base, runs) in pairs {
        let mut off = Vec::new();
        let mut on = Vec::new();
        for run in runs {
            off.push(load(dir, "ours", &format!("{base}{HISTORY_OFF}{run}"))?);
            on.push(load(dir, "ours", &format!("{base}{HISTORY_ON}{run}"))?);
        }
        let scenario = off.iter().chain(&on).find_map(scenario_of).unwrap_or_default();
        for (label, pointer, _) in metrics(&scenario) {
            let (off_text, off_median) = cells(&off, pointer);
            let (on_text, on_median) = cells(&on, pointer);
            let r = match (off_median, on_median) {
                (Some(a), Some(b)) if a != 0.0 && (b / a).is_finite() => format!("{:.2}", b / a),
                _ => "-".to_owned(),
            };
            out.push_str(&format!("| {base} | {label} | {off_text} | {on_text} | {r} |\n"));
        }
    }
    Ok(out)
}

/// Ours, the floor server (1 and 2 writer threads) and Nchan per fan-out,
/// with the floor server's own write counts and `loopback-write` if run.
fn floor_table(dir: &Path, names: &BTreeSet<String>) -> anyhow::Result<String> {
    const ROWS: [(&str, &str); 9] = [
        ("latency p50 (ms)", "/latency/p50_ms"),
        ("latency p90 (ms)", "/latency/p90_ms"),
        ("latency p99 (ms)", "/latency/p99_ms"),
        ("latency max (ms)", "/latency/max_ms"),
        ("arrival latency p50 (ms)", "/latency_arrival/p50_ms"),
        ("arrival latency p99 (ms)", "/latency_arrival/p99_ms"),
        ("missing", "/missing"),
        ("server CPU (% of one core)", "/cpu/server/percent_of_one_core"),
        ("other processes CPU (% of one core)", "/cpu/other_percent_of_one_core"),
    ];
    const WRITE_ROWS: [(&str, &str); 3] = [
        ("floor: ns per socket write", "/mean_ns_per_write"),
        ("floor: one publish's writes p50 (µs)", "/fanout_us_p50"),
        ("floor: one publish's writes p99 (µs)", "/fanout_us_p99"),
    ];
    let mut out = String::from(
        "\nThe floor (an ideal server, `sse-bench floor-server`, 1 and 2 writer threads):\n\n\
         | scenario | metric | ours | floor1 | floor2 | nchan |\n|---|---|---|---|---|---|\n",
    );
    for name in names {
        let runs = [
            load(dir, "ours", name)?,
            load(dir, "floor1", name)?,
            load(dir, "floor2", name)?,
            load(dir, "nchan", name)?,
        ];
        for (label, pointer) in ROWS {
            let c: Vec<String> = runs.iter().map(|r| cell(r, pointer).0).collect();
            out.push_str(&format!("| {name} | {label} | {} |\n", c.join(" | ")));
        }
        let writes =
            [load(dir, "floor1", &format!("{name}{WRITES}"))?, load(dir, "floor2", &format!("{name}{WRITES}"))?];
        for (label, pointer) in WRITE_ROWS {
            let (a, b) = (cell(&writes[0], pointer).0, cell(&writes[1], pointer).0);
            out.push_str(&format!("| {name} | {label} | - | {a} | {b} | - |\n"));
        }
    }
    if let Outcome::Ran(v) = load(dir, "loopback", "write")? {
        let n = |p: &str| cell(&Outcome::Ran(v.clone()), p).0;
        out.push_str(&format!(
            "\nloopback-write ({} pairs, {} rounds of {} bytes): ns per write (round / streams) mean {}, p50 {}, p99 {}; \
             round p50 {} µs, p99 {} µs; drained p50 {} µs, p99 {} µs; writer CPU per write: user {} ns, sys {} ns\n",
            n("/streams"),
            n("/rounds"),
            n("/bytes"),
            n("/ns_per_write_by_round/mean"),
            n("/ns_per_write_by_round/p50"),
            n("/ns_per_write_by_round/p99"),
            n("/round_write_us/p50"),
            n("/round_write_us/p99"),
            n("/round_drained_us/p50"),
            n("/round_drained_us/p99"),
            n("/writer_user_ns_per_write"),
            n("/writer_sys_ns_per_write"),
        ));
    }
    Ok(out)
}

/// One column per resume result.
fn resume_table(dir: &Path, stems: &BTreeSet<String>) -> anyhow::Result<String> {
    let mut outcomes = Vec::new();
    for stem in stems {
        let (target, name) = stem.split_once('-').unwrap_or((stem, ""));
        outcomes.push(load(dir, target, name)?);
    }
    let mut out = String::from("\nResume (Last-Event-ID replay):\n\n| metric |");
    for stem in stems {
        out.push_str(&format!(" {stem} |"));
    }
    out.push_str(&format!("\n|---|{}\n", "---|".repeat(stems.len())));
    for (label, pointer, _) in metrics(RESUME) {
        out.push_str(&format!("| {label} |"));
        for o in &outcomes {
            out.push_str(&format!(" {} |", cell(o, pointer).0));
        }
        out.push('\n');
    }
    Ok(out)
}

fn scenario_of(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Ran(v) => v.get("scenario").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// The cells of several runs joined with " / ", and the median of their values.
fn cells(outcomes: &[Outcome], pointer: &str) -> (String, Option<f64>) {
    let cells: Vec<(String, Option<f64>)> = outcomes.iter().map(|o| cell(o, pointer)).collect();
    let text = cells.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(" / ");
    let mut values: Vec<f64> = cells.iter().filter_map(|(_, v)| *v).collect();
    values.sort_by(f64::total_cmp);
    let median = match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[n / 2]),
        n => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    };
    (text, median)
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
    fn an_earlier_build_gets_its_own_column() {
        let dir = std::env::temp_dir().join(format!("sse-bench-compare-base-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");
        write("ours-hold.json", r#"{"scenario":"hold","streams_opened":100,"rss_per_stream_bytes":2000.0}"#);
        write("base-hold.json", r#"{"scenario":"hold","streams_opened":100,"rss_per_stream_bytes":3000.0}"#);
        write("nchan-hold.json", r#"{"scenario":"hold","streams_opened":100,"rss_per_stream_bytes":10000.0}"#);
        let table = table(&dir).expect("table");
        std::fs::remove_dir_all(&dir).ok();
        assert!(table.contains("| ours | base | nchan |"), "{table}");
        assert!(table.contains("| 2000 | 3000 | 10000 |"), "{table}");
    }

    #[test]
    fn floor_results_get_their_own_table_with_the_write_counts() {
        let dir = std::env::temp_dir().join(format!("sse-bench-compare-floor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");
        let fanout = |p99: f64| format!(r#"{{"scenario":"fanout","latency":{{"p99_ms":{p99}}}}}"#);
        write("ours-fanout-9x1.json", &fanout(16.0));
        write("nchan-fanout-9x1.json", &fanout(23.0));
        write("floor1-fanout-9x1.json", &fanout(9.5));
        write("floor1-fanout-9x1.writes.json", r#"{"mean_ns_per_write":6100.5}"#);
        write("floor2-fanout-9x1.failed", "");
        write("loopback-write.json", r#"{"streams":9,"ns_per_write_by_round":{"p50":5000}}"#);
        let table = table(&dir).expect("table");
        std::fs::remove_dir_all(&dir).ok();
        assert!(table.contains("| fanout-9x1 | latency p99 (ms) | 16 | 23 |"), "the main table stays: {table}");
        assert!(table.contains("| fanout-9x1 | latency p99 (ms) | 16 | 9.50 | failed | 23 |"), "{table}");
        assert!(table.contains("| fanout-9x1 | floor: ns per socket write | - | 6100 | not run | - |"), "{table}");
        assert!(table.contains("loopback-write (9 pairs") && table.contains("p50 5000"), "{table}");
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

    #[test]
    fn soak_results_get_their_samples_table() {
        let dir = std::env::temp_dir().join(format!("sse-bench-compare-soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sample = |t: u32, rss_mib: u32| {
            format!(
                r#"{{"t_secs":{t}.2,"rss_bytes":{},"cpu":{{"server":{{"percent_of_one_core":12.5}}}},"latency":{{"p50_ms":1.0,"p99_ms":2.5,"max_ms":9.0}},"streams_lost":0}}"#,
                rss_mib * 1048576
            )
        };
        // 61 samples: every 3rd (0, 30, ..., 600 s) and nothing else is shown.
        let mut samples: Vec<String> = (0..=60).map(|i| sample(i * 10, 40 + i)).collect();
        samples[0] = r#"{"t_secs":0.0,"rss_bytes":41943040,"cpu":null,"latency":{"count":0,"p50_ms":0.0,"p99_ms":0.0,"max_ms":0.0},"streams_lost":0}"#.to_owned();
        let ours = format!(
            r#"{{"scenario":"soak","streams_opened":10000,"missing":0,"rss_slope":{{"bytes_per_min":1234.4}},"samples":[{}]}}"#,
            samples.join(",")
        );
        std::fs::write(dir.join("ours-soak.json"), ours).expect("write");
        let table = table(&dir).expect("table");
        std::fs::remove_dir_all(&dir).ok();
        assert!(table.contains("| soak | streams open | 10000 | not run | - |"), "{table}");
        assert!(table.contains("| soak | RSS slope, all samples (bytes/min) | 1234 | not run | - |"), "{table}");
        assert!(table.contains("Soak samples, ours-soak (every 3. of 61)"), "{table}");
        assert!(table.contains("| 0 | 40.00 | - | - | - | - | 0 |"), "no CPU or latency without a window: {table}");
        assert!(table.contains("| 30 | 43.00 | 12.50 | 1.00 | 2.50 | 9.00 | 0 |"), "{table}");
        assert!(table.contains("| 600 | 100.00 |"), "the last sample: {table}");
        assert!(!table.contains("| 10 | 41.00 |"), "only every 3rd: {table}");
        assert_eq!(table.matches("| 12.50 |").count(), 20, "{table}");
    }

    #[test]
    fn history_runs_are_paired_off_against_on_and_resumes_get_their_own_table() {
        let dir = std::env::temp_dir().join(format!("sse-bench-compare-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");
        let fanout =
            |cpu: f64| format!(r#"{{"scenario":"fanout","cpu":{{"server":{{"percent_of_one_core":{cpu}}}}}}}"#);
        write("ours-fanout-9x1-history-off-1.json", &fanout(20.0));
        write("ours-fanout-9x1-history-on-1.json", &fanout(22.0));
        write("ours-fanout-9x1-history-off-2.json", &fanout(30.0));
        write("ours-fanout-9x1-history-on-2.failed", "");
        write("ours-resume-5-1.json", r#"{"scenario":"resume","events":5,"verified":true,"runs":[{"ready_ms":12.5}]}"#);
        write(
            "amqp-resume-5-1.json",
            r#"{"scenario":"resume","events":5,"verified":false,"runs":[{"ready_ms":30.0}]}"#,
        );
        let table = table(&dir).expect("table");
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            table.contains("| fanout-9x1 | server CPU (% of one core) | 20 / 30 | 22 / failed | 0.88 |"),
            "{table}"
        );
        assert!(!table.contains("| fanout-9x1-history"), "pairs stay out of the Nchan table: {table}");
        assert!(table.contains("| metric | amqp-resume-5-1 | ours-resume-5-1 |"), "{table}");
        assert!(table.contains("| request to ready (ms) | 30 | 12.50 |"), "{table}");
        assert!(!table.contains("| scenario | metric | ours | nchan |"), "no empty Nchan table: {table}");
        assert!(table.contains("| 0 | 1 |"), "verified reads as 0/1: {table}");
    }
}
