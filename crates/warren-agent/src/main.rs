//! `warren-agent` binary: see the library docs. No Rust `main`: std's pre-main setup
//! aborts when fds 0-2 are closed and `/dev/null` is missing, which is how an init may
//! be started; aborting PID 1 panics the kernel.
#![no_main]

use std::ffi::{c_char, c_int, CStr, OsString};
use std::os::unix::ffi::OsStringExt;

/// # Safety
/// Called by the C runtime with the process's `argc`/`argv`.
#[no_mangle]
pub extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    // std normally ignores SIGPIPE before `main`; we skipped that, so do it here: a
    // write to a closed pipe or socket must be an EPIPE error, not a fatal signal.
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let args = collect_args(argc, argv);
    match std::panic::catch_unwind(|| warren_agent::real_main(args)) {
        Ok(code) => code,
        Err(_) => {
            if std::process::id() == 1 {
                // Never return from PID 1: that panics the kernel.
                warren_agent::init::panic_poweroff()
            }
            101
        }
    }
}

fn collect_args(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    let mut out = Vec::new();
    if argv.is_null() {
        return out;
    }
    for i in 0..usize::try_from(argc).unwrap_or(0) {
        // SAFETY: the C runtime guarantees argv[0..argc] are valid NUL-terminated strings.
        let ptr = unsafe { *argv.add(i) };
        if ptr.is_null() {
            break;
        }
        // SAFETY: see above.
        let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes().to_vec();
        out.push(OsString::from_vec(bytes).to_string_lossy().into_owned());
    }
    out
}
