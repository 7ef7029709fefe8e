//! The OpenAPI document, built from the route tables so it cannot drift from the
//! router: [`ROUTES`] lists what is implemented, `unimplemented::LATER` what answers
//! 501. A test checks every entry is routed and that docs/openapi.json is current.

use crate::routes::unimplemented::LATER;
use serde_json::{json, Map, Value};

/// (method, path, tag, summary, success status).
pub const ROUTES: &[(&str, &str, &str, &str, u16)] = &[
    (
        "GET",
        "/health",
        "server",
        "Liveness of the API server",
        200,
    ),
    ("GET", "/openapi.json", "server", "This document", 200),
    (
        "POST",
        "/workspace",
        "workspaces",
        "Create a workspace (provisioned in the background; wait_ready waits)",
        201,
    ),
    (
        "GET",
        "/workspace",
        "workspaces",
        "List workspaces (page, limit, status, mode)",
        200,
    ),
    (
        "GET",
        "/workspace/quota",
        "workspaces",
        "Limits and usage",
        200,
    ),
    (
        "GET",
        "/workspace/images",
        "workspaces",
        "Images this server can boot (search, category)",
        200,
    ),
    (
        "GET",
        "/workspace/{id}",
        "workspaces",
        "A workspace by id or slug",
        200,
    ),
    (
        "PUT",
        "/workspace/{id}",
        "workspaces",
        "Update name, slug, logo, config (merged)",
        200,
    ),
    (
        "DELETE",
        "/workspace/{id}",
        "workspaces",
        "Delete (accepted; completes in the background)",
        202,
    ),
    (
        "POST",
        "/workspace/{id}/provisioning/retry",
        "workspaces",
        "Retry a failed creation",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/details",
        "workspaces",
        "Workspace, metadata, access and recent operations",
        200,
    ),
    ("GET", "/workspace/{id}/info", "metrics", "VM info", 200),
    (
        "GET",
        "/workspace/{id}/config",
        "metrics",
        "VM configuration",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/stats",
        "metrics",
        "One-shot stats",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/start",
        "power",
        "Start (boots with the kept disk)",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/stop",
        "power",
        "Stop (disk kept)",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/restart",
        "power",
        "Stop then start",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/pause",
        "power",
        "Pause (vCPUs frozen, memory kept)",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/resume",
        "power",
        "Resume a paused workspace",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/ping",
        "lifecycle",
        "Keep-alive: renews the TTL",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/lifecycle",
        "lifecycle",
        "Mode, TTL, restart policy, uptime",
        200,
    ),
    (
        "DELETE",
        "/workspace/{id}/lifecycle",
        "lifecycle",
        "Destroy (same as DELETE /workspace/{id})",
        202,
    ),
    (
        "POST",
        "/workspace/{id}/lifecycle/permanent",
        "lifecycle",
        "Make permanent (no TTL)",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/lifecycle/temporary",
        "lifecycle",
        "Make temporary (ttl, ttl_action, remove_on_exit)",
        200,
    ),
    (
        "PUT",
        "/workspace/{id}/lifecycle/ttl",
        "lifecycle",
        "Change ttl and/or ttl_action",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/metadata",
        "metadata",
        "Key/value metadata",
        200,
    ),
    (
        "PUT",
        "/workspace/{id}/metadata",
        "metadata",
        "Replace metadata",
        200,
    ),
    (
        "PATCH",
        "/workspace/{id}/metadata",
        "metadata",
        "Merge into metadata",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/logs",
        "logs",
        "Boot or command log (source, tail_lines)",
        200,
    ),
    ("GET", "/workspace/{id}/logs/list", "logs", "Log files", 200),
    (
        "GET",
        "/workspace/{id}/logs/file/{name}",
        "logs",
        "One log file",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/runtime-api-access",
        "runtime-api-access",
        "Whether runtime API access is enabled",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/runtime-api-access/enable",
        "runtime-api-access",
        "Enable; returns a gateway JWT",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/runtime-api-access/disable",
        "runtime-api-access",
        "Disable; revokes issued gateway JWTs",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/runtime-api-access/token",
        "runtime-api-access",
        "A fresh gateway JWT",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/runtime-api-access/token",
        "runtime-api-access",
        "Rotate: revoke earlier JWTs, return a new one",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/runtime-api-access/token/raw",
        "runtime-api-access",
        "The agent's raw token, ip and port (direct access)",
        200,
    ),
];

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["success", "code", "error", "message"],
        "properties": {
            "success": {"type": "boolean", "const": false},
            "code": {"type": "string"},
            "error": {"type": "string"},
            "message": {"type": "string"},
            "details": {"type": "object"},
            "request_id": {"type": "string"}
        }
    })
}

fn params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

fn error_ref(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The whole document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    let mut put = |method: &str, path: &str, op: Value| {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[method.to_lowercase()] = op;
    };
    for (m, p, tag, summary, ok) in ROUTES {
        let public = matches!(*p, "/health" | "/openapi.json");
        let mut responses = json!({
            ok.to_string(): {"description": "success (`success: true`)", "content": {"application/json": {}}},
        });
        if !public {
            responses["401"] = error_ref("missing or invalid credentials");
            responses["404"] = error_ref("no such workspace");
            responses["409"] = error_ref("wrong state, or a limit reached");
            responses["422"] = error_ref("invalid field (details.field names it)");
        }
        let mut op = json!({
            "tags": [tag],
            "summary": summary,
            "operationId": format!("{} {}", m, p),
            "responses": responses,
        });
        let ps = params(p);
        if !ps.is_empty() {
            op["parameters"] = Value::Array(ps);
        }
        if public {
            op["security"] = json!([]);
        }
        put(m, p, op);
    }
    for (m, p, feature, issue) in LATER {
        let op = json!({
            "tags": ["not implemented"],
            "summary": format!("{feature}: not implemented yet (waits on {issue})"),
            "operationId": format!("{} {}", m, p),
            "parameters": params(p),
            "responses": {"501": error_ref("not_implemented")},
        });
        put(m, p, op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Warren workspace API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Workspaces (microVMs) on a self-hosted server. Wire-compatible with the Oblien workspace API as the `oblien` npm client v2.4.0 uses it. The runtime API (exec, files) is served by the data-plane gateway with tokens from runtime-api-access."
        },
        "components": {
            "schemas": {"Error": error_schema()},
            "securitySchemes": {
                "clientId": {"type": "apiKey", "in": "header", "name": "X-Client-ID"},
                "clientSecret": {"type": "apiKey", "in": "header", "name": "X-Client-Secret"},
                "bearer": {"type": "http", "scheme": "bearer", "description": "<client_id>:<client_secret>"}
            }
        },
        "security": [{"clientId": [], "clientSecret": []}, {"bearer": []}],
        "paths": paths,
    })
}

/// The document as checked into docs/openapi.json.
pub fn document_text() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}
