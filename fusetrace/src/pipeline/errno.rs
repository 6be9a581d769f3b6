//! Error numbers for users: a request's error (`RequestLifecycle::error`,
//! a negative errno) named as the C library names it, and parsed back
//! from a name or a number (`fusetrace daemon --errno`).

/// Largest errno Linux defines (`EHWPOISON`); names are looked up below it.
const MAX_ERRNO: i32 = 133;

/// The errno's name (`ENOENT`), or its number. A negative value (as FUSE
/// carries errors) is named as its positive.
pub fn name(errno: i32) -> String {
    let errno = errno.saturating_abs();
    let name = format!("{:?}", nix::errno::Errno::from_raw(errno));
    if name.starts_with('E') && name != "EUNKNOWN" {
        name
    } else {
        errno.to_string()
    }
}

/// Parses `EIO`, `eio` or `5` into a positive errno.
pub fn parse(text: &str) -> Result<i32, String> {
    let upper = text.trim().to_ascii_uppercase();
    if let Ok(n) = upper.parse::<i32>()
        && (1..=MAX_ERRNO).contains(&n)
    {
        return Ok(n);
    }
    (1..=MAX_ERRNO)
        .find(|&n| name(n) == upper)
        .ok_or_else(|| format!("unknown errno `{text}`: use a name such as EIO, ENOSYS, EACCES, or a number 1..={MAX_ERRNO}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(name(2), "ENOENT");
        assert_eq!(name(-38), "ENOSYS");
        assert_eq!(name(103), "ECONNABORTED");
        assert_eq!(name(250), "250");
        assert_eq!(parse("ENOSYS"), Ok(38));
        assert_eq!(parse(" eacces "), Ok(13));
        assert_eq!(parse("5"), Ok(5));
        assert!(
            parse("EWHAT")
                .unwrap_err()
                .contains("unknown errno `EWHAT`")
        );
        assert!(parse("0").is_err() && parse("999").is_err() && parse("").is_err());
        for n in 1..=MAX_ERRNO {
            let shown = name(n);
            if shown.starts_with('E') {
                // Aliases (EWOULDBLOCK = EAGAIN) name the same number.
                assert_eq!(parse(&shown), Ok(n), "{shown}");
            }
        }
    }
}
