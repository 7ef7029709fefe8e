//! Sleep on idle (`PUT /workspace/:id/lifecycle/idle`, the oblien client's
//! `lifecycle.setIdle`): a running workspace with a policy whose tap has carried no
//! traffic (requests through the gateway or the edge, exec, terminals, its own network
//! use) for `suspend_after` seconds is frozen to disk; a request through the gateway
//! wakes it (the gateway asks for `running`, this loop thaws it, the gateway forwards).
//! `stop_after` is stored and shown but not acted on yet.

use crate::manager::Manager;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren_state::{DesiredState, ObservedState};

/// `config.idle.suspend_after` in seconds, when sleeping on idle is on.
pub fn suspend_after(config: &Value) -> Option<u64> {
    let s = config.get("idle")?.get("suspend_after")?;
    let secs = s.as_u64().or_else(|| crate::model::parse_ttl(s).ok())?;
    (secs > 0).then_some(secs)
}

/// Parse a policy from a request body: `{suspend_after, stop_after?}`; `None`: off.
pub fn parse_policy(body: &Value, min_secs: u64) -> Result<Option<Value>, (String, String)> {
    let secs = |field: &str| -> Result<u64, (String, String)> {
        match body.get(field) {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(0),
            Some(Value::String(s)) if s.trim() == "0" => Ok(0),
            Some(v) => crate::model::parse_ttl(v).map_err(|e| (field.to_string(), e)),
        }
    };
    if body.get("suspend_after").is_none() {
        return Err((
            "suspend_after".into(),
            "required: seconds or a duration like \"15m\"; 0 turns sleeping off".into(),
        ));
    }
    let suspend = secs("suspend_after")?;
    let stop = secs("stop_after")?;
    if suspend == 0 {
        return Ok(None);
    }
    if suspend < min_secs {
        return Err((
            "suspend_after".into(),
            format!("{suspend} s is below the minimum of {min_secs} s"),
        ));
    }
    if stop != 0 && stop < 3600 {
        return Err((
            "stop_after".into(),
            format!("{stop} s is below the minimum of 3600 s (or 0: keep the memory)"),
        ));
    }
    Ok(Some(json!({"suspend_after": suspend, "stop_after": stop})))
}

/// The loop: once a second, freeze idle workspaces and thaw those asked to wake.
pub fn spawn(m: Arc<Manager>) {
    tokio::spawn(async move {
        // Per workspace: the tap counters last seen and when they last moved.
        let mut seen: HashMap<String, ((u64, u64), Instant)> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Ok(all) = m.store.all_workspaces().await else {
                continue;
            };
            let mut live = Vec::new();
            for w in all {
                let Some(after) = suspend_after(&w.config) else {
                    continue;
                };
                live.push(w.id.clone());
                // A wake asked for (by the gateway): thaw.
                if w.desired_state == DesiredState::Running
                    && w.observed_state == ObservedState::Paused
                {
                    seen.remove(&w.id);
                    m.spawn_converge(&w.id);
                    continue;
                }
                if w.desired_state != DesiredState::Running
                    || w.observed_state != ObservedState::Running
                    || !m.backend.is_running(&w.id)
                {
                    seen.remove(&w.id);
                    continue;
                }
                let Some(stats) = m.backend.stats(&w.id) else {
                    continue;
                };
                let counters = (
                    stats["net_rx_bytes"].as_u64().unwrap_or(0),
                    stats["net_tx_bytes"].as_u64().unwrap_or(0),
                );
                let now = Instant::now();
                let entry = seen.entry(w.id.clone()).or_insert((counters, now));
                if entry.0 != counters {
                    *entry = (counters, now);
                } else if now.duration_since(entry.1) >= Duration::from_secs(after) {
                    seen.remove(&w.id);
                    let m = m.clone();
                    let id = w.id.clone();
                    tracing::info!(workspace_id = %id, after, "idle: freezing to disk");
                    tokio::spawn(async move {
                        if let Err(e) = m
                            .set_desired(None, &id, DesiredState::Paused, false, "idle_suspend")
                            .await
                        {
                            tracing::warn!(workspace_id = %id, error = %e.message, "idle freeze failed");
                        }
                    });
                }
            }
            seen.retain(|id, _| live.contains(id));
        }
    });
}
