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
        "GET",
        "/metrics",
        "server",
        "Prometheus metrics (OpenMetrics text): workspaces by state, boot and API latency",
        200,
    ),
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
        "Stats: guest CPU %, memory used/total, disk and network bytes and rates, host VMM cost (two samples 0.5 s apart)",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/stats/stream",
        "metrics",
        "The same stats every second (SSE, event: stats)",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/workloads",
        "workloads",
        "List managed workloads (forwarded to the agent; states, name)",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/workloads",
        "workloads",
        "Create a workload (cmd, name, env, working_dir, restart_policy, max_restarts, restart_delay, restart_backoff); it starts unless enabled is false",
        200,
    ),
    (
        "DELETE",
        "/workspace/{id}/workloads",
        "workloads",
        "Stop and delete every workload",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/workloads/stats/stream",
        "workloads",
        "Stats of every workload each second (SSE)",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/workloads/{wid}",
        "workloads",
        "A workload by id or name",
        200,
    ),
    (
        "PUT",
        "/workspace/{id}/workloads/{wid}",
        "workloads",
        "Update a workload (applies from its next start)",
        200,
    ),
    (
        "PATCH",
        "/workspace/{id}/workloads/{wid}",
        "workloads",
        "Update a workload (applies from its next start)",
        200,
    ),
    (
        "DELETE",
        "/workspace/{id}/workloads/{wid}",
        "workloads",
        "Stop and delete a workload",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/workloads/{wid}/start",
        "workloads",
        "Start a workload (restart count reset)",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/workloads/{wid}/stop",
        "workloads",
        "Stop a workload (SIGTERM, SIGKILL after 5 s; no restart)",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/workloads/{wid}/status",
        "workloads",
        "A workload's status, pid, restarts, exit code",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/workloads/{wid}/logs",
        "workloads",
        "A workload's kept log lines (tail)",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/workloads/{wid}/logs/stream",
        "workloads",
        "A workload's log lines (SSE; tail, follow)",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/workloads/{wid}/stats",
        "workloads",
        "A workload's CPU and memory",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/workloads/{wid}/stats/stream",
        "workloads",
        "A workload's CPU and memory each second (SSE)",
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
        "Pause: freeze to disk (memory and device state saved, VMM ended)",
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
        "/workspace/{id}/snapshot",
        "snapshots",
        "Capture memory, processes and disk (after: resume, paused or stop)",
        200,
    ),
    (
        "DELETE",
        "/workspace/{id}/snapshot",
        "snapshots",
        "Delete the workspace's snapshot",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/archives",
        "snapshots",
        "List the disk archives, oldest first",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/archives",
        "snapshots",
        "Archive the disk as a version (version?, format raw)",
        200,
    ),
    (
        "DELETE",
        "/workspace/{id}/archives",
        "snapshots",
        "Delete every archive",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/archives/{version}",
        "snapshots",
        "One archive",
        200,
    ),
    (
        "DELETE",
        "/workspace/{id}/archives/{version}",
        "snapshots",
        "Delete one archive",
        200,
    ),
    (
        "PUT",
        "/workspace/{id}/lifecycle/idle",
        "lifecycle",
        "Sleep on idle: freeze to disk after suspend_after s without traffic, stop after stop_after s asleep; a request through the gateway or a public URL wakes it",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/restore",
        "snapshots",
        "Restore the latest snapshot in place",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/fork",
        "snapshots",
        "Fork a running workspace into count (1-20) new ones: copies of it at one instant (files, processes, memory), each with its own id, address, tokens and boot id; 409 workspace_not_running when it does not run (Warren's own route: not in the oblien client)",
        201,
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
        "/workspace/{id}/network",
        "network",
        "Firewall, private links, outbound IP, bandwidth limits",
        200,
    ),
    (
        "PATCH",
        "/workspace/{id}/network",
        "network",
        "Change ingress, egress, allow_internet, air-gap, limits, private links (live, atomic)",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/resources",
        "resources",
        "CPUs, memory and disk size",
        200,
    ),
    (
        "PUT",
        "/workspace/{id}/resources",
        "resources",
        "Change cpus, memory_mb, disk_size_mb (disk only grows; next start, or now with apply)",
        200,
    ),
    (
        "PATCH",
        "/workspace/{id}/resources",
        "resources",
        "Same as PUT: only the fields given change",
        200,
    ),
    (
        "GET",
        "/edge/ca.pem",
        "edge",
        "The local Warren CA's root certificate (PEM), to trust; no credentials",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/public-access",
        "edge",
        "Exposed ports and their URLs",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/public-access",
        "edge",
        "Expose a port at https://<slug>.<preview domain> (port, label, slug, domain; at most 20)",
        201,
    ),
    (
        "PATCH",
        "/workspace/{id}/public-access/{port}",
        "edge",
        "Change an exposed port's slug or label",
        200,
    ),
    (
        "DELETE",
        "/workspace/{id}/public-access/{port}",
        "edge",
        "Revoke an exposed port (its URL answers 404 at once)",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/domain",
        "edge",
        "The custom domain, its port and certificate",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/domain",
        "edge",
        "Connect a custom domain (works at once; local-CA certificate, replaced by an ACME one when configured)",
        200,
    ),
    (
        "DELETE",
        "/workspace/{id}/domain",
        "edge",
        "Disconnect the custom domain",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/domain/check",
        "edge",
        "Check that a domain points at the edge (CNAME to a preview host, or A/AAAA); no changes",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/domain/ssl/renew",
        "edge",
        "Renew the custom domain's certificate now (ACME: in the background, status pending)",
        200,
    ),
    (
        "POST",
        "/domain/verify",
        "edge",
        "Pre-flight DNS check of a custom domain (resource_id: the workspace); no changes",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/ssh",
        "ssh",
        "SSH status and connection command",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/ssh/enable",
        "ssh",
        "Enable SSH through the gateway (needs a key or password; answers the command)",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/ssh/disable",
        "ssh",
        "Disable SSH",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/ssh/key",
        "ssh",
        "Set the authorized public key",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/ssh/password",
        "ssh",
        "Set the SSH password (stored as PBKDF2)",
        200,
    ),
    (
        "POST",
        "/workspace/{id}/network/ip",
        "network",
        "Outbound IP (an address of this host)",
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
        "/workspace/{id}/logs/stream/boot",
        "logs",
        "Boot log as SSE: the tail, then new lines until the boot ends",
        200,
    ),
    (
        "GET",
        "/workspace/{id}/logs/stream/cmd",
        "logs",
        "Command log as SSE: the tail, then new lines until the command exits",
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

fn workspace_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "status", "image", "ready", "provisioning", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "string", "example": "ws_k3j4h5g6f7d8"},
            "name": {"type": "string"},
            "slug": {"type": ["string", "null"]},
            "logo": {"type": ["string", "null"]},
            "status": {"type": "string", "enum": ["creating", "starting", "running", "stopping", "stopped", "paused", "failed", "deleting"]},
            "desired_status": {"type": "string", "enum": ["running", "stopped", "paused", "deleted"]},
            "mode": {"type": "string", "enum": ["permanent", "temporary"]},
            "image": {"type": "string"},
            "namespace": {"type": "null"},
            "ready": {"type": "boolean", "description": "the runtime API is serving"},
            "info": {"type": "object", "properties": {
                "status": {"type": "string"},
                "is_running": {"type": "boolean"},
                "user_requested_stop": {"type": "boolean"}
            }},
            "provisioning": {"type": "object", "properties": {
                "state": {"type": "string", "enum": ["queued", "running", "ready", "failed"]},
                "phase": {"type": "string", "enum": ["queued", "preparing", "starting", "initializing", "ready", "failed", "deleting"]},
                "message": {"type": "string"},
                "error": {"type": ["object", "null"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
                "created_at": {"type": "string"},
                "updated_at": {"type": "string"},
                "completed_at": {"type": ["string", "null"]}
            }},
            "lifecycle": {"type": "object", "properties": {
                "ttl": {"type": ["string", "integer", "null"]},
                "ttl_action": {"type": ["string", "null"], "enum": ["stop", "pause", "remove", null]},
                "remove_on_exit": {"type": "boolean"},
                "restart_policy": {"type": ["string", "null"]},
                "ttl_expires_at": {"type": ["string", "null"]}
            }},
            "resources": {"type": "object", "properties": {
                "cpus": {"type": "integer"}, "memory_mb": {"type": "integer"}, "disk_size_mb": {"type": "integer"}
            }},
            "config": {"type": "object"},
            "internal_ip": {"type": ["string", "null"]},
            "last_exit_code": {"type": ["integer", "null"]},
            "started_at": {"type": ["string", "null"]},
            "created_at": {"type": "string"},
            "updated_at": {"type": "string"}
        }
    })
}

fn create_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "wait_ready": {"type": "boolean", "default": false, "description": "answer only once ready (or failed)"},
            "ready_timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 3600, "default": 600},
            "idempotency_key": {"type": "string", "maxLength": 255, "description": "the same key never creates a second workspace"},
            "name": {"type": "string", "maxLength": 255},
            "slug": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{1,126}[a-z0-9]$"},
            "image": {"type": "string", "description": "busybox, debian-12, python-3.11, node-18, postgres-15, an OCI layout, a docker-save tarball or a registry reference"},
            "mode": {"type": "string", "enum": ["permanent", "temporary"], "default": "permanent"},
            "cpus": {"type": "integer", "minimum": 1},
            "memory_mb": {"type": "integer", "minimum": 128},
            "disk_size_mb": {"type": "integer", "minimum": 64},
            "config": {"type": "object", "properties": {
                "cpus": {"type": "integer"},
                "memory_mb": {"type": "integer"},
                "disk_size_mb": {"type": "integer"},
                "ttl": {"type": ["integer", "string"], "description": "seconds, or \"30m\", \"1h\", \"2d\"; counts from each start"},
                "ttl_action": {"type": "string", "enum": ["stop", "pause", "remove"], "default": "stop"},
                "remove_on_exit": {"type": "boolean"},
                "env": {"oneOf": [
                    {"type": "array", "items": {"oneOf": [
                        {"type": "string", "description": "KEY=VALUE"},
                        {"type": "object", "properties": {"key": {"type": "string"}, "value": {"type": "string"}}}
                    ]}},
                    {"type": "object", "additionalProperties": {"type": "string"}}
                ]},
                "cmd": {"oneOf": [{"type": "string", "description": "run by /bin/sh -c"}, {"type": "array", "items": {"type": "string"}}]},
                "restart_policy": {"type": "string", "enum": ["no", "never", "on-failure", "always", "unless-stopped"], "description": "stored; not acted on yet"},
                "network_config": {"type": "object", "description": "stored; network policy is not enforced yet"}
            }}
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
        let public = matches!(*p, "/health" | "/openapi.json" | "/metrics");
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
        let one = json!({"application/json": {"schema": {"type": "object", "properties": {
            "success": {"type": "boolean"},
            "workspace": {"$ref": "#/components/schemas/Workspace"}
        }}}});
        match (*m, *p) {
            ("POST", "/workspace") => {
                op["requestBody"] = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/WorkspaceCreate"}}}});
                op["responses"]["200"] = json!({"description": "an earlier create with the same idempotency_key", "content": one.clone()});
                op["responses"]["201"]["content"] = one;
            }
            ("GET", "/workspace") => {
                op["responses"]["200"]["content"] = json!({"application/json": {"schema": {"type": "object", "properties": {
                    "success": {"type": "boolean"},
                    "workspaces": {"type": "array", "items": {"$ref": "#/components/schemas/Workspace"}},
                    "total": {"type": "integer"}, "page": {"type": "integer"}, "limit": {"type": "integer"}
                }}}});
            }
            ("POST", "/workspace/{id}/fork") => {
                op["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {
                    "count": {"type": "integer", "minimum": 1, "maximum": 20, "default": 1, "description": "how many children"},
                    "name": {"type": "string", "maxLength": 100, "description": "children are named <name>-<i> (default <parent name>-fork-<i>)"}
                }}}}});
                op["responses"]["201"]["content"] = json!({"application/json": {"schema": {"type": "object", "properties": {
                    "success": {"type": "boolean"},
                    "parent_id": {"type": "string"},
                    "fork": {"type": "object", "description": "timings: parent_paused_ms, disk_copy_ms, memory_ms, child_ms[], total_ms; shared_memory"},
                    "workspaces": {"type": "array", "items": {"$ref": "#/components/schemas/Workspace"}}
                }}}});
            }
            ("GET" | "PUT", "/workspace/{id}") | ("POST", "/workspace/{id}/provisioning/retry") => {
                op["responses"]["200"]["content"] = one;
            }
            _ => {}
        }
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
            "schemas": {
                "Error": error_schema(),
                "Workspace": workspace_schema(),
                "WorkspaceCreate": create_schema(),
            },
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
