//! FUSE opcode names for users: printing and parsing. The numbers and the
//! table live in `fusetrace_common::opcode`.

pub use fusetrace_common::opcode::*;

/// Names of the opcodes below this number, by number: `trace` names
/// every request, and a search of [`OPCODES`] was a loop per line.
const BY_NUMBER_LEN: usize = 64;
static BY_NUMBER: [Option<&str>; BY_NUMBER_LEN] = {
    let mut t = [None; BY_NUMBER_LEN];
    let mut i = 0;
    while i < OPCODES.len() {
        let (n, s) = OPCODES[i];
        // The first entry for a number wins, as `find` would have it.
        if (n as usize) < BY_NUMBER_LEN && t[n as usize].is_none() {
            t[n as usize] = Some(s);
        }
        i += 1;
    }
    t
};

/// The opcode's name, when the table knows it.
pub fn known(opcode: u32) -> Option<&'static str> {
    match BY_NUMBER.get(opcode as usize) {
        Some(name) => *name,
        None => OPCODES.iter().find(|(n, _)| *n == opcode).map(|(_, s)| *s),
    }
}

/// The opcode's name, or its number for opcodes newer than this table.
pub fn name(opcode: u32) -> String {
    known(opcode)
        .map(str::to_string)
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
        for n in 0..5000 {
            let searched = OPCODES.iter().find(|(o, _)| *o == n).map(|(_, s)| *s);
            assert_eq!(known(n), searched, "opcode {n}");
        }
        assert!(parse("REED").unwrap_err().contains("unknown FUSE opcode"));
    }
}
