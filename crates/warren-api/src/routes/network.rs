//! `GET/PATCH /workspace/:id/network` and `POST /workspace/:id/network/ip`: a
//! workspace's firewall, private links and outbound IP, changed on a running workspace
//! at once (one atomic firewall transaction) and kept in its config.

use super::{find, json_body};
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::network;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Map, Value};

pub async fn get(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let w = find(&st, &c.id, &id).await?;
    Ok(Json(network::view(&w)))
}

fn object(b: &Value) -> ApiResult<&Map<String, Value>> {
    b.as_object()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON object"))
}

pub async fn update(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let b = json_body(&body)?;
    let o = object(&b)?;
    let w = find(&st, &c.id, &id).await?;
    // Private links name workspaces of the same client; each is admitted by its IP.
    let links = match o.get("private_link_ids") {
        None | Some(Value::Null) => None,
        Some(Value::Array(ids)) => {
            if ids.len() > warren_netpolicy::MAX_RULES {
                return Err(ApiError::invalid(
                    "private_link_ids",
                    format!("at most {} links", warren_netpolicy::MAX_RULES),
                ));
            }
            let mut out = Vec::new();
            for v in ids {
                let lid = v
                    .as_str()
                    .ok_or_else(|| ApiError::invalid("private_link_ids", "items must be ids"))?;
                let other = super::find(&st, &c.id, lid).await.map_err(|_| {
                    ApiError::invalid("private_link_ids", format!("no workspace {lid:?}"))
                })?;
                let ip = other.internal_ip.clone().ok_or_else(|| {
                    ApiError::invalid(
                        "private_link_ids",
                        format!("workspace {lid} has no address yet (start it first)"),
                    )
                })?;
                out.push(json!({"workspace_id": other.id, "ip": ip}));
            }
            Some(out)
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "private_link_ids",
                "must be an array of ids",
            ))
        }
    };
    let mut nc = network::network_config(&w);
    network::patch(&mut nc, o, links)?;
    let w = st.manager.set_network(&c.id, &w.id, nc).await?;
    let mut v = network::view(&w);
    v["message"] = json!("network updated");
    Ok(Json(v))
}

pub async fn outbound_ip(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let b = json_body(&body)?;
    let o = object(&b)?;
    let ip = o
        .get("ip")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ApiError::invalid("ip", "give the outbound IPv4 address"))?;
    let ip: std::net::Ipv4Addr = ip
        .parse()
        .map_err(|_| ApiError::invalid("ip", format!("{ip:?} is not an IPv4 address")))?;
    network::check_outbound_ip(ip)?;
    let w = find(&st, &c.id, &id).await?;
    let mut nc = network::network_config(&w);
    nc.insert("outbound_ip".into(), json!(ip.to_string()));
    let w = st.manager.set_network(&c.id, &w.id, nc).await?;
    let mut v = network::view(&w);
    v["message"] = json!(format!("outbound traffic now leaves from {ip}"));
    Ok(Json(v))
}
