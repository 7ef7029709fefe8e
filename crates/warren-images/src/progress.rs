//! Progress reporting: the [`Progress`] trait, a no-op and an indicatif-backed implementation,
//! and the plumbing that carries events out of blocking build threads.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use crate::error::ImageError;

/// Receives progress from [`crate::ImageStore::resolve`].
///
/// `phase` announces a new step ("pulling layer 2/5", "mkfs.ext4", ...); `bytes` reports
/// progress within the current step when it is a transfer or an unpack of known size.
pub trait Progress: Send + Sync {
    fn phase(&self, msg: &str);
    fn bytes(&self, done: u64, total: Option<u64>);
}

/// Ignores all progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _msg: &str) {}
    fn bytes(&self, _done: u64, _total: Option<u64>) {}
}

/// Draws a terminal progress bar (for the `warren` CLI).
pub struct BarProgress {
    bar: ProgressBar,
    state: Mutex<Option<u64>>,
}

impl BarProgress {
    /// A bar on stderr; hidden automatically when stderr is not a terminal.
    pub fn new() -> Self {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        BarProgress {
            bar,
            state: Mutex::new(None),
        }
    }

    /// Wrap an existing bar (e.g. one that belongs to a `MultiProgress`).
    pub fn with_bar(bar: ProgressBar) -> Self {
        BarProgress {
            bar,
            state: Mutex::new(None),
        }
    }

    /// Stop drawing and leave the last message on screen.
    pub fn finish(&self, msg: &str) {
        self.bar.finish_with_message(msg.to_string());
    }
}

impl Default for BarProgress {
    fn default() -> Self {
        Self::new()
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Progress for BarProgress {
    fn phase(&self, msg: &str) {
        if let Ok(mut s) = self.state.lock() {
            *s = None;
        }
        self.bar.set_style(spinner_style());
        self.bar.set_length(0);
        self.bar.set_position(0);
        self.bar.set_message(msg.to_string());
    }

    fn bytes(&self, done: u64, total: Option<u64>) {
        if let Ok(mut s) = self.state.lock() {
            if *s != total {
                *s = total;
                match total {
                    Some(t) => {
                        self.bar.set_style(bytes_style());
                        self.bar.set_length(t);
                    }
                    None => self.bar.set_style(spinner_style()),
                }
            }
        }
        self.bar.set_position(done);
    }
}

/// A progress event sent from a blocking thread to the async caller.
#[derive(Debug)]
pub(crate) enum Event {
    Phase(String),
    Bytes(u64, Option<u64>),
}

/// A `'static` [`Progress`] that forwards events over a channel; used inside
/// `spawn_blocking` where the caller's `&dyn Progress` cannot go.
#[derive(Clone)]
pub(crate) struct ChannelProgress(pub(crate) mpsc::UnboundedSender<Event>);

impl Progress for ChannelProgress {
    fn phase(&self, msg: &str) {
        let _ = self.0.send(Event::Phase(msg.to_string()));
    }
    fn bytes(&self, done: u64, total: Option<u64>) {
        let _ = self.0.send(Event::Bytes(done, total));
    }
}

/// Run `f` on the blocking pool, forwarding its progress to `progress` as it happens.
pub(crate) async fn run_blocking<T, F>(progress: &dyn Progress, f: F) -> Result<T, ImageError>
where
    T: Send + 'static,
    F: FnOnce(&ChannelProgress) -> Result<T, ImageError> + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let span = tracing::Span::current();
    let handle = tokio::task::spawn_blocking(move || {
        let _enter = span.enter();
        let p = ChannelProgress(tx);
        f(&p)
    });
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Phase(m) => progress.phase(&m),
            Event::Bytes(d, t) => progress.bytes(d, t),
        }
    }
    match handle.await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(ImageError::build(
            "image",
            format!("the build task was cancelled ({e}); is the runtime shutting down?"),
        )),
    }
}

/// Rate-limits `bytes` events so a fast local copy does not flood the channel.
pub(crate) struct ByteCounter<'a> {
    progress: &'a dyn Progress,
    total: Option<u64>,
    done: u64,
    last: u64,
}

impl<'a> ByteCounter<'a> {
    pub(crate) fn new(progress: &'a dyn Progress, total: Option<u64>) -> Self {
        progress.bytes(0, total);
        ByteCounter {
            progress,
            total,
            done: 0,
            last: 0,
        }
    }

    pub(crate) fn add(&mut self, n: u64) {
        self.done += n;
        if self.done - self.last >= 256 * 1024 {
            self.last = self.done;
            self.progress.bytes(self.done, self.total);
        }
    }

    pub(crate) fn finish(&mut self) {
        self.progress.bytes(self.done, self.total);
    }
}
