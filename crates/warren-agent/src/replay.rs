//! A bounded, append-only log that any number of readers can replay from the start (or
//! as much of it as is still kept) and then follow live.
//!
//! Used for the output of running exec tasks (subscribe with replay) and for terminal
//! scrollback. Items are kept whole: when the total size passes the cap the oldest
//! items are dropped, so a reader that fell behind skips ahead rather than blocking the
//! writer. Writers never wait for readers.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

struct Inner<T> {
    /// Position of `items[0]` since the log began.
    base: u64,
    items: VecDeque<(T, usize)>,
    bytes: usize,
    closed: bool,
}

pub struct Replay<T> {
    inner: Mutex<Inner<T>>,
    /// The position after the last item; bumped on every push and on close.
    tick: watch::Sender<u64>,
    cap: usize,
}

impl<T: Clone> Replay<T> {
    /// A log keeping at most about `cap` bytes (at least the newest item).
    pub fn new(cap: usize) -> Replay<T> {
        Replay {
            inner: Mutex::new(Inner {
                base: 0,
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            tick: watch::Sender::new(0),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append an item weighing `size` bytes. Ignored once closed.
    pub fn push(&self, item: T, size: usize) {
        let end = {
            let mut g = self.lock();
            if g.closed {
                return;
            }
            g.items.push_back((item, size));
            g.bytes += size;
            while g.bytes > self.cap && g.items.len() > 1 {
                if let Some((_, s)) = g.items.pop_front() {
                    g.bytes -= s;
                    g.base += 1;
                }
            }
            g.base + g.items.len() as u64
        };
        self.tick.send_replace(end);
    }

    /// No more items will come; readers end once they have read everything.
    pub fn close(&self) {
        self.lock().closed = true;
        self.tick.send_modify(|_| {});
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Everything still kept, oldest first.
    pub fn snapshot(&self) -> Vec<T> {
        self.lock().items.iter().map(|(t, _)| t.clone()).collect()
    }

    /// Total size of what is kept.
    pub fn kept_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The items after `*pos` (from the oldest kept one if `*pos` was dropped) that are
    /// there now, without waiting.
    pub fn read_now(&self, pos: &mut u64) -> Vec<T> {
        let g = self.lock();
        let end = g.base + g.items.len() as u64;
        let start = (*pos).max(g.base);
        let skip = usize::try_from(start.saturating_sub(g.base)).unwrap_or(usize::MAX);
        *pos = end;
        g.items.iter().skip(skip).map(|(t, _)| t.clone()).collect()
    }

    /// The items after `*pos` (from the oldest kept one if `*pos` was dropped), waiting
    /// for some when there are none yet. `None` once closed and everything was read.
    pub async fn next(&self, pos: &mut u64) -> Option<Vec<T>> {
        let mut rx = self.tick.subscribe();
        loop {
            {
                let g = self.lock();
                let end = g.base + g.items.len() as u64;
                let start = (*pos).max(g.base);
                if start < end {
                    let skip = usize::try_from(start - g.base).unwrap_or(usize::MAX);
                    let out = g.items.iter().skip(skip).map(|(t, _)| t.clone()).collect();
                    *pos = end;
                    return Some(out);
                }
                if g.closed {
                    return None;
                }
            }
            // The sender lives in `self`, so this only fails if `self` is gone.
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn replays_then_follows_and_drops_the_oldest() {
        let r = Arc::new(Replay::<u32>::new(10));
        r.push(1, 4);
        r.push(2, 4);
        let mut pos = 0;
        assert_eq!(r.next(&mut pos).await, Some(vec![1, 2]));
        let r2 = r.clone();
        let waiter = tokio::spawn(async move {
            let mut pos = 2;
            r2.next(&mut pos).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        r.push(3, 4); // 12 bytes > 10: item 1 goes
        assert_eq!(waiter.await.unwrap(), Some(vec![3]));
        assert_eq!(r.snapshot(), vec![2, 3]);
        // A reader from the very start skips what was dropped.
        let mut pos = 0;
        assert_eq!(r.next(&mut pos).await, Some(vec![2, 3]));
        assert_eq!(pos, 3);
        r.close();
        r.push(4, 1);
        assert_eq!(r.next(&mut pos).await, None);
        // One item larger than the cap is still kept.
        let big = Replay::new(1);
        big.push("x", 100);
        assert_eq!(big.snapshot(), vec!["x"]);
    }
}
