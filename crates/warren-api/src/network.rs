//! A workspace's network policy as the API takes and shows it.
//!
//! It lives in the workspace's config as `config.network_config` (the `oblien` client's
//! create field), with Warren's fields beside the client's own:
//! `allow_internet`, `air_gapped`, `ingress` (IPs/CIDRs), `ingress_ports`, `egress`
//! (IPs/CIDRs/hostnames), `ingress_kbps`, `egress_kbps`, `outbound_ip`, and
//! `private_links` (`[{workspace_id, ip}]`: linked workspaces may reach this one).
//! At create, `config.ingress`, `config.egress`, `config.allow_internet`,
//! `config.air_gapped` and a top-level `allow_internet` are folded into it.
//! Validation is [`warren_netpolicy::NetworkPolicy::compile`]'s, with the field named
//! as the request has it.

use crate::error::{ApiError, ApiResult};
use serde_json::{json, Map, Value};
use std::net::Ipv4Addr;
use warren_netpolicy::NetworkPolicy;
use warren_state::Workspace;

pub const KEY: &str = "network_config";
/// Key of `network_config` holding the ports published through the edge.
pub const EDGE_PORTS: &str = "edge_ports";
/// Keys accepted at the config's top level and moved into `network_config`.
const FOLDED: &[&str] = &["ingress", "egress", "allow_internet", "air_gapped"];

fn field(f: &str) -> String {
    format!("config.{KEY}.{f}")
}

/// Fold network keys given elsewhere in a create body into `config.network_config`.
pub fn normalize(body: &Map<String, Value>, config: &mut Map<String, Value>) -> ApiResult<()> {
    let mut nc = match config.remove(KEY) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("config.{KEY}"),
                "must be an object",
            ))
        }
    };
    for k in FOLDED {
        if let Some(v) = config.remove(*k) {
            nc.insert(k.to_string(), v);
        }
    }
    if let Some(v) = body.get("allow_internet") {
        nc.insert("allow_internet".into(), v.clone());
    }
    if !nc.is_empty() {
        config.insert(KEY.into(), Value::Object(nc));
    }
    Ok(())
}

fn strings(nc: &Map<String, Value>, k: &str) -> ApiResult<Vec<String>> {
    match nc.get(k) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| ApiError::invalid(&field(k), "items must be strings"))
            })
            .collect(),
        Some(_) => Err(ApiError::invalid(&field(k), "must be an array of strings")),
    }
}

fn flag(nc: &Map<String, Value>, k: &str, default: bool) -> ApiResult<bool> {
    match nc.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(&field(k), "must be true or false")),
    }
}

fn uint(nc: &Map<String, Value>, k: &str) -> ApiResult<Option<u64>> {
    match nc.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(&field(k), "must be a whole number")),
    }
}

/// Does a config patch change the network?
pub fn touches(patch: &Map<String, Value>) -> bool {
    patch.contains_key(KEY) || FOLDED.iter().any(|k| patch.contains_key(*k))
}

/// The policy a config asks for, checked (422 naming the field).
pub fn policy_of(config: &Map<String, Value>) -> ApiResult<NetworkPolicy> {
    let empty = Map::new();
    let nc = match config.get(KEY) {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("config.{KEY}"),
                "must be an object",
            ))
        }
    };
    for key in ["public_ingress", "public_access"] {
        if flag(nc, key, false)? {
            return Err(ApiError::invalid(
                &format!("config.{KEY}.{key}"),
                PUBLIC_ACCESS_READ_ONLY,
            ));
        }
    }
    let mut ports = Vec::new();
    match nc.get("ingress_ports") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for p in a {
                match p.as_u64() {
                    Some(p @ 1..=65535) => ports.push(p as u16),
                    _ => {
                        return Err(ApiError::invalid(
                            &field("ingress_ports"),
                            format!("{p} is not a port 1-65535"),
                        ))
                    }
                }
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                &field("ingress_ports"),
                "must be an array of ports",
            ))
        }
    }
    let mut ingress = strings(nc, "ingress")?;
    match nc.get("private_links") {
        None | Some(Value::Null) => {}
        Some(Value::Array(links)) => {
            for l in links {
                match l["ip"].as_str() {
                    Some(ip) => ingress.push(ip.to_string()),
                    None => {
                        return Err(ApiError::invalid(
                            &field("private_links"),
                            "items are {workspace_id, ip}",
                        ))
                    }
                }
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                &field("private_links"),
                "must be an array",
            ))
        }
    }
    let outbound_ip = match nc.get("outbound_ip") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.parse::<Ipv4Addr>().map_err(|_| {
            ApiError::invalid(
                &field("outbound_ip"),
                format!("{s:?} is not an IPv4 address"),
            )
        })?),
        Some(_) => return Err(ApiError::invalid(&field("outbound_ip"), "must be a string")),
    };
    let p = NetworkPolicy {
        allow_internet: flag(nc, "allow_internet", true)?,
        air_gapped: flag(nc, "air_gapped", false)?,
        ingress,
        ingress_ports: ports,
        egress: strings(nc, "egress")?,
        outbound_ip,
        ingress_kbps: uint(nc, "ingress_kbps")?,
        egress_kbps: uint(nc, "egress_kbps")?,
        // Kept here by the public-access routes, never by PATCH .../network.
        edge_ports: nc
            .get(EDGE_PORTS)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
                    .collect()
            })
            .unwrap_or_default(),
    };
    p.compile()
        .map_err(|e| ApiError::invalid(&field(e.field), e.reason))?;
    Ok(p)
}

/// `config.network_config` of a workspace (empty if none).
pub fn network_config(w: &Workspace) -> Map<String, Value> {
    w.config
        .get(KEY)
        .and_then(|v| v.as_object())
        .cloned()
        .unwrap_or_default()
}

/// `GET /workspace/:id/network` (`NetworkConfig` in the client's types).
pub fn view(w: &Workspace) -> Value {
    let cfg = w.config.as_object().cloned().unwrap_or_default();
    let p = policy_of(&cfg).unwrap_or_default();
    let nc = network_config(w);
    let ip: Option<Ipv4Addr> = w.internal_ip.as_deref().and_then(|s| s.parse().ok());
    // The guest is .2 of its /30; the host end (gateway, DNS resolver) is .1.
    let gateway = ip.map(|i| Ipv4Addr::from(u32::from(i).saturating_sub(1)).to_string());
    json!({
        "success": true,
        "ip": w.internal_ip,
        "gateway": gateway,
        "dns": if p.air_gapped { Value::Null } else { json!(gateway) },
        // Published ports (and a custom domain's port) are what the edge may reach.
        "public_access": nc
            .get(EDGE_PORTS)
            .and_then(|v| v.as_array())
            .is_some_and(|a| !a.is_empty()),
        "allow_internet": p.allow_internet,
        "air_gapped": p.air_gapped,
        "ingress": nc.get("ingress").cloned().unwrap_or(json!([])),
        "ingress_ports": p.ingress_ports,
        "egress": p.egress,
        "ingress_kbps": p.ingress_kbps,
        "egress_kbps": p.egress_kbps,
        "private_links": nc.get("private_links").cloned().unwrap_or(json!([])),
        "outbound_mode": "managed",
        "outbound_ip": p.outbound_ip.map(|i| i.to_string()),
    })
}

/// Why `public_access: true` cannot be set: it reports published ports, and ports are
/// published one by one (each gets its own URL), so there is nothing for a flag to open.
const PUBLIC_ACCESS_READ_ONLY: &str = "public_access is true while ports are published; \
     publish one with POST /workspace/{id}/public-access {port} (false is accepted and \
     changes nothing)";

/// Keys of `PATCH /workspace/:id/network` copied into `network_config` as given.
const PATCHABLE: &[&str] = &[
    "allow_internet",
    "air_gapped",
    "ingress",
    "ingress_ports",
    "egress",
    "ingress_kbps",
    "egress_kbps",
    "outbound_ip",
];

/// Apply a PATCH body to a network config; `links` are the resolved
/// `private_link_ids` (`None`: not given). Refuses what cannot be honoured here.
pub fn patch(
    nc: &mut Map<String, Value>,
    body: &Map<String, Value>,
    links: Option<Vec<Value>>,
) -> ApiResult<()> {
    if body.get("public_access") == Some(&Value::Bool(true)) {
        return Err(ApiError::invalid("public_access", PUBLIC_ACCESS_READ_ONLY));
    }
    match body.get("outbound_mode").and_then(|v| v.as_str()) {
        None | Some("managed") => {}
        Some("custom") => {
            return Err(ApiError::not_implemented(
                "outbound traffic through a custom proxy (BYOP): Warren routes egress through \
                 its own host; give an outbound_ip of this host instead",
                "a later outbound-proxy issue",
            ))
        }
        Some(m) => {
            return Err(ApiError::invalid(
                "outbound_mode",
                format!("{m:?}: use managed or custom"),
            ))
        }
    }
    if body.contains_key("custom_proxy") && !body["custom_proxy"].is_null() {
        return Err(ApiError::not_implemented(
            "outbound traffic through a custom proxy (BYOP)",
            "a later outbound-proxy issue",
        ));
    }
    for k in PATCHABLE {
        match body.get(*k) {
            None => {}
            Some(Value::Null) => {
                nc.remove(*k);
            }
            Some(v) => {
                nc.insert(k.to_string(), v.clone());
            }
        }
    }
    if let Some(l) = links {
        nc.insert("private_links".into(), Value::Array(l));
    }
    Ok(())
}

/// Check that `ip` can be the source of this host's outgoing traffic: it must be
/// assigned to one of its interfaces (binding to it succeeds only then).
pub fn check_outbound_ip(ip: Ipv4Addr) -> ApiResult<()> {
    match std::net::UdpSocket::bind((ip, 0)) {
        Ok(_) => Ok(()),
        Err(_) => Err(ApiError::invalid(
            "ip",
            format!(
                "{ip} is not an address of this host: an outbound IP must be assigned to one \
                 of its interfaces first"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_and_validates() {
        let mut cfg =
            json!({"egress": ["api.example.test", "10.0.0.0/8"], "allow_internet": false})
                .as_object()
                .cloned()
                .unwrap();
        normalize(&Map::new(), &mut cfg).unwrap();
        assert!(cfg.get("egress").is_none());
        let p = policy_of(&cfg).unwrap();
        assert!(!p.allow_internet);
        assert_eq!(p.egress.len(), 2);

        let field_of = |v: Value| {
            policy_of(v.as_object().unwrap())
                .unwrap_err()
                .details
                .unwrap()["field"]
                .clone()
        };
        assert_eq!(
            field_of(json!({KEY: {"egress": ["10.0.0.300"]}})),
            "config.network_config.egress"
        );
        assert_eq!(
            field_of(json!({KEY: {"ingress": ["not a cidr"]}})),
            "config.network_config.ingress"
        );
        assert_eq!(
            field_of(json!({KEY: {"ingress_ports": [0]}})),
            "config.network_config.ingress_ports"
        );
        let many: Vec<String> = (0..300)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        assert_eq!(
            field_of(json!({KEY: {"egress": many}})),
            "config.network_config.egress"
        );
        assert_eq!(
            field_of(json!({KEY: {"public_ingress": true}})),
            "config.network_config.public_ingress"
        );
    }

    #[test]
    fn patch_refuses_what_it_cannot_honour() {
        let mut nc = Map::new();
        let body = json!({"outbound_mode": "custom"});
        assert_eq!(
            patch(&mut nc, body.as_object().unwrap(), None)
                .unwrap_err()
                .status
                .as_u16(),
            501
        );
        let body = json!({"public_access": true});
        let e = patch(&mut nc, body.as_object().unwrap(), None).unwrap_err();
        assert_eq!(e.status.as_u16(), 422);
        assert!(nc.is_empty(), "nothing changed: {nc:?}");
        let body = json!({"egress": ["api.example.test"], "ingress_kbps": 800});
        patch(&mut nc, body.as_object().unwrap(), None).unwrap();
        assert_eq!(nc["ingress_kbps"], 800);
        assert!(check_outbound_ip("127.0.0.1".parse().unwrap()).is_ok());
        assert!(check_outbound_ip("192.0.2.77".parse().unwrap()).is_err());
    }
}
