//! The capabilities fusetrace runs with, and the one-line errors that name
//! a missing one and what needs it (README "Requirements" has the table).
//!
//! Read from the effective set (`CapEff` in /proc/self/status) rather than
//! guessed from the uid: root without CAP_BPF (a container) is refused the
//! same way as a user without it, and a user holding the capabilities is
//! not sent to sudo.

use anyhow::{Result, bail};

/// Capability numbers (linux/capability.h) fusetrace asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    DacReadSearch = 2,
    SysAdmin = 21,
    SysResource = 24,
    Perfmon = 38,
    Bpf = 39,
}

impl Cap {
    pub fn name(self) -> &'static str {
        match self {
            Cap::DacReadSearch => "CAP_DAC_READ_SEARCH",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::SysResource => "CAP_SYS_RESOURCE",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::Bpf => "CAP_BPF",
        }
    }
}

/// The effective capability set, as a bit mask.
fn effective() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Whether the effective set holds `cap`.
pub fn has(cap: Cap) -> bool {
    effective() & (1 << cap as u64) != 0
}

/// How the README tells to grant capabilities, for the error lines.
const GRANT: &str = "run as root or grant them (`setpriv --inh-caps=+... --ambient-caps=+...`, `setcap cap_bpf,cap_perfmon+ep`, or systemd's AmbientCapabilities=); README \"Requirements\" lists each command's set";

/// Loading and attaching the kernel programs: CAP_BPF and CAP_PERFMON
/// (or CAP_SYS_ADMIN, which kernels before 5.8 ask for instead).
pub fn require_bpf() -> Result<()> {
    require_bpf_in(effective())
}

fn require_bpf_in(eff: u64) -> Result<()> {
    let held = |cap: Cap| eff & (1 << cap as u64) != 0;
    if held(Cap::SysAdmin) || (held(Cap::Bpf) && held(Cap::Perfmon)) {
        return Ok(());
    }
    let missing: Vec<&str> = [Cap::Bpf, Cap::Perfmon]
        .into_iter()
        .filter(|c| !held(*c))
        .map(Cap::name)
        .collect();
    bail!(
        "loading the kernel programs needs CAP_BPF and CAP_PERFMON (missing: {}): {GRANT}",
        missing.join(", ")
    )
}

/// The line for an EPERM from bpf(2) although the capabilities are held:
/// what else the kernel may refuse for.
pub fn bpf_refused(memlock: Option<&str>) -> String {
    match memlock {
        Some(why) => why.to_string(),
        None => "the kernel refused to load the programs (EPERM) although CAP_BPF and CAP_PERFMON are held: a lockdown LSM, an LSM policy or a seccomp filter forbids bpf(2)".into(),
    }
}

/// What a classic tracepoint (perf event by tracefs id) needs when tracefs
/// is readable by root only: read with CAP_DAC_READ_SEARCH.
pub const TRACEFS_ROOT_ONLY: &str = "need CAP_DAC_READ_SEARCH";

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (later ones to
/// the memory cgroup): there, and only there, the limit is raised, which
/// above the hard limit needs CAP_SYS_RESOURCE. Returns the line to give if
/// loading then fails with EPERM.
pub fn raise_memlock_if_needed(release: Option<&str>) -> Option<String> {
    if !release.is_some_and(charges_memlock) {
        return None;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return None;
    }
    // Without CAP_SYS_RESOURCE: as far as the hard limit goes.
    let soft_to_hard = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: a valid rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &soft_to_hard) };
    Some(format!(
        "this kernel (before 5.11) charges BPF maps to RLIMIT_MEMLOCK, {} KiB here, and raising it needs CAP_SYS_RESOURCE: grant it, or raise the limit (`ulimit -l unlimited`, LimitMEMLOCK=infinity)",
        limit.rlim_max / 1024
    ))
}

/// Whether kernel `release` (`uname -r`) charges BPF maps to
/// RLIMIT_MEMLOCK: before 5.11.
fn charges_memlock(release: &str) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) < (5, 11)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_missing_capability() {
        let bpf = 1 << Cap::Bpf as u64;
        let perfmon = 1 << Cap::Perfmon as u64;
        assert!(require_bpf_in(bpf | perfmon).is_ok());
        assert!(require_bpf_in(1 << Cap::SysAdmin as u64).is_ok());
        let err = require_bpf_in(perfmon).unwrap_err().to_string();
        assert!(err.contains("(missing: CAP_BPF)"), "{err}");
        let err = require_bpf_in(0).unwrap_err().to_string();
        assert!(err.contains("(missing: CAP_BPF, CAP_PERFMON)"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn reads_cap_eff() {
        let status = "Name:\tx\nCapPrm:\t0000000000000001\nCapEff:\t000000c000000000\n";
        assert_eq!(
            parse_cap_eff(status),
            (1 << Cap::Bpf as u64) | (1 << Cap::Perfmon as u64)
        );
    }

    #[test]
    fn memlock_is_charged_before_5_11_only() {
        assert!(charges_memlock("5.10.0-28-amd64"));
        assert!(charges_memlock("4.19.0"));
        assert!(!charges_memlock("5.11.0"));
        assert!(!charges_memlock("6.18.0-rc1"));
        assert_eq!(raise_memlock_if_needed(Some("6.1.0")), None);
    }
}
