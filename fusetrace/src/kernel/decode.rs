//! Ring buffer records to [`FuseEvent`]s (and the [`FileNames`] a send carried).

use fusetrace_common::{EventKind, FLAG_NAMES, FuseEvent, NAME_BYTES, NamedEvent};

/// The names a request's send carried (`fusetrace_common::NamedEvent`):
/// `first` the entry's name (RENAME: the old one), `second` RENAME's new
/// name; raw bytes, as the kernel passed them (any byte but NUL and `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileNames {
    pub first: Vec<u8>,
    pub second: Vec<u8>,
}

/// Decodes one ring buffer record; `None` for a record of the wrong size or
/// an unknown kind (a mismatched eBPF object, never expected).
pub fn decode(bytes: &[u8]) -> Option<FuseEvent> {
    if bytes.len() < std::mem::size_of::<FuseEvent>() {
        return None;
    }
    // SAFETY: FuseEvent is plain old data and the slice is long enough.
    let ev: FuseEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    EventKind::from_u8(ev.kind)?;
    Some(ev)
}

/// The names a [`NamedEvent`] record carries after its event (`ev` is
/// [`decode`]'s result for the same bytes); `None` for other records, or
/// one too short for the names it claims.
pub fn names(bytes: &[u8], ev: &FuseEvent) -> Option<FileNames> {
    if ev.flags & FLAG_NAMES == 0 {
        return None;
    }
    let head = std::mem::offset_of!(NamedEvent<1>, names);
    let lens = std::mem::offset_of!(NamedEvent<1>, len);
    let len = |i: usize| {
        let at = lens + 2 * i;
        let l = u16::from_ne_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]) as usize;
        Some(l.min(NAME_BYTES))
    };
    // Up to a NUL: kernels before 6.14 count the name's NUL in its size.
    let name = |i: usize| -> Option<Vec<u8>> {
        let start = head + i * NAME_BYTES;
        let raw = bytes.get(start..start + len(i)?)?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Some(raw[..end].to_vec())
    };
    // Records are cut to their names: a second name follows a whole first slot.
    let two = bytes.len() > head + NAME_BYTES;
    Some(FileNames {
        first: name(0)?,
        second: if two { name(1)? } else { Vec::new() },
    })
}

/// A task's command name from the kernel's fixed, NUL-padded buffer.
pub fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_rejects() {
        let ev = FuseEvent {
            kind: EventKind::Ended as u8,
            unique: 42,
            ..Default::default()
        };
        // SAFETY: viewing POD as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&ev as *const FuseEvent).cast::<u8>(),
                std::mem::size_of::<FuseEvent>(),
            )
        };
        assert_eq!(decode(bytes).unwrap().unique, 42);
        assert!(decode(&bytes[..10]).is_none());
        let mut bad = bytes.to_vec();
        let kind_at = std::mem::offset_of!(FuseEvent, kind);
        bad[kind_at] = 99;
        assert!(decode(&bad).is_none());
        assert_eq!(comm(b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0"), "cat");
    }
}
