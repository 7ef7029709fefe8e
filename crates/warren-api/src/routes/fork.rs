//! `POST /workspace/:id/fork` `{count?, name?}`: new workspaces, each a copy of a
//! running workspace at one instant (files, processes, memory), each with its own
//! identity: id, address, tokens, boot id, KMS record (see `warren_node::fork`).
//!
//! Not in the `oblien` client (v2.4.0 has no fork), so Warren's own route, shaped
//! like the client's others: the body is optional, the answer is `{success, fork,
//! workspaces: [...]}` with 201. Bad input is a 422 `validation_error` naming the
//! field (as every other route of this API answers bad fields); a workspace that is
//! not running (stopped, paused, being deleted) a 409; capacity limits are checked
//! for all N children before anything is made, and a failure leaves no child.

use super::{find, json_body};
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult};
use crate::model::workspace_view;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use tracing::Instrument;
use warren_state::{
    DesiredState, NewWorkspace, ObservedState, ProvisioningPhase, ProvisioningState, Workspace,
};

/// Most children one request makes (the node's `MAX_FORK_COUNT`; warren-node is an
/// optional dependency of this crate, so the number is repeated here).
pub const MAX_COUNT: u64 = 20;

/// `count` (1..=20, default 1) and `name` (children are `<name>-<i>`; default
/// `<parent name>-fork-<i>`).
fn parse(body: &Value) -> ApiResult<(u64, Option<String>)> {
    let count = match body.get("count") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_COUNT).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "count",
                    format!("{v}: a fork makes 1 to {MAX_COUNT} workspaces"),
                ))
            }
        },
    };
    let name = match body.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 100 => Some(s.clone()),
        Some(v) => {
            return Err(ApiError::invalid(
                "name",
                format!("{v}: use a string of 1-100 characters"),
            ))
        }
    };
    Ok((count, name))
}

async fn check_capacity(
    st: &AppState,
    client_id: &str,
    parent: &Workspace,
    n: u64,
) -> ApiResult<()> {
    let c = &st.manager.config.capacity;
    let (mine, _, _, _) = st.manager.store.usage(Some(client_id)).await?;
    if mine as u64 + n > u64::from(c.max_workspaces_per_client) {
        return Err(ApiError::conflict(
            "SANDBOX_LIMIT_REACHED",
            format!(
                "this client has {mine} workspaces, the limit is {}: {n} more do not fit",
                c.max_workspaces_per_client
            ),
        ));
    }
    let (all, _cpus, mem, disk) = st.manager.store.usage(None).await?;
    if all as u64 + n > u64::from(c.max_workspaces) {
        return Err(ApiError::conflict(
            "POOL_LIMIT_REACHED",
            format!("this server runs at most {} workspaces", c.max_workspaces),
        ));
    }
    let want_mem = n * u64::from(parent.memory_mb);
    if mem as u64 + want_mem > c.max_memory_mb {
        return Err(ApiError::conflict(
            "POOL_LIMIT_REACHED",
            format!(
                "not enough memory: {want_mem} MB asked, {} MB of {} MB left",
                c.max_memory_mb.saturating_sub(mem as u64),
                c.max_memory_mb
            ),
        ));
    }
    let want_disk = n * parent.disk_size_mb;
    if disk as u64 + want_disk > c.max_disk_mb {
        return Err(ApiError::conflict(
            "POOL_LIMIT_REACHED",
            format!(
                "not enough disk: {want_disk} MB asked, {} MB of {} MB left",
                c.max_disk_mb.saturating_sub(disk as u64),
                c.max_disk_mb
            ),
        ));
    }
    Ok(())
}

pub async fn fork(
    State(st): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (count, name) = parse(&json_body(&body)?)?;
    let w = find(&st, &c.id, &id).await?;
    let m = st.manager.clone();
    let span = tracing::info_span!("workspace", workspace_id = %w.id);
    async {
        let lock = m.lock_of(&w.id);
        let _g = lock.lock().await;
        let parent = m
            .store
            .workspace(&w.id)
            .await?
            .ok_or_else(|| ApiError::not_found("workspace", &id))?;
        if parent.desired_state == DesiredState::Deleted {
            return Err(ApiError::conflict(
                "workspace_deleting",
                format!(
                    "workspace {} is being deleted: it cannot be forked",
                    parent.id
                ),
            ));
        }
        if parent.observed_state != ObservedState::Running || !m.backend.is_running(&parent.id) {
            return Err(ApiError::conflict(
                "workspace_not_running",
                format!(
                    "workspace {} is {}: only a running workspace can be forked",
                    parent.id, parent.observed_state
                ),
            ));
        }
        check_capacity(&st, &c.id, &parent, count).await?;

        // The children's rows, then their VMs; on failure the rows go again.
        let base = name.unwrap_or_else(|| format!("{}-fork", parent.name));
        let mut rows: Vec<Workspace> = Vec::new();
        let mut specs = Vec::new();
        for i in 1..=count {
            let new = NewWorkspace {
                id: crate::manager::new_id(),
                client_id: c.id.clone(),
                name: format!("{base}-{i}"),
                slug: None,
                image: parent.image.clone(),
                mode: parent.mode.clone(),
                cpus: parent.cpus,
                memory_mb: parent.memory_mb,
                disk_size_mb: parent.disk_size_mb,
                config: parent.config.clone(),
                idempotency_key: None,
                ttl_seconds: parent.ttl_seconds,
                ttl_action: parent.ttl_action.clone(),
                ttl_expires_at: None,
                remove_on_exit: parent.remove_on_exit,
                restart_policy: parent.restart_policy.clone(),
            };
            let mut row = match m.store.insert_workspace(&new).await {
                Ok(warren_state::InsertOutcome::Created(r)) => r,
                Ok(warren_state::InsertOutcome::Existing(r)) => {
                    rows.push(r);
                    break;
                }
                Err(e) => {
                    for r in &rows {
                        let _ = m.store.delete_workspace(&r.id).await;
                    }
                    return Err(e.into());
                }
            };
            row.observed_state = ObservedState::Creating;
            row.set_provisioning(
                ProvisioningState::Running,
                ProvisioningPhase::Starting,
                &format!("{}{}", crate::manager::FORKING_FROM, parent.id),
            );
            let row = m.store.save_observed(&row).await?;
            specs.push(m.boot_spec(&row));
            rows.push(row);
        }
        let result = if specs.len() as u64 == count {
            m.backend
                .fork(&parent.id, &specs)
                .await
                .map_err(ApiError::from)
        } else {
            Err(ApiError::internal("a child's id was taken; try again"))
        };
        let (booted, report) = match result {
            Ok(r) => r,
            Err(e) => {
                for r in &rows {
                    let _ = m.store.delete_workspace(&r.id).await;
                }
                m.log(Some(&c.id), &parent.id, "fork", "error", Some(&e.message))
                    .await;
                return Err(e);
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for (mut row, b) in rows.into_iter().zip(booted) {
            row.internal_ip = Some(b.internal_ip);
            row.agent_token = Some(b.agent_token);
            row.observed_state = ObservedState::Running;
            row.started_at = Some(warren_state::now());
            row.set_provisioning(ProvisioningState::Ready, ProvisioningPhase::Ready, "Ready");
            let row = m.store.save_observed(&row).await?;
            if let Some(deadline) = crate::manager::ttl_deadline(&row) {
                m.store.set_ttl_expiry(&row.id, Some(&deadline)).await?;
            }
            m.log(
                Some(&c.id),
                &row.id,
                "provision",
                "ok",
                Some(&format!("forked from {}", parent.id)),
            )
            .await;
            out.push(row);
        }
        m.log(
            Some(&c.id),
            &parent.id,
            "fork",
            "ok",
            Some(&format!("{} workspaces", out.len())),
        )
        .await;
        Ok((
            StatusCode::CREATED,
            Json(json!({
                "success": true,
                "parent_id": parent.id,
                "fork": report,
                "workspaces": out.iter().map(workspace_view).collect::<Vec<_>>(),
            })),
        ))
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_and_name_are_checked() {
        assert_eq!(parse(&json!({})).unwrap(), (1, None));
        assert_eq!(
            parse(&json!({"count": 3, "name": "w"})).unwrap(),
            (3, Some("w".into()))
        );
        for bad in [
            json!({"count": 0}),
            json!({"count": 21}),
            json!({"count": "2"}),
            json!({"count": -1}),
        ] {
            let e = parse(&bad).unwrap_err();
            assert_eq!(e.code, "validation_error", "{bad}");
        }
        assert!(parse(&json!({"name": ""})).is_err());
        assert!(parse(&json!({"name": 5})).is_err());
    }
}
