//! `trace`'s text line, built in one reused buffer.
//!
//! At tens of thousands of requests a second, formatting the line was most
//! of the tracer's CPU (a profile of `trace > /dev/null` on the metadata
//! storm: `core::fmt` with its float formatting, padding and per-character
//! writes took about half). Here integers go through `itoa`, durations are
//! fixed-point from their integer nanoseconds (no `f64`), padding is a
//! run of spaces, and lines reach the writer many at a time (the buffer
//! holds every line since the last [`Line::clear`]).
//!
//! Numbers are ASCII, so their cells skip the UTF-8 checks and character
//! counts text needs, and [`Line::fixed`] is inlined: its callers' units
//! are constants, which turns its divisions into multiplications.

/// Lines under construction; [`Line::clear`] keeps the capacity.
#[derive(Default)]
pub struct Line {
    buf: Vec<u8>,
}

/// Where a cell's text sits in its column.
#[derive(Clone, Copy)]
pub enum Align {
    Left,
    Right,
}

impl Line {
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes held (every line since the last clear).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// `text` padded to `width` characters (as `{:<w}` / `{:>w}` pad:
    /// by characters, never cut).
    pub fn cell(&mut self, text: &str, width: usize, align: Align) {
        let chars = if text.is_ascii() {
            text.len()
        } else {
            text.chars().count()
        };
        let pad = width.saturating_sub(chars);
        if let Align::Right = align {
            self.spaces(pad);
        }
        self.buf.extend_from_slice(text.as_bytes());
        if let Align::Left = align {
            self.spaces(pad);
        }
    }

    /// ASCII `text` (digits, a point, a dash) padded to `width`: one
    /// byte is one character.
    fn ascii_cell(&mut self, text: &[u8], width: usize, align: Align) {
        let pad = width.saturating_sub(text.len());
        if let Align::Right = align {
            self.spaces(pad);
        }
        self.buf.extend_from_slice(text);
        if let Align::Left = align {
            self.spaces(pad);
        }
    }

    /// A column separator.
    pub fn space(&mut self) {
        self.buf.push(b' ');
    }

    pub fn text(&mut self, text: &str) {
        self.buf.extend_from_slice(text.as_bytes());
    }

    pub fn newline(&mut self) {
        self.buf.push(b'\n');
    }

    fn spaces(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, b' ');
    }

    /// An integer, or `-` when there is none.
    #[inline]
    pub fn int<I: itoa::Integer>(&mut self, value: Option<I>, width: usize, align: Align) {
        match value {
            Some(v) => {
                let mut digits = itoa::Buffer::new();
                self.ascii_cell(digits.format(v).as_bytes(), width, align);
            }
            None => self.ascii_cell(b"-", width, align),
        }
    }

    /// `ns` in units of `unit` ns with `decimals` digits after the point,
    /// rounded half up on the exact integer (`f64` formatting rounds the
    /// binary approximation instead: 1.25 us shows as 1.3 here, 1.2 there).
    #[inline(always)]
    pub fn fixed(&mut self, ns: Option<u64>, unit: u64, decimals: u32, width: usize, align: Align) {
        let Some(ns) = ns else {
            return self.ascii_cell(b"-", width, align);
        };
        let step = unit / 10u64.pow(decimals);
        let scaled = ns / step + u64::from(ns % step >= step.div_ceil(2));
        let scale = 10u64.pow(decimals);
        // Built on the stack: "<int>.<frac>" fits in 20 + 1 + 9 bytes.
        let mut text = [0u8; 32];
        let mut digits = itoa::Buffer::new();
        let int = digits.format(scaled / scale).as_bytes();
        text[..int.len()].copy_from_slice(int);
        let mut n = int.len();
        if decimals > 0 {
            text[n] = b'.';
            n += 1;
            let mut frac = scaled % scale;
            for i in (0..decimals as usize).rev() {
                text[n + i] = b'0' + (frac % 10) as u8;
                frac /= 10;
            }
            n += decimals as usize;
        }
        self.ascii_cell(&text[..n], width, align);
    }
}

/// Text made by `core::fmt` or serde (the header, JSON lines) goes into
/// the same buffer.
impl std::io::Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(ns: u64, unit: u64, decimals: u32) -> String {
        let mut l = Line::default();
        l.fixed(Some(ns), unit, decimals, 0, Align::Left);
        String::from_utf8(l.bytes().to_vec()).unwrap()
    }

    #[test]
    fn fixed_point_rounds_half_up_and_carries() {
        assert_eq!(fixed(0, 1000, 1), "0.0");
        assert_eq!(fixed(49, 1000, 1), "0.0");
        assert_eq!(fixed(50, 1000, 1), "0.1");
        assert_eq!(fixed(1249, 1000, 1), "1.2");
        assert_eq!(fixed(1250, 1000, 1), "1.3");
        assert_eq!(fixed(999_950, 1000, 1), "1000.0");
        assert_eq!(fixed(u64::MAX, 1000, 1), "18446744073709551.6");
        assert_eq!(fixed(1_500_000_499, 1_000_000_000, 6), "1.500000");
        assert_eq!(fixed(1_500_000_500, 1_000_000_000, 6), "1.500001");
        assert_eq!(fixed(999_999_999, 1_000_000_000, 6), "1.000000");
        assert_eq!(fixed(7, 1000, 0), "0");
        assert_eq!(fixed(500, 1000, 0), "1");
    }

    #[test]
    fn cells_pad_by_characters_like_core_fmt() {
        let mut l = Line::default();
        l.cell("ab", 4, Align::Right);
        l.space();
        l.cell("é", 3, Align::Left);
        l.space();
        l.cell("toolong", 3, Align::Left);
        l.space();
        l.int(Some(-42i32), 5, Align::Right);
        l.space();
        l.int(None::<u32>, 3, Align::Right);
        l.space();
        l.fixed(None, 1000, 1, 4, Align::Right);
        let got = String::from_utf8(l.bytes().to_vec()).unwrap();
        let want = format!(
            "{:>4} {:<3} {:<3} {:>5} {:>3} {:>4}",
            "ab", "é", "toolong", -42, "-", "-"
        );
        assert_eq!(got, want);
    }
}
