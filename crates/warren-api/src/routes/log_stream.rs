//! SSE streams of a workspace's logs: `GET /workspace/:id/logs/stream/boot` (the
//! console: kernel and init) and `.../logs/stream/cmd` (`config.cmd`'s output, from
//! the guest). Each sends the last `tail_lines` lines (all by default), then follows
//! new lines while more can come (boot: the workspace is creating or starting; cmd:
//! it runs and its command has not exited), then ends, so a client that collects the
//! whole stream (the `oblien` client's MCP tools do) gets an answer.
//!
//! Events: `event: log`, `data: {"timestamp", "message", "source"}` (the `oblien`
//! client's `LogStreamEvent`).

use super::find;
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use warren_state::{ObservedState, Workspace};

/// How often a followed log is read again.
const POLL: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Boot,
    Cmd,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Boot => "boot",
            Source::Cmd => "cmd",
        }
    }

    /// Can more lines come?
    fn more(self, w: &Workspace) -> bool {
        match self {
            Source::Boot => matches!(
                w.observed_state,
                ObservedState::Creating | ObservedState::Starting
            ),
            Source::Cmd => {
                w.observed_state == ObservedState::Running
                    && w.last_exit_code.is_none()
                    && w.config
                        .as_object()
                        .and_then(|c| crate::model::cmd_of(c).ok().flatten())
                        .is_some()
            }
        }
    }

    /// The whole log as it is now.
    async fn read(self, st: &AppState, w: &Workspace) -> ApiResult<String> {
        match self {
            Source::Boot => Ok(st.manager.backend.boot_log(&w.id).unwrap_or_default()),
            Source::Cmd => super::info::cmd_log(st, w).await,
        }
    }
}

pub(crate) fn tail_lines(q: &HashMap<String, String>) -> ApiResult<Option<usize>> {
    match q.get("tail_lines") {
        None => Ok(None),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid("tail_lines", format!("{s:?} is not a number 1-100000"))
            }),
    }
}

struct Follow {
    st: AppState,
    w: Workspace,
    source: Source,
    /// Bytes of the log already sent (whole lines only, until the end).
    offset: usize,
    pending: VecDeque<String>,
    done: bool,
}

impl Follow {
    /// Queue the lines of `text` past `offset`: complete lines only while more can
    /// come, everything at the end.
    fn take(&mut self, text: &str, last: bool) {
        if text.len() < self.offset || !text.is_char_boundary(self.offset) {
            // Truncated or replaced: start over.
            self.offset = 0;
        }
        let new = &text[self.offset..];
        let upto = if last {
            new.len()
        } else {
            new.rfind('\n').map(|i| i + 1).unwrap_or(0)
        };
        self.pending.extend(new[..upto].lines().map(str::to_string));
        self.offset += upto;
    }

    fn frame(&self, line: &str) -> Bytes {
        let ev = json!({
            "timestamp": warren_state::now(),
            "message": line,
            "source": self.source.name(),
            "workspace_id": self.w.id,
        });
        Bytes::from(format!("event: log\ndata: {ev}\n\n"))
    }
}

async fn stream(
    st: AppState,
    c: warren_state::Client,
    id: String,
    q: HashMap<String, String>,
    source: Source,
) -> ApiResult<Response> {
    let n = tail_lines(&q)?;
    let w = find(&st, &c.id, &id).await?;
    let text = source.read(&st, &w).await?;
    let more = source.more(&w);
    // The tail: whole lines only while the log grows (the rest comes when its line
    // ends).
    let upto = if more {
        text.rfind('\n').map(|i| i + 1).unwrap_or(0)
    } else {
        text.len()
    };
    let lines: Vec<&str> = text[..upto].lines().collect();
    let start = n.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
    let follow = Follow {
        pending: lines[start..].iter().map(|s| s.to_string()).collect(),
        st,
        w,
        source,
        offset: upto,
        done: !more,
    };
    let body = futures_util::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(line) = f.pending.pop_front() {
                let frame = f.frame(&line);
                return Some((Ok::<Bytes, std::convert::Infallible>(frame), f));
            }
            if f.done {
                return None;
            }
            tokio::time::sleep(POLL).await;
            // The row first, then the log: a state that says "no more" is read before
            // the last lines, so none is missed.
            let w = f.st.manager.store.workspace(&f.w.id).await.ok().flatten()?;
            let more = f.source.more(&w);
            f.w = w;
            match f.source.read(&f.st, &f.w).await {
                Ok(text) => f.take(&text, !more),
                Err(e) => {
                    tracing::debug!(workspace_id = %f.w.id, error = %e.message, "log stream ends");
                    f.done = true;
                }
            }
            if !more {
                f.done = true;
            }
        }
    });
    Ok(super::sse(Body::from_stream(body)))
}

pub async fn boot(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    stream(st, c, id, q, Source::Boot).await
}

pub async fn cmd(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    stream(st, c, id, q, Source::Cmd).await
}
