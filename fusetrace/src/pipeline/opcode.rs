//! FUSE opcode names for users: printing and parsing. The numbers and the
//! table live in `fusetrace_common::opcode`.

pub use fusetrace_common::opcode::*;

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
