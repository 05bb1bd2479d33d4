//! How results are printed. A command's answer is a value that implements [`Render`]: its text
//! for people (aligned tables, `Key: value` lines) and its JSON for scripts (a serde shape) are
//! written side by side, next to the command in `commands/`, and [`Output::print`] prints one of
//! them as `--output` says, so commands do not branch on the format. JSON keys come out sorted.
//!
//! Also here: the formatting both forms share: times in UTC (RFC 3339), rupiah as `Rp 79.000`,
//! resources as `0.5 vCPU` and `512 MiB`, durations as `1h30m`, money in JSON.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

use kapal::proto::v1::Money;

use crate::args::Output;

/// What a command prints, as text for people and as JSON for scripts, both from one value: a
/// command builds the value and hands it to [`Output::print`], which picks the form.
pub trait Render {
    /// The text: an aligned table or `Key: value` lines, each line ending with a newline.
    fn text(&self) -> String;
    /// The JSON: a serde shape whose field names are the JSON keys.
    fn json(&self) -> impl Serialize;
}

impl Output {
    /// Prints `r` on stdout: its text, or its JSON pretty-printed.
    pub fn print(self, r: &impl Render) -> anyhow::Result<()> {
        match self {
            Output::Table => print!("{}", r.text()),
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&json_value(r)?).context("cannot encode JSON")?
            ),
        }
        Ok(())
    }

    /// Prints `r` at once, for a stream read as it comes: its text, or its JSON on one line.
    pub fn print_line(self, r: &impl Render) -> anyhow::Result<()> {
        match self {
            Output::Table => print!("{}", r.text()),
            Output::Json => println!("{}", json_value(r)?),
        }
        let _ = std::io::stdout().flush();
        Ok(())
    }

    /// Prints a progress line: on stdout for tables, on stderr with JSON (stdout stays JSON).
    pub fn progress(self, line: &str) {
        match self {
            Output::Table => println!("{line}"),
            Output::Json => eprintln!("{line}"),
        }
    }
}

/// `r`'s JSON as a [`Value`], whose keys come out sorted, as `--output json` has always
/// printed them.
fn json_value(r: &impl Render) -> anyhow::Result<Value> {
    serde_json::to_value(r.json()).context("cannot encode JSON")
}

/// `r`'s JSON, for tests.
#[cfg(test)]
pub fn json_of(r: &impl Render) -> Value {
    json_value(r).expect("JSON")
}

/// Money in JSON: `{"amount": 79000, "currency": "IDR", "display": "Rp 79.000"}`.
#[derive(Serialize)]
pub struct MoneyJson<'a> {
    amount: i64,
    currency: &'a str,
    display: String,
}

/// [`MoneyJson`], or `null` for none.
pub fn money_json(m: Option<&Money>) -> Option<MoneyJson<'_>> {
    m.map(|m| MoneyJson {
        amount: m.amount,
        currency: &m.currency,
        display: money(Some(m)),
    })
}

/// Whole rupiah the Indonesian way: `Rp 79.000`, `Rp 1.250.000`, `Rp 0`.
fn format_rupiah(amount: i64) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    format!("{sign}Rp {}", group_thousands(amount.unsigned_abs()))
}

/// `1250000` -> `1.250.000`.
fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('.');
        }
        out.push(c);
    }
    out
}

/// Money for people: rupiah as `Rp 79.000`, any other currency as `1.000 USD`.
pub fn money(m: Option<&Money>) -> String {
    match m {
        None => "-".to_string(),
        Some(m) if m.currency.is_empty() || m.currency.eq_ignore_ascii_case("IDR") => {
            format_rupiah(m.amount)
        }
        Some(m) => {
            let sign = if m.amount < 0 { "-" } else { "" };
            format!(
                "{sign}{} {}",
                group_thousands(m.amount.unsigned_abs()),
                m.currency
            )
        }
    }
}

/// `500` -> `0.5 vCPU`, `2000` -> `2 vCPU`.
pub fn cpu(millis: u32) -> String {
    let (whole, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        format!("{whole} vCPU")
    } else {
        let frac = format!("{frac:03}");
        format!("{whole}.{} vCPU", frac.trim_end_matches('0'))
    }
}

/// `512` -> `512 MiB`, `2048` -> `2 GiB`.
pub fn memory(mib: u32) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

pub fn storage(gib: u32) -> String {
    format!("{gib} GiB")
}

/// Millicores as vCPU: `250` -> `0.25 vCPU` (negative amounts, which no one reports, as 0).
pub fn cpu_amount(millis: i64) -> String {
    cpu(u32::try_from(millis.max(0)).unwrap_or(u32::MAX))
}

/// Bytes in binary units with at most one decimal: `536870912` -> `512 MiB`,
/// `1610612736` -> `1.5 GiB`, `1000` -> `1000 B`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    let n = n.max(0);
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

/// ` (24%)` of `part` in `whole`, or nothing when `whole` is not positive.
pub fn percent(part: i64, whole: i64) -> String {
    if whole <= 0 {
        return String::new();
    }
    format!(" ({}%)", percent_value(part, whole))
}

/// `part` as a whole percentage of `whole` (rounded; `whole` > 0).
pub fn percent_value(part: i64, whole: i64) -> i64 {
    let (part, whole) = (i128::from(part), i128::from(whole));
    i64::try_from((part * 100 + whole / 2) / whole).unwrap_or(i64::MAX)
}

pub fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// `: <reason>` or nothing.
pub fn suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

pub fn to_utc(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

/// UTC, RFC 3339, whole seconds: `2025-01-02T03:04:05Z`; `-` for none.
pub fn rfc3339(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".to_string())
}

pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    rfc3339(t.and_then(to_utc))
}

pub fn now() -> String {
    rfc3339(Some(Utc::now()))
}

/// A time in JSON: UTC, RFC 3339, whole seconds, or `null` for none.
pub fn ts_json(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.and_then(to_utc).map(|t| rfc3339(Some(t)))
}

/// `INSTANCE_STATUS_READY` -> `READY`.
pub fn short<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

/// An aligned plain-text table: columns separated by two spaces, no trailing spaces.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate().take(columns) {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if i + 1 < columns {
                    line.push_str(&" ".repeat(w - cell.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `Key:   value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let pad = " ".repeat(width - k.chars().count());
        out.push_str(format!("{k}:{pad}  {v}").trim_end());
        out.push('\n');
    }
    out
}

/// A duration the way [`parse_duration`] reads it, e.g. `1h30m`, `10m`, `45s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rupiah_is_formatted_the_indonesian_way() {
        assert_eq!(format_rupiah(0), "Rp 0");
        assert_eq!(format_rupiah(999), "Rp 999");
        assert_eq!(format_rupiah(1_000), "Rp 1.000");
        assert_eq!(format_rupiah(79_000), "Rp 79.000");
        assert_eq!(format_rupiah(149_000), "Rp 149.000");
        assert_eq!(format_rupiah(1_250_000), "Rp 1.250.000");
        assert_eq!(format_rupiah(-5_000), "-Rp 5.000");
        assert_eq!(format_rupiah(i64::MIN), "-Rp 9.223.372.036.854.775.808");
        assert_eq!(money(Some(&kapal::wire::idr(79_000))), "Rp 79.000");
        assert_eq!(
            money(Some(&Money {
                amount: 12_500,
                currency: "USD".to_string()
            })),
            "12.500 USD"
        );
        assert_eq!(money(None), "-");
    }

    #[test]
    fn resources_read_like_a_person_would_say_them() {
        assert_eq!(cpu(500), "0.5 vCPU");
        assert_eq!(cpu(250), "0.25 vCPU");
        assert_eq!(cpu(1000), "1 vCPU");
        assert_eq!(cpu(1500), "1.5 vCPU");
        assert_eq!(memory(512), "512 MiB");
        assert_eq!(memory(2048), "2 GiB");
        assert_eq!(memory(1536), "1536 MiB");
        assert_eq!(storage(5), "5 GiB");
    }

    #[test]
    fn durations_print() {
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(5430)), "1h30m30s");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
    }

    #[test]
    fn tables_are_aligned_without_trailing_spaces() {
        let mut t = Table::new(&["ID", "STATUS", "NOTE"]);
        t.row(vec!["1".into(), "READY".into(), String::new()]);
        t.row(vec!["22".into(), "PROVISIONING".into(), "pulling".into()]);
        assert_eq!(
            t.render(),
            "ID  STATUS        NOTE\n1   READY\n22  PROVISIONING  pulling\n"
        );
        assert_eq!(
            key_values(&[("URL", "https://x".into()), ("Password", "p".into())]),
            "URL:       https://x\nPassword:  p\n"
        );
    }

    const GIB: i64 = 1024 * 1024 * 1024;
    const MIB: i64 = 1024 * 1024;

    #[test]
    fn bytes_and_percentages_read_like_a_person_would_say_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1000), "1000 B");
        assert_eq!(bytes(512 * MIB), "512 MiB");
        assert_eq!(bytes(3 * GIB / 2), "1.5 GiB");
        assert_eq!(bytes(5 * GIB), "5 GiB");
        assert_eq!(bytes(123_456_789), "117.7 MiB");
        assert_eq!(bytes(-1), "0 B");
        assert_eq!(cpu_amount(250), "0.25 vCPU");
        assert_eq!(cpu_amount(4000), "4 vCPU");
        assert_eq!(cpu_amount(-3), "0 vCPU");
        assert_eq!(percent(120, 500), " (24%)");
        assert_eq!(percent(1, 3), " (33%)");
        assert_eq!(percent(2, 3), " (67%)");
        assert_eq!(percent(5, 0), "", "no limit: no percentage");
        assert_eq!(percent_value(i64::MAX, 1), i64::MAX);
    }
}
