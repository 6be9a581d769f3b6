//! The export benchmark: `fusetrace report --perfetto` on recordings of
//! the metadata storm, a long one and one a tenth as long, against `report`
//! (the same replay into the stats table) on the same files. Conversion
//! time and peak RSS per request count show whether the export streams:
//! memory must not grow with the recording.

use std::{
    fmt::Write as _,
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{Bench, parsing::number_after, tracers::wait4_blocking};
use crate::Result;

/// One finished command: wall time, peak RSS and what it said on stderr.
struct Measured {
    seconds: f64,
    peak_rss_kib: u64,
    stderr: String,
}

fn measure(mut cmd: Command) -> Result<Measured> {
    let err = tempfile::NamedTempFile::new().map_err(|e| format!("temporary file: {e}"))?;
    let file = err.reopen().map_err(|e| format!("temporary file: {e}"))?;
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let pid = child.id();
    let (status, ru) = wait4_blocking(pid)?;
    let seconds = started.elapsed().as_secs_f64();
    // Reaped by wait4: keep std from waiting on it again.
    std::mem::forget(child);
    let stderr = fs::read_to_string(err.path()).unwrap_or_default();
    if status != 0 {
        return Err(format!("{cmd:?} failed ({status:#x}): {stderr}"));
    }
    Ok(Measured {
        seconds,
        peak_rss_kib: ru.ru_maxrss as u64,
        stderr,
    })
}

impl Bench {
    pub(crate) fn export(&self, long: Duration) -> Result<String> {
        eprintln!(
            "xtask: bench: export: recording {:.0} s and {:.1} s of the metadata storm",
            long.as_secs_f64(),
            long.as_secs_f64() / 10.0
        );
        let mut out = String::from(
            "\n### Perfetto export (`report --perfetto`) against `report` on the same recording\n\n\
             | recording | requests drawn | command | seconds | us/request | peak RSS MiB | output MiB | bytes/request |\n\
             | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for (name, d) in [("short", long / 10), ("long", long)] {
            let rec = self.scratch.join(format!("export-{name}.ftr"));
            self.record_metadata(&rec, d)?;
            let rec_mib = fs::metadata(&rec).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
            let pf = self.scratch.join(format!("export-{name}.pftrace"));
            // Interleaved, three times each; the median time, the largest RSS.
            let mut runs: Vec<(&str, Vec<Measured>)> =
                vec![("report", vec![]), ("report --perfetto", vec![])];
            for _ in 0..3 {
                for (what, samples) in runs.iter_mut() {
                    let mut cmd = Command::new(&self.fusetrace);
                    cmd.arg("report").arg(&rec);
                    if *what != "report" {
                        cmd.arg("--perfetto").arg(&pf);
                    }
                    samples.push(measure(cmd)?);
                }
            }
            // "wrote N requests as slices to ..."
            let drawn = number_after(&runs[1].1[0].stderr, "wrote ")
                .unwrap_or(0)
                .max(1);
            let pf_bytes = fs::metadata(&pf).map(|m| m.len()).unwrap_or(0);
            for (what, samples) in &runs {
                let mut t: Vec<f64> = samples.iter().map(|m| m.seconds).collect();
                t.sort_by(f64::total_cmp);
                let rss = samples.iter().map(|m| m.peak_rss_kib).max().unwrap_or(0);
                let (size, per) = if *what == "report" {
                    ("-".to_string(), "-".to_string())
                } else {
                    (
                        format!("{:.1}", pf_bytes as f64 / 1048576.0),
                        format!("{:.0}", pf_bytes as f64 / drawn as f64),
                    )
                };
                let _ = writeln!(
                    out,
                    "| {name} ({:.1} s, {rec_mib:.0} MiB) | {drawn} | `{what}` | {:.2} | {:.2} | {:.1} | {size} | {per} |",
                    d.as_secs_f64(),
                    t[1],
                    t[1] * 1e6 / drawn as f64,
                    rss as f64 / 1024.0,
                );
            }
            let _ = fs::remove_file(&pf);
            let _ = fs::remove_file(&rec);
        }
        Ok(out)
    }
}
