//! The table a run ends with: per scenario and target the median of the
//! rounds (min–max), and Mist's figure over nats-server's. Markdown, to be
//! pasted into BENCHMARKS.md as it is. Mist and nats-server always have a
//! column, redis-server and the raw relay when they ran; a TLS or
//! WebSocket run says so above the table.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

/// The columns, in order: (target, heading).
const COLUMNS: [(&str, &str); 4] = [
    ("mist", "mist"),
    ("nats", "nats-server"),
    ("redis", "redis-server"),
    ("raw", "raw relay"),
];

/// Reads a results.jsonl file.
pub fn read(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// `mist-compare summary FILE`.
pub fn print_file(path: &Path) -> anyhow::Result<()> {
    println!("{}", table(&read(path)?));
    Ok(())
}

/// What one row of the table reads from the results.
#[derive(Clone, Copy)]
enum Figure {
    Rate,
    /// p50 and p99, in µs, under these keys.
    Latency(&'static str, &'static str),
    Memory,
    /// A duration in ms under this key (lower is better).
    Millis(&'static str),
}

/// The usual latency keys.
const LATENCY: Figure = Figure::Latency("lat_p50_us", "lat_p99_us");

struct Row {
    label: String,
    scenario: &'static str,
    paced: bool,
    figure: Figure,
}

/// Median, min and max.
fn spread(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let (first, last) = (*values.first()?, *values.last()?);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some((median, first, last))
}

fn rows_of<'a>(
    results: &'a [Value],
    target: &'a str,
    scenario: &'a str,
    paced: bool,
) -> impl Iterator<Item = &'a Value> {
    results.iter().filter(move |r| {
        r["target"] == target
            && r["scenario"] == scenario
            && r.get("paced").and_then(Value::as_bool).unwrap_or(false) == paced
    })
}

fn values(results: &[Value], target: &str, row: &Row, key: &str) -> Vec<f64> {
    rows_of(results, target, row.scenario, row.paced)
        .filter_map(|r| r[key].as_f64())
        .collect()
}

/// The first value of `key` in a scenario's rows: the size of the run.
fn size_of(results: &[Value], scenario: &str, paced: bool, key: &str) -> Option<u64> {
    results
        .iter()
        .filter(|r| {
            r["scenario"] == scenario
                && r.get("paced").and_then(Value::as_bool).unwrap_or(false) == paced
        })
        .find_map(|r| r[key].as_u64())
}

/// The Markdown table of `results`.
pub fn table(results: &[Value]) -> String {
    let count = |n: Option<u64>| n.map_or("N".to_owned(), grouped);
    let columns: Vec<(&str, &str)> = COLUMNS
        .into_iter()
        .filter(|(target, _)| {
            matches!(*target, "mist" | "nats") || results.iter().any(|r| r["target"] == *target)
        })
        .collect();
    let rows = [
        Row {
            label: format!(
                "fanout 1→{}, flood, delivered msgs/s",
                count(size_of(results, "fanout", false, "subs"))
            ),
            scenario: "fanout",
            paced: false,
            figure: Figure::Rate,
        },
        Row {
            label: "pair 1→1, flood, delivered msgs/s".into(),
            scenario: "pair",
            paced: false,
            figure: Figure::Rate,
        },
        Row {
            label: "pair 1→1, flood, latency p50 / p99".into(),
            scenario: "pair",
            paced: false,
            figure: LATENCY,
        },
        Row {
            label: format!(
                "paced 1→{} at {} msgs/s, latency p50 / p99",
                count(size_of(results, "fanout", true, "subs")),
                count(size_of(results, "fanout", true, "rate"))
            ),
            scenario: "fanout",
            paced: true,
            figure: LATENCY,
        },
        Row {
            label: format!(
                "routing 1→{} topics, flood, delivered msgs/s",
                count(size_of(results, "routing", false, "subs"))
            ),
            scenario: "routing",
            paced: false,
            figure: Figure::Rate,
        },
        Row {
            label: format!(
                "idle subscribed connection, broker RSS ({} on a fresh broker)",
                count(size_of(results, "conns", false, "conns"))
            ),
            scenario: "conns",
            paced: false,
            figure: Figure::Memory,
        },
        Row {
            label: format!(
                "storm: {} clients connect and subscribe at once, ms until all are subscribed",
                count(size_of(results, "storm", false, "clients"))
            ),
            scenario: "storm",
            paced: false,
            figure: Figure::Millis("storm_ms"),
        },
        Row {
            label: format!(
                "storm: a pair at {} msgs/s, latency p50 / p99 before the storm",
                count(size_of(results, "storm", false, "rate"))
            ),
            scenario: "storm",
            paced: false,
            figure: Figure::Latency("base_p50_us", "base_p99_us"),
        },
        Row {
            label: "storm: the same pair, latency p50 / p99 during the storm".into(),
            scenario: "storm",
            paced: false,
            figure: LATENCY,
        },
    ];
    let mut out = String::new();
    match results.iter().find_map(|r| r["transport"].as_str()) {
        Some("tls") => out.push_str(
            "Over TLS: Mist's tls:// listener and nats-server --tls, one self-signed \
             P-256 certificate that the driver trusts.\n\n",
        ),
        Some("ws") => out.push_str(
            "Over WebSocket: Mist's ws:// listener (one JSON command per text frame) and \
             nats-server's websocket listener (no_tls; its protocol in binary frames).\n\n",
        ),
        Some("ws-lines") => out.push_str(
            "Over WebSocket, Mist's lines many to a frame: Mist's ws:// listener under the \
             mist.lines subprotocol (each write one text frame of lines, deliveries many to \
             a frame) and nats-server's websocket listener (no_tls; its protocol in binary \
             frames).\n\n",
        ),
        _ => {}
    }
    out.push_str("| scenario |");
    for (_, heading) in &columns {
        let _ = write!(out, " {heading} |");
    }
    out.push_str(" mist / nats |\n|---|");
    for _ in &columns {
        out.push_str("---|");
    }
    out.push_str("---|\n");
    for row in &rows {
        if !results.iter().any(|r| r["scenario"] == row.scenario) {
            continue;
        }
        let _ = write!(out, "| {} |", row.label);
        let mut main = Vec::new();
        for (target, _) in &columns {
            let (cell, figure) = cell(results, target, row);
            main.push(figure);
            let _ = write!(out, " {cell} |");
        }
        let ratio = match (main[0], main[1]) {
            (Some(mist), Some(nats)) if nats > 0.0 => match row.figure {
                Figure::Latency(..) => format!("p99 {:.2}×", mist / nats),
                _ => format!("{:.2}×", mist / nats),
            },
            _ => "—".into(),
        };
        let _ = writeln!(out, " {ratio} |");
    }
    // Rounds: the most rows any one target has of one throughput scenario.
    let runs = rows
        .iter()
        .filter(|row| !matches!(row.figure, Figure::Memory))
        .flat_map(|row| {
            columns
                .iter()
                .map(|(target, _)| rows_of(results, target, row.scenario, row.paced).count())
        })
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "\nMedians of {runs} run(s) (min–max); 128-byte payloads unless the results say otherwise."
    );
    let short: Vec<String> = results
        .iter()
        .filter(|r| r["delivered_fraction"].as_f64().is_some_and(|f| f < 1.0))
        .map(|r| {
            format!(
                "{} {}{} delivered {:.4}",
                r["target"].as_str().unwrap_or("?"),
                r["scenario"].as_str().unwrap_or("?"),
                if r.get("paced").is_some() {
                    " (paced)"
                } else {
                    ""
                },
                r["delivered_fraction"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    if short.is_empty() {
        out.push_str("Every run delivered 100% of its messages.\n");
    } else {
        let _ = writeln!(out, "Runs that lost messages: {}.", short.join("; "));
    }
    let storms: Vec<&Value> = results
        .iter()
        .filter(|r| r["scenario"] == "storm")
        .collect();
    let failed: Vec<String> = storms
        .iter()
        .filter(|r| r["errors"].as_u64().is_some_and(|n| n > 0))
        .map(|r| {
            format!(
                "{} {} of {} (first: {})",
                r["target"].as_str().unwrap_or("?"),
                r["errors"],
                r["clients"],
                r["first_error"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            out,
            "Storm clients that failed to connect or subscribe: {}.",
            failed.join("; ")
        );
    } else if !storms.is_empty() {
        out.push_str("Every storm client connected and subscribed.\n");
    }
    out
}

/// A cell's text and the figure the ratio is taken of (rate, p99, KiB).
fn cell(results: &[Value], target: &str, row: &Row) -> (String, Option<f64>) {
    match row.figure {
        Figure::Rate => match spread(values(results, target, row, "delivered_per_s")) {
            Some((median, min, max)) => (
                format!(
                    "{} ({}–{})",
                    grouped(median.round() as u64),
                    short(min),
                    short(max)
                ),
                Some(median),
            ),
            None => ("—".into(), None),
        },
        Figure::Latency(p50, p99) => {
            let p50 = spread(values(results, target, row, p50));
            let p99 = spread(values(results, target, row, p99));
            match (p50, p99) {
                (Some((p50, ..)), Some((p99, ..))) => (latency(p50, p99), Some(p99)),
                _ => ("—".into(), None),
            }
        }
        Figure::Memory => match spread(values(results, target, row, "kib_per_conn")) {
            Some((median, min, max)) if min < max => {
                (format!("{median:.2} KiB ({min:.2}–{max:.2})"), Some(median))
            }
            Some((median, ..)) => (format!("{median:.2} KiB"), Some(median)),
            None => ("—".into(), None),
        },
        Figure::Millis(key) => match spread(values(results, target, row, key)) {
            Some((median, min, max)) if min < max => (
                format!("{} ms ({}–{})", millis(median), millis(min), millis(max)),
                Some(median),
            ),
            Some((median, ..)) => (format!("{} ms", millis(median)), Some(median)),
            None => ("—".into(), None),
        },
    }
}

/// `p50 / p99` in µs, or ms from 10 ms on.
fn latency(p50_us: f64, p99_us: f64) -> String {
    if p99_us >= 10_000.0 {
        format!("{:.1} / {:.1} ms", p50_us / 1000.0, p99_us / 1000.0)
    } else {
        format!(
            "{} / {} µs",
            grouped(p50_us.round() as u64),
            grouped(p99_us.round() as u64)
        )
    }
}

/// Milliseconds: `1234.5` → `1,235`, `12.34` → `12.3`.
fn millis(ms: f64) -> String {
    if ms >= 100.0 {
        grouped(ms.round() as u64)
    } else {
        format!("{ms:.1}")
    }
}

/// `5890000.0` → `5.89M`, `912000.0` → `912k`.
fn short(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// `1234567` → `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_gives_medians_spreads_and_ratios() {
        let mut results = Vec::new();
        for (mist, nats) in [
            (5_000_000.0, 2_000_000.0),
            (6_000_000.0, 3_000_000.0),
            (5_500_000.0, 2_500_000.0),
        ] {
            results.push(json!({"target":"mist","scenario":"fanout","subs":100,"delivered_per_s":mist,"delivered_fraction":1.0}));
            results.push(json!({"target":"nats","scenario":"fanout","subs":100,"delivered_per_s":nats,"delivered_fraction":1.0}));
        }
        results.push(json!({"target":"mist","scenario":"fanout","paced":true,"subs":10,"rate":20000,"lat_p50_us":283.0,"lat_p99_us":590.0,"delivered_fraction":1.0}));
        results.push(json!({"target":"nats","scenario":"fanout","paced":true,"subs":10,"rate":20000,"lat_p50_us":375.0,"lat_p99_us":1180.0,"delivered_fraction":0.5}));
        results.push(json!({"target":"mist","scenario":"conns","conns":2000,"kib_per_conn":2.73}));
        let table = table(&results);
        assert!(
            table.contains("| scenario | mist | nats-server | mist / nats |"),
            "{table}"
        );
        assert!(table.contains("| fanout 1→100, flood, delivered msgs/s | 5,500,000 (5.00M–6.00M) | 2,500,000 (2.00M–3.00M) | 2.20× |"), "{table}");
        assert!(table.contains("| paced 1→10 at 20,000 msgs/s, latency p50 / p99 | 283 / 590 µs | 375 / 1,180 µs | p99 0.50× |"), "{table}");
        assert!(table.contains("2.73 KiB"), "{table}");
        assert!(table.contains("Medians of 3 run(s)"), "{table}");
        assert!(
            table.contains("nats fanout (paced) delivered 0.5000"),
            "{table}"
        );
        assert!(!table.contains("pair"), "{table}");
        assert!(!table.contains("storm"), "{table}");
        assert!(!table.contains("Over TLS"), "{table}");
    }

    #[test]
    fn storms_and_transports_are_named() {
        let mut results = Vec::new();
        for (target, ms, errors) in [("mist", 850.0, 0), ("nats", 1700.0, 2)] {
            results.push(json!({"target":target,"transport":"tls","scenario":"storm","clients":10000,"subscribed":10000 - errors,"errors":errors,"first_error":"TLS handshake with 127.0.0.1:1: reset","storm_ms":ms,"rate":5000,"delivered_fraction":1.0,"lat_p50_us":300.0,"lat_p99_us":12000.0,"base_p50_us":100.0,"base_p99_us":200.0}));
        }
        let table = table(&results);
        assert!(table.starts_with("Over TLS:"), "{table}");
        assert!(
            table.contains("| scenario | mist | nats-server | mist / nats |"),
            "{table}"
        );
        assert!(table.contains("| storm: 10,000 clients connect and subscribe at once, ms until all are subscribed | 850 ms | 1,700 ms | 0.50× |"), "{table}");
        assert!(table.contains("| storm: a pair at 5,000 msgs/s, latency p50 / p99 before the storm | 100 / 200 µs | 100 / 200 µs | p99 1.00× |"), "{table}");
        assert!(table.contains("| storm: the same pair, latency p50 / p99 during the storm | 0.3 / 12.0 ms | 0.3 / 12.0 ms | p99 1.00× |"), "{table}");
        assert!(
            table.contains("failed to connect or subscribe: nats 2 of 10000 (first: TLS handshake"),
            "{table}"
        );
    }

    #[test]
    fn spreads_and_numbers() {
        assert_eq!(spread(vec![3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(vec![4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread(vec![]), None);
        assert_eq!(short(5_890_000.0), "5.89M");
        assert_eq!(short(912_000.0), "912k");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(latency(4_700.0, 10_600.0), "4.7 / 10.6 ms");
    }
}
