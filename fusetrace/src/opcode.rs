//! FUSE opcode numbers and names (`enum fuse_opcode` in `<linux/fuse.h>`).

/// Every opcode the protocol defines, with the name users type (`--op READ`).
pub const OPCODES: &[(u32, &str)] = &[
    (1, "LOOKUP"),
    (2, "FORGET"),
    (3, "GETATTR"),
    (4, "SETATTR"),
    (5, "READLINK"),
    (6, "SYMLINK"),
    (8, "MKNOD"),
    (9, "MKDIR"),
    (10, "UNLINK"),
    (11, "RMDIR"),
    (12, "RENAME"),
    (13, "LINK"),
    (14, "OPEN"),
    (15, "READ"),
    (16, "WRITE"),
    (17, "STATFS"),
    (18, "RELEASE"),
    (20, "FSYNC"),
    (21, "SETXATTR"),
    (22, "GETXATTR"),
    (23, "LISTXATTR"),
    (24, "REMOVEXATTR"),
    (25, "FLUSH"),
    (26, "INIT"),
    (27, "OPENDIR"),
    (28, "READDIR"),
    (29, "RELEASEDIR"),
    (30, "FSYNCDIR"),
    (31, "GETLK"),
    (32, "SETLK"),
    (33, "SETLKW"),
    (34, "ACCESS"),
    (35, "CREATE"),
    (36, "INTERRUPT"),
    (37, "BMAP"),
    (38, "DESTROY"),
    (39, "IOCTL"),
    (40, "POLL"),
    (41, "NOTIFY_REPLY"),
    (42, "BATCH_FORGET"),
    (43, "FALLOCATE"),
    (44, "READDIRPLUS"),
    (45, "RENAME2"),
    (46, "LSEEK"),
    (47, "COPY_FILE_RANGE"),
    (48, "SETUPMAPPING"),
    (49, "REMOVEMAPPING"),
    (50, "SYNCFS"),
    (51, "TMPFILE"),
    (52, "STATX"),
    (4096, "CUSE_INIT"),
];

pub const FORGET: u32 = 2;
pub const INTERRUPT: u32 = 36;
pub const BATCH_FORGET: u32 = 42;

/// The opcode's name, or its number for opcodes newer than this table.
pub fn name(opcode: u32) -> String {
    OPCODES
        .iter()
        .find(|(n, _)| *n == opcode)
        .map(|(_, s)| (*s).to_string())
        .unwrap_or_else(|| format!("OP{opcode}"))
}

/// Parses `READ`, `read`, `FUSE_READ` or a number.
pub fn parse(text: &str) -> Result<u32, String> {
    let upper = text.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("FUSE_").unwrap_or(&upper);
    if let Some((n, _)) = OPCODES.iter().find(|(_, s)| *s == bare) {
        return Ok(*n);
    }
    if let Ok(n) = bare.parse::<u32>() {
        return Ok(n);
    }
    Err(format!(
        "unknown FUSE opcode `{text}`: use a name such as LOOKUP, GETATTR, READ, WRITE (see `fusetrace ops`)"
    ))
}

/// Requests the kernel sends without expecting a reply.
pub fn expects_reply(opcode: u32) -> bool {
    !matches!(opcode, FORGET | BATCH_FORGET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (n, s) in OPCODES {
            assert_eq!(parse(s).unwrap(), *n);
            assert_eq!(name(*n), *s);
        }
        assert_eq!(parse("fuse_read").unwrap(), 15);
        assert_eq!(name(999), "OP999");
        assert!(parse("REED").unwrap_err().contains("unknown FUSE opcode"));
    }
}
