//! Making sure fds 0, 1 and 2 are open before anything else opens a file.
//!
//! A closed standard fd is dangerous: the next `open` would land on it and logging would
//! then write into that file. The kernel starts init with no fds at all when the
//! initramfs has no `/dev/console`.

use std::ffi::CString;

fn is_open(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFD on any integer is harmless.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Open each missing fd among 0, 1, 2 on the first openable path of `candidates`,
/// falling back to an `O_PATH` handle on `/` (writes to it fail, harmlessly).
pub fn fill_missing(candidates: &[&str]) {
    let missing: Vec<libc::c_int> = (0..=2).filter(|fd| !is_open(*fd)).collect();
    if missing.is_empty() {
        return;
    }
    let mut src = -1;
    for path in candidates {
        let Ok(c) = CString::new(*path) else { continue };
        // SAFETY: c is a valid NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        if fd >= 0 {
            src = fd;
            break;
        }
    }
    if src < 0 {
        // SAFETY: "/" is a valid path literal.
        src = unsafe { libc::open(c"/".as_ptr(), libc::O_PATH) };
    }
    if src < 0 {
        return;
    }
    for fd in &missing {
        if *fd != src {
            // SAFETY: both fds are valid integers; dup2 onto a closed fd.
            unsafe { libc::dup2(src, *fd) };
        }
    }
    if src > 2 {
        // SAFETY: src is an fd we opened above and no longer need.
        unsafe { libc::close(src) };
    }
}

/// Point fds 0, 1 and 2 at `/dev/console` when they are not open yet.
pub fn console() {
    fill_missing(&["/dev/console", "/dev/null"]);
}
