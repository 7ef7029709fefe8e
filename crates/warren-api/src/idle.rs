//! Sleep on idle (`PUT /workspace/:id/lifecycle/idle`, the oblien client's
//! `lifecycle.setIdle`): a running workspace with a policy whose tap has carried no
//! traffic (requests through the gateway or the edge, exec, terminals, its own network
//! use) for `suspend_after` seconds is frozen to disk; a request through the gateway
//! wakes it (the gateway asks for `running`, this loop thaws it, the gateway forwards),
//! and so does a request through one of its public URLs (the edge does the same). A
//! workspace asleep for `stop_after` seconds (0: never) is stopped: its saved memory
//! is dropped, its files stay, and the next wake boots it. The time asleep counts from
//! the freeze's record on the node, so a server restart does not start it again.
//!
//! The same policy is accepted at create as `config.idle` and checked the same way.

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

/// `config.idle.stop_after` in seconds; `None`: never stop.
pub fn stop_after(config: &Value) -> Option<u64> {
    suspend_after(config)?;
    let secs = config.get("idle")?.get("stop_after")?.as_u64()?;
    (secs > 0).then_some(secs)
}

/// The shortest `stop_after`: thirty times the shortest `suspend_after` (one hour with
/// the default two minutes, as the oblien client documents).
pub fn stop_min_secs(min_secs: u64) -> u64 {
    min_secs.saturating_mul(30)
}

/// Check and normalise `config.idle` of a create or update (seconds, as
/// `lifecycle.setIdle` stores it; removed when off). Bad input: the field named,
/// nothing stored.
pub fn normalize_config(
    config: &mut serde_json::Map<String, Value>,
    min_secs: u64,
) -> Result<(), (String, String)> {
    let policy = match config.get("idle") {
        None => return Ok(()),
        Some(Value::Null) => None,
        Some(body @ Value::Object(_)) => parse_policy(body, min_secs)
            .map_err(|(field, reason)| (format!("config.idle.{field}"), reason))?,
        Some(_) => {
            return Err((
                "config.idle".into(),
                "must be an object {suspend_after, stop_after?} or null".into(),
            ))
        }
    };
    match policy {
        Some(p) => config.insert("idle".into(), p),
        None => config.remove("idle"),
    };
    Ok(())
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
    let stop_min = stop_min_secs(min_secs);
    if stop != 0 && stop < stop_min {
        return Err((
            "stop_after".into(),
            format!("{stop} s is below the minimum of {stop_min} s (or 0: keep the memory)"),
        ));
    }
    Ok(Some(json!({"suspend_after": suspend, "stop_after": stop})))
}

/// The loop: once a second, freeze idle workspaces, stop those asleep for their
/// `stop_after`, and start those asked to wake.
pub fn spawn(m: Arc<Manager>) {
    tokio::spawn(async move {
        // Per workspace: the tap counters last seen and when they last moved.
        let mut seen: HashMap<String, ((u64, u64), Instant)> = HashMap::new();
        // Per sleeping workspace: since when this loop has seen it asleep.
        let mut asleep: HashMap<String, Instant> = HashMap::new();
        // Stopped by the system (not by its user) with a policy: a request through the
        // edge may start it again. A crashed VM stays desired `running` and is never
        // here, so it is not restarted in a loop.
        let mut wakeable: std::collections::HashSet<String> = Default::default();
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
                if w.desired_state == DesiredState::Stopped
                    && w.observed_state == ObservedState::Stopped
                    && !w.user_requested_stop
                {
                    wakeable.insert(w.id.clone());
                    continue;
                }
                // A wake asked for (by the gateway or the edge): thaw, or boot one
                // that was stopped after sleeping too long.
                let woken = match w.observed_state {
                    ObservedState::Paused => true,
                    ObservedState::Stopped => wakeable.contains(&w.id),
                    _ => false,
                };
                if w.desired_state == DesiredState::Running && woken {
                    seen.remove(&w.id);
                    asleep.remove(&w.id);
                    wakeable.remove(&w.id);
                    m.spawn_converge(&w.id);
                    continue;
                }
                if w.observed_state == ObservedState::Running {
                    wakeable.remove(&w.id);
                }
                if w.desired_state == DesiredState::Paused
                    && w.observed_state == ObservedState::Paused
                {
                    seen.remove(&w.id);
                    // Frozen to disk: since its suspend record was written (a server
                    // restart does not start the count again); else since this loop
                    // first saw it asleep.
                    let seen_at = *asleep.entry(w.id.clone()).or_insert_with(Instant::now);
                    let slept = m
                        .backend
                        .suspended_since(&w.id)
                        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                        .unwrap_or_else(|| seen_at.elapsed());
                    if let Some(stop) = stop_after(&w.config) {
                        if slept >= Duration::from_secs(stop) {
                            asleep.remove(&w.id);
                            wakeable.insert(w.id.clone());
                            let m = m.clone();
                            let id = w.id.clone();
                            tracing::info!(workspace_id = %id, stop, "idle: asleep too long, stopping");
                            tokio::spawn(async move {
                                if let Err(e) = m
                                    .set_desired(
                                        None,
                                        &id,
                                        DesiredState::Stopped,
                                        false,
                                        "idle_stop",
                                    )
                                    .await
                                {
                                    tracing::warn!(workspace_id = %id, error = %e.message, "idle stop failed");
                                }
                            });
                        }
                    }
                    continue;
                }
                asleep.remove(&w.id);
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
            asleep.retain(|id, _| live.contains(id));
            wakeable.retain(|id| live.contains(id));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(idle: Value, min: u64) -> Result<Value, (String, String)> {
        let mut cfg = serde_json::Map::new();
        cfg.insert("idle".into(), idle);
        normalize_config(&mut cfg, min).map(|_| Value::Object(cfg))
    }

    #[test]
    fn config_idle_is_checked_and_stored_in_seconds() {
        assert_eq!(
            norm(json!({"suspend_after": "15m", "stop_after": "72h"}), 120).unwrap(),
            json!({"idle": {"suspend_after": 900, "stop_after": 259200}})
        );
        // Off: removed.
        assert_eq!(norm(json!({"suspend_after": 0}), 120).unwrap(), json!({}));
        assert_eq!(norm(Value::Null, 120).unwrap(), json!({}));
        let field = |v: Value, min| norm(v, min).unwrap_err().0;
        assert_eq!(field(json!("15m"), 120), "config.idle");
        assert_eq!(field(json!({}), 120), "config.idle.suspend_after");
        assert_eq!(
            field(json!({"suspend_after": 60}), 120),
            "config.idle.suspend_after"
        );
        assert_eq!(
            field(json!({"suspend_after": 300, "stop_after": 600}), 120),
            "config.idle.stop_after"
        );
        // The stop minimum follows the suspend minimum (an hour by default).
        assert_eq!(stop_min_secs(120), 3600);
        assert!(norm(json!({"suspend_after": 2, "stop_after": 30}), 1).is_ok());
        let c = json!({"idle": {"suspend_after": 2, "stop_after": 30}});
        assert_eq!((suspend_after(&c), stop_after(&c)), (Some(2), Some(30)));
        let c = json!({"idle": {"suspend_after": 2, "stop_after": 0}});
        assert_eq!(stop_after(&c), None);
    }
}
