-- Clients: API credentials. The secret is stored as sha256(salt || secret).
CREATE TABLE clients (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    secret_salt   TEXT NOT NULL,
    secret_hash   TEXT NOT NULL,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL
);

-- Workspaces. `desired_state` is what the user asked for (running, stopped, paused,
-- deleted); `observed_state` is what the node last reported (creating, running,
-- stopping, stopped, paused, failed, deleting). Reconciliation drives the second
-- towards the first.
CREATE TABLE workspaces (
    id                    TEXT PRIMARY KEY,
    client_id             TEXT NOT NULL REFERENCES clients(id),
    name                  TEXT NOT NULL,
    slug                  TEXT,
    logo                  TEXT,
    image                 TEXT NOT NULL,
    mode                  TEXT NOT NULL,
    cpus                  INTEGER NOT NULL,
    memory_mb             INTEGER NOT NULL,
    disk_size_mb          INTEGER NOT NULL,
    config                TEXT NOT NULL DEFAULT '{}',
    desired_state         TEXT NOT NULL,
    observed_state        TEXT NOT NULL,
    user_requested_stop   INTEGER NOT NULL DEFAULT 0,
    idempotency_key       TEXT,
    prov_state            TEXT NOT NULL,
    prov_phase            TEXT NOT NULL,
    prov_message          TEXT NOT NULL DEFAULT '',
    prov_error_code       TEXT,
    prov_error_message    TEXT,
    prov_created_at       TEXT NOT NULL,
    prov_updated_at       TEXT NOT NULL,
    prov_completed_at     TEXT,
    ttl_seconds           INTEGER,
    ttl_action            TEXT,
    ttl_expires_at        TEXT,
    remove_on_exit        INTEGER NOT NULL DEFAULT 0,
    restart_policy        TEXT,
    internal_ip           TEXT,
    agent_token           TEXT,
    api_access_enabled    INTEGER NOT NULL DEFAULT 0,
    gateway_token_gen     INTEGER NOT NULL DEFAULT 0,
    last_exit_code        INTEGER,
    started_at            TEXT,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL
);
CREATE UNIQUE INDEX workspaces_idempotency ON workspaces(client_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX workspaces_slug ON workspaces(client_id, slug) WHERE slug IS NOT NULL;
CREATE INDEX workspaces_client ON workspaces(client_id, created_at);
CREATE INDEX workspaces_ttl ON workspaces(ttl_expires_at) WHERE ttl_expires_at IS NOT NULL;

CREATE TABLE workspace_metadata (
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, key)
);

-- Audit log of every state-changing operation, kept after the workspace is gone.
CREATE TABLE operations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    client_id     TEXT,
    workspace_id  TEXT,
    op            TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    detail        TEXT
);
CREATE INDEX operations_workspace ON operations(workspace_id, id);
