//! The helper process that holds requests in flight: threads blocked in a 1-byte pread().

use super::*;

/// `xtask bench --stall-helper FD N`: N threads, each blocked in one
/// 1-byte pread() of the inherited FUSE file FD until the connection
/// answers or aborts. Threads get 16 KiB stacks and no guard page (one
/// mapping each), so a process can hold tens of thousands of them.
pub(crate) fn stall_helper(args: &[String]) -> Result<()> {
    let [fd, n] = args else {
        return Err("usage: xtask bench --stall-helper FD THREADS".into());
    };
    let fd: libc::c_int = fd.parse().map_err(|_| "FD must be a number")?;
    let n: usize = n.parse().map_err(|_| "THREADS must be a number")?;
    extern "C" fn blocked_read(arg: *mut libc::c_void) -> *mut libc::c_void {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a local buffer.
        unsafe { libc::pread(arg as libc::c_int, (&mut byte as *mut u8).cast(), 1, 0) };
        std::ptr::null_mut()
    }
    let mut threads = Vec::with_capacity(n);
    // SAFETY: plain pthread calls with a valid, initialised attribute.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstacksize(&mut attr, 16 * 1024);
        libc::pthread_attr_setguardsize(&mut attr, 0);
        for i in 0..n {
            let mut t: libc::pthread_t = 0;
            let rc = libc::pthread_create(
                &mut t,
                &attr,
                blocked_read,
                fd as usize as *mut libc::c_void,
            );
            if rc != 0 {
                return Err(format!(
                    "pthread_create failed after {i} threads: {}",
                    std::io::Error::from_raw_os_error(rc)
                ));
            }
            threads.push(t);
        }
        libc::pthread_attr_destroy(&mut attr);
        for t in threads {
            libc::pthread_join(t, std::ptr::null_mut());
        }
    }
    Ok(())
}
