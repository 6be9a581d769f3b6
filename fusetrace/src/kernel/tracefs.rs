//! tracefs: find or mount it, and read tracepoint record layouts from the
//! `format` files so no record offset is assumed. Only the classic
//! tracepoint hooks need it; where it is root's alone, they say which
//! capability reads it.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::kernel::privileges::{self, Cap};

const CANDIDATES: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// tracefs as this run can use it. Only classic tracepoints (a perf event
/// opened on the tracepoint's id, and its record's offsets) need it: the
/// tp_btf, kprobe and fentry hooks do not, so it is looked at once and its
/// trouble told only by the hooks that need it.
#[derive(Debug, Clone)]
pub enum Tracefs {
    Ready(PathBuf),
    /// Why not, in words for the user (naming the capability it lacks).
    Unusable(String),
}

impl Tracefs {
    /// Finds tracefs, mounting it at /sys/kernel/tracing when nothing is
    /// there and this process may mount.
    pub fn find() -> Tracefs {
        for dir in CANDIDATES {
            match std::fs::metadata(Path::new(dir).join("events")) {
                Ok(m) if m.is_dir() => return Tracefs::Ready(PathBuf::from(dir)),
                // Mounted, but its directory is root's alone (0700).
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Tracefs::Unusable(format!(
                        "classic tracepoints {}: their ids and record formats are in {dir}, which only root can read",
                        privileges::TRACEFS_ROOT_ONLY
                    ));
                }
                _ => {}
            }
        }
        if !privileges::has(Cap::SysAdmin) {
            return Tracefs::Unusable(format!(
                "tracefs is not mounted, and mounting it needs CAP_SYS_ADMIN: run `mount -t tracefs tracefs {}` as root",
                CANDIDATES[0]
            ));
        }
        let target = CString::new(CANDIDATES[0]).unwrap();
        let fstype = CString::new("tracefs").unwrap();
        // SAFETY: valid NUL-terminated strings, no data argument.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Tracefs::Unusable(format!(
                "tracefs is not mounted and mounting it failed ({err}): run `mount -t tracefs tracefs {}` as root",
                CANDIDATES[0]
            ));
        }
        Tracefs::Ready(PathBuf::from(CANDIDATES[0]))
    }

    /// Its root, or why it cannot be used.
    pub fn root(&self) -> Result<&Path> {
        match self {
            Tracefs::Ready(p) => Ok(p),
            Tracefs::Unusable(why) => bail!("{why}"),
        }
    }

    /// Whether the run lacks a capability for it (not tracefs missing).
    pub fn lacks_capability(reason: &str) -> bool {
        reason.contains(privileges::TRACEFS_ROOT_ONLY)
    }
}

/// Field offsets of one tracepoint's record.
#[derive(Debug, Clone)]
pub struct RecordFormat {
    fields: Vec<(String, u32)>,
}

impl RecordFormat {
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<RecordFormat> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "tracepoint {category}:{name} is not available ({})",
                path.display()
            )
        })?;
        Ok(Self::parse(&text))
    }

    pub fn exists(tracefs: &Path, category: &str, name: &str) -> bool {
        tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format")
            .exists()
    }

    /// Parses lines like `field:uint64_t unique; offset:16; size:8; signed:0;`
    /// (tab separated).
    pub fn parse(text: &str) -> RecordFormat {
        let fields = text
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                let decl = line.strip_prefix("field:")?.split(';').next()?;
                let name = decl.split_whitespace().last()?;
                // Arrays are declared as `char comm[16]`.
                let name = name.split('[').next()?.to_string();
                let offset = line
                    .split(';')
                    .find_map(|part| part.trim().strip_prefix("offset:"))?
                    .parse()
                    .ok()?;
                Some((name, offset))
            })
            .collect();
        RecordFormat { fields }
    }

    pub fn offset(&self, field: &str) -> Result<u32> {
        self.fields
            .iter()
            .find(|(n, _)| n == field)
            .map(|(_, o)| *o)
            .with_context(|| format!("tracepoint record has no field `{field}`"))
    }

    /// Offset of the n-th field after the common ones (syscall arguments).
    pub fn nth_argument(&self, n: usize) -> Result<u32> {
        self.fields
            .iter()
            .filter(|(name, _)| !name.starts_with("common_") && name != "__syscall_nr")
            .nth(n)
            .map(|(_, o)| *o)
            .with_context(|| format!("tracepoint record has no argument {n}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND: &str = "name: fuse_request_send
ID: 1293
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:dev_t connection;\toffset:8;\tsize:4;\tsigned:0;
\tfield:uint64_t unique;\toffset:16;\tsize:8;\tsigned:0;
\tfield:enum fuse_opcode opcode;\toffset:24;\tsize:4;\tsigned:0;
\tfield:uint32_t len;\toffset:28;\tsize:4;\tsigned:0;

print fmt: \"connection %u\"";

    #[test]
    fn parses_fuse_send_format() {
        let f = RecordFormat::parse(SEND);
        assert_eq!(f.offset("connection").unwrap(), 8);
        assert_eq!(f.offset("unique").unwrap(), 16);
        assert_eq!(f.offset("opcode").unwrap(), 24);
        assert_eq!(f.offset("len").unwrap(), 28);
        assert!(f.offset("error").is_err());
        assert_eq!(f.nth_argument(1).unwrap(), 16);
    }

    #[test]
    fn syscall_arguments_skip_nr() {
        let text = "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:char * buf;\toffset:24;\tsize:8;\tsigned:0;
\tfield:size_t count;\toffset:32;\tsize:8;\tsigned:0;";
        let f = RecordFormat::parse(text);
        assert_eq!(f.nth_argument(0).unwrap(), 16);
        assert_eq!(f.nth_argument(2).unwrap(), 32);
        assert_eq!(f.offset("buf").unwrap(), 24);
    }
}
