//! What a run reports besides its text: every result as JSON (printed with `--json`, and
//! kept for `--out`, which writes them all to a JSON file and a Markdown summary), and
//! progress lines on stderr while a long phase runs.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Map, Value};

/// Every report of this run, in the order produced, each with its `workload` field.
static REPORTS: Mutex<Vec<Value>> = Mutex::new(Vec::new());

/// Keeps `report` (a JSON object) for `--out` under the name `workload`, and prints it as
/// one JSON line when `json` (the caller prints its text form otherwise).
pub fn record(workload: &str, report: &Value, json: bool) {
    if json {
        println!("{report}");
    }
    let mut kept = Map::new();
    kept.insert("workload".to_owned(), Value::from(workload));
    if let Value::Object(fields) = report {
        kept.extend(fields.iter().filter(|(key, _)| *key != "workload").map(|(k, v)| (k.clone(), v.clone())));
    }
    REPORTS.lock().expect("no panics while holding it").push(Value::Object(kept));
}

/// Writes the kept reports to `PREFIX.json` (an array) and `PREFIX.md` (a Markdown table
/// per workload, `title` on top).
pub fn write_out(prefix: &Path, title: &str) -> anyhow::Result<()> {
    let reports = REPORTS.lock().expect("no panics while holding it").clone();
    // Appended, not replaced: `--out results/run-0.3` keeps its dot.
    let with = |extension: &str| {
        let mut path = prefix.as_os_str().to_owned();
        path.push(extension);
        std::path::PathBuf::from(path)
    };
    let (json_path, markdown_path) = (with(".json"), with(".md"));
    let json = serde_json::to_string_pretty(&reports)?;
    std::fs::write(&json_path, json + "\n").with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&markdown_path, markdown(title, &reports))
        .with_context(|| format!("writing {}", markdown_path.display()))?;
    eprintln!("results: {} and {}", json_path.display(), markdown_path.display());
    Ok(())
}

/// The Markdown summary: consecutive reports of one workload (the levels of `smtp`, say)
/// share a table, one row each; an object of objects (the commands of `imap`) gets a
/// table of its own; an object of numbers (errors by reply code) is written inline.
fn markdown(title: &str, reports: &[Value]) -> String {
    let mut out = format!("# {title}\n");
    let mut groups: Vec<(&str, Vec<&Map<String, Value>>)> = Vec::new();
    for report in reports {
        let Some(fields) = report.as_object() else { continue };
        let workload = fields.get("workload").and_then(Value::as_str).unwrap_or("report");
        match groups.last_mut() {
            Some((name, members)) if *name == workload => members.push(fields),
            _ => groups.push((workload, vec![fields])),
        }
    }
    for (workload, members) in groups {
        let mut columns: Vec<&str> = Vec::new();
        for fields in &members {
            for (key, value) in *fields {
                if key != "workload" && !is_table(value) && !columns.contains(&key.as_str()) {
                    columns.push(key);
                }
            }
        }
        let rows = members.iter().map(|fields| columns.iter().map(|column| cell(fields.get(*column))).collect());
        let _ = write!(out, "\n## {workload}\n\n{}", table(&columns, rows));
        for fields in &members {
            for (key, value) in fields.iter().filter(|(_, value)| is_table(value)) {
                let Some(inner) = value.as_object() else { continue };
                let mut columns = vec![key.as_str()];
                for row in inner.values().filter_map(Value::as_object) {
                    columns.extend(row.keys().map(String::as_str).filter(|k| !columns.contains(k)).collect::<Vec<_>>());
                }
                let rows = inner.iter().map(|(name, row)| {
                    let mut cells = vec![name.clone()];
                    cells.extend(columns[1..].iter().map(|column| cell(row.get(*column))));
                    cells
                });
                let _ = write!(out, "\n{}", table(&columns, rows));
            }
        }
    }
    out
}

/// Whether a value is an object of objects (rendered as a table of its own).
fn is_table(value: &Value) -> bool {
    value.as_object().is_some_and(|inner| !inner.is_empty() && inner.values().all(Value::is_object))
}

/// A Markdown table.
fn table(columns: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut out = format!("| {} |\n|{}\n", columns.join(" | "), " --- |".repeat(columns.len()));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

/// One cell: numbers with at most two decimals, objects as `key: value` pairs.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::Number(number)) => match (number.as_u64(), number.as_f64()) {
            (Some(integer), _) => integer.to_string(),
            (None, Some(float)) if float.fract() == 0.0 => format!("{float:.0}"),
            (None, Some(float)) => format!("{float:.2}"),
            _ => number.to_string(),
        },
        Some(Value::String(text)) => text.replace('|', "\\|"),
        Some(Value::Object(inner)) if inner.is_empty() => "-".to_owned(),
        Some(Value::Object(inner)) => {
            inner.iter().map(|(key, value)| format!("{key}: {}", cell(Some(value)))).collect::<Vec<_>>().join(", ")
        }
        Some(other) => other.to_string(),
    }
}

/// Prints `label: done/total (rate/s, ETA)` to stderr every five seconds; never returns, so
/// run it beside the work (`tokio::select!`) and let the work's end drop it.
pub async fn progress(label: &str, done: &AtomicUsize, total: usize) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let done = done.load(Ordering::Relaxed);
        let rate = done as f64 / started.elapsed().as_secs_f64();
        let eta = if rate > 0.0 { format!("{:.0} s", total.saturating_sub(done) as f64 / rate) } else { "-".into() };
        eprintln!("{label}: {done}/{total} ({rate:.0}/s, ETA {eta})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn levels_share_a_table_and_commands_get_their_own() {
        let reports = vec![
            json!({"workload": "smtp", "concurrency": 1, "accepts_per_second": 10.456, "errors": {}}),
            json!({"workload": "smtp", "concurrency": 4, "accepts_per_second": 30.0, "errors": {"550": 2}}),
            json!({"workload": "imap", "ops": 5, "commands": {"LOGIN": {"ops": 2, "p50_ms": 1.5}}}),
        ];
        let text = markdown("run", &reports);
        // Columns come in the JSON object's (alphabetical) order.
        assert!(text.contains("## smtp\n\n| accepts_per_second | concurrency | errors |"), "{text}");
        assert!(text.contains("| 10.46 | 1 | - |\n| 30 | 4 | 550: 2 |"), "{text}");
        assert!(text.contains("## imap\n\n| ops |\n| --- |\n| 5 |"), "{text}");
        assert!(text.contains("| commands | ops | p50_ms |\n| --- | --- | --- |\n| LOGIN | 2 | 1.50 |"), "{text}");
    }
}
