//! Reading what the load generator and the tracers print.

use super::*;

/// "load: metadata 8863 ops in 1.000 s: 8861.0 ops/s (0 errors)"
pub(crate) fn parse_load(text: &str) -> Result<(f64, f64, u64)> {
    let line = text
        .lines()
        .find(|l| l.starts_with("load:"))
        .ok_or_else(|| format!("no result line from fusetrace load: {text}"))?;
    let rate = line
        .split(": ")
        .nth(2)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("cannot parse `{line}`"))?;
    let secs = line
        .split(" ops in ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let errors = number_after(line, "(").unwrap_or(0);
    Ok((rate, secs, errors))
}

pub(crate) fn number_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

pub(crate) fn number_before(text: &str, marker: &str) -> Option<u64> {
    let head = &text[..text.find(marker)?];
    let digits: String = head
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

/// The first number under `key` (depth first) in the JSON objects of
/// `text`, one per line (what `fusetrace ... --format json` prints).
pub(crate) fn json_f64(text: &str, key: &str) -> Option<f64> {
    fn find(v: &serde_json::Value, key: &str) -> Option<f64> {
        match v {
            serde_json::Value::Object(m) => m
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .or_else(|| m.values().find_map(|v| find(v, key))),
            serde_json::Value::Array(a) => a.iter().find_map(|v| find(v, key)),
            _ => None,
        }
    }
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| find(&v, key))
}

pub(crate) fn json_u64(text: &str, key: &str) -> Option<u64> {
    json_f64(text, key).map(|v| v as u64)
}
