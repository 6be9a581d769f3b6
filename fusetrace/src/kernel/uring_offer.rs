//! Whether this kernel offers FUSE over io_uring, and where root allows it.
//! Apart from the hook tables because recordings keep the offer: the
//! recording format (and its fuzz target, built without the rest of the
//! kernel layer) reads it.

/// Where root allows FUSE over io_uring (off by default; `Y` lets daemons
/// register rings).
pub const URING_PARAMETER: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether the kernel offers FUSE over io_uring (from
/// [`URING_PARAMETER`]; `diagnose` keeps it, and so do recordings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UringOffer {
    /// The kernel has no FUSE over io_uring.
    Absent,
    /// Built in, but `enable_uring` is N: daemons cannot register rings.
    Off,
    /// `enable_uring` is Y.
    On,
}

impl UringOffer {
    /// This kernel's offer now.
    pub fn read() -> UringOffer {
        match std::fs::read_to_string(URING_PARAMETER) {
            Err(_) => UringOffer::Absent,
            Ok(v) if v.trim() == "Y" => UringOffer::On,
            Ok(_) => UringOffer::Off,
        }
    }
}
