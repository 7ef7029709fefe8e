//! The runtime API: router, bearer-token check, extractors with JSON errors, and the
//! small endpoints (`/health`, `/runtime`, the exec task registry).

use crate::error::{ApiError, ApiResult};
use crate::exec::{self, Event, ExecCtx};
use crate::files;
use crate::reaper::Reaper;
use crate::tasks::Tasks;
use crate::term::{self, Terminals};
use crate::watchers::{self, Watchers};
use crate::workloads::{self, Workloads};
use crate::workspace::Workspace;
use crate::ws::{self, Connections};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use warren_protocol::runtime::{
    stream_event, ExecRequest, ExecTask, Health, RuntimeInfo, StreamData, StreamTaskId, TaskStatus,
};

/// Largest JSON request body (file writes carry content inline).
pub const JSON_LIMIT: usize = 128 << 20;

pub const CAPABILITIES: &[&str] = &[
    "exec",
    "exec_stream",
    "files",
    "files_download",
    "files_upload",
    "exec_input",
    "exec_subscribe",
    "terminals",
    "ws",
    "workloads",
    "watchers",
    "proxy",
    "metrics",
    "transfer",
    "search",
];

/// The runtime API's token, shared by the server and the control loop: a forked VM
/// (`HostMessage::Fork`) gets a new one while its server keeps running.
#[derive(Clone)]
pub struct ApiToken(Arc<std::sync::RwLock<Arc<str>>>);

impl ApiToken {
    pub fn new(token: &str) -> ApiToken {
        ApiToken(Arc::new(std::sync::RwLock::new(Arc::from(token))))
    }

    pub fn get(&self) -> Arc<str> {
        match self.0.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn set(&self, token: &str) {
        match self.0.write() {
            Ok(mut t) => *t = Arc::from(token),
            Err(p) => *p.into_inner() = Arc::from(token),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    /// The bearer token; replaced when the VM becomes a fork (see [`ApiToken`]).
    pub token: ApiToken,
    pub ws: Arc<Workspace>,
    pub exec: ExecCtx,
    pub terminals: Arc<Terminals>,
    pub conns: Connections,
    pub workloads: Arc<Workloads>,
    pub watchers: Arc<Watchers>,
}

impl AppState {
    /// `workload_logs`: where workload log files go (none: memory only);
    /// `workload_state`: where workload definitions are saved for the next boot.
    pub fn new(
        token: &str,
        ws: Workspace,
        reaper: Reaper,
        workload_logs: Option<PathBuf>,
        workload_state: Option<PathBuf>,
    ) -> AppState {
        let ws = Arc::new(ws);
        let wctx = workloads::Ctx::new(ws.clone(), reaper.clone());
        let conns = Connections::default();
        let watchers = Arc::new(Watchers::new(conns.events.clone()));
        AppState {
            token: ApiToken::new(token),
            ws,
            exec: ExecCtx {
                reaper,
                tasks: Arc::new(Tasks::default()),
            },
            terminals: Arc::new(Terminals::default()),
            conns,
            watchers,
            workloads: Arc::new(Workloads::new(wctx, workload_logs, workload_state)),
        }
    }
}

/// A query-string boolean: `true`, `1`, `yes`, `on` (any case).
pub fn flag(v: &Option<String>) -> bool {
    matches!(
        v.as_deref()
            .map(str::trim)
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("true") | Some("1") | Some("yes") | Some("on")
    )
}

/// Compare in time independent of where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The `token` query parameter (percent-decoded): what WebSocket clients send, since
/// browsers cannot set headers on a WebSocket.
fn query_token(query: Option<&str>) -> Option<String> {
    let raw = query?.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    let mut out = Vec::with_capacity(raw.len());
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3)) {
            (b'%', Some(h)) => {
                let hex = std::str::from_utf8(h).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let header_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::to_string);
    let ok = header_token
        .or_else(|| query_token(req.uri().query()))
        .is_some_and(|t| ct_eq(t.as_bytes(), st.token.get().as_bytes()));
    if !ok {
        return ApiError::Unauthorized("missing or invalid bearer token".into()).into_response();
    }
    next.run(req).await
}

/// `Json` that answers 422 `validation_error` (with our error body) on bad input and does
/// not insist on a `Content-Type`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::validation(format!("could not read the request body: {e}")))?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::validation(format!("invalid JSON body: {e}")))
    }
}

/// `Query` with our error body.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::validation(format!("invalid query string: {e}")))
    }
}

pub fn router(state: AppState) -> Router {
    let r = Router::new()
        .route("/health", get(health))
        .route("/runtime", get(runtime_info))
        .route(
            "/exec",
            post(exec_run).get(exec_list).delete(exec_delete_all),
        )
        .route("/exec/stream", post(exec_stream).get(exec_subscribe))
        .route("/exec/{id}", get(exec_get).delete(exec_delete))
        .route("/exec/{id}/input", post(exec_input))
        .route("/terminals", get(term::api::list).post(term::api::create))
        .route(
            "/terminals/{id}",
            get(term::api::get).delete(term::api::close),
        )
        .route("/terminals/{id}/scrollback", get(term::api::scrollback))
        .route("/terminals/{id}/resize", post(term::api::resize))
        .route("/terminals/{id}/input", post(term::api::input))
        .route("/terminals/{id}/stream", get(crate::stream::terminal))
        .route("/tunnel", get(crate::stream::tunnel))
        .route("/ws", get(ws::upgrade))
        .route("/metrics", get(crate::metrics::handler))
        .route("/proxy", any(crate::proxy::handle))
        .route("/proxy/{*rest}", any(crate::proxy::handle))
        .route(
            "/watchers",
            get(watchers::api::list).post(watchers::api::create),
        )
        .route(
            "/watchers/{id}",
            get(watchers::api::get).delete(watchers::api::delete),
        )
        .route(
            "/workloads",
            get(workloads::api::list)
                .post(workloads::api::create)
                .delete(workloads::api::delete_all),
        )
        .route(
            "/workloads/stats/stream",
            get(workloads::api::all_stats_stream),
        )
        .route(
            "/workloads/{id}",
            get(workloads::api::get)
                .put(workloads::api::update)
                .patch(workloads::api::update)
                .delete(workloads::api::delete),
        )
        .route("/workloads/{id}/start", post(workloads::api::start))
        .route("/workloads/{id}/stop", post(workloads::api::stop))
        .route("/workloads/{id}/status", get(workloads::api::get))
        .route("/workloads/{id}/logs", get(workloads::api::logs))
        .route(
            "/workloads/{id}/logs/stream",
            get(workloads::api::logs_stream),
        )
        .route("/workloads/{id}/stats", get(workloads::api::stats))
        .route(
            "/workloads/{id}/stats/stream",
            get(workloads::api::stats_stream),
        )
        .route("/files", get(files::list))
        .route("/files/read", get(files::read))
        .route("/files/write", post(files::write))
        .route("/files/stat", get(files::stat))
        .route("/files/mkdir", post(files::mkdir))
        .route("/files/delete", post(files::delete).delete(files::delete))
        .route("/files/download", get(files::download))
        .route("/files/search", get(crate::search::content))
        .route("/files/search/files", get(crate::search::files))
        .route(
            "/files/search/init",
            get(crate::search::init).post(crate::search::init),
        )
        .route("/files/upload", put(files::upload).post(files::upload))
        .route("/files/transfer/download", post(crate::transfer::download))
        .route(
            "/files/transfer/upload",
            post(crate::transfer::upload).put(crate::transfer::upload),
        );
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no such endpoint: {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "method {} not allowed on {}",
        req.method(),
        req.uri().path()
    ))
}

async fn health() -> Json<Health> {
    Json(Health {
        success: true,
        status: "ok".into(),
    })
}

async fn runtime_info() -> Json<RuntimeInfo> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let shell = if std::path::Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        exec::SHELL
    };
    Json(RuntimeInfo {
        success: true,
        os: "linux".into(),
        arch: std::env::consts::ARCH.into(),
        cpus,
        home: "/root".into(),
        shell: shell.into(),
        protocol_version: warren_protocol::control::PROTOCOL_VERSION,
        capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
    })
}

// ---------------------------------------------------------------- exec

async fn exec_run(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<Json<ExecTask>> {
    let p = exec::prepare(&st.ws, &req)?;
    let task = st.exec.tasks.create(req.cmd.clone(), p.ttl);
    exec::run_collect(st.exec.clone(), p, task).await.map(Json)
}

/// One server-sent event, formatted as the official client parses it.
fn sse<T: Serialize>(event: &str, data: &T) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: {event}\ndata: {json}\n\n"))
}

fn sse_response(body: Body) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn event_frame(ev: Event) -> Bytes {
    match ev {
        Event::Stdout(d) => sse(stream_event::STDOUT, &StreamData { data: b64(&d) }),
        Event::Stderr(d) => sse(stream_event::STDERR, &StreamData { data: b64(&d) }),
        Event::Exit(x) => sse(stream_event::EXIT, &x),
    }
}

async fn exec_stream(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<Response> {
    let mut p = exec::prepare(&st.ws, &req)?;
    // A streamed task without inline stdin keeps its stdin open for
    // `POST /exec/:id/input` (the official client's `exec.input`): see exec_input.
    p.stdin_open = p.stdin.is_none();
    let task = st.exec.tasks.create(req.cmd.clone(), p.ttl);
    let first = sse(
        stream_event::TASK_ID,
        &StreamTaskId {
            task_id: task.id.clone(),
        },
    );
    let rx = exec::run_stream(st.exec.clone(), p, task);
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|ev| (Ok::<Bytes, std::convert::Infallible>(event_frame(ev)), rx))
    });
    let body = futures_util::stream::once(async move { Ok(first) });
    use futures_util::StreamExt;
    Ok(sse_response(Body::from_stream(body.chain(events))))
}

#[derive(Debug, Deserialize)]
struct SubscribeQuery {
    task_id: Option<String>,
}

/// `GET /exec/stream?task_id=`: a running task's output so far (up to
/// [`crate::tasks::LIVE_REPLAY`] bytes), then live until its exit; a finished task's
/// kept output and exit.
async fn exec_subscribe(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<SubscribeQuery>,
) -> ApiResult<Response> {
    let id = q
        .task_id
        .ok_or_else(|| ApiError::validation("task_id is required"))?;
    if let Some(live) = st.exec.tasks.live(&id) {
        let first = sse(stream_event::TASK_ID, &StreamTaskId { task_id: id });
        let events = futures_util::stream::unfold((live, 0u64), |(live, mut pos)| async move {
            let evs = live.next(&mut pos).await?;
            let frames: Vec<Bytes> = evs.into_iter().map(event_frame).collect();
            Some((
                Ok::<Bytes, std::convert::Infallible>(Bytes::from(frames.concat())),
                (live, pos),
            ))
        });
        use futures_util::StreamExt;
        let body = futures_util::stream::once(async move { Ok(first) }).chain(events);
        return Ok(sse_response(Body::from_stream(body)));
    }
    let task = st
        .exec
        .tasks
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no such task: {id}")))?;
    if matches!(task.status, TaskStatus::Pending | TaskStatus::Running) {
        return Err(ApiError::Conflict(format!(
            "task {id} is still starting; try again"
        )));
    }
    let mut out = Vec::new();
    out.push(sse(stream_event::TASK_ID, &StreamTaskId { task_id: id }));
    if let Some(s) = task.stdout.as_deref().filter(|s| !s.is_empty()) {
        out.push(event_frame(Event::Stdout(Bytes::copy_from_slice(
            s.as_bytes(),
        ))));
    }
    if let Some(s) = task.stderr.as_deref().filter(|s| !s.is_empty()) {
        out.push(event_frame(Event::Stderr(Bytes::copy_from_slice(
            s.as_bytes(),
        ))));
    }
    out.push(event_frame(Event::Exit(exec::exit_of(&task))));
    Ok(sse_response(Body::from(out.concat())))
}

#[derive(Serialize)]
struct TaskList {
    success: bool,
    tasks: Vec<ExecTask>,
}

#[derive(Serialize)]
struct Done {
    success: bool,
}

async fn exec_list(State(st): State<AppState>) -> Json<TaskList> {
    Json(TaskList {
        success: true,
        tasks: st.exec.tasks.list(),
    })
}

async fn exec_get(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<ExecTask>> {
    st.exec
        .tasks
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no such task: {id}")))
}

async fn exec_delete(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Done>> {
    if st.exec.tasks.remove(&id) {
        Ok(Json(Done { success: true }))
    } else {
        Err(ApiError::NotFound(format!("no such task: {id}")))
    }
}

#[derive(Serialize)]
struct InputDone {
    success: bool,
    bytes: usize,
    /// True when the (empty) input closed stdin.
    closed: bool,
}

/// `POST /exec/:id/input`: raw bytes for a running task's stdin; an empty body closes it
/// (EOF).
///
/// Tasks started by `POST /exec/stream` without an inline `stdin` keep stdin open as a
/// pipe: the official client's `exec.stream()` cannot send any flag, so "always for
/// streamed tasks" is the only choice that lets it use `exec.input()`. `POST /exec`
/// (which waits for the exit) keeps its old meaning: stdin is the inline `stdin` or
/// empty, so a synchronous `cat` never hangs.
async fn exec_input(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<InputDone>> {
    use crate::tasks::InputError;
    let tx = st.exec.tasks.stdin(&id).map_err(|e| match e {
        InputError::UnknownTask => ApiError::NotFound(format!("no such task: {id}")),
        InputError::NotRunning => ApiError::Conflict(format!("task {id} is not running")),
        InputError::StdinClosed => ApiError::Conflict(format!(
            "task {id} has no open stdin (only tasks started by POST /exec/stream without \
             an inline stdin take input, until an empty input closes it)"
        )),
    })?;
    let n = body.len();
    let closed = body.is_empty();
    let msg = if closed { None } else { Some(body) };
    tx.send(msg)
        .await
        .map_err(|_| ApiError::Conflict(format!("task {id} stopped reading its stdin")))?;
    if closed {
        st.exec.tasks.clear_stdin(&id);
    }
    Ok(Json(InputDone {
        success: true,
        bytes: n,
        closed,
    }))
}

async fn exec_delete_all(State(st): State<AppState>) -> Json<Done> {
    st.exec.tasks.remove_all();
    Json(Done { success: true })
}

// ---------------------------------------------------------------- serving

/// Serve on an already bound listener until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install the child reaper: {0}")]
    Reaper(std::io::Error),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// `warren-agent serve`: the runtime API alone, with the agent's own environment as the
/// workspace environment.
pub fn serve_blocking(
    listen: SocketAddr,
    token: String,
    workdir: Option<PathBuf>,
) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    rt.block_on(async move {
        let reaper = Reaper::start().map_err(ServeError::Reaper)?;
        let workdir = workdir.or_else(|| std::env::current_dir().ok());
        let ws = Workspace::new(std::env::vars().collect(), workdir, None);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| ServeError::Bind(listen, e))?;
        let addr = listener.local_addr().unwrap_or(listen);
        tracing::info!("runtime API listening on {addr}");
        // Workload logs in a directory of this process; definitions not saved.
        let logs = std::env::temp_dir().join(format!("warren-agent-{}", std::process::id()));
        let state = AppState::new(&token, ws, reaper, Some(logs.join("workloads")), None);
        tokio::select! {
            r = serve(listener, state) => r.map_err(ServeError::Serve),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"", b"x"));
        assert!(ct_eq(b"", b""));
        // Lengths differing by a multiple of 256 must still differ.
        assert!(!ct_eq(&[0u8; 256], b""));
    }

    #[test]
    fn token_query() {
        assert_eq!(query_token(Some("a=1&token=a%2Bb+c")), Some("a+b c".into()));
        assert_eq!(query_token(Some("a=1")), None);
        assert_eq!(query_token(Some("token=%zz")), None);
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn flags() {
        assert!(flag(&Some("true".into())));
        assert!(flag(&Some("1".into())));
        assert!(!flag(&Some("false".into())));
        assert!(!flag(&None));
    }
}
