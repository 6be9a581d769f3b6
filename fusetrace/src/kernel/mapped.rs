//! A `BPF_F_MMAPABLE` array map's values mapped into user space, so a
//! pass over a large table costs a few milliseconds where a lookup
//! syscall per entry would cost most of a second (`slots.rs`: requests in
//! flight; `cells.rs`: histogram cells).
//!
//! Hand-rolled because aya 0.14 maps no map's values into user space; the
//! kernel allows it for arrays created with `BPF_F_MMAPABLE`.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use anyhow::{Result, bail};
use aya::maps::MapData;

/// `len` values of type `T`, shared with the kernel's programs, which write
/// them meanwhile: every access is volatile.
pub struct MappedArray<T> {
    values: NonNull<T>,
    len: usize,
    _map: MapData,
}

// SAFETY: the mapping is shared memory owned by this value; the kernel
// writes it regardless of which thread reads it.
unsafe impl<T> Send for MappedArray<T> {}

impl<T> MappedArray<T> {
    /// Maps `map`'s `len` values, read-only or (`writable`) read-write.
    pub fn new(map: MapData, len: usize, what: &str, writable: bool) -> Result<Self> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of the map's fd.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * size_of::<T>(),
                prot,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mapping the kernel's {what}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(MappedArray {
            values: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
            _map: map,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Value `i`'s address (`i` below [`Self::len`]), for volatile reads
    /// of one field at a time.
    pub fn at(&self, i: usize) -> *mut T {
        assert!(
            i < self.len,
            "index {i} past the mapped array's {}",
            self.len
        );
        // SAFETY: within the mapping.
        unsafe { self.values.as_ptr().add(i) }
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.values.as_ptr().cast(), self.len * size_of::<T>()) };
    }
}
