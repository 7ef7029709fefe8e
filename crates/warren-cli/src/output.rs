//! Writing a command's output as it streams in.

use std::io::Write;
use warren_sdk::ExecEvent;

/// Copy an exec stream's stdout/stderr chunk to ours, unbuffered, byte for byte.
pub fn print_exec_event(ev: ExecEvent) {
    match ev {
        ExecEvent::Stdout(b) => {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(&b);
            let _ = o.flush();
        }
        ExecEvent::Stderr(b) => {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(&b);
            let _ = e.flush();
        }
        ExecEvent::TaskId(_) | ExecEvent::Exit(_) => {}
    }
}
