//! The edge's API: `/workspace/:id/public-access` (ports published at
//! `https://<slug>.<preview domain>`), `/workspace/:id/domain` (a custom domain: its
//! route works at once with a certificate from the local Warren CA, replaced in the
//! background by one from the ACME directory when one is configured; `domain/check`
//! resolves its DNS), and `GET /edge/ca.pem` (the CA's root certificate, to trust). The edge proxy reads these routes from the state database
//! on every request, so a change takes effect at once.
//!
//! A published port is also admitted by the workspace's firewall from the host (the
//! edge's side), and only then: `network_config.edge_ports` follows the published ports
//! and the custom domain's port, and an air-gapped workspace cannot publish anything.

use super::{find, json_body};
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use warren_edge::names::{normalize_domain, random_slug, valid_slug};
use warren_edge::{CertStore, MAX_PORTS};
use warren_state::{EdgeDomain, EdgePort, StateError, Workspace};

/// Certificate stores by data directory (opening one reads and unseals the CA key).
static CERTS: Mutex<Option<HashMap<PathBuf, CertStore>>> = Mutex::new(None);

fn certs(st: &AppState) -> ApiResult<CertStore> {
    let dir = st.manager.config.data_dir.clone();
    let mut g = CERTS
        .lock()
        .map_err(|_| ApiError::internal("certificate store lock poisoned"))?;
    let map = g.get_or_insert_with(HashMap::new);
    if let Some(c) = map.get(&dir) {
        return Ok(c.clone());
    }
    let c = CertStore::open(&dir, st.manager.store.clone())
        .map_err(|e| ApiError::internal(format!("the edge's certificate store: {e}")))?;
    if let Some(e) = &st.manager.config.edge {
        c.configure(e.acme.as_ref(), e.renew_before_days);
    }
    map.insert(dir, c.clone());
    Ok(c)
}

/// The edge's configuration, or 409 when this server runs none.
fn edge(st: &AppState) -> ApiResult<&warren_edge::EdgeConfig> {
    st.manager.config.edge.as_ref().ok_or_else(|| {
        ApiError::conflict(
            "edge_disabled",
            "this server runs no edge: start `warren server` with --edge-addr (and --preview-domain)",
        )
    })
}

fn object(b: &Value) -> ApiResult<&Map<String, Value>> {
    b.as_object()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON object"))
}

fn port_of(v: Option<&Value>, field: &str) -> ApiResult<u16> {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|p| (1..=65535).contains(p))
            .map(|p| p as u16)
            .ok_or_else(|| ApiError::invalid(field, format!("{n} is not a port 1-65535"))),
        Some(Value::String(s)) => s
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ApiError::invalid(field, format!("{s:?} is not a port 1-65535"))),
        None | Some(Value::Null) => Err(ApiError::invalid(field, "give the port (1-65535)")),
        Some(other) => Err(ApiError::invalid(
            field,
            format!("{other} is not a port 1-65535"),
        )),
    }
}

fn opt_string<'a>(
    o: &'a Map<String, Value>,
    field: &str,
    max: usize,
) -> ApiResult<Option<&'a str>> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max => Ok(Some(s.as_str())),
        Some(Value::String(_)) => Err(ApiError::invalid(
            field,
            format!("at most {max} characters"),
        )),
        Some(_) => Err(ApiError::invalid(field, "must be a string")),
    }
}

fn check_slug(st: &AppState, slug: &str) -> ApiResult<()> {
    if !valid_slug(slug) {
        return Err(ApiError::invalid(
            "slug",
            format!("{slug:?} is not a DNS label (a-z, 0-9 and inner '-', at most 63)"),
        ));
    }
    let gw = &edge(st)?.gateway_host;
    if gw.split('.').next() == Some(slug) {
        return Err(ApiError::conflict(
            "slug_taken",
            format!("slug {slug:?} is reserved for the gateway"),
        ));
    }
    Ok(())
}

/// The body's `domain`, required, checked and normalized.
fn required_domain(st: &AppState, o: &Map<String, Value>) -> ApiResult<String> {
    let raw = opt_string(o, "domain", 253)?
        .ok_or_else(|| ApiError::invalid("domain", "give the domain (e.g. app.example.com)"))?;
    check_domain(st, raw)
}

fn check_domain(st: &AppState, raw: &str) -> ApiResult<String> {
    let d = normalize_domain(raw).ok_or_else(|| {
        ApiError::invalid(
            "domain",
            format!("{raw:?} is not a valid domain name (e.g. app.example.com)"),
        )
    })?;
    let p = &edge(st)?.preview_domain;
    if d == *p || d.ends_with(&format!(".{p}")) {
        return Err(ApiError::invalid(
            "domain",
            format!("{d} is under the preview domain {p}: expose a port with a slug instead"),
        ));
    }
    Ok(d)
}

fn port_view(edge: &warren_edge::EdgeConfig, p: &EdgePort, domain: Option<&EdgeDomain>) -> Value {
    let domain = domain
        .filter(|d| d.port == p.port as i64)
        .map(|d| d.domain.clone());
    json!({
        "port": p.port,
        "hash": p.slug,
        "slug": p.slug,
        "label": p.label,
        "domain": domain,
        "url": edge.preview_url(&p.slug),
        "created_at": p.created_at,
    })
}

fn refuse_if_air_gapped(w: &Workspace) -> ApiResult<()> {
    let cfg = w.config.as_object().cloned().unwrap_or_default();
    let p = crate::network::policy_of(&cfg).unwrap_or_default();
    if p.air_gapped {
        return Err(ApiError::conflict(
            "public_access_blocked",
            format!(
                "workspace {} is air-gapped: its network rules admit no ingress, so the edge cannot reach it",
                w.id
            ),
        ));
    }
    Ok(())
}

/// Make the firewall admit the edge on exactly the published ports (and the custom
/// domain's): `network_config.edge_ports`, applied at once to a running workspace.
async fn sync_edge_ports(st: &AppState, client_id: &str, w: &Workspace) -> ApiResult<Workspace> {
    let mut ports: Vec<u16> = st
        .manager
        .store
        .edge_ports(&w.id)
        .await?
        .iter()
        .map(|p| p.port)
        .collect();
    if let Some(d) = st.manager.store.edge_domain_of(&w.id).await? {
        ports.extend(u16::try_from(d.port).ok());
    }
    ports.sort_unstable();
    ports.dedup();
    let mut nc = crate::network::network_config(w);
    let want = json!(ports);
    if nc.get(crate::network::EDGE_PORTS) == Some(&want) {
        return Ok(w.clone());
    }
    nc.insert(crate::network::EDGE_PORTS.into(), want);
    st.manager.set_network(client_id, &w.id, nc).await
}

// ---- public access --------------------------------------------------------------

pub async fn list_ports(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let e = edge(&st)?;
    let w = find(&st, &c.id, &id).await?;
    let domain = st.manager.store.edge_domain_of(&w.id).await?;
    let ports: Vec<Value> = st
        .manager
        .store
        .edge_ports(&w.id)
        .await?
        .iter()
        .map(|p| port_view(e, p, domain.as_ref()))
        .collect();
    Ok(Json(json!({
        "success": true,
        "ports": ports,
        "max_ports": MAX_PORTS,
        "preview_domain": e.preview_domain,
    })))
}

pub async fn expose(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let e = edge(&st)?;
    let b = json_body(&body)?;
    let o = object(&b)?;
    let port = port_of(o.get("port"), "port")?;
    let label = opt_string(o, "label", 200)?;
    let slug = opt_string(o, "slug", 63)?;
    if let Some(s) = slug {
        check_slug(&st, s)?;
    }
    let domain = opt_string(o, "domain", 253)?
        .map(|d| check_domain(&st, d))
        .transpose()?;
    let w = find(&st, &c.id, &id).await?;
    refuse_if_air_gapped(&w)?;
    if let Some(d) = &domain {
        domain_free(&st, &w.id, d).await?;
    }
    let slug = slug
        .map(str::to_string)
        .unwrap_or_else(|| random_slug(w.slug.as_deref().unwrap_or(&w.id)));
    let p = match st
        .manager
        .store
        .insert_edge_port(&w.id, port, &slug, label, MAX_PORTS)
        .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(n)) => {
            return Err(ApiError::conflict(
                "port_limit_reached",
                format!(
                    "workspace {} already exposes {n} ports; at most {MAX_PORTS}: revoke one first",
                    w.id
                ),
            ))
        }
        Err(StateError::Duplicate(what)) if what.starts_with("port") => {
            return Err(ApiError::conflict(
                "port_already_exposed",
                format!("port {port} of workspace {} is already exposed", w.id),
            ))
        }
        Err(StateError::Duplicate(_)) => {
            return Err(ApiError::conflict(
                "slug_taken",
                format!("slug {slug:?} is already in use"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(d) = &domain {
        if let Err(e) = connect_domain(&st, &w, d, port, false).await {
            let _ = st.manager.store.delete_edge_port(&w.id, port).await;
            return Err(e);
        }
    }
    let w = match sync_edge_ports(&st, &c.id, &w).await {
        Ok(w) => w,
        Err(e) => {
            // Nothing changes when the firewall cannot follow.
            let _ = st.manager.store.delete_edge_port(&w.id, port).await;
            if domain.is_some() {
                let _ = st.manager.store.delete_edge_domain(&w.id).await;
            }
            return Err(e);
        }
    };
    if let Some(d) = &domain {
        start_acme(&st, d, false)?;
    }
    st.manager
        .log(
            Some(&c.id),
            &w.id,
            "public_access_expose",
            "ok",
            Some(&format!("port {port}")),
        )
        .await;
    let d = st.manager.store.edge_domain_of(&w.id).await?;
    tracing::info!(workspace_id = %w.id, port, slug = %p.slug, "port exposed");
    Ok((
        StatusCode::CREATED,
        Json(json!({"success": true, "port": port_view(e, &p, d.as_ref())})),
    ))
}

fn path_port(s: &str) -> ApiResult<u16> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::invalid("port", format!("{s:?} is not a port 1-65535")))
}

fn not_exposed(w: &Workspace, port: u16) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("port {port} of workspace {} is not exposed", w.id),
    )
}

pub async fn update_port(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path((id, port)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let e = edge(&st)?;
    let port = path_port(&port)?;
    let b = json_body(&body)?;
    let o = object(&b)?;
    let slug = opt_string(o, "slug", 63)?;
    let label = opt_string(o, "label", 200)?;
    if let Some(s) = slug {
        check_slug(&st, s)?;
    }
    if slug.is_none() && label.is_none() {
        return Err(ApiError::invalid(
            "slug",
            "give a slug or a label to change",
        ));
    }
    let w = find(&st, &c.id, &id).await?;
    let p = match st
        .manager
        .store
        .update_edge_port(&w.id, port, slug, label)
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => return Err(not_exposed(&w, port)),
        Err(StateError::Duplicate(_)) => {
            return Err(ApiError::conflict(
                "slug_taken",
                format!("slug {:?} is already in use", slug.unwrap_or_default()),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    st.manager
        .log(
            Some(&c.id),
            &w.id,
            "public_access_update",
            "ok",
            Some(&format!("port {port}")),
        )
        .await;
    let d = st.manager.store.edge_domain_of(&w.id).await?;
    Ok(Json(
        json!({"success": true, "port": port_view(e, &p, d.as_ref())}),
    ))
}

pub async fn revoke(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path((id, port)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    edge(&st)?;
    let port = path_port(&port)?;
    let w = find(&st, &c.id, &id).await?;
    if !st.manager.store.delete_edge_port(&w.id, port).await? {
        return Err(not_exposed(&w, port));
    }
    // The route is gone (the edge answers 404 from now on); then the firewall closes.
    sync_edge_ports(&st, &c.id, &w).await?;
    st.manager
        .log(
            Some(&c.id),
            &w.id,
            "public_access_revoke",
            "ok",
            Some(&format!("port {port}")),
        )
        .await;
    tracing::info!(workspace_id = %w.id, port, "port revoked");
    Ok(Json(json!({
        "success": true,
        "port": port,
        "message": format!("port {port} is no longer exposed"),
    })))
}

// ---- custom domains -------------------------------------------------------------

async fn domain_free(st: &AppState, workspace_id: &str, d: &str) -> ApiResult<()> {
    match st.manager.store.edge_domain(d).await? {
        Some(other) if other.workspace_id != workspace_id => Err(ApiError::conflict(
            "domain_taken",
            format!("{d} is already connected to another workspace"),
        )),
        _ => Ok(()),
    }
}

fn domain_names(d: &str, include_www: bool) -> Vec<String> {
    let mut names = vec![d.to_string()];
    if include_www {
        names.push(format!("www.{d}"));
    }
    names
}

/// Record the route and issue its certificate now (local CA). With an ACME directory
/// the status is `pending` until [`start_acme`] replaces that certificate.
async fn connect_domain(
    st: &AppState,
    w: &Workspace,
    d: &str,
    port: u16,
    include_www: bool,
) -> ApiResult<warren_edge::certs::Issued> {
    let cs = certs(st)?;
    let issued = cs
        .issue(d, &domain_names(d, include_www))
        .await
        .map_err(|e| ApiError::internal(format!("issuing the certificate for {d}: {e}")))?;
    let row = EdgeDomain {
        domain: d.to_string(),
        workspace_id: w.id.clone(),
        port: port as i64,
        include_www,
        ssl_status: if cs.acme_enabled() {
            "pending"
        } else {
            "active"
        }
        .into(),
        ssl_error: None,
        created_at: warren_state::now(),
    };
    match st.manager.store.set_edge_domain(&row).await {
        Ok(()) => Ok(issued),
        Err(StateError::Duplicate(_)) => Err(ApiError::conflict(
            "domain_taken",
            format!("{d} is already connected to another workspace"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Order the ACME certificate of a connected domain in the background (no-op without
/// an ACME directory).
fn start_acme(st: &AppState, d: &str, include_www: bool) -> ApiResult<()> {
    certs(st)?.request_acme(d, domain_names(d, include_www));
    Ok(())
}

fn issuer_name(source: &str) -> &'static str {
    if source == warren_edge::certs::SOURCE_ACME {
        "ACME"
    } else {
        "Warren local CA"
    }
}

/// The host names a custom domain may be a CNAME to: the workspace's preview hosts
/// (the domain's port first) and the preview domain itself.
async fn cname_targets(
    st: &AppState,
    e: &warren_edge::EdgeConfig,
    w: &Workspace,
    port: Option<u16>,
) -> ApiResult<Vec<String>> {
    let mut ports = st.manager.store.edge_ports(&w.id).await?;
    ports.sort_by_key(|p| Some(p.port) != port);
    let mut t: Vec<String> = ports
        .iter()
        .map(|p| format!("{}.{}", p.slug, e.preview_domain))
        .collect();
    t.push(e.preview_domain.clone());
    Ok(t)
}

async fn dns_report(
    st: &AppState,
    e: &warren_edge::EdgeConfig,
    w: &Workspace,
    d: &str,
    port: Option<u16>,
) -> ApiResult<(warren_edge::dns::DnsReport, Vec<String>)> {
    let targets = cname_targets(st, e, w, port).await?;
    let span = tracing::info_span!("dns_check", workspace_id = %w.id, domain = d);
    let r =
        tracing::Instrument::instrument(warren_edge::dns::check(&e.dns, d, &targets), span).await;
    Ok((r, targets))
}

async fn domain_info(st: &AppState, d: &EdgeDomain) -> ApiResult<Value> {
    let cert = certs(st)?
        .get(&d.domain)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json!({
        "customDomain": d.domain,
        "port": d.port,
        "sslStatus": d.ssl_status,
        "sslExpiry": cert.as_ref().map(|c| c.not_after.clone()),
        "sslError": d.ssl_error,
        "sslIssuer": cert.as_ref().map(|c| issuer_name(&c.source)),
        "sslSource": cert.map(|c| c.source),
        "includeWww": d.include_www,
        "url": edge(st)?.url_for(&d.domain),
    }))
}

pub async fn domain_get(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    edge(&st)?;
    let w = find(&st, &c.id, &id).await?;
    let domain = match st.manager.store.edge_domain_of(&w.id).await? {
        Some(d) => domain_info(&st, &d).await?,
        None => Value::Null,
    };
    Ok(Json(json!({"success": true, "domain": domain})))
}

pub async fn domain_connect(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let e = edge(&st)?;
    let b = json_body(&body)?;
    let o = object(&b)?;
    let d = required_domain(&st, o)?;
    let include_www = match o.get("include_www") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("include_www", "must be a boolean")),
    };
    let w = find(&st, &c.id, &id).await?;
    let port = match o.get("port") {
        None | Some(Value::Null) => st
            .manager
            .store
            .edge_ports(&w.id)
            .await?
            .first()
            .map(|p| p.port)
            .ok_or_else(|| {
                ApiError::invalid(
                    "port",
                    "give the port (no port of this workspace is exposed)",
                )
            })?,
        v => port_of(v, "port")?,
    };
    refuse_if_air_gapped(&w)?;
    domain_free(&st, &w.id, &d).await?;
    let before = st.manager.store.edge_domain_of(&w.id).await?;
    // The DNS is reported, not required (the client's docs: check before connecting);
    // the route works at once, and an ACME order fails until the DNS points here.
    let (dns, _) = dns_report(&st, e, &w, &d, Some(port)).await?;
    let issued = connect_domain(&st, &w, &d, port, include_www).await?;
    if let Err(e) = sync_edge_ports(&st, &c.id, &w).await {
        match &before {
            Some(b) => st.manager.store.set_edge_domain(b).await?,
            None => {
                st.manager.store.delete_edge_domain(&w.id).await?;
            }
        }
        return Err(e);
    }
    start_acme(&st, &d, include_www)?;
    st.manager
        .log(Some(&c.id), &w.id, "domain_connect", "ok", Some(&d))
        .await;
    let status = st
        .manager
        .store
        .edge_domain(&d)
        .await?
        .map(|r| r.ssl_status)
        .unwrap_or_else(|| "active".into());
    Ok(Json(json!({
        "success": true,
        "domain": d,
        "port": port,
        "ssl": {
            "status": status,
            "expiresAt": issued.record.not_after,
            "issuer": issuer_name(&issued.record.source),
        },
        "dns": {
            "verified": dns.verified,
            "cname": dns.cname,
            "ownership": dns.verified,
            "errors": dns.errors,
        },
        "url": e.url_for(&d),
    })))
}

pub async fn domain_disconnect(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    edge(&st)?;
    let w = find(&st, &c.id, &id).await?;
    let Some(d) = st.manager.store.delete_edge_domain(&w.id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("workspace {} has no custom domain", w.id),
        ));
    };
    sync_edge_ports(&st, &c.id, &w).await?;
    st.manager
        .log(Some(&c.id), &w.id, "domain_disconnect", "ok", Some(&d))
        .await;
    Ok(Json(
        json!({"success": true, "domain": d, "message": format!("{d} disconnected")}),
    ))
}

pub async fn domain_check(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let e = edge(&st)?;
    let b = json_body(&body)?;
    let o = object(&b)?;
    let d = required_domain(&st, o)?;
    let w = find(&st, &c.id, &id).await?;
    let port = st
        .manager
        .store
        .edge_domain_of(&w.id)
        .await?
        .and_then(|x| u16::try_from(x.port).ok());
    let (r, targets) = dns_report(&st, e, &w, &d, port).await?;
    Ok(Json(dns_view(e, &d, &r, &targets)))
}

/// `CheckDNSResponse` / `VerifyDomainResponse`.
fn dns_view(
    e: &warren_edge::EdgeConfig,
    d: &str,
    r: &warren_edge::dns::DnsReport,
    targets: &[String],
) -> Value {
    json!({
        "success": true,
        "domain": d,
        // Edge DNS only (as the client's enterprise grants): no TXT ownership record.
        "enterprise": true,
        "verified": r.verified,
        "cname": r.cname,
        "ownership": null,
        "records": r.records,
        "errors": r.errors,
        "required_records": {
            "cname": {"host": d, "target": targets.first().cloned().unwrap_or_default()},
        },
        "edge_ips": e.dns.public_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
    })
}

/// `POST /domain/verify` `{domain, resource_id?}`: the pre-flight DNS check of
/// `client.domain.verify`. With a workspace id the CNAME may name its preview hosts;
/// without, the preview domain itself.
pub async fn domain_verify(
    State(st): State<AppState>,
    Authed(c): Authed,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let e = edge(&st)?;
    let b = json_body(&body)?;
    let o = object(&b)?;
    let d = required_domain(&st, o)?;
    let (r, targets) = match opt_string(o, "resource_id", 128)? {
        Some(id) => {
            let w = find(&st, &c.id, id).await?;
            let port = st
                .manager
                .store
                .edge_domain_of(&w.id)
                .await?
                .and_then(|x| u16::try_from(x.port).ok());
            dns_report(&st, e, &w, &d, port).await?
        }
        None => {
            let targets = vec![e.preview_domain.clone()];
            (warren_edge::dns::check(&e.dns, &d, &targets).await, targets)
        }
    };
    Ok(Json(dns_view(e, &d, &r, &targets)))
}

pub async fn domain_renew(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    edge(&st)?;
    let w = find(&st, &c.id, &id).await?;
    let Some(d) = st.manager.store.edge_domain_of(&w.id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("workspace {} has no custom domain", w.id),
        ));
    };
    let cs = certs(&st)?;
    let in_background = cs
        .renew(&d.domain, &domain_names(&d.domain, d.include_www), true)
        .await
        .map_err(|e| {
            ApiError::internal(format!("renewing the certificate of {}: {e}", d.domain))
        })?;
    let cert = cs
        .get(&d.domain)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    st.manager
        .log(
            Some(&c.id),
            &w.id,
            "domain_ssl_renew",
            "ok",
            Some(&d.domain),
        )
        .await;
    // With ACME the new certificate arrives in the background: `pending` until then
    // (GET .../domain shows it), and the current one keeps serving.
    Ok(Json(json!({
        "success": true,
        "domain": d.domain,
        "ssl": {
            "status": if in_background { "pending" } else { "active" },
            "expiresAt": cert.as_ref().map(|c| c.not_after.clone()),
            "issuer": cert.as_ref().map(|c| issuer_name(&c.source)),
        },
    })))
}

/// `GET /edge/ca.pem`: the local CA's root certificate (public; no credentials).
pub async fn ca_pem(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let pem = certs(&st)?
        .ca()
        .pem()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem))
}

// ---- SSH ------------------------------------------------------------------------

fn ssh_connection(e: &warren_edge::EdgeConfig, w: &Workspace) -> Value {
    match e.ssh_port {
        Some(port) => json!({
            "user": w.id,
            "host": e.public_host,
            "port": port,
            "bastion": format!("{}:{port}", e.public_host),
            "command": format!("ssh -p {port} {}@{}", w.id, e.public_host),
            // scp speaks sftp to the gateway (OpenSSH 9+ by default).
            "scp_upload": format!("scp -P {port} <local file> {}@{}:<remote path>", w.id, e.public_host),
            "scp_download": format!("scp -P {port} {}@{}:<remote path> <local file>", w.id, e.public_host),
            "sftp": format!("sftp -P {port} {}@{}", w.id, e.public_host),
        }),
        None => Value::Null,
    }
}

async fn ssh_view(st: &AppState, e: &warren_edge::EdgeConfig, w: &Workspace) -> ApiResult<Value> {
    let s = st.manager.store.edge_ssh(&w.id).await?.unwrap_or_default();
    let mut methods = Vec::new();
    if s.public_key.is_some() {
        methods.push("publickey");
    }
    if s.password_hash.is_some() {
        methods.push("password");
    }
    Ok(json!({
        "success": true,
        "supported": e.ssh_port.is_some(),
        "ssh_enabled": s.enabled,
        "ssh_id": w.id,
        "auth_methods": methods,
        "password_auth_enabled": s.password_hash.is_some(),
        "password_affects_desktop": false,
        "ssh_key_set": s.public_key.is_some(),
        "connection": if s.enabled { ssh_connection(e, w) } else { Value::Null },
    }))
}

pub async fn ssh_status(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let e = edge(&st)?;
    let w = find(&st, &c.id, &id).await?;
    Ok(Json(ssh_view(&st, e, &w).await?))
}

async fn ssh_row(st: &AppState, w: &Workspace) -> ApiResult<warren_state::EdgeSsh> {
    Ok(st
        .manager
        .store
        .edge_ssh(&w.id)
        .await?
        .unwrap_or_else(|| warren_state::EdgeSsh {
            workspace_id: w.id.clone(),
            ..Default::default()
        }))
}

pub async fn ssh_enable(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let e = edge(&st)?;
    if e.ssh_port.is_none() {
        return Err(ApiError::conflict(
            "ssh_gateway_disabled",
            "this server runs no SSH gateway: start `warren server` with --ssh-addr",
        ));
    }
    let w = find(&st, &c.id, &id).await?;
    let mut s = ssh_row(&st, &w).await?;
    if s.public_key.is_none() && s.password_hash.is_none() {
        return Err(ApiError::conflict(
            "ssh_no_credentials",
            format!(
                "set a public key (POST /workspace/{}/ssh/key) or a password (.../ssh/password) first",
                w.id
            ),
        ));
    }
    s.enabled = true;
    st.manager.store.put_edge_ssh(&s).await?;
    st.manager
        .log(Some(&c.id), &w.id, "ssh_enable", "ok", None)
        .await;
    Ok(Json(ssh_view(&st, e, &w).await?))
}

pub async fn ssh_disable(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let e = edge(&st)?;
    let w = find(&st, &c.id, &id).await?;
    let mut s = ssh_row(&st, &w).await?;
    s.enabled = false;
    st.manager.store.put_edge_ssh(&s).await?;
    st.manager
        .log(Some(&c.id), &w.id, "ssh_disable", "ok", None)
        .await;
    Ok(Json(ssh_view(&st, e, &w).await?))
}

fn check_user(o: &Map<String, Value>) -> ApiResult<()> {
    match opt_string(o, "user", 64)? {
        None | Some("root") => Ok(()),
        Some(u) => Err(ApiError::invalid(
            "user",
            format!("{u:?}: commands run as the workspace's user; only \"root\" (the default) is accepted"),
        )),
    }
}

pub async fn ssh_key(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let e = edge(&st)?;
    let b = json_body(&body)?;
    let o = object(&b)?;
    check_user(o)?;
    let key = opt_string(o, "public_key", 16 << 10)?
        .ok_or_else(|| ApiError::invalid("public_key", "give an OpenSSH public key line"))?;
    let parsed = warren_edge::ssh::parse_public_key(key).ok_or_else(|| {
        ApiError::invalid(
            "public_key",
            "not an OpenSSH public key (e.g. \"ssh-ed25519 AAAA... you@host\")",
        )
    })?;
    let w = find(&st, &c.id, &id).await?;
    let mut s = ssh_row(&st, &w).await?;
    s.public_key = Some(
        parsed
            .to_openssh()
            .map_err(|e| ApiError::internal(e.to_string()))?,
    );
    st.manager.store.put_edge_ssh(&s).await?;
    st.manager
        .log(Some(&c.id), &w.id, "ssh_key", "ok", None)
        .await;
    Ok(Json(ssh_view(&st, e, &w).await?))
}

pub async fn ssh_password(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let e = edge(&st)?;
    let b = json_body(&body)?;
    let o = object(&b)?;
    check_user(o)?;
    let pw = opt_string(o, "password", 1024)?
        .ok_or_else(|| ApiError::invalid("password", "give the password"))?;
    if pw.chars().count() < 8 {
        return Err(ApiError::invalid("password", "at least 8 characters"));
    }
    let w = find(&st, &c.id, &id).await?;
    let mut s = ssh_row(&st, &w).await?;
    let pw = pw.to_string();
    s.password_hash = Some(
        tokio::task::spawn_blocking(move || warren_edge::ssh::hash_password(&pw))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?,
    );
    st.manager.store.put_edge_ssh(&s).await?;
    st.manager
        .log(Some(&c.id), &w.id, "ssh_password", "ok", None)
        .await;
    let mut v = ssh_view(&st, e, &w).await?;
    v["ssh_password_changed"] = json!(true);
    Ok(Json(v))
}
