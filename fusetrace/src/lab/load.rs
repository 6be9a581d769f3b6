//! `fusetrace load`: a small load generator that drives a mounted file system
//! with one of a few syscall patterns, from one or more threads.
//!
//! Each job works in its own directory `load-<pid>-<job>/` of the mount, and
//! removes it at the end. An "op" is one syscall-level operation: one stat,
//! one write, one pread, or one whole create-write-close-unlink cycle.

use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use crate::units::{parse_bytes, parse_duration};

/// Operations when neither --ops nor --duration is given.
pub const DEFAULT_OPS: u64 = 1000;
/// Bytes written by one smallfiles cycle.
const SMALL_FILE: usize = 4096;
/// Files stat()ed by the metadata workload.
const META_FILES: usize = 16;

/// The syscall pattern.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// stat() of a set of files, with some create/unlink churn
    Metadata,
    /// sequential block writes to one file, rewritten from the start at --file-size
    Seqwrite,
    /// block preads at random offsets of a pre-filled file
    Randread,
    /// create, write 4 KiB, close, unlink
    Smallfiles,
    /// round-robin of the other four
    Mixed,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Metadata => "metadata",
            Workload::Seqwrite => "seqwrite",
            Workload::Randread => "randread",
            Workload::Smallfiles => "smallfiles",
            Workload::Mixed => "mixed",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `fusetrace load` options.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Mounted file system to load
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// Syscall pattern
    #[arg(long, value_enum, default_value_t = Workload::Mixed)]
    pub workload: Workload,
    /// Run for this long, e.g. 5s (instead of --ops)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "ops")]
    pub duration: Option<Duration>,
    /// Total operations across all jobs [default: 1000]
    #[arg(long, value_name = "N")]
    pub ops: Option<u64>,
    /// Parallel threads
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_jobs)]
    pub jobs: usize,
    /// File size for seqwrite/randread, e.g. 4MiB
    #[arg(long, value_name = "BYTES", default_value = "4MiB", value_parser = parse_bytes)]
    pub file_size: u64,
    /// Bytes per write/read
    #[arg(long, value_name = "BYTES", default_value = "4096", value_parser = parse_bytes)]
    pub block_size: u64,
}

fn parse_jobs(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("invalid job count `{text}`: expected 1..=1024")),
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub workload: Workload,
    /// Operations performed (failed ones included).
    pub ops: u64,
    /// Time spent running them (setup and cleanup excluded).
    pub elapsed: Duration,
    /// Operations that failed.
    pub errors: u64,
}

impl LoadReport {
    pub fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "load: {} {} ops in {:.3} s: {:.1} ops/s ({} errors)",
            self.workload,
            self.ops,
            self.elapsed.as_secs_f64(),
            self.ops_per_sec(),
            self.errors
        )
    }
}

/// Tiny xorshift64* generator: plenty for picking offsets.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

enum Budget {
    Ops { total: u64, claimed: AtomicU64 },
    Until(Instant),
}

impl Budget {
    /// Claims the right to perform one more operation.
    fn claim(&self) -> bool {
        match self {
            Budget::Ops { total, claimed } => claimed.fetch_add(1, Ordering::Relaxed) < *total,
            Budget::Until(deadline) => Instant::now() < *deadline,
        }
    }
}

struct Meta {
    files: Vec<PathBuf>,
    churn: PathBuf,
    step: u64,
}

struct Seq {
    file: File,
    pos: u64,
}

struct Rand {
    file: File,
    blocks: u64,
    buf: Vec<u8>,
}

/// One thread's files and position in its pattern.
struct Job {
    dir: PathBuf,
    workload: Workload,
    rng: XorShift,
    block: Vec<u8>,
    file_size: u64,
    step: u64,
    small: u64,
    meta: Option<Meta>,
    seq: Option<Seq>,
    rand: Option<Rand>,
}

const MIXED: [Workload; 4] = [
    Workload::Metadata,
    Workload::Seqwrite,
    Workload::Randread,
    Workload::Smallfiles,
];

impl Job {
    fn setup(args: &LoadArgs, index: usize) -> Result<Job> {
        let dir = args
            .mountpoint
            .join(format!("load-{}-{index}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let seed = u64::from(std::process::id()) << 32
            ^ (index as u64).wrapping_mul(0x9E37_79B9)
            ^ u64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos()),
            );
        let mut job = Job {
            dir,
            workload: args.workload,
            rng: XorShift::new(seed),
            block: (0..args.block_size).map(|i| (i % 251) as u8).collect(),
            file_size: args.file_size,
            step: 0,
            small: 0,
            meta: None,
            seq: None,
            rand: None,
        };
        if let Err(e) = job.prepare() {
            let _ = job.cleanup();
            return Err(e);
        }
        Ok(job)
    }

    fn uses(&self, w: Workload) -> bool {
        self.workload == w || self.workload == Workload::Mixed
    }

    fn prepare(&mut self) -> Result<()> {
        if self.uses(Workload::Metadata) {
            let mut files = Vec::with_capacity(META_FILES);
            for i in 0..META_FILES {
                let p = self.dir.join(format!("meta-{i:02}"));
                File::create(&p).with_context(|| format!("creating {}", p.display()))?;
                files.push(p);
            }
            let churn = self.dir.join("churn");
            self.meta = Some(Meta {
                files,
                churn,
                step: 0,
            });
        }
        if self.uses(Workload::Seqwrite) {
            let p = self.dir.join("seq");
            let file = File::options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)
                .with_context(|| format!("creating {}", p.display()))?;
            self.seq = Some(Seq { file, pos: 0 });
        }
        if self.uses(Workload::Randread) {
            let p = self.dir.join("rand");
            let mut f = File::create(&p).with_context(|| format!("creating {}", p.display()))?;
            let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
            let mut left = self.file_size;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                f.write_all(&chunk[..n])
                    .with_context(|| format!("filling {}", p.display()))?;
                left -= n as u64;
            }
            drop(f);
            let file = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
            let bs = self.block.len() as u64;
            self.rand = Some(Rand {
                file,
                blocks: self.file_size / bs,
                buf: vec![0; self.block.len()],
            });
        }
        Ok(())
    }

    /// Runs operations while the budget allows; returns (ops, errors).
    fn run(&mut self, budget: &Budget) -> (u64, u64) {
        let (mut ops, mut errors) = (0, 0);
        while budget.claim() {
            let kind = match self.workload {
                Workload::Mixed => MIXED[(self.step % 4) as usize],
                w => w,
            };
            self.step += 1;
            if self.one(kind).is_err() {
                errors += 1;
            }
            ops += 1;
        }
        (ops, errors)
    }

    fn one(&mut self, kind: Workload) -> std::io::Result<()> {
        match kind {
            Workload::Metadata => {
                let m = self.meta.as_mut().expect("metadata prepared");
                let step = m.step;
                m.step += 1;
                match step % 10 {
                    // Mostly stat; every tenth step pair creates and removes a file.
                    8 => File::create(&m.churn).map(drop),
                    9 => fs::remove_file(&m.churn),
                    _ => {
                        let i = self.rng.below(m.files.len() as u64) as usize;
                        fs::metadata(&m.files[i]).map(drop)
                    }
                }
            }
            Workload::Seqwrite => {
                let s = self.seq.as_mut().expect("seqwrite prepared");
                let bs = self.block.len() as u64;
                if s.pos + bs > self.file_size.max(bs) {
                    // Wrap around: start the file over.
                    s.file.set_len(0)?;
                    s.pos = 0;
                }
                s.file.write_all_at(&self.block, s.pos)?;
                s.pos += bs;
                Ok(())
            }
            Workload::Randread => {
                let r = self.rand.as_mut().expect("randread prepared");
                let offset = self.rng.below(r.blocks) * r.buf.len() as u64;
                r.file.read_at(&mut r.buf, offset).map(drop)
            }
            Workload::Smallfiles => {
                self.small += 1;
                let p = self.dir.join(format!("small-{}", self.small));
                let cycle = (|| {
                    let mut f = File::create(&p)?;
                    f.write_all(&[0x5a; SMALL_FILE])?;
                    drop(f);
                    fs::remove_file(&p)
                })();
                if cycle.is_err() {
                    let _ = fs::remove_file(&p);
                }
                cycle
            }
            Workload::Mixed => unreachable!("mixed is expanded by run()"),
        }
    }

    fn cleanup(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self); // close the files first
        fs::remove_dir_all(&dir).with_context(|| format!("cleaning up {}", dir.display()))
    }
}

/// Runs the load described by `args` against a mounted file system.
pub fn run(args: &LoadArgs) -> Result<LoadReport> {
    let shown = args.mountpoint.display();
    match fs::metadata(&args.mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{shown} is not a directory"),
        Err(e) => bail!("cannot use {shown}: {e}"),
    }
    if args.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    if args.block_size == 0 || args.block_size > 64 << 20 {
        bail!("--block-size must be 1..=64MiB");
    }
    let needs_file = matches!(
        args.workload,
        Workload::Seqwrite | Workload::Randread | Workload::Mixed
    );
    if needs_file && args.file_size < args.block_size {
        bail!(
            "--file-size ({}) must be at least --block-size ({})",
            args.file_size,
            args.block_size
        );
    }
    let budget_ops = match (args.duration, args.ops) {
        (Some(_), Some(_)) => bail!("give either --duration or --ops, not both"),
        (Some(_), None) => None,
        (None, ops) => Some(ops.unwrap_or(DEFAULT_OPS)),
    };

    let mut jobs = Vec::with_capacity(args.jobs);
    for index in 0..args.jobs {
        match Job::setup(args, index) {
            Ok(job) => jobs.push(job),
            Err(e) => {
                for job in jobs {
                    let _ = job.cleanup();
                }
                return Err(e);
            }
        }
    }

    let start = Instant::now();
    let budget = match budget_ops {
        Some(total) => Budget::Ops {
            total,
            claimed: AtomicU64::new(0),
        },
        None => Budget::Until(start + args.duration.unwrap_or_default()),
    };
    let results: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter_mut()
            .map(|job| {
                let budget = &budget;
                scope.spawn(move || job.run(budget))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 1)))
            .collect()
    });
    let elapsed = start.elapsed();

    let mut cleanup = Ok(());
    for job in jobs {
        if let Err(e) = job.cleanup()
            && cleanup.is_ok()
        {
            cleanup = Err(e);
        }
    }
    cleanup?;
    Ok(LoadReport {
        workload: args.workload,
        ops: results.iter().map(|r| r.0).sum(),
        elapsed,
        errors: results.iter().map(|r| r.1).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fusetrace-load-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn cli_defaults_and_conflicts() {
        let cli = Cli::try_parse_from(["x", "/mnt"]).unwrap();
        assert_eq!(cli.load.workload, Workload::Mixed);
        assert_eq!(cli.load.ops, None);
        assert_eq!(cli.load.duration, None);
        assert_eq!(cli.load.jobs, 1);
        assert_eq!(cli.load.file_size, 4 << 20);
        assert_eq!(cli.load.block_size, 4096);
        let cli = Cli::try_parse_from([
            "x",
            "/mnt",
            "--workload",
            "randread",
            "--duration",
            "5s",
            "--jobs",
            "4",
            "--file-size",
            "1M",
            "--block-size",
            "64K",
        ])
        .unwrap();
        assert_eq!(cli.load.workload, Workload::Randread);
        assert_eq!(cli.load.duration, Some(Duration::from_secs(5)));
        assert_eq!(
            (cli.load.jobs, cli.load.file_size, cli.load.block_size),
            (4, 1 << 20, 65536)
        );
        assert!(Cli::try_parse_from(["x", "/mnt", "--ops", "5", "--duration", "1s"]).is_err());
        assert!(Cli::try_parse_from(["x", "/mnt", "--duration", "5x"]).is_err());
        let bare = Cli::try_parse_from(["x", "/mnt", "--duration", "5"]).unwrap();
        assert_eq!(bare.load.duration, Some(Duration::from_secs(5)), "seconds");
        assert!(Cli::try_parse_from(["x", "/mnt", "--workload", "bogus"]).is_err());
        assert!(Cli::try_parse_from(["x", "/mnt", "--jobs", "0"]).is_err());
    }

    #[test]
    fn rng_spreads() {
        let mut r = XorShift::new(0);
        let mut seen = [false; 8];
        for _ in 0..1000 {
            seen[r.below(8) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn report_line() {
        let r = LoadReport {
            workload: Workload::Seqwrite,
            ops: 1000,
            elapsed: Duration::from_millis(500),
            errors: 2,
        };
        assert_eq!(r.ops_per_sec(), 2000.0);
        assert_eq!(
            r.to_string(),
            "load: seqwrite 1000 ops in 0.500 s: 2000.0 ops/s (2 errors)"
        );
    }

    #[test]
    fn every_workload_on_a_plain_directory() {
        let dir = scratch("plain");
        for workload in [
            Workload::Metadata,
            Workload::Seqwrite,
            Workload::Randread,
            Workload::Smallfiles,
            Workload::Mixed,
        ] {
            let args = LoadArgs {
                mountpoint: dir.clone(),
                workload,
                duration: None,
                ops: Some(203),
                jobs: 3,
                file_size: 64 << 10,
                block_size: 4096,
            };
            let report = run(&args).unwrap();
            assert_eq!(report.ops, 203, "{workload}");
            assert_eq!(report.errors, 0, "{workload}");
            assert_eq!(
                fs::read_dir(&dir).unwrap().count(),
                0,
                "{workload} left files"
            );
        }
        let args = LoadArgs {
            mountpoint: dir.clone(),
            workload: Workload::Smallfiles,
            duration: Some(Duration::from_millis(100)),
            ops: None,
            jobs: 2,
            file_size: 4096,
            block_size: 4096,
        };
        let report = run(&args).unwrap();
        assert!(report.ops > 0 && report.elapsed >= Duration::from_millis(100));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_arguments() {
        let dir = scratch("bad");
        let mut args = LoadArgs {
            mountpoint: dir.join("missing"),
            workload: Workload::Randread,
            duration: None,
            ops: None,
            jobs: 1,
            file_size: 1024,
            block_size: 4096,
        };
        assert!(run(&args).unwrap_err().to_string().contains("cannot use"));
        args.mountpoint = dir.clone();
        assert!(run(&args).unwrap_err().to_string().contains("--file-size"));
        args.file_size = 4096;
        args.ops = Some(1);
        args.duration = Some(Duration::from_secs(1));
        assert!(run(&args).unwrap_err().to_string().contains("not both"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
