//! Request parsing and validation, and the JSON the API shows for a workspace.
//!
//! Requests are read as JSON values and checked field by field, so every bad field
//! gets a 422 naming it (a typed serde struct would fail on the first one with a
//! message about serde, not about the field).

use crate::error::{ApiError, ApiResult};
use serde_json::{json, Map, Value};
use warren_state::{ObservedState, ProvisioningState, Workspace};

/// A validated `POST /workspace`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRequest {
    pub wait_ready: bool,
    pub ready_timeout_seconds: u64,
    pub idempotency_key: Option<String>,
    pub name: Option<String>,
    pub slug: Option<String>,
    pub image: Option<String>,
    pub mode: String,
    pub cpus: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u64,
    /// The config object as stored (resources folded in).
    pub config: Value,
    pub lifecycle: Lifecycle,
}

/// Lifecycle fields out of a config object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lifecycle {
    pub ttl_seconds: Option<u64>,
    pub ttl_action: Option<String>,
    pub remove_on_exit: bool,
    pub restart_policy: Option<String>,
}

pub const DEFAULT_CPUS: u32 = 1;
pub const DEFAULT_MEMORY_MB: u32 = 512;
pub const DEFAULT_DISK_MB: u64 = 1024;
pub const TTL_ACTIONS: &[&str] = &["stop", "pause", "remove"];
pub const RESTART_POLICIES: &[&str] = &["no", "never", "on-failure", "always", "unless-stopped"];

fn opt_str<'a>(o: &'a Map<String, Value>, field: &str) -> ApiResult<Option<&'a str>> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(ApiError::invalid(field, "must be a string")),
    }
}

fn opt_bool(o: &Map<String, Value>, field: &str) -> ApiResult<Option<bool>> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(field, "must be true or false")),
    }
}

fn opt_uint(o: &Map<String, Value>, field: &str, min: u64, max: u64) -> ApiResult<Option<u64>> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(ApiError::invalid(
                field,
                format!("{n} is out of range {min}-{max} (a whole number)"),
            )),
        },
        Some(_) => Err(ApiError::invalid(field, "must be a number")),
    }
}

/// `3600`, `"3600"`, `"90s"`, `"30m"`, `"1h"`, `"2d"` -> seconds (at least 1).
pub fn parse_ttl(v: &Value) -> Result<u64, String> {
    let bad = || format!("{v} is not a duration: use seconds or a string like \"30m\", \"1h\"");
    let secs = match v {
        Value::Number(n) => n.as_u64().ok_or_else(bad)?,
        Value::String(s) => {
            let s = s.trim();
            let (num, unit) = match s.char_indices().last() {
                Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
                _ => (s, 's'),
            };
            let n: u64 = num.trim().parse().map_err(|_| bad())?;
            let mult = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return Err(bad()),
            };
            n.checked_mul(mult).ok_or_else(bad)?
        }
        _ => return Err(bad()),
    };
    if secs == 0 || secs > 365 * 86400 {
        return Err(format!("{v} is out of range 1s-365d"));
    }
    Ok(secs)
}

fn valid_slug(s: &str) -> bool {
    (3..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn check_slug(field: &str, s: &str) -> ApiResult<()> {
    if valid_slug(s) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("{s:?}: use 3-128 lowercase letters, digits and inner hyphens"),
        ))
    }
}

pub fn check_name(field: &str, s: &str) -> ApiResult<()> {
    if s.trim().is_empty() || s.len() > 255 || s.chars().any(|c| c.is_control()) {
        return Err(ApiError::invalid(
            field,
            "must be 1-255 printable characters",
        ));
    }
    Ok(())
}

/// Validate the lifecycle and runtime fields of a config object.
pub fn check_config(config: &Map<String, Value>) -> ApiResult<Lifecycle> {
    let ttl_seconds = match config.get("ttl") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_ttl(v).map_err(|r| ApiError::invalid("config.ttl", r))?),
    };
    let ttl_action = opt_str(config, "ttl_action")
        .map_err(|_| ApiError::invalid("config.ttl_action", "must be a string"))?;
    if let Some(a) = ttl_action {
        if !TTL_ACTIONS.contains(&a) {
            return Err(ApiError::invalid(
                "config.ttl_action",
                format!("{a:?}: use one of {}", TTL_ACTIONS.join(", ")),
            ));
        }
    }
    let remove_on_exit = opt_bool(config, "remove_on_exit")
        .map_err(|_| ApiError::invalid("config.remove_on_exit", "must be true or false"))?
        .unwrap_or(false);
    let restart_policy = opt_str(config, "restart_policy")
        .map_err(|_| ApiError::invalid("config.restart_policy", "must be a string"))?;
    if let Some(p) = restart_policy {
        if !RESTART_POLICIES.contains(&p) {
            return Err(ApiError::invalid(
                "config.restart_policy",
                format!("{p:?}: use one of {}", RESTART_POLICIES.join(", ")),
            ));
        }
    }
    env_of(config)?;
    cmd_of(config)?;
    max_restarts_of(config)?;
    let workloads = workloads_of(config)?;
    if cmd_workload(config)?.is_some()
        && workloads
            .iter()
            .any(|w| w.get("name").and_then(Value::as_str) == Some(CMD_WORKLOAD))
    {
        return Err(ApiError::invalid(
            "config.workloads",
            format!(
                "the name {CMD_WORKLOAD:?} is taken by config.cmd, which runs as a workload \
                 when restart_policy restarts it"
            ),
        ));
    }
    crate::network::policy_of(config)?;
    Ok(Lifecycle {
        ttl_seconds,
        ttl_action: ttl_action.map(String::from),
        remove_on_exit,
        restart_policy: restart_policy.map(String::from),
    })
}

/// `config.workloads`: objects the agent runs as managed workloads at boot. Checked
/// here as far as a bad one would otherwise only show up in the guest: an object, a
/// non-empty `cmd` (array of strings or a shell string), a known `restart_policy`, a
/// unique `name`. The agent validates the rest as `POST /workloads` does.
pub fn workloads_of(config: &Map<String, Value>) -> ApiResult<Vec<Value>> {
    let items = match config.get("workloads") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(ApiError::invalid(
                "config.workloads",
                "must be an array of workload objects",
            ))
        }
    };
    let mut names = std::collections::HashSet::new();
    for (i, w) in items.iter().enumerate() {
        let field = |f: &str| format!("config.workloads[{i}]{f}");
        let o = w
            .as_object()
            .ok_or_else(|| ApiError::invalid(&field(""), "must be an object"))?;
        let cmd_ok = match o.get("cmd") {
            Some(Value::String(s)) => !s.trim().is_empty(),
            Some(Value::Array(a)) => {
                a.iter().all(Value::is_string)
                    && a.first()
                        .and_then(Value::as_str)
                        .is_some_and(|p| !p.trim().is_empty())
            }
            _ => false,
        };
        if !cmd_ok {
            return Err(ApiError::invalid(
                &field(".cmd"),
                "is required: an array of strings with a program first",
            ));
        }
        if let Some(p) = o.get("restart_policy").filter(|p| !p.is_null()) {
            const POLICIES: &[&str] = &["never", "on-failure", "always"];
            if !p.as_str().is_some_and(|p| POLICIES.contains(&p)) {
                return Err(ApiError::invalid(
                    &field(".restart_policy"),
                    format!("{p}: use one of {}", POLICIES.join(", ")),
                ));
            }
        }
        if let Some(n) = o.get("name").filter(|n| !n.is_null()) {
            let n = n
                .as_str()
                .ok_or_else(|| ApiError::invalid(&field(".name"), "must be a string"))?;
            if !names.insert(n.to_string()) {
                return Err(ApiError::invalid(
                    &field(".name"),
                    format!("{n:?} is used by two workloads"),
                ));
            }
        }
    }
    Ok(items.clone())
}

/// `env` as `["K=V", ...]`, `[{"key":..,"value":..}]` or `{"K": "V"}`.
pub fn env_of(config: &Map<String, Value>) -> ApiResult<Vec<(String, String)>> {
    let field = "config.env";
    let check_key = |k: &str| -> ApiResult<()> {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(ApiError::invalid(
                field,
                format!("{k:?} is not a variable name"),
            ));
        }
        Ok(())
    };
    let mut out = Vec::new();
    match config.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for it in items {
                let (k, v) = match it {
                    Value::String(s) => match s.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => {
                            return Err(ApiError::invalid(field, format!("{s:?} is not KEY=VALUE")))
                        }
                    },
                    Value::Object(o) => match (o.get("key"), o.get("value")) {
                        (Some(Value::String(k)), Some(Value::String(v))) => (k.clone(), v.clone()),
                        _ => {
                            return Err(ApiError::invalid(
                                field,
                                "objects need string \"key\" and \"value\"",
                            ))
                        }
                    },
                    _ => return Err(ApiError::invalid(field, "items must be strings or objects")),
                };
                check_key(&k)?;
                out.push((k, v));
            }
        }
        Some(Value::Object(o)) => {
            for (k, v) in o {
                check_key(k)?;
                match v {
                    Value::String(s) => out.push((k.clone(), s.clone())),
                    _ => {
                        return Err(ApiError::invalid(
                            field,
                            format!("{k}: value must be a string"),
                        ))
                    }
                }
            }
        }
        Some(_) => return Err(ApiError::invalid(field, "must be an array or an object")),
    }
    Ok(out)
}

/// `cmd` as a shell string (run by `/bin/sh -c`) or an argv array.
pub fn cmd_of(config: &Map<String, Value>) -> ApiResult<Option<Vec<String>>> {
    let field = "config.cmd";
    match config.get("cmd") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec!["/bin/sh".into(), "-c".into(), s.clone()])),
        Some(Value::Array(a)) => {
            let argv: Option<Vec<String>> =
                a.iter().map(|x| x.as_str().map(String::from)).collect();
            match argv {
                Some(v) if !v.is_empty() && !v[0].is_empty() => Ok(Some(v)),
                _ => Err(ApiError::invalid(
                    field,
                    "must be a non-empty array of strings",
                )),
            }
        }
        Some(_) => Err(ApiError::invalid(
            field,
            "must be a string or an array of strings",
        )),
    }
}

/// Name of the managed workload that runs `config.cmd` when a restart policy asks for
/// supervision.
pub const CMD_WORKLOAD: &str = "cmd";
/// Label the agent recognises on that workload: its final exit is the workspace
/// command's exit (`remove_on_exit` acts on it).
pub const CMD_WORKLOAD_LABEL: &str = "warren.cmd";

/// `config.max_restarts`: how often a supervised `cmd` is restarted (none: no limit).
pub fn max_restarts_of(config: &Map<String, Value>) -> ApiResult<Option<u32>> {
    match config.get("max_restarts") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid("config.max_restarts", "must be a whole number from 0")
            }),
    }
}

/// `config.cmd` with a restart policy that restarts it (`on-failure`, `always`,
/// `unless-stopped`) runs as a managed workload named [`CMD_WORKLOAD`], so the agent
/// supervises it (backoff, `max_restarts`) and its logs stream like any workload's.
/// `None`: no command, or a policy of `no`/`never` (the command runs once).
pub fn cmd_workload(config: &Map<String, Value>) -> ApiResult<Option<Value>> {
    let Some(argv) = cmd_of(config)? else {
        return Ok(None);
    };
    let policy = match opt_str(config, "restart_policy")? {
        Some("on-failure") => "on-failure",
        // The user stopping the workload is what "unless stopped" means here.
        Some("always") | Some("unless-stopped") => "always",
        _ => return Ok(None),
    };
    let mut w = serde_json::json!({
        "name": CMD_WORKLOAD,
        "cmd": argv,
        "restart_policy": policy,
        "labels": {CMD_WORKLOAD_LABEL: "true"},
    });
    if let Some(n) = max_restarts_of(config)? {
        w["max_restarts"] = n.into();
    }
    Ok(Some(w))
}

/// Parse and validate a create body (before anything is stored or allocated).
pub fn parse_create(body: &Value) -> ApiResult<CreateRequest> {
    let o = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON object"))?;
    if let Some(ns) = opt_str(o, "namespace")? {
        if !ns.is_empty() {
            return Err(ApiError::not_implemented(
                "namespaces",
                "the namespaces issue",
            ));
        }
    }
    let wait_ready = opt_bool(o, "wait_ready")?.unwrap_or(false);
    let ready_timeout_seconds = opt_uint(o, "ready_timeout_seconds", 1, 3600)?.unwrap_or(600);
    let idempotency_key = opt_str(o, "idempotency_key")?.map(String::from);
    if let Some(k) = &idempotency_key {
        if k.is_empty() || k.len() > 255 {
            return Err(ApiError::invalid(
                "idempotency_key",
                "must be 1-255 characters",
            ));
        }
    }
    let name = opt_str(o, "name")?.map(String::from);
    if let Some(n) = &name {
        check_name("name", n)?;
    }
    let slug = opt_str(o, "slug")?.map(String::from);
    if let Some(s) = &slug {
        check_slug("slug", s)?;
    }
    let image = opt_str(o, "image")?.map(String::from);
    if let Some(i) = &image {
        if i.trim().is_empty() || i.len() > 512 || i.chars().any(|c| c.is_whitespace()) {
            return Err(ApiError::invalid(
                "image",
                "must be an image name without spaces",
            ));
        }
    }
    let mode = opt_str(o, "mode")?.unwrap_or("permanent").to_string();
    if mode != "permanent" && mode != "temporary" {
        return Err(ApiError::invalid(
            "mode",
            format!("{mode:?}: use permanent or temporary"),
        ));
    }
    let mut config = match o.get("config") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(c)) => c.clone(),
        Some(_) => return Err(ApiError::invalid("config", "must be an object")),
    };
    // Resources may come at the top level or in config (the client folds them in).
    let res = |field: &str, min: u64, max: u64| -> ApiResult<Option<u64>> {
        let top = opt_uint(o, field, min, max)?;
        let inner = opt_uint(&config, field, min, max).map_err(|mut e| {
            // The client folds resources into config: name the field where it was.
            let name = format!("config.{field}");
            e.message = e.message.replacen(field, &name, 1);
            if let Some(d) = e.details.as_mut() {
                d["field"] = json!(name);
            }
            e
        })?;
        Ok(top.or(inner))
    };
    let cpus = res("cpus", 1, 1024)?.unwrap_or(u64::from(DEFAULT_CPUS)) as u32;
    let memory_mb = res("memory_mb", 1, 1 << 24)?.unwrap_or(u64::from(DEFAULT_MEMORY_MB)) as u32;
    let disk_size_mb = res("disk_size_mb", 1, 1 << 32)?.unwrap_or(DEFAULT_DISK_MB);
    config.insert("cpus".into(), json!(cpus));
    config.insert("memory_mb".into(), json!(memory_mb));
    config.insert("disk_size_mb".into(), json!(disk_size_mb));
    crate::network::normalize(o, &mut config)?;
    let lifecycle = check_config(&config)?;
    Ok(CreateRequest {
        wait_ready,
        ready_timeout_seconds,
        idempotency_key,
        name,
        slug,
        image,
        mode,
        cpus,
        memory_mb,
        disk_size_mb,
        config: Value::Object(config),
        lifecycle,
    })
}

/// A validated `PUT /workspace/:id`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateRequest {
    pub name: Option<String>,
    /// `Some(None)`: clear.
    pub slug: Option<Option<String>>,
    pub logo: Option<Option<String>>,
    /// Keys to merge into the config (a null value removes the key).
    pub config: Option<Map<String, Value>>,
}

/// Config keys that change the VM and cannot be changed by a plain update.
const IMMUTABLE_CONFIG: &[&str] = &["cpus", "memory_mb", "disk_size_mb"];

pub fn parse_update(body: &Value) -> ApiResult<UpdateRequest> {
    let o = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON object"))?;
    let mut u = UpdateRequest::default();
    if let Some(n) = opt_str(o, "name")? {
        check_name("name", n)?;
        u.name = Some(n.to_string());
    }
    match o.get("slug") {
        None => {}
        Some(Value::Null) => u.slug = Some(None),
        Some(Value::String(s)) => {
            check_slug("slug", s)?;
            u.slug = Some(Some(s.clone()));
        }
        Some(_) => return Err(ApiError::invalid("slug", "must be a string or null")),
    }
    match o.get("logo") {
        None => {}
        Some(Value::Null) => u.logo = Some(None),
        Some(Value::String(s)) if s.len() <= 2048 => u.logo = Some(Some(s.clone())),
        Some(_) => return Err(ApiError::invalid("logo", "must be a URL string or null")),
    }
    match o.get("config") {
        None | Some(Value::Null) => {}
        Some(Value::Object(c)) => {
            for k in IMMUTABLE_CONFIG {
                if c.contains_key(*k) {
                    return Err(ApiError::not_implemented(
                        "changing cpus, memory or disk (workspaces.resources)",
                        "the resources issue",
                    ));
                }
            }
            u.config = Some(c.clone());
        }
        Some(_) => return Err(ApiError::invalid("config", "must be an object")),
    }
    Ok(u)
}

/// Merge `patch` into `base` (null removes a key).
pub fn merge_config(base: &Value, patch: &Map<String, Value>) -> Value {
    let mut out = base.as_object().cloned().unwrap_or_default();
    for (k, v) in patch {
        if v.is_null() {
            out.remove(k);
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// Is the workspace's runtime serving?
pub fn is_ready(w: &Workspace) -> bool {
    w.observed_state == ObservedState::Running && w.prov_state == ProvisioningState::Ready
}

fn ttl_value(w: &Workspace) -> Value {
    match (w.config.get("ttl"), w.ttl_seconds) {
        (Some(v), Some(_)) if !v.is_null() => v.clone(),
        (_, Some(s)) => json!(s),
        _ => Value::Null,
    }
}

/// The workspace as the API shows it (`WorkspaceData` in the client's types).
pub fn workspace_view(w: &Workspace) -> Value {
    let running = matches!(w.observed_state, ObservedState::Running);
    let error = match (&w.prov_error_code, &w.prov_error_message) {
        (Some(c), m) => json!({"code": c, "message": m.clone().unwrap_or_default()}),
        _ => Value::Null,
    };
    json!({
        "id": w.id,
        "name": w.name,
        "slug": w.slug,
        "logo": w.logo,
        "status": w.observed_state.as_str(),
        "desired_status": w.desired_state.as_str(),
        "mode": w.mode,
        "image": w.image,
        "namespace": Value::Null,
        "ready": is_ready(w),
        "info": {
            "status": w.observed_state.as_str(),
            "is_running": running,
            "user_requested_stop": w.user_requested_stop,
        },
        "provisioning": {
            "state": w.prov_state.as_str(),
            "phase": w.prov_phase.as_str(),
            "message": w.prov_message,
            "error": error,
            "created_at": w.prov_created_at,
            "updated_at": w.prov_updated_at,
            "completed_at": w.prov_completed_at,
        },
        "lifecycle": {
            "ttl": ttl_value(w),
            "ttl_action": w.ttl_action,
            "remove_on_exit": w.remove_on_exit,
            "restart_policy": w.restart_policy,
            "ttl_expires_at": w.ttl_expires_at,
        },
        "resources": {
            "cpus": w.cpus,
            "memory_mb": w.memory_mb,
            "disk_size_mb": w.disk_size_mb,
        },
        "config": w.config,
        "internal_ip": w.internal_ip,
        "last_exit_code": w.last_exit_code,
        "started_at": w.started_at,
        "created_at": w.created_at,
        "updated_at": w.updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_workloads_are_checked() {
        let cfg = |v: Value| v.as_object().cloned().unwrap();
        let ok = workloads_of(&cfg(json!({"workloads": [
            {"name": "a", "cmd": ["sleep", "9"], "restart_policy": "on-failure"},
            {"cmd": "echo hi"}
        ]})))
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert!(workloads_of(&cfg(json!({}))).unwrap().is_empty());
        let field = |v: Value| match workloads_of(&cfg(v)) {
            Err(e) => format!("{} {}", e.message, e.details.unwrap_or_default()),
            Ok(_) => String::new(),
        };
        assert!(field(json!({"workloads": 5})).contains("config.workloads"));
        assert!(field(json!({"workloads": [{"name": "a"}]})).contains("config.workloads[0].cmd"));
        assert!(
            field(json!({"workloads": [{"cmd": ["x"], "restart_policy": "sometimes"}]}))
                .contains("restart_policy")
        );
        assert!(field(
            json!({"workloads": [{"name": "a", "cmd": ["x"]}, {"name": "a", "cmd": ["y"]}]})
        )
        .contains("config.workloads[1].name"));
    }

    #[test]
    fn a_restarting_cmd_becomes_the_cmd_workload() {
        let cfg = |v: Value| v.as_object().cloned().unwrap();
        let w = cmd_workload(&cfg(json!({
            "cmd": "exit 3", "restart_policy": "on-failure", "max_restarts": 2
        })))
        .unwrap()
        .unwrap();
        assert_eq!(w["name"], CMD_WORKLOAD);
        assert_eq!(w["cmd"], json!(["/bin/sh", "-c", "exit 3"]));
        assert_eq!(w["restart_policy"], "on-failure");
        assert_eq!(w["max_restarts"], 2);
        assert_eq!(w["labels"][CMD_WORKLOAD_LABEL], "true");
        let policy = |p: &str| {
            cmd_workload(&cfg(json!({"cmd": ["x"], "restart_policy": p})))
                .unwrap()
                .map(|w| w["restart_policy"].clone())
        };
        assert_eq!(policy("always"), Some(json!("always")));
        assert_eq!(policy("unless-stopped"), Some(json!("always")));
        assert_eq!(policy("never"), None);
        assert_eq!(policy("no"), None);
        // No cmd, nothing to supervise.
        assert!(cmd_workload(&cfg(json!({"restart_policy": "always"})))
            .unwrap()
            .is_none());

        let field = |b: Value| parse_create(&b).unwrap_err().details.unwrap()["field"].clone();
        assert_eq!(
            field(json!({"config": {"cmd": "x", "max_restarts": -1}})),
            "config.max_restarts"
        );
        assert_eq!(
            field(json!({"config": {"cmd": "x", "restart_policy": "always",
                                    "workloads": [{"name": "cmd", "cmd": ["y"]}]}})),
            "config.workloads"
        );
        // Without a restarting cmd the name is free.
        assert!(
            parse_create(&json!({"config": {"workloads": [{"name": "cmd", "cmd": ["y"]}]}}))
                .is_ok()
        );
    }

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl(&json!(90)), Ok(90));
        assert_eq!(parse_ttl(&json!("30m")), Ok(1800));
        assert_eq!(parse_ttl(&json!("1h")), Ok(3600));
        assert_eq!(parse_ttl(&json!("45")), Ok(45));
        assert!(parse_ttl(&json!(0)).is_err());
        assert!(parse_ttl(&json!("1x")).is_err());
        assert!(parse_ttl(&json!(-5)).is_err());
        assert!(parse_ttl(&json!("h")).is_err());
    }

    #[test]
    fn create_folds_resources_and_names_bad_fields() {
        let r = parse_create(&json!({
            "image": "busybox", "cpus": 2,
            "config": {"memory_mb": 256, "env": ["A=1", {"key": "B", "value": "2"}], "ttl": "1m",
                       "ttl_action": "remove", "cmd": "echo hi"}
        }))
        .unwrap();
        assert_eq!(
            (r.cpus, r.memory_mb, r.disk_size_mb),
            (2, 256, DEFAULT_DISK_MB)
        );
        assert_eq!(r.config["cpus"], 2);
        assert_eq!(r.lifecycle.ttl_seconds, Some(60));
        assert_eq!(r.lifecycle.ttl_action.as_deref(), Some("remove"));
        let cfg = r.config.as_object().unwrap();
        assert_eq!(
            env_of(cfg).unwrap(),
            [("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert_eq!(cmd_of(cfg).unwrap().unwrap(), ["/bin/sh", "-c", "echo hi"]);

        let field = |b: Value| parse_create(&b).unwrap_err().details.unwrap()["field"].clone();
        assert_eq!(field(json!({"cpus": 0})), "cpus");
        assert_eq!(field(json!({"cpus": "two"})), "cpus");
        assert_eq!(
            field(json!({"config": {"memory_mb": -1}})),
            "config.memory_mb"
        );
        assert_eq!(field(json!({"mode": "forever"})), "mode");
        assert_eq!(field(json!({"slug": "Bad Slug"})), "slug");
        assert_eq!(field(json!({"config": {"ttl": "soon"}})), "config.ttl");
        assert_eq!(
            field(json!({"config": {"ttl_action": "explode"}})),
            "config.ttl_action"
        );
        assert_eq!(
            field(json!({"config": {"env": ["NOEQUALS"]}})),
            "config.env"
        );
        assert_eq!(field(json!({"config": {"cmd": 5}})), "config.cmd");
        assert_eq!(field(json!({"config": "x"})), "config");
        assert_eq!(field(json!({"name": ""})), "name");
        assert_eq!(field(json!([1])), "body");
        assert_eq!(
            parse_create(&json!({"namespace": "team"}))
                .unwrap_err()
                .status
                .as_u16(),
            501
        );
    }

    #[test]
    fn update_merges_and_refuses_resource_changes() {
        let u = parse_update(&json!({"name": "n", "slug": null, "config": {"a": 1, "b": null}}))
            .unwrap();
        assert_eq!(u.slug, Some(None));
        let merged = merge_config(&json!({"b": 2, "c": 3}), u.config.as_ref().unwrap());
        assert_eq!(merged, json!({"a": 1, "c": 3}));
        assert_eq!(
            parse_update(&json!({"config": {"cpus": 4}}))
                .unwrap_err()
                .status
                .as_u16(),
            501
        );
        assert_eq!(
            parse_update(&json!({"slug": 5}))
                .unwrap_err()
                .status
                .as_u16(),
            422
        );
    }
}
