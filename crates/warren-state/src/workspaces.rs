//! Workspaces: what the user asked for (desired state, configuration) and what the node
//! last reported (observed state, provisioning progress, address, agent token).

use crate::{now, Result, StateError, Store};
use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($v:ident = $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($v),* }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$v),)* _ => None }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// What the user wants.
    DesiredState {
        Running = "running",
        Stopped = "stopped",
        Paused = "paused",
        Deleted = "deleted",
    }
);

string_enum!(
    /// What the node last reported.
    ObservedState {
        Creating = "creating",
        Starting = "starting",
        Running = "running",
        Stopping = "stopping",
        Stopped = "stopped",
        Paused = "paused",
        Failed = "failed",
        Deleting = "deleting",
    }
);

string_enum!(
    ProvisioningState {
        Queued = "queued",
        Running = "running",
        Ready = "ready",
        Failed = "failed",
    }
);

string_enum!(
    ProvisioningPhase {
        Queued = "queued",
        Preparing = "preparing",
        Starting = "starting",
        Initializing = "initializing",
        Ready = "ready",
        Failed = "failed",
        Deleting = "deleting",
    }
);

/// One workspace row.
#[derive(Debug, Clone, PartialEq)]
pub struct Workspace {
    pub id: String,
    pub client_id: String,
    pub name: String,
    pub slug: Option<String>,
    pub logo: Option<String>,
    pub image: String,
    /// `permanent` or `temporary`.
    pub mode: String,
    pub cpus: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u64,
    /// The user's config object (env, cmd, ttl, ... as given, merged on update).
    pub config: serde_json::Value,
    pub desired_state: DesiredState,
    pub observed_state: ObservedState,
    pub user_requested_stop: bool,
    pub idempotency_key: Option<String>,
    pub prov_state: ProvisioningState,
    pub prov_phase: ProvisioningPhase,
    pub prov_message: String,
    pub prov_error_code: Option<String>,
    pub prov_error_message: Option<String>,
    pub prov_created_at: String,
    pub prov_updated_at: String,
    pub prov_completed_at: Option<String>,
    pub ttl_seconds: Option<u64>,
    pub ttl_action: Option<String>,
    pub ttl_expires_at: Option<String>,
    pub remove_on_exit: bool,
    pub restart_policy: Option<String>,
    pub internal_ip: Option<String>,
    pub agent_token: Option<String>,
    pub api_access_enabled: bool,
    pub gateway_token_gen: i64,
    pub last_exit_code: Option<i32>,
    pub started_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// What `create` stores before anything is allocated.
#[derive(Debug, Clone)]
pub struct NewWorkspace {
    pub id: String,
    pub client_id: String,
    pub name: String,
    pub slug: Option<String>,
    pub image: String,
    pub mode: String,
    pub cpus: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u64,
    pub config: serde_json::Value,
    pub idempotency_key: Option<String>,
    pub ttl_seconds: Option<u64>,
    pub ttl_action: Option<String>,
    pub ttl_expires_at: Option<String>,
    pub remove_on_exit: bool,
    pub restart_policy: Option<String>,
}

impl NewWorkspace {
    /// A permanent busybox workspace named `id` of 1 CPU, 256 MiB and a 128 MiB
    /// disk, without config or lifecycle: a base to change fields of.
    pub fn basic(id: &str, client_id: &str) -> NewWorkspace {
        NewWorkspace {
            id: id.into(),
            client_id: client_id.into(),
            name: id.into(),
            slug: None,
            image: "busybox".into(),
            mode: "permanent".into(),
            cpus: 1,
            memory_mb: 256,
            disk_size_mb: 128,
            config: serde_json::json!({}),
            idempotency_key: None,
            ttl_seconds: None,
            ttl_action: None,
            ttl_expires_at: None,
            remove_on_exit: false,
            restart_policy: None,
        }
    }
}

#[derive(Debug)]
pub enum InsertOutcome {
    Created(Workspace),
    /// The client already created a workspace with this idempotency key.
    Existing(Workspace),
}

#[derive(Debug, Clone, Default)]
pub struct WorkspaceFilter {
    /// Observed state (`running`, `stopped`, ...).
    pub status: Option<String>,
    pub mode: Option<String>,
    /// 1-based.
    pub page: u32,
    pub limit: u32,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    client_id: String,
    name: String,
    slug: Option<String>,
    logo: Option<String>,
    image: String,
    mode: String,
    cpus: i64,
    memory_mb: i64,
    disk_size_mb: i64,
    config: String,
    desired_state: String,
    observed_state: String,
    user_requested_stop: bool,
    idempotency_key: Option<String>,
    prov_state: String,
    prov_phase: String,
    prov_message: String,
    prov_error_code: Option<String>,
    prov_error_message: Option<String>,
    prov_created_at: String,
    prov_updated_at: String,
    prov_completed_at: Option<String>,
    ttl_seconds: Option<i64>,
    ttl_action: Option<String>,
    ttl_expires_at: Option<String>,
    remove_on_exit: bool,
    restart_policy: Option<String>,
    internal_ip: Option<String>,
    agent_token: Option<String>,
    api_access_enabled: bool,
    gateway_token_gen: i64,
    last_exit_code: Option<i64>,
    started_at: Option<String>,
    created_at: String,
    updated_at: String,
}

impl TryFrom<Row> for Workspace {
    type Error = StateError;
    fn try_from(r: Row) -> Result<Workspace> {
        let bad = |what: &str, v: &str| StateError::Corrupt(format!("{}: {what} {v:?}", r.id));
        Ok(Workspace {
            desired_state: DesiredState::parse(&r.desired_state)
                .ok_or_else(|| bad("desired_state", &r.desired_state))?,
            observed_state: ObservedState::parse(&r.observed_state)
                .ok_or_else(|| bad("observed_state", &r.observed_state))?,
            prov_state: ProvisioningState::parse(&r.prov_state)
                .ok_or_else(|| bad("prov_state", &r.prov_state))?,
            prov_phase: ProvisioningPhase::parse(&r.prov_phase)
                .ok_or_else(|| bad("prov_phase", &r.prov_phase))?,
            config: serde_json::from_str(&r.config).map_err(|e| bad("config", &e.to_string()))?,
            cpus: u32::try_from(r.cpus).map_err(|_| bad("cpus", &r.cpus.to_string()))?,
            memory_mb: u32::try_from(r.memory_mb)
                .map_err(|_| bad("memory_mb", &r.memory_mb.to_string()))?,
            disk_size_mb: u64::try_from(r.disk_size_mb)
                .map_err(|_| bad("disk_size_mb", &r.disk_size_mb.to_string()))?,
            ttl_seconds: r.ttl_seconds.and_then(|t| u64::try_from(t).ok()),
            last_exit_code: r.last_exit_code.and_then(|c| i32::try_from(c).ok()),
            id: r.id,
            client_id: r.client_id,
            name: r.name,
            slug: r.slug,
            logo: r.logo,
            image: r.image,
            mode: r.mode,
            user_requested_stop: r.user_requested_stop,
            idempotency_key: r.idempotency_key,
            prov_message: r.prov_message,
            prov_error_code: r.prov_error_code,
            prov_error_message: r.prov_error_message,
            prov_created_at: r.prov_created_at,
            prov_updated_at: r.prov_updated_at,
            prov_completed_at: r.prov_completed_at,
            ttl_action: r.ttl_action,
            ttl_expires_at: r.ttl_expires_at,
            remove_on_exit: r.remove_on_exit,
            restart_policy: r.restart_policy,
            internal_ip: r.internal_ip,
            agent_token: r.agent_token,
            api_access_enabled: r.api_access_enabled,
            gateway_token_gen: r.gateway_token_gen,
            started_at: r.started_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

fn is_unique_violation(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => Some(d.message().to_string()),
        _ => None,
    }
}

impl Store {
    /// Store a new workspace (desired running, provisioning queued). With an
    /// idempotency key the client used before, nothing is inserted and the existing
    /// workspace comes back: the unique index makes this atomic under concurrency.
    pub async fn insert_workspace(&self, w: &NewWorkspace) -> Result<InsertOutcome> {
        if let Some(key) = &w.idempotency_key {
            if let Some(existing) = self.by_idempotency_key(&w.client_id, key).await? {
                return Ok(InsertOutcome::Existing(existing));
            }
        }
        let t = now();
        let r = sqlx::query(
            "INSERT INTO workspaces (id, client_id, name, slug, image, mode, cpus, memory_mb,
                disk_size_mb, config, desired_state, observed_state, idempotency_key,
                prov_state, prov_phase, prov_message, prov_created_at, prov_updated_at,
                ttl_seconds, ttl_action, ttl_expires_at, remove_on_exit, restart_policy,
                created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', 'creating', ?, 'queued', 'queued',
                'Queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&w.id)
        .bind(&w.client_id)
        .bind(&w.name)
        .bind(&w.slug)
        .bind(&w.image)
        .bind(&w.mode)
        .bind(i64::from(w.cpus))
        .bind(i64::from(w.memory_mb))
        .bind(w.disk_size_mb as i64)
        .bind(w.config.to_string())
        .bind(&w.idempotency_key)
        .bind(&t)
        .bind(&t)
        .bind(w.ttl_seconds.map(|s| s as i64))
        .bind(&w.ttl_action)
        .bind(&w.ttl_expires_at)
        .bind(w.remove_on_exit)
        .bind(&w.restart_policy)
        .bind(&t)
        .bind(&t)
        .execute(self.pool())
        .await;
        match r {
            Ok(_) => {}
            Err(e) => {
                if let Some(msg) = is_unique_violation(&e) {
                    // A concurrent create with the same key won the race.
                    if let Some(key) = &w.idempotency_key {
                        if let Some(existing) = self.by_idempotency_key(&w.client_id, key).await? {
                            return Ok(InsertOutcome::Existing(existing));
                        }
                    }
                    let what = if msg.contains("slug") {
                        format!("slug {:?}", w.slug.as_deref().unwrap_or(""))
                    } else {
                        format!("workspace {}", w.id)
                    };
                    return Err(StateError::Duplicate(what));
                }
                return Err(e.into());
            }
        }
        let ws = self
            .workspace(&w.id)
            .await?
            .ok_or_else(|| StateError::Corrupt(format!("{} vanished after insert", w.id)))?;
        Ok(InsertOutcome::Created(ws))
    }

    /// The workspace a client created with `key`, if any.
    pub async fn client_workspace_by_key(
        &self,
        client_id: &str,
        key: &str,
    ) -> Result<Option<Workspace>> {
        self.by_idempotency_key(client_id, key).await
    }

    async fn by_idempotency_key(&self, client_id: &str, key: &str) -> Result<Option<Workspace>> {
        let row: Option<Row> =
            sqlx::query_as("SELECT * FROM workspaces WHERE client_id = ? AND idempotency_key = ?")
                .bind(client_id)
                .bind(key)
                .fetch_optional(self.pool())
                .await?;
        row.map(Workspace::try_from).transpose()
    }

    /// Any client's workspace by id (the server's own use).
    pub async fn workspace(&self, id: &str) -> Result<Option<Workspace>> {
        let row: Option<Row> = sqlx::query_as("SELECT * FROM workspaces WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(Workspace::try_from).transpose()
    }

    /// A client's workspace by id or slug.
    pub async fn client_workspace(
        &self,
        client_id: &str,
        id_or_slug: &str,
    ) -> Result<Option<Workspace>> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT * FROM workspaces WHERE client_id = ? AND (id = ? OR slug = ?)
             ORDER BY id = ? DESC LIMIT 1",
        )
        .bind(client_id)
        .bind(id_or_slug)
        .bind(id_or_slug)
        .bind(id_or_slug)
        .fetch_optional(self.pool())
        .await?;
        row.map(Workspace::try_from).transpose()
    }

    /// A page of a client's workspaces, newest first, and the total matching.
    pub async fn list_workspaces(
        &self,
        client_id: &str,
        f: &WorkspaceFilter,
    ) -> Result<(Vec<Workspace>, i64)> {
        let limit = i64::from(f.limit.max(1));
        let offset = i64::from(f.page.max(1) - 1) * limit;
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT * FROM workspaces WHERE client_id = ?
               AND (? IS NULL OR observed_state = ?) AND (? IS NULL OR mode = ?)
             ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
        )
        .bind(client_id)
        .bind(&f.status)
        .bind(&f.status)
        .bind(&f.mode)
        .bind(&f.mode)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await?;
        let (total,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM workspaces WHERE client_id = ?
               AND (? IS NULL OR observed_state = ?) AND (? IS NULL OR mode = ?)",
        )
        .bind(client_id)
        .bind(&f.status)
        .bind(&f.status)
        .bind(&f.mode)
        .bind(&f.mode)
        .fetch_one(self.pool())
        .await?;
        let ws = rows
            .into_iter()
            .map(Workspace::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok((ws, total))
    }

    /// Every workspace of every client (reconciliation).
    pub async fn all_workspaces(&self) -> Result<Vec<Workspace>> {
        let rows: Vec<Row> = sqlx::query_as("SELECT * FROM workspaces ORDER BY created_at")
            .fetch_all(self.pool())
            .await?;
        rows.into_iter().map(Workspace::try_from).collect()
    }

    /// Workspaces whose TTL expired at or before `at`.
    pub async fn expired_workspaces(&self, at: &str) -> Result<Vec<Workspace>> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT * FROM workspaces WHERE ttl_expires_at IS NOT NULL AND ttl_expires_at <= ?
               AND desired_state != 'deleted'",
        )
        .bind(at)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(Workspace::try_from).collect()
    }

    /// Totals over a client's workspaces that hold resources (not deleted):
    /// (count, cpus, memory_mb, disk_mb).
    pub async fn usage(&self, client_id: Option<&str>) -> Result<(i64, i64, i64, i64)> {
        let r: (i64, Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), SUM(cpus), SUM(memory_mb), SUM(disk_size_mb) FROM workspaces
             WHERE (? IS NULL OR client_id = ?) AND desired_state != 'deleted'",
        )
        .bind(client_id)
        .bind(client_id)
        .fetch_one(self.pool())
        .await?;
        Ok((r.0, r.1.unwrap_or(0), r.2.unwrap_or(0), r.3.unwrap_or(0)))
    }

    /// Write what the node reported: observed state, provisioning progress, address,
    /// agent token, exit code, start time. Only the workspace's worker (which holds the
    /// workspace's lock) calls this, so it never overwrites a concurrent request's
    /// settings or desired state.
    pub async fn save_observed(&self, w: &Workspace) -> Result<Workspace> {
        let mut w = w.clone();
        w.updated_at = now();
        sqlx::query(
            "UPDATE workspaces SET observed_state = ?, prov_state = ?, prov_phase = ?,
                prov_message = ?, prov_error_code = ?, prov_error_message = ?,
                prov_updated_at = ?, prov_completed_at = ?, internal_ip = ?, agent_token = ?,
                last_exit_code = ?, started_at = ?, updated_at = ?
             WHERE id = ?",
        )
        .bind(w.observed_state.as_str())
        .bind(w.prov_state.as_str())
        .bind(w.prov_phase.as_str())
        .bind(&w.prov_message)
        .bind(&w.prov_error_code)
        .bind(&w.prov_error_message)
        .bind(&w.prov_updated_at)
        .bind(&w.prov_completed_at)
        .bind(&w.internal_ip)
        .bind(&w.agent_token)
        .bind(w.last_exit_code.map(i64::from))
        .bind(&w.started_at)
        .bind(&w.updated_at)
        .bind(&w.id)
        .execute(self.pool())
        .await?;
        Ok(w)
    }

    /// Write a workspace's resources (cpus, memory, disk size), which take effect at
    /// its next start. The caller has validated them.
    pub async fn set_resources(
        &self,
        id: &str,
        cpus: u32,
        memory_mb: u32,
        disk_size_mb: u64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE workspaces SET cpus = ?, memory_mb = ?, disk_size_mb = ?, updated_at = ?
             WHERE id = ?",
        )
        .bind(cpus as i64)
        .bind(memory_mb as i64)
        .bind(disk_size_mb as i64)
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Write the user's settings: name, slug, logo, config, lifecycle, runtime API
    /// access.
    pub async fn save_settings(&self, w: &Workspace) -> Result<Workspace> {
        let mut w = w.clone();
        w.updated_at = now();
        let r = sqlx::query(
            "UPDATE workspaces SET name = ?, slug = ?, logo = ?, config = ?, mode = ?,
                ttl_seconds = ?, ttl_action = ?, ttl_expires_at = ?, remove_on_exit = ?,
                restart_policy = ?, api_access_enabled = ?, gateway_token_gen = ?,
                updated_at = ?
             WHERE id = ?",
        )
        .bind(&w.name)
        .bind(&w.slug)
        .bind(&w.logo)
        .bind(w.config.to_string())
        .bind(&w.mode)
        .bind(w.ttl_seconds.map(|s| s as i64))
        .bind(&w.ttl_action)
        .bind(&w.ttl_expires_at)
        .bind(w.remove_on_exit)
        .bind(&w.restart_policy)
        .bind(w.api_access_enabled)
        .bind(w.gateway_token_gen)
        .bind(&w.updated_at)
        .bind(&w.id)
        .execute(self.pool())
        .await;
        match r {
            Ok(_) => Ok(w),
            Err(e) => match is_unique_violation(&e) {
                Some(_) => Err(StateError::Duplicate(format!(
                    "slug {:?}",
                    w.slug.as_deref().unwrap_or("")
                ))),
                None => Err(e.into()),
            },
        }
    }

    /// Record how far provisioning got (phase and message only).
    pub async fn set_provisioning_progress(
        &self,
        id: &str,
        phase: ProvisioningPhase,
        message: &str,
    ) -> Result<()> {
        let t = now();
        sqlx::query(
            "UPDATE workspaces SET prov_phase = ?, prov_message = ?, prov_updated_at = ?,
                updated_at = ? WHERE id = ? AND prov_state = 'running'",
        )
        .bind(phase.as_str())
        .bind(message)
        .bind(&t)
        .bind(&t)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Set (or clear) when the workspace's TTL runs out.
    pub async fn set_ttl_expiry(&self, id: &str, at: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE workspaces SET ttl_expires_at = ?, updated_at = ? WHERE id = ?")
            .bind(at)
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Record what the user wants. Returns false if the workspace does not exist.
    pub async fn set_desired(
        &self,
        id: &str,
        desired: DesiredState,
        user_requested_stop: bool,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE workspaces SET desired_state = ?, user_requested_stop = ?, updated_at = ?
             WHERE id = ? AND (desired_state != 'deleted' OR ? = 'deleted')",
        )
        .bind(desired.as_str())
        .bind(user_requested_stop)
        .bind(now())
        .bind(id)
        .bind(desired.as_str())
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Forget a workspace (its metadata goes with it; the operations log stays).
    pub async fn delete_workspace(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM workspaces WHERE id = ?")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }
}

impl Workspace {
    /// Set the provisioning fields together.
    pub fn set_provisioning(
        &mut self,
        state: ProvisioningState,
        phase: ProvisioningPhase,
        message: &str,
    ) {
        let t = now();
        self.prov_state = state;
        self.prov_phase = phase;
        self.prov_message = message.to_string();
        self.prov_updated_at = t.clone();
        match state {
            ProvisioningState::Ready | ProvisioningState::Failed => {
                self.prov_completed_at = Some(t)
            }
            _ => self.prov_completed_at = None,
        }
        if state != ProvisioningState::Failed {
            self.prov_error_code = None;
            self.prov_error_message = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_ws(client: &str, id: &str, key: Option<&str>) -> NewWorkspace {
        NewWorkspace {
            config: serde_json::json!({"env": ["A=1"]}),
            idempotency_key: key.map(String::from),
            ..NewWorkspace::basic(id, client)
        }
    }

    #[tokio::test]
    async fn idempotency_key_returns_the_first_workspace() {
        let s = Store::open_in_memory().await.unwrap();
        let c = s.create_client("a", true).await.unwrap().client.id;
        let first = match s
            .insert_workspace(&new_ws(&c, "ws_one", Some("k")))
            .await
            .unwrap()
        {
            InsertOutcome::Created(w) => w,
            other => panic!("{other:?}"),
        };
        assert_eq!(first.observed_state, ObservedState::Creating);
        // Progress is recorded only while provisioning runs.
        s.set_provisioning_progress("ws_one", ProvisioningPhase::Preparing, "pulling")
            .await
            .unwrap();
        let w = s.workspace("ws_one").await.unwrap().unwrap();
        assert_eq!(w.prov_phase, ProvisioningPhase::Queued);
        let mut running = w.clone();
        running.set_provisioning(ProvisioningState::Running, ProvisioningPhase::Starting, "");
        s.save_observed(&running).await.unwrap();
        s.set_provisioning_progress("ws_one", ProvisioningPhase::Preparing, "pulling")
            .await
            .unwrap();
        let w = s.workspace("ws_one").await.unwrap().unwrap();
        assert_eq!(
            (w.prov_phase, w.prov_message.as_str()),
            (ProvisioningPhase::Preparing, "pulling")
        );
        assert_eq!(first.config["env"][0], "A=1");
        match s
            .insert_workspace(&new_ws(&c, "ws_two", Some("k")))
            .await
            .unwrap()
        {
            InsertOutcome::Existing(w) => assert_eq!(w.id, "ws_one"),
            other => panic!("{other:?}"),
        }
        assert!(s.workspace("ws_two").await.unwrap().is_none());
        // Another client may use the same key.
        let c2 = s.create_client("b", false).await.unwrap().client.id;
        assert!(matches!(
            s.insert_workspace(&new_ws(&c2, "ws_three", Some("k")))
                .await
                .unwrap(),
            InsertOutcome::Created(_)
        ));
    }

    #[tokio::test]
    async fn save_list_filter_and_delete() {
        let s = Store::open_in_memory().await.unwrap();
        let c = s.create_client("a", true).await.unwrap().client.id;
        for i in 0..3 {
            s.insert_workspace(&new_ws(&c, &format!("ws_{i}"), None))
                .await
                .unwrap();
        }
        let mut w = s.workspace("ws_1").await.unwrap().unwrap();
        w.observed_state = ObservedState::Running;
        w.slug = Some("one".into());
        w.desired_state = DesiredState::Stopped; // not written by either save
        w.set_provisioning(ProvisioningState::Ready, ProvisioningPhase::Ready, "Ready");
        s.save_observed(&w).await.unwrap();
        s.save_settings(&w).await.unwrap();
        let saved = s.workspace("ws_1").await.unwrap().unwrap();
        assert!(saved.prov_completed_at.is_some());
        assert_eq!(saved.observed_state, ObservedState::Running);
        assert_eq!(saved.desired_state, DesiredState::Running);
        assert!(s
            .set_desired("ws_1", DesiredState::Deleted, false)
            .await
            .unwrap());
        // Deleted is final.
        assert!(!s
            .set_desired("ws_1", DesiredState::Running, false)
            .await
            .unwrap());
        assert!(!s
            .set_desired("ws_nope", DesiredState::Running, false)
            .await
            .unwrap());
        assert_eq!(
            s.client_workspace(&c, "one").await.unwrap().unwrap().id,
            "ws_1"
        );
        let (running, total) = s
            .list_workspaces(
                &c,
                &WorkspaceFilter {
                    status: Some("running".into()),
                    page: 1,
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((running.len(), total), (1, 1));
        let (page2, total) = s
            .list_workspaces(
                &c,
                &WorkspaceFilter {
                    page: 2,
                    limit: 2,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((page2.len(), total), (1, 3));
        // Slugs are unique per client.
        let mut other = s.workspace("ws_2").await.unwrap().unwrap();
        other.slug = Some("one".into());
        assert!(matches!(
            s.save_settings(&other).await,
            Err(StateError::Duplicate(_))
        ));
        assert_eq!(
            s.usage(Some(&c)).await.unwrap().0,
            2,
            "a deleted workspace holds nothing"
        );
        assert!(s.delete_workspace("ws_1").await.unwrap());
        assert!(s.workspace("ws_1").await.unwrap().is_none());
    }
}
