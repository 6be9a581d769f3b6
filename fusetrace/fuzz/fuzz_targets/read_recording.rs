//! The recording reader on arbitrary bytes: it returns records, a cut-off
//! point or an error, and never panics, hangs or allocates without bound.
//! Whatever it accepts, written again, reads back the same.
#![no_main]

// Compiled on its own (it depends only on the decoder's file names, the
// kernel's io_uring offer, fusetrace-common, serde and crc32fast), so the fuzz build does not need
// the eBPF toolchain.
#[path = "../../src/record/format.rs"]
mod format;
#[path = "../../src/kernel/decode.rs"]
mod decode;
#[path = "../../src/kernel/uring_offer.rs"]
mod uring_offer;
mod kernel {
    pub(crate) use super::{decode, uring_offer};
}

use format::{Writer, read_all};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok((header, records, _cut)) = read_all(data) else {
        return;
    };
    let mut w = Writer::new(Vec::new(), &header).expect("header writes");
    for r in &records {
        w.write(r).expect("record writes");
    }
    let (header2, records2, cut2) = read_all(w.get_mut()).expect("own output reads back");
    assert_eq!(header, header2);
    assert_eq!(cut2, None);
    assert_eq!(format!("{records:?}"), format!("{records2:?}"));
});
