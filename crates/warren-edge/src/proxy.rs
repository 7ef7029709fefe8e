//! The HTTPS listener and the proxy to workspaces.

use crate::certs::{CertError, CertStore};
use crate::EdgeConfig;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;
use warren_state::{ObservedState, Store};

type Body = axum::body::Body;

/// The edge: configuration, routes (the state store), certificates, and the gateway
/// it fronts.
pub struct Edge {
    pub config: EdgeConfig,
    store: Store,
    certs: CertStore,
    gateway: Option<axum::Router>,
    /// TLS configurations by certificate key, with the chain they were built from.
    tls: Mutex<HashMap<String, (String, Arc<rustls::ServerConfig>)>>,
}

impl Edge {
    pub fn new(
        config: EdgeConfig,
        store: Store,
        certs: CertStore,
        gateway: Option<axum::Router>,
    ) -> Arc<Self> {
        certs.configure(config.acme.as_ref(), config.renew_before_days);
        Arc::new(Edge {
            config,
            store,
            certs,
            gateway,
            tls: Mutex::new(HashMap::new()),
        })
    }

    fn wildcard_key(&self) -> String {
        format!("*.{}", self.config.preview_domain)
    }

    /// Which certificate a server name gets: (store key, names), or None (unknown).
    async fn cert_for(&self, sni: &str) -> Option<(String, Vec<String>)> {
        let p = &self.config.preview_domain;
        if sni == p || sni.strip_suffix(p).is_some_and(|h| h.ends_with('.')) {
            return Some((self.wildcard_key(), vec![self.wildcard_key(), p.clone()]));
        }
        let d = self.domain_route(sni).await?;
        let mut names = vec![d.domain.clone()];
        if d.include_www {
            names.push(format!("www.{}", d.domain));
        }
        Some((d.domain, names))
    }

    async fn domain_route(&self, host: &str) -> Option<warren_state::EdgeDomain> {
        match self.store.edge_domain(host).await {
            Ok(Some(d)) => return Some(d),
            Ok(None) => {}
            Err(e) => tracing::warn!(host, error = %e, "looking up a custom domain"),
        }
        let bare = host.strip_prefix("www.")?;
        match self.store.edge_domain(bare).await {
            Ok(Some(d)) if d.include_www => Some(d),
            _ => None,
        }
    }

    async fn server_config(&self, sni: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        let (key, names) = self
            .cert_for(sni)
            .await
            .ok_or_else(|| format!("no route for server name {sni:?}"))?;
        let issued = self
            .certs
            .ensure(&key, &names)
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(cache) = self.tls.lock() {
            if let Some((created, cfg)) = cache.get(&key) {
                if *created == issued.chain_pem {
                    return Ok(cfg.clone());
                }
            }
        }
        let cfg =
            Arc::new(tls_config(&issued.chain_pem, &issued.key_pem).map_err(|e| e.to_string())?);
        if let Ok(mut cache) = self.tls.lock() {
            cache.insert(key, (issued.chain_pem.clone(), cfg.clone()));
        }
        Ok(cfg)
    }
}

/// A rustls server configuration for one certificate: TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1.
pub fn tls_config(chain_pem: &str, key_pem: &str) -> Result<rustls::ServerConfig, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| CertError::Tls(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CertError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| CertError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Accept TLS connections on `listener` forever.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener) -> std::io::Result<()> {
    // The preview domain's certificate exists before the first client arrives.
    let p = edge.config.preview_domain.clone();
    if let Err(e) = edge.server_config(&p).await {
        tracing::warn!(error = %e, "the preview domain's certificate could not be prepared");
    }
    let renewer = edge.clone();
    tokio::spawn(async move { renew_loop(renewer).await });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "edge accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let edge = edge.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(edge, tcp, peer).await {
                tracing::debug!(%peer, error = %e, "edge connection ended");
            }
        });
    }
}

/// Renew certificates that are within the renewal window (every
/// `renew_check_interval`, the first time a minute after start or sooner). Custom
/// domains go through ACME when it is configured, which also retries a domain that
/// still has a local-CA certificate (a failed or interrupted order); a domain with an
/// order running is left to it.
async fn renew_loop(edge: Arc<Edge>) {
    let every = edge.config.renew_check_interval.max(Duration::from_secs(1));
    let mut wait = every.min(Duration::from_secs(60));
    loop {
        tokio::time::sleep(wait).await;
        wait = every;
        let certs = match edge.store.edge_certs().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "listing certificates for renewal");
                continue;
            }
        };
        let wildcard = edge.wildcard_key();
        for c in &certs {
            let custom = c.domain != wildcard;
            let not_from_acme =
                custom && edge.certs.acme_enabled() && c.source != crate::certs::SOURCE_ACME;
            if !edge.certs.due(c) && !not_from_acme {
                continue;
            }
            let sni = c.domain.trim_start_matches("*.").to_string();
            if let Some((key, names)) = edge.cert_for(&sni).await {
                if let Err(e) = edge.certs.renew(&key, &names, custom).await {
                    tracing::warn!(domain = %key, error = %e, "renewal failed");
                }
            }
        }
    }
}

async fn connection(edge: Arc<Edge>, tcp: TcpStream, peer: SocketAddr) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let start = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp),
    )
    .await
    .map_err(|_| "no TLS client hello".to_string())?
    .map_err(|e| e.to_string())?;
    let hello = start.client_hello();
    let sni = hello
        .server_name()
        .map(|s| s.to_ascii_lowercase())
        .ok_or("the client sent no server name (SNI)")?;
    let acme_tls = hello
        .alpn()
        .is_some_and(|mut a| a.any(|p| p == crate::acme::ACME_TLS_ALPN));
    if acme_tls {
        // A TLS-ALPN-01 validation (RFC 8737): the handshake is the answer.
        let cfg = edge
            .certs
            .alpn_challenge(&sni)
            .ok_or_else(|| format!("no TLS-ALPN-01 challenge pending for {sni:?}"))?;
        let mut tls = start.into_stream(cfg).await.map_err(|e| e.to_string())?;
        tracing::info!(%peer, server_name = %sni, "answered a TLS-ALPN-01 challenge");
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        return Ok(());
    }
    let cfg = match edge.server_config(&sni).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, server_name = %sni, error = %e, "TLS handshake refused");
            return Err(e);
        }
    };
    let tls = start.into_stream(cfg).await.map_err(|e| e.to_string())?;
    let svc = hyper::service::service_fn(move |req| {
        let edge = edge.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(edge, req, peer).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // WebSocket over HTTP/2 (RFC 8441): extended CONNECT with :protocol websocket.
    builder.http2().enable_connect_protocol();
    builder
        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
        .await
        .map_err(|e| e.to_string())
}

fn full(b: impl Into<Bytes>) -> Body {
    Body::from(b.into())
}

fn problem(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Body> {
    let body = serde_json::json!({
        "success": false,
        "code": code,
        "error": code,
        "message": message.into(),
    });
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn host_of(req: &Request<Incoming>) -> Option<String> {
    let h = req.uri().host().map(str::to_string).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(|h| h.rsplit_once(':').map_or(h, |(a, _)| a).to_string())
    })?;
    Some(h.trim_end_matches('.').to_ascii_lowercase())
}

/// Where a request goes.
enum Target {
    Gateway,
    Workspace { id: String, port: u16 },
    Nothing(String),
}

async fn route(edge: &Edge, host: &str) -> Target {
    if host == edge.config.gateway_host {
        return Target::Gateway;
    }
    let p = &edge.config.preview_domain;
    if let Some(slug) = host.strip_suffix(p).and_then(|h| h.strip_suffix('.')) {
        return match edge.store.edge_port_by_slug(slug).await {
            Ok(Some(port)) => Target::Workspace {
                id: port.workspace_id,
                port: port.port,
            },
            Ok(None) => Target::Nothing(format!("no exposed port at {host}")),
            Err(e) => Target::Nothing(e.to_string()),
        };
    }
    match edge.domain_route(host).await {
        Some(d) => Target::Workspace {
            id: d.workspace_id,
            port: u16::try_from(d.port).unwrap_or(0),
        },
        None => Target::Nothing(format!("no route for {host}")),
    }
}

async fn handle(edge: Arc<Edge>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let Some(host) = host_of(&req) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "no host in the request",
        );
    };
    match route(&edge, &host).await {
        Target::Gateway => match &edge.gateway {
            Some(gw) => {
                use tower_service::Service;
                let mut gw = gw.clone();
                let req = req.map(axum::body::Body::new);
                match gw.call(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            }
            None => problem(
                StatusCode::NOT_FOUND,
                "not_found",
                "no gateway behind this edge",
            ),
        },
        Target::Nothing(why) => problem(StatusCode::NOT_FOUND, "not_found", why),
        Target::Workspace { id, port } => {
            let span = tracing::info_span!("edge", workspace_id = %id, port);
            to_workspace(&edge, &id, port, &host, req, peer)
                .instrument(span)
                .await
        }
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1), never forwarded as such.
fn hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
            .unwrap_or(false)
    }) && req.headers().contains_key(header::UPGRADE)
}

/// An RFC 8441 WebSocket: an HTTP/2 extended CONNECT with `:protocol websocket`.
fn is_h2_websocket<B>(req: &Request<B>) -> bool {
    req.method() == hyper::Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// A `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 4.1).
fn websocket_key() -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    let mut out = String::with_capacity(24);
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn to_workspace(
    edge: &Edge,
    id: &str,
    port: u16,
    host: &str,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let ws = match edge.store.workspace(id).await {
        Ok(Some(w)) => w,
        Ok(None) => return problem(StatusCode::NOT_FOUND, "not_found", "the workspace is gone"),
        Err(e) => {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                e.to_string(),
            )
        }
    };
    // Asleep on idle: this request wakes it, as the gateway's do (crate::wake).
    let ws = match crate::wake::wake_if_asleep(&edge.store, ws, port).await {
        Ok(w) => w,
        Err(p) => return problem(p.status, p.code, p.message),
    };
    let ip = match (ws.observed_state, ws.internal_ip.as_deref()) {
        (ObservedState::Running, Some(ip)) => ip.to_string(),
        (state, _) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "workspace_not_running",
                format!("workspace {id} is {state}"),
            )
        }
    };
    // A WebSocket over HTTP/2 goes to the workspace as an HTTP/1.1 upgrade; the 101 is
    // answered to the client as a 200 on its stream.
    let h2_ws = is_h2_websocket(&req);
    let upgrade = h2_ws || is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let method = if h2_ws {
        hyper::Method::GET
    } else {
        parts.method.clone()
    };
    let mut up = Request::builder()
        .method(method)
        .uri(pq)
        .version(hyper::Version::HTTP_11);
    for (k, v) in parts.headers.iter() {
        if !hop(k) && k != header::HOST {
            up = up.header(k, v);
        }
    }
    up = up
        .header(header::HOST, host)
        .header("x-forwarded-for", peer.ip().to_string())
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", host);
    if upgrade {
        up = up.header(header::CONNECTION, "upgrade");
        if h2_ws {
            up = up
                .header(header::UPGRADE, "websocket")
                .header(header::SEC_WEBSOCKET_KEY, websocket_key());
            if !parts.headers.contains_key(header::SEC_WEBSOCKET_VERSION) {
                up = up.header(header::SEC_WEBSOCKET_VERSION, "13");
            }
        } else if let Some(u) = parts.headers.get(header::UPGRADE) {
            up = up.header(header::UPGRADE, u);
        }
    }
    let up = match up.body(body) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };

    let tcp = match tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect((ip.as_str(), port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return problem(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                format!("nothing answers on port {port} of the workspace: {e}"),
            )
        }
        Err(_) => {
            return problem(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("port {port} of the workspace did not accept the connection"),
            )
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(x) => x,
        Err(e) => {
            return problem(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                e.to_string(),
            )
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    let mut resp = match sender.send_request(up).await {
        Ok(r) => r,
        Err(e) => {
            return problem(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                format!("the workspace's port {port} did not answer: {e}"),
            )
        }
    };
    tracing::debug!(status = %resp.status(), "proxied");
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return problem(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "unexpected 101 from the workspace",
            );
        };
        let server_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match (client_upgrade.await, server_upgrade.await) {
                (Ok(c), Ok(s)) => {
                    let (mut c, mut s) = (TokioIo::new(c), TokioIo::new(s));
                    match tokio::io::copy_bidirectional(&mut c, &mut s).await {
                        Ok((a, b)) => {
                            tracing::debug!(up = a, down = b, "upgraded connection closed")
                        }
                        Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
                    }
                }
                (c, s) => tracing::debug!(
                    client = c.is_ok(),
                    server = s.is_ok(),
                    "upgrade not completed"
                ),
            }
        });
        let (mut parts, _) = resp.into_parts();
        if h2_ws {
            parts.status = StatusCode::OK;
            let drop: Vec<HeaderName> = parts
                .headers
                .keys()
                .filter(|k| hop(k) || *k == header::SEC_WEBSOCKET_ACCEPT)
                .cloned()
                .collect();
            for k in drop {
                parts.headers.remove(k);
            }
        }
        return Response::from_parts(parts, full(Bytes::new()));
    }
    let (mut parts, body) = resp.into_parts();
    let drop: Vec<HeaderName> = parts.headers.keys().filter(|k| hop(k)).cloned().collect();
    for k in drop {
        parts.headers.remove(k);
    }
    if parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
    {
        parts
            .headers
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    Response::from_parts(parts, Body::new(body))
}
