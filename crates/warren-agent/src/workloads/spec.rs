//! What a workload is asked to be: validated from the client's JSON
//! (`WorkloadCreateParams` / `WorkloadUpdateParams` of the official client).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest delay between restarts, however many there were.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
pub const DEFAULT_LOG_MB: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

impl RestartPolicy {
    pub fn parse(s: &str) -> Option<RestartPolicy> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "never" | "no" | "" => Some(RestartPolicy::Never),
            "on-failure" => Some(RestartPolicy::OnFailure),
            "always" => Some(RestartPolicy::Always),
            _ => None,
        }
    }
}

/// A workload's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub restart_policy: RestartPolicy,
    /// Restarts allowed before giving up; `None`: no limit.
    pub max_restarts: Option<u32>,
    /// First delay before a restart, in seconds (fractions allowed).
    pub restart_delay: f64,
    /// Double the delay after each restart (up to [`MAX_DELAY`]).
    pub restart_backoff: bool,
    pub max_log_size_mb: u64,
    pub enabled: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        field,
        message: message.into(),
    }
}

/// A workload name: 1-64 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn string_map(v: &Value, field: &'static str) -> Result<BTreeMap<String, String>, SpecError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Null => {}
        // ["K=V", ...] as the client documents it.
        Value::Array(items) => {
            for it in items {
                let s = it
                    .as_str()
                    .ok_or_else(|| bad(field, "must be an array of \"KEY=value\" strings"))?;
                let (k, val) = s
                    .split_once('=')
                    .ok_or_else(|| bad(field, format!("{s:?} is not KEY=value")))?;
                out.insert(k.to_string(), val.to_string());
            }
        }
        Value::Object(m) => {
            for (k, val) in m {
                let s = val
                    .as_str()
                    .ok_or_else(|| bad(field, format!("{k}: values must be strings")))?;
                out.insert(k.clone(), s.to_string());
            }
        }
        _ => {
            return Err(bad(
                field,
                "must be an array of KEY=value strings or an object",
            ))
        }
    }
    for (k, v) in &out {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(bad(field, format!("invalid variable {k:?}")));
        }
    }
    Ok(out)
}

fn cmd_of(v: &Value) -> Result<Vec<String>, SpecError> {
    let cmd: Vec<String> = match v {
        // A string is a shell command line.
        Value::String(s) if !s.trim().is_empty() => {
            vec!["/bin/sh".into(), "-c".into(), s.clone()]
        }
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("cmd", "must be an array of strings"))?,
        _ => return Err(bad("cmd", "is required: an array of strings")),
    };
    match cmd.first() {
        Some(p) if !p.trim().is_empty() => {}
        _ => return Err(bad("cmd", "must be a non-empty array with a program first")),
    }
    if cmd.iter().any(|a| a.contains('\0')) {
        return Err(bad("cmd", "must not contain NUL bytes"));
    }
    Ok(cmd)
}

fn opt_u64(body: &Value, field: &'static str) -> Result<Option<u64>, SpecError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(field, "must be a non-negative integer")),
    }
}

fn opt_bool(body: &Value, field: &'static str) -> Result<Option<bool>, SpecError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| bad(field, "must be true or false")),
    }
}

/// Apply the fields present in `body` to `spec` (create starts from the defaults,
/// update from the current definition). Nothing is changed on error.
pub fn apply(spec: &Spec, body: &Value, creating: bool) -> Result<Spec, SpecError> {
    if !body.is_object() {
        return Err(bad("body", "must be a JSON object"));
    }
    let mut s = spec.clone();
    if let Some(n) = body.get("name").filter(|v| !v.is_null()) {
        let n = n.as_str().ok_or_else(|| bad("name", "must be a string"))?;
        if !valid_name(n) {
            return Err(bad(
                "name",
                "must be 1-64 characters of letters, digits, '.', '_' or '-', not starting with '.'",
            ));
        }
        s.name = n.to_string();
    }
    match body.get("cmd") {
        Some(v) if !v.is_null() => s.cmd = cmd_of(v)?,
        _ if creating => return Err(bad("cmd", "is required: an array of strings")),
        _ => {}
    }
    if let Some(v) = body.get("env") {
        s.env = string_map(v, "env")?;
    }
    if let Some(v) = body.get("labels") {
        s.labels = string_map(v, "labels")?;
    }
    let wd = body
        .get("working_dir")
        .or_else(|| body.get("cwd"))
        .filter(|v| !v.is_null());
    if let Some(v) = wd {
        let d = v
            .as_str()
            .ok_or_else(|| bad("working_dir", "must be a string"))?;
        if !d.starts_with('/') {
            return Err(bad("working_dir", "must be an absolute path"));
        }
        s.working_dir = Some(d.to_string());
    }
    if let Some(v) = body.get("restart_policy").filter(|v| !v.is_null()) {
        let p = v.as_str().and_then(RestartPolicy::parse).ok_or_else(|| {
            bad(
                "restart_policy",
                format!("must be one of never, on-failure, always (got {v})"),
            )
        })?;
        s.restart_policy = p;
    }
    if let Some(n) = opt_u64(body, "max_restarts")? {
        s.max_restarts = Some(u32::try_from(n).map_err(|_| bad("max_restarts", "too large"))?);
    }
    match body.get("restart_delay") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let d = v
                .as_f64()
                .filter(|d| d.is_finite() && *d >= 0.0 && *d <= 3600.0)
                .ok_or_else(|| bad("restart_delay", "must be 0-3600 seconds"))?;
            s.restart_delay = d;
        }
    }
    if let Some(b) = opt_bool(body, "restart_backoff")? {
        s.restart_backoff = b;
    }
    if let Some(mb) = opt_u64(body, "max_log_size_mb")? {
        if mb == 0 || mb > 1024 {
            return Err(bad("max_log_size_mb", "must be 1-1024"));
        }
        s.max_log_size_mb = mb;
    }
    if let Some(b) = opt_bool(body, "enabled")? {
        s.enabled = b;
    }
    if let Some(u) = body
        .get("user")
        .filter(|v| !v.is_null() && v != &&Value::from(""))
    {
        return Err(bad(
            "user",
            format!("per-workload users are not supported yet (got {u}); workloads run as the workspace's user"),
        ));
    }
    Ok(s)
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            name: String::new(),
            cmd: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            restart_policy: RestartPolicy::Never,
            max_restarts: None,
            restart_delay: 1.0,
            restart_backoff: true,
            max_log_size_mb: DEFAULT_LOG_MB,
            enabled: true,
            labels: BTreeMap::new(),
        }
    }
}

impl Spec {
    /// Delay before restart number `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        let base = self.restart_delay.max(0.0);
        let factor = if self.restart_backoff {
            2f64.powi(
                i32::try_from(n.saturating_sub(1))
                    .unwrap_or(i32::MAX)
                    .min(30),
            )
        } else {
            1.0
        };
        Duration::from_secs_f64((base * factor).min(MAX_DELAY.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn create_update_and_errors() {
        let s = apply(
            &Spec::default(),
            &json!({"name": "web", "cmd": ["sleep", "1"], "env": ["A=1"],
                    "restart_policy": "on-failure", "max_restarts": 3}),
            true,
        )
        .unwrap();
        assert_eq!(s.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(s.max_restarts, Some(3));
        assert_eq!(s.env["A"], "1");
        let e = apply(
            &Spec::default(),
            &json!({"cmd": ["x"], "restart_policy": "sometimes"}),
            true,
        )
        .unwrap_err();
        assert_eq!(e.field, "restart_policy");
        assert_eq!(
            apply(&Spec::default(), &json!({}), true).unwrap_err().field,
            "cmd"
        );
        assert_eq!(
            apply(&s, &json!({"name": "../x"}), false)
                .unwrap_err()
                .field,
            "name"
        );
        let u = apply(&s, &json!({"restart_policy": "always"}), false).unwrap();
        assert_eq!(u.cmd, s.cmd);
        assert_eq!(u.restart_policy, RestartPolicy::Always);
        assert_eq!(
            apply(&Spec::default(), &json!({"cmd": "echo hi"}), true)
                .unwrap()
                .cmd,
            ["/bin/sh", "-c", "echo hi"]
        );
    }

    #[test]
    fn exponential_backoff_is_capped() {
        let s = Spec {
            restart_delay: 0.5,
            ..Spec::default()
        };
        assert_eq!(s.delay(1), Duration::from_millis(500));
        assert_eq!(s.delay(2), Duration::from_secs(1));
        assert_eq!(s.delay(3), Duration::from_secs(2));
        assert_eq!(s.delay(40), MAX_DELAY);
        let flat = Spec {
            restart_backoff: false,
            ..s
        };
        assert_eq!(flat.delay(5), Duration::from_millis(500));
    }
}
