//! Parsers for the human-friendly quantities on the command line: durations
//! (`5ms`, `200us`, `1.5s`) and byte sizes (`4096`, `64K`, `4MiB`).

use std::time::Duration;

const DURATION_FORM: &str = "expected a number of seconds or a number with a unit, \
     e.g. 2, 500us, 5ms, 2s (units: ns, us, ms, s, m, h)";

/// Parses a duration: `10ns`, `200us` (or `µs`), `5ms`, `1.5s`, `2m`,
/// `1h`; a bare number is seconds (`5`, `0.5`), as BCC's tools take it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let nanos_per_unit: f64 = match unit.trim() {
        "" => 1e9,
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        _ => return Err(format!("invalid duration `{text}`: {DURATION_FORM}")),
    };
    if number.is_empty() || number == "." {
        return Err(format!("invalid duration `{text}`: {DURATION_FORM}"));
    }
    // Integers are converted exactly; decimals go through f64.
    if let Ok(n) = number.parse::<u64>() {
        let nanos = u128::from(n) * nanos_per_unit as u128;
        return u64::try_from(nanos)
            .map(Duration::from_nanos)
            .map_err(|_| format!("duration `{text}` is too large"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration `{text}`: {DURATION_FORM}"))?;
    let nanos = (value * nanos_per_unit).round();
    if !nanos.is_finite() || nanos >= u64::MAX as f64 {
        return Err(format!("duration `{text}` is too large"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

const BYTES_FORM: &str = "expected a byte count such as 4096, 64K, 4MiB or 1G \
     (K/M/G are powers of 1024)";

/// Parses a byte count: a plain number of bytes, or a number with a binary
/// suffix `K`/`KiB`/`KB`, `M`/`MiB`/`MB`, `G`/`GiB`/`GB` (all powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size `{text}`: {BYTES_FORM}")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid size `{text}`: {BYTES_FORM}"))?;
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

/// Formats a byte count as [`parse_bytes`] reads it back (`64K`, `100M`,
/// `1G`, or plain bytes).
pub fn format_bytes(n: u64) -> String {
    match n {
        0 => "0".to_string(),
        n if n.is_multiple_of(1 << 30) => format!("{}G", n >> 30),
        n if n.is_multiple_of(1 << 20) => format!("{}M", n >> 20),
        n if n.is_multiple_of(1 << 10) => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

/// Formats a duration compactly for messages (`2s`, `1500ms`, `40us`).
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        "0s".to_string()
    } else if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("10ns").unwrap(), Duration::from_nanos(10));
        assert_eq!(parse_duration("200us").unwrap(), Duration::from_micros(200));
        assert_eq!(parse_duration("200µs").unwrap(), Duration::from_micros(200));
        assert_eq!(parse_duration("5ms").unwrap(), Duration::from_millis(5));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration(" 2s ").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(
            parse_duration("0.25ms").unwrap(),
            Duration::from_micros(250)
        );
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("0ms").unwrap(), Duration::ZERO);
    }

    #[test]
    fn a_bare_number_is_seconds() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in [
            "",
            "ms",
            "5 parsecs",
            "5sec",
            "-5ms",
            ".ms",
            "1.2.3s",
            "5Ms",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.contains("invalid duration") && err.contains("5ms"),
                "{bad}: {err}"
            );
        }
        assert!(
            parse_duration("99999999999999h")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("64K").unwrap(), 65536);
        assert_eq!(parse_bytes("64kib").unwrap(), 65536);
        assert_eq!(parse_bytes("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_bytes("4M").unwrap(), 4 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        for n in [0, 1000, 64 << 10, 100 << 20, 3 << 30, (1 << 20) + 1] {
            assert_eq!(parse_bytes(&format_bytes(n)).unwrap(), n);
        }
        assert_eq!(format_bytes(100 << 20), "100M");
        assert!(parse_bytes("4X").unwrap_err().contains("invalid size"));
        assert!(parse_bytes("K").unwrap_err().contains("invalid size"));
        assert!(parse_bytes("-1").unwrap_err().contains("invalid size"));
        assert!(
            parse_bytes("99999999999999999G")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn formatting() {
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_micros(40)), "40us");
        assert_eq!(format_duration(Duration::from_nanos(7)), "7ns");
        for d in ["3s", "250ms", "40us", "9ns"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
    }
}
