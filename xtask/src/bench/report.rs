//! The Markdown tables of BENCHMARKS.md.

use super::*;

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub(crate) fn render_workload(
    target: Target,
    w: &Workload,
    samples: &BTreeMap<Variant, Vec<Sample>>,
) -> String {
    let mut out = String::new();
    let base = samples
        .get(&Variant::Untraced)
        .and_then(|s| median(s.iter().map(|x| x.ops_per_sec).collect()))
        .unwrap_or(0.0);
    let _ = writeln!(out, "\n### {}: {} ({})\n", target.name(), w.name, w.what);
    let _ = writeln!(
        out,
        "| variant | ops/s (median) | vs untraced | traced req/s | events/s | ring buffer drops | tracer CPU per request | tracer CPU share | tracer peak RSS |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (variant, runs) in samples {
        let ops = median(runs.iter().map(|s| s.ops_per_sec).collect()).unwrap_or(0.0);
        let ratio = if base > 0.0 { ops / base } else { 0.0 };
        let per_sec = |f: &dyn Fn(&Sample) -> Option<u64>| {
            median(
                runs.iter()
                    .filter_map(|s| f(s).map(|v| v as f64 / s.load_secs.max(1e-3)))
                    .collect(),
            )
        };
        let req_s = per_sec(&|s| s.requests);
        // In-kernel `stats` passes no events to user space.
        let ev_s = per_sec(&|s| s.events).filter(|v| *v > 0.0);
        let drops: Option<u64> = runs.iter().map(|s| s.ring_drops).sum();
        let cpu_per_req = median(
            runs.iter()
                .filter_map(|s| match (s.cpu_ns, s.requests) {
                    (Some(c), Some(r)) if r > 0 => Some(c as f64 / r as f64),
                    _ => None,
                })
                .collect(),
        );
        let cpu_share = median(
            runs.iter()
                .filter_map(|s| s.cpu_ns.map(|c| c as f64 / 1e9 / s.load_secs.max(1e-3)))
                .collect(),
        );
        let rss = median(
            runs.iter()
                .filter_map(|s| s.peak_rss_kib.map(|k| k as f64))
                .collect(),
        );
        let errors: u64 = runs.iter().map(|s| s.load_errors).sum();
        let dash = || "-".to_string();
        let _ = writeln!(
            out,
            "| {}{} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            variant.name(),
            if errors > 0 {
                format!(" ({errors} load errors)")
            } else {
                String::new()
            },
            ops,
            if *variant == Variant::Untraced {
                "1".to_string()
            } else {
                format!("{ratio:.3}")
            },
            req_s.map(|v| format!("{v:.0}")).unwrap_or_else(dash),
            ev_s.map(|v| format!("{v:.0}")).unwrap_or_else(dash),
            drops.map(|v| v.to_string()).unwrap_or_else(dash),
            cpu_per_req
                .map(|v| format!("{:.2} µs", v / 1000.0))
                .unwrap_or_else(dash),
            cpu_share
                .map(|v| format!("{:.1}%", v * 100.0))
                .unwrap_or_else(dash),
            rss.map(|v| format!("{:.1} MiB", v / 1024.0))
                .unwrap_or_else(dash),
        );
    }
    let overhead = |v: Variant| {
        samples
            .get(&v)
            .and_then(|s| median(s.iter().map(|x| x.ops_per_sec).collect()))
            .map(|ops| 1.0 - ops / base)
    };
    if let (Some(stats), Some(bpf)) = (overhead(Variant::Stats), overhead(Variant::Bpftrace)) {
        let _ = write!(
            out,
            "\noverhead: `stats` {:.1}%, bpftrace {:.1}%",
            stats * 100.0,
            bpf * 100.0
        );
        if let Some(stages) = overhead(Variant::StatsStages) {
            let _ = write!(out, ", `stats --stages` {:.1}%", stages * 100.0);
        }
        if let Some(four) = overhead(Variant::Bpftrace4) {
            let _ = write!(out, ", four-point bpftrace {:.1}%", four * 100.0);
        }
        if let Some(floor) = overhead(Variant::SyscallFloor) {
            // What four points at syscalls can reach at best: the two
            // points' cost and the syscall probes' alone, compounded.
            let _ = write!(
                out,
                ", syscall probes empty {:.1}% (four points at syscalls: at best {:.3} of untraced)",
                floor * 100.0,
                (1.0 - stats) * (1.0 - floor)
            );
        }
        out.push('\n');
    }
    out
}

pub(crate) fn machine_line() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = crate::output(Command::new("uname").arg("-r")).unwrap_or_default();
    let date =
        crate::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let bpftrace = crate::output(Command::new("bpftrace").arg("--version")).unwrap_or_default();
    format!(
        "Machine: {cpu}, {cpus} CPUs, {mem_gib:.0} GiB; kernel {kernel}; {date}; load average at start {}; {bpftrace}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}
