//! The soak's numbers, kept pure so they are unit-tested: reading a
//! `/metrics` body, /proc's status, stat and loadavg; the per-minute CSV;
//! the comparison of what a daemon served with what serve counted; the
//! summary's arithmetic (growth per hour as a least-squares slope).

use std::{collections::BTreeMap, time::Duration};

/// The kernel maps `fusetrace serve` exports the occupancy of
/// (`fusetrace_kernel_map_entries{map=...}`), in the CSV's column order.
pub(crate) const MAPS: [&str; 4] = ["AGG_SLOTS", "AGG_SENT", "AGG_HISTOGRAMS", "AGG_GENERATIONS"];

/// `--soak`'s duration: `90`, `90s`, `3m`, `1h`, `1.5h`.
pub(crate) fn soak_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.char_indices().last() {
        Some((i, 'h')) => (&text[..i], 3600.0),
        Some((i, 'm')) => (&text[..i], 60.0),
        Some((i, 's')) => (&text[..i], 1.0),
        _ => (text, 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .map(|n| Duration::from_secs_f64(n * unit))
        .ok_or_else(|| format!("`{text}` is not a duration, e.g. 3m, 1h or 90s"))
}

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// The samples of a text-format body (comments skipped; label values
/// unescaped: `\"`, `\\`, `\n`). A line it cannot read is skipped.
pub(crate) fn parse_metrics(body: &str) -> Vec<Series> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Series> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let value_text = if let Some(mut rest) = rest.strip_prefix('{') {
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                break after;
            }
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            rest = &after[end + 1..];
        }
    } else {
        rest
    };
    let value = value_text.split_whitespace().next()?.parse().ok()?;
    Some(Series {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Each map's (entries, capacity) from serve's occupancy gauges.
pub(crate) fn map_occupancy(series: &[Series]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for s in series {
        let Some(map) = s.labels.get("map") else {
            continue;
        };
        match s.name.as_str() {
            "fusetrace_kernel_map_entries" => {
                out.entry(map.clone()).or_default().0 = s.value as u64
            }
            "fusetrace_kernel_map_max_entries" => {
                out.entry(map.clone()).or_default().1 = s.value as u64
            }
            _ => {}
        }
    }
    out
}

/// Requests serve counted, in all (every mount it sees).
pub(crate) fn requests_counted(series: &[Series]) -> u64 {
    series
        .iter()
        .filter(|s| s.name == "fusetrace_requests_total")
        .map(|s| s.value as u64)
        .sum()
}

/// What serve counted on the mount at `mountpoint`: requests per opcode,
/// and those answered ENOSYS per opcode.
pub(crate) fn mount_counts(
    series: &[Series],
    mountpoint: &str,
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let (mut requests, mut enosys) = (BTreeMap::new(), BTreeMap::new());
    for s in series
        .iter()
        .filter(|s| s.labels.get("mountpoint").is_some_and(|m| m == mountpoint))
    {
        let op = s.labels.get("opcode").cloned().unwrap_or_default();
        match s.name.as_str() {
            "fusetrace_requests_total" => *requests.entry(op).or_default() += s.value as u64,
            "fusetrace_request_errors_total"
                if s.labels.get("errno").is_some_and(|e| e == "ENOSYS") =>
            {
                *enosys.entry(op).or_default() += s.value as u64
            }
            _ => {}
        }
    }
    (requests, enosys)
}

/// Whether serve counted what the daemon served (`served`: its counts
/// file, opcode -> requests), opcode by opcode: the daemon's total, or
/// where they differ. FORGETs are not queued requests (no end is seen);
/// an opcode the daemon does not implement is answered ENOSYS by its
/// library without being counted by it: counted only if all failed so.
pub(crate) fn compare_counts(
    served: &BTreeMap<String, u64>,
    counted: &BTreeMap<String, u64>,
    enosys: &BTreeMap<String, u64>,
) -> Result<u64, String> {
    let expected: BTreeMap<&str, u64> = served
        .iter()
        .filter(|(op, n)| !matches!(op.as_str(), "FORGET" | "BATCH_FORGET") && **n > 0)
        .map(|(op, n)| (op.as_str(), *n))
        .collect();
    let mut diffs = Vec::new();
    for (op, n) in counted {
        let want = expected.get(op.as_str()).copied().unwrap_or(0);
        if *n != want && !(want == 0 && enosys.get(op) == Some(n)) {
            diffs.push(format!("{op} served {want} counted {n}"));
        }
    }
    for (op, n) in &expected {
        if !counted.contains_key(*op) {
            diffs.push(format!("{op} served {n} counted 0"));
        }
    }
    if diffs.is_empty() {
        Ok(expected.values().sum())
    } else {
        Err(diffs.join(", "))
    }
}

/// Churned mounts that were not counted exactly, (mount point, what went
/// wrong), grouped by what went wrong (the mount point in it made `it`):
/// "failed: it did not mount: 20 (from /a/16 to /a/35)", in order of
/// first appearance.
pub(crate) fn group_failures(items: &[(String, String)]) -> Vec<String> {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for (mount, what) in items {
        let what = what.replace(mount.as_str(), "it");
        match groups.iter_mut().find(|g| g.0 == what) {
            Some(g) => g.1.push(mount),
            None => groups.push((what, vec![mount])),
        }
    }
    groups
        .into_iter()
        .map(|(what, mounts)| match mounts.as_slice() {
            [one] => format!("{what}: {one}"),
            [first, .., last] => {
                format!("{what}: {} (from {first} to {last})", mounts.len())
            }
            [] => unreachable!("a group has a mount"),
        })
        .collect()
}

/// A daemon's counts file (`{"LOOKUP": 12, ...}`).
pub(crate) fn parse_counts(json: &str) -> Result<BTreeMap<String, u64>, String> {
    serde_json::from_str(json).map_err(|e| format!("a daemon's counts file: {e}"))
}

/// A field of /proc/PID/status in KiB (`VmRSS:`).
pub(crate) fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime from /proc/PID/stat, in clock ticks. The fields are
/// counted after the command name's closing parenthesis (a name may hold
/// spaces and parentheses).
pub(crate) fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5); utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The program a descriptor's /proc/PID/fdinfo names (`prog_id:`): a
/// BPF program's or a BPF link's.
pub(crate) fn fdinfo_prog_id(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("prog_id:"))?
        .trim()
        .parse()
        .ok()
}

/// The 1-minute load average from /proc/loadavg.
pub(crate) fn loadavg1(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// One CSV row: one process at one minute, with the maps' entries then.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Row {
    pub(crate) elapsed_s: u64,
    pub(crate) process: String,
    pub(crate) pid: u32,
    pub(crate) rss_kib: u64,
    pub(crate) cpu_s: f64,
    pub(crate) load1: f64,
    /// Requests serve counted so far, every mount it sees.
    pub(crate) requests_counted: u64,
    pub(crate) scrapes_ok: u64,
    pub(crate) scrapes_failed: u64,
    pub(crate) mounts_churned: u64,
    /// Entries of each of [`MAPS`], from the last scrape (None: unknown).
    pub(crate) maps: [Option<u64>; MAPS.len()],
}

pub(crate) fn csv_header() -> String {
    let mut h = String::from(
        "elapsed_s,process,pid,rss_kib,cpu_s,load1,requests_counted,scrapes_ok,scrapes_failed,mounts_churned",
    );
    for m in MAPS {
        h.push(',');
        h.push_str(m);
    }
    h
}

pub(crate) fn csv_row(r: &Row) -> String {
    let mut line = format!(
        "{},{},{},{},{:.2},{:.2},{},{},{},{}",
        r.elapsed_s,
        r.process,
        r.pid,
        r.rss_kib,
        r.cpu_s,
        r.load1,
        r.requests_counted,
        r.scrapes_ok,
        r.scrapes_failed,
        r.mounts_churned
    );
    for m in &r.maps {
        line.push(',');
        if let Some(v) = m {
            line.push_str(&v.to_string());
        }
    }
    line
}

/// The least-squares slope of (seconds, value) points, per hour.
pub(crate) fn slope_per_hour(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(sxy / sxx * 3600.0)
}

/// One process's line in the summary: RSS at start, end and max, growth
/// per hour (whole run, and its second half, past warm-up), CPU.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProcessSummary {
    pub(crate) process: String,
    pub(crate) rss_start_kib: u64,
    pub(crate) rss_end_kib: u64,
    pub(crate) rss_max_kib: u64,
    pub(crate) growth_kib_per_hour: Option<f64>,
    pub(crate) growth_second_half_kib_per_hour: Option<f64>,
    pub(crate) cpu_s: f64,
}

/// Per process, in the order they first appear in `rows`.
pub(crate) fn summarize(rows: &[Row]) -> Vec<ProcessSummary> {
    let mut names: Vec<&str> = Vec::new();
    for r in rows {
        if !names.contains(&r.process.as_str()) {
            names.push(&r.process);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let mine: Vec<&Row> = rows.iter().filter(|r| r.process == name).collect();
            let points: Vec<(f64, f64)> = mine
                .iter()
                .map(|r| (r.elapsed_s as f64, r.rss_kib as f64))
                .collect();
            let half = mine.last().map_or(0, |r| r.elapsed_s) / 2;
            let late: Vec<(f64, f64)> = points
                .iter()
                .copied()
                .filter(|p| p.0 >= half as f64)
                .collect();
            ProcessSummary {
                process: name.to_string(),
                rss_start_kib: mine.first().map_or(0, |r| r.rss_kib),
                rss_end_kib: mine.last().map_or(0, |r| r.rss_kib),
                rss_max_kib: mine.iter().map(|r| r.rss_kib).max().unwrap_or(0),
                growth_kib_per_hour: slope_per_hour(&points),
                growth_second_half_kib_per_hour: slope_per_hour(&late),
                cpu_s: mine.last().map_or(0.0, |r| r.cpu_s),
            }
        })
        .collect()
}

/// Each map's most entries over the rows.
pub(crate) fn max_entries(rows: &[Row]) -> [Option<u64>; MAPS.len()] {
    let mut out: [Option<u64>; MAPS.len()] = [None; MAPS.len()];
    for r in rows {
        for (o, v) in out.iter_mut().zip(r.maps) {
            *o = match (*o, v) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
    }
    out
}

/// (min, median, max) of the load averages sampled.
pub(crate) fn load_range(rows: &[Row]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = rows.iter().map(|r| r.load1).collect();
    v.sort_by(f64::total_cmp);
    Some((*v.first()?, v[v.len() / 2], *v.last()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(soak_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(soak_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(soak_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(soak_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(soak_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(soak_duration("0").is_err());
        assert!(soak_duration("h").is_err());
        assert!(soak_duration("3d").is_err());
        assert!(soak_duration("").is_err());
    }

    const BODY: &str = r#"# HELP fusetrace_requests FUSE requests ended
# TYPE fusetrace_requests_total counter
fusetrace_requests_total{mountpoint="/tmp/a",fstype="fuse",daemon="fusetrace",device="0:50",opcode="LOOKUP"} 12
fusetrace_requests_total{mountpoint="/tmp/a",fstype="fuse",daemon="fusetrace",device="0:50",opcode="STATX"} 3
fusetrace_requests_total{mountpoint="/tmp/q \"x\"",fstype="fuse",daemon="d",device="0:51",opcode="READ"} 7
fusetrace_request_errors_total{mountpoint="/tmp/a",fstype="fuse",daemon="fusetrace",device="0:50",opcode="STATX",errno="ENOSYS"} 3
fusetrace_request_errors_total{mountpoint="/tmp/a",fstype="fuse",daemon="fusetrace",device="0:50",opcode="LOOKUP",errno="ENOENT"} 2
fusetrace_kernel_map_entries{map="AGG_SLOTS"} 4
fusetrace_kernel_map_entries{map="AGG_SENT"} 0
fusetrace_kernel_map_max_entries{map="AGG_SLOTS"} 262144
fusetrace_kernel_map_max_entries{map="AGG_SENT"} 65536
fusetrace_mounts_over_cap 0
not a sample line
"#;

    #[test]
    fn reads_a_metrics_body() {
        let s = parse_metrics(BODY);
        assert_eq!(s.len(), 10);
        assert_eq!(s[2].labels["mountpoint"], "/tmp/q \"x\"");
        assert_eq!(s[9].name, "fusetrace_mounts_over_cap");
        assert!(s[9].labels.is_empty());
        assert_eq!(requests_counted(&s), 22);
        let maps = map_occupancy(&s);
        assert_eq!(maps["AGG_SLOTS"], (4, 262_144));
        assert_eq!(maps["AGG_SENT"], (0, 65_536));
        let (requests, enosys) = mount_counts(&s, "/tmp/a");
        assert_eq!(
            requests,
            BTreeMap::from([("LOOKUP".into(), 12), ("STATX".into(), 3)])
        );
        assert_eq!(enosys, BTreeMap::from([("STATX".into(), 3)]));
    }

    #[test]
    fn compares_served_with_counted() {
        let served = BTreeMap::from([
            ("LOOKUP".to_string(), 12),
            ("FORGET".to_string(), 9),
            ("INIT".to_string(), 1),
            ("GETXATTR".to_string(), 0),
        ]);
        let enosys = BTreeMap::from([("STATX".to_string(), 3)]);
        let counted = BTreeMap::from([
            ("LOOKUP".to_string(), 12),
            ("INIT".to_string(), 1),
            ("STATX".to_string(), 3),
        ]);
        assert_eq!(compare_counts(&served, &counted, &enosys), Ok(13));
        let short = BTreeMap::from([("LOOKUP".to_string(), 11), ("STATX".to_string(), 3)]);
        assert_eq!(
            compare_counts(&served, &short, &enosys),
            Err("LOOKUP served 12 counted 11, INIT served 1 counted 0".into())
        );
        // STATX counted 4 but only 3 failed ENOSYS: not explained.
        let more = BTreeMap::from([
            ("LOOKUP".to_string(), 12),
            ("INIT".to_string(), 1),
            ("STATX".to_string(), 4),
        ]);
        assert!(compare_counts(&served, &more, &enosys).is_err());
        assert_eq!(
            parse_counts(r#"{"LOOKUP":12,"INIT":1}"#).unwrap()["LOOKUP"],
            12
        );
        assert!(parse_counts("nope").is_err());
    }

    #[test]
    fn groups_failures_by_what_went_wrong() {
        let item = |m: &str, what: &str| (m.to_string(), what.to_string());
        let items = [
            item("/t/c-16", "failed: the daemon did not mount /t/c-16"),
            item("/t/c-17", "failed: the daemon did not mount /t/c-17"),
            item("/t/c-18", "failed: GET /metrics: 503"),
            item("/t/c-19", "failed: the daemon did not mount /t/c-19"),
        ];
        assert_eq!(
            group_failures(&items),
            [
                "failed: the daemon did not mount it: 3 (from /t/c-16 to /t/c-19)",
                "failed: GET /metrics: 503: /t/c-18",
            ]
        );
        assert!(group_failures(&[]).is_empty());
    }

    #[test]
    fn reads_proc_files() {
        let status = "Name:\tfusetrace\nVmHWM:\t  9000 kB\nVmRSS:\t  8123 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(8123));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        // A command name with a space and a parenthesis.
        let stat =
            "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1000 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
        assert_eq!(stat_cpu_ticks("4242 (x) S 1"), None);
        let link = "pos:\t0\nflags:\t02000000\nmnt_id:\t16\nino:\t1057\nlink_type:\ttracing\nlink_id:\t31\nprog_tag:\t5f2a0d5e2bdfc4a1\nprog_id:\t118\nattach_type:\t24\n";
        assert_eq!(fdinfo_prog_id(link), Some(118));
        assert_eq!(fdinfo_prog_id("pos:\t0\nmap_type:\t2\nmap_id:\t7\n"), None);
        assert_eq!(loadavg1("1.52 0.98 0.70 2/300 4242\n"), Some(1.52));
    }

    fn row(t: u64, process: &str, rss: u64, maps: [Option<u64>; 4]) -> Row {
        Row {
            elapsed_s: t,
            process: process.into(),
            pid: 7,
            rss_kib: rss,
            cpu_s: t as f64 / 100.0,
            load1: 1.0 + t as f64 / 60.0,
            maps,
            ..Row::default()
        }
    }

    #[test]
    fn writes_csv_rows_matching_the_header() {
        let r = Row {
            elapsed_s: 60,
            process: "serve".into(),
            pid: 42,
            rss_kib: 9000,
            cpu_s: 1.234,
            load1: 2.5,
            requests_counted: 1000,
            scrapes_ok: 4,
            scrapes_failed: 1,
            mounts_churned: 1,
            maps: [Some(3), Some(0), None, Some(2)],
        };
        assert_eq!(
            csv_header(),
            "elapsed_s,process,pid,rss_kib,cpu_s,load1,requests_counted,scrapes_ok,scrapes_failed,mounts_churned,AGG_SLOTS,AGG_SENT,AGG_HISTOGRAMS,AGG_GENERATIONS"
        );
        assert_eq!(csv_row(&r), "60,serve,42,9000,1.23,2.50,1000,4,1,1,3,0,,2");
        assert_eq!(
            csv_row(&r).split(',').count(),
            csv_header().split(',').count()
        );
    }

    #[test]
    fn summarizes_rows() {
        // RSS +60 KiB a minute for serve: 3600 KiB an hour.
        let rows: Vec<Row> = (0..5)
            .flat_map(|m| {
                [
                    row(
                        m * 60,
                        "serve",
                        1000 + m * 60,
                        [Some(m), Some(0), None, Some(1)],
                    ),
                    row(m * 60, "top", 5000, [Some(m), Some(0), None, Some(1)]),
                ]
            })
            .collect();
        let s = summarize(&rows);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].process, "serve");
        assert_eq!(
            (s[0].rss_start_kib, s[0].rss_end_kib, s[0].rss_max_kib),
            (1000, 1240, 1240)
        );
        assert!((s[0].growth_kib_per_hour.unwrap() - 3600.0).abs() < 1e-6);
        assert!((s[0].growth_second_half_kib_per_hour.unwrap() - 3600.0).abs() < 1e-6);
        assert_eq!(s[1].growth_kib_per_hour, Some(0.0));
        assert_eq!(s[1].cpu_s, 2.4);
        assert_eq!(max_entries(&rows), [Some(4), Some(0), None, Some(1)]);
        assert_eq!(load_range(&rows), Some((1.0, 3.0, 5.0)));
        assert_eq!(slope_per_hour(&[(0.0, 1.0)]), None);
        assert_eq!(load_range(&[]), None);
    }
}
