//! The daemon map (`fusetrace-ebpf/src/daemons.rs`): on kernels where the
//! daemon side is seen at syscalls, the programs return at once for every
//! process that holds no `/dev/fuse`, and a daemon that starts while
//! tracing runs must still be found from its first request on. bindfs is
//! the hard case: it mounts, then forks into the background, so the
//! process reading `/dev/fuse` did not exist when tracing began.

mod common;

use std::{fs, io::Write, process::Command};

use common::*;

#[test]
fn a_daemon_started_while_tracing_has_every_stage_from_its_init_on() {
    let _alone = tracing_alone();
    let src = Scratch::new("daemon-map-src");
    let mnt = Scratch::new("daemon-map-mnt");
    fs::write(src.path().join("hello"), b"hello\n").unwrap();
    // Every mount: this one does not exist yet.
    let tracer = Tracer::start(&["trace", "--format", "json"]);
    mount_bindfs(src.path(), mnt.path());
    let conn = connection_of(mnt.path());
    assert_eq!(fs::read(mnt.path().join("hello")).unwrap(), b"hello\n");
    let mut f = fs::File::create(mnt.path().join("new")).unwrap();
    f.write_all(b"data").unwrap();
    drop(f);
    assert_eq!(fs::read_dir(mnt.path()).unwrap().count(), 2);
    run_ok(Command::new("fusermount3").arg("-u").arg(mnt.path()));
    let traced = tracer.stop();
    assert_every_stage(
        &traced,
        &traced.on(conn),
        &[
            "INIT", "LOOKUP", "OPEN", "READ", "CREATE", "WRITE", "READDIR",
        ],
        "a bindfs started while tracing",
    );
    assert_nothing_lost(&traced.summary);
}

/// A daemon that closes `/dev/fuse` and writes another file at the same
/// descriptor: the kernel often hands that file the `struct file` the
/// closed one had (the slab's free list), so the map's recorded pointer
/// matches. Seen in the 7.3 guest as the reference daemon's closing
/// statistics taken for two replies. This test is that daemon: it mounts
/// on its own `/dev/fuse` descriptor, writes one reply the tracer must see
/// (to show its writes are watched), closes the descriptor, then writes
/// reply-shaped bytes to files opened at that descriptor.
#[test]
fn a_file_at_a_closed_dev_fuse_descriptor_is_not_taken_for_it() {
    // Alone also because it puts files at a descriptor it closed.
    let _alone = tracing_alone();
    let mnt = Scratch::new("daemon-map-reuse");
    let mut dev = OwnDevFuse::mount(mnt.path());
    let tracer = Tracer::start(&[
        "trace",
        "--format",
        "json",
        "--mount",
        mnt.path().to_str().unwrap(),
    ]);
    // Watched: a reply to no request, counted unmatched.
    dev.write_reply(0x7e57_0000);
    let fd = dev.close();
    let scratch = Scratch::new("daemon-map-reuse-files");
    let write_at_fd = |i: u64| assert_eq!(write_fd(fd, &reply_header(0x7e57_1000 + i)), 16);
    // The next file opened, at the lowest free descriptor: `fd` (unless
    // another thread took it); owned raw, as `fd` is replaced below.
    let first =
        std::os::fd::IntoRawFd::into_raw_fd(fs::File::create(scratch.path().join("f0")).unwrap());
    if first != fd {
        // SAFETY: descriptors this test owns; nothing else in the process
        // uses `fd` since `dev` closed it.
        unsafe {
            assert_eq!(libc::dup2(first, fd), fd);
            libc::close(first);
        }
    }
    write_at_fd(0);
    // More files opened and kept, each put at `fd` in turn and written
    // through it: one is likely to get the closed file's `struct file`
    // if the first did not (once the slab's current page is used up).
    let mut kept = Vec::new();
    for i in 1..400u64 {
        let f = fs::File::create(scratch.path().join(format!("f{i}"))).unwrap();
        // SAFETY: as above; `fd` is held, so `f` is elsewhere.
        assert_eq!(
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&f), fd) },
            fd
        );
        write_at_fd(i);
        kept.push(f);
    }
    // SAFETY: as above.
    unsafe { libc::close(fd) };
    drop(dev);
    let traced = tracer.stop();
    assert_eq!(
        traced.summary["tracker"]["unmatched_replies"].as_u64(),
        Some(1),
        "the one reply written to /dev/fuse, and none of the files' writes: {}",
        traced.summary
    );
}

/// A `struct fuse_out_header` answering `unique` (16 bytes).
fn reply_header(unique: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&16u32.to_ne_bytes());
    h[8..].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// This process as a FUSE daemon: `/dev/fuse` opened and mounted at a
/// scratch directory, its INIT answered with an error (the connection is
/// then set up and refuses every request: none is sent). Unmounted on
/// drop.
struct OwnDevFuse {
    fd: Option<std::os::fd::OwnedFd>,
    mount: std::path::PathBuf,
}

impl OwnDevFuse {
    fn mount(at: &std::path::Path) -> OwnDevFuse {
        use std::os::fd::{AsRawFd, OwnedFd};
        let dev: OwnedFd = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap()
            .into();
        let target = std::ffi::CString::new(at.to_str().unwrap()).unwrap();
        let data = std::ffi::CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            dev.as_raw_fd()
        ))
        .unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"fusetrace-test".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount: {}", std::io::Error::last_os_error());
        let own = OwnDevFuse {
            fd: Some(dev),
            mount: at.to_path_buf(),
        };
        // The INIT the mount sent, answered ENOSYS.
        let mut buf = vec![0u8; 1 << 17];
        let n = read_fd(own.raw(), &mut buf);
        assert!(n >= 40, "INIT read {n} bytes");
        let unique = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
        let mut reply = reply_header(unique);
        reply[4..8].copy_from_slice(&(-libc::ENOSYS).to_ne_bytes());
        let w = write_fd(own.raw(), &reply);
        assert_eq!(w, 16, "INIT reply: {}", std::io::Error::last_os_error());
        own
    }

    fn raw(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(self.fd.as_ref().expect("open"))
    }

    /// Writes a reply to no request (the kernel refuses it: ENOENT).
    fn write_reply(&self, unique: u64) {
        let w = write_fd(self.raw(), &reply_header(unique));
        assert_eq!(w, -1, "a reply to no request is refused");
    }

    /// Closes `/dev/fuse` (the connection is aborted); its descriptor.
    fn close(&mut self) -> i32 {
        let fd = self.raw();
        drop(self.fd.take());
        fd
    }
}

fn read_fd(fd: i32, buf: &mut [u8]) -> isize {
    // SAFETY: a read into a buffer we own.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

/// write(2) of `bytes` to `fd`, as it is (no retry): its result.
fn write_fd(fd: i32, bytes: &[u8]) -> isize {
    // SAFETY: a write of a buffer we own.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) }
}

impl Drop for OwnDevFuse {
    fn drop(&mut self) {
        drop(self.fd.take());
        let target = std::ffi::CString::new(self.mount.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}
