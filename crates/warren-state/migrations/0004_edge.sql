-- The edge: public ports, custom domains, certificates and SSH access (issue 7).

-- A port of a workspace published at https://<slug>.<preview domain>.
CREATE TABLE edge_ports (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    port         INTEGER NOT NULL,
    slug         TEXT NOT NULL UNIQUE,
    label        TEXT,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, port)
);

-- A custom domain routed to a port of a workspace (one per workspace).
CREATE TABLE edge_domains (
    domain       TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL UNIQUE REFERENCES workspaces(id) ON DELETE CASCADE,
    port         INTEGER NOT NULL,
    include_www  INTEGER NOT NULL DEFAULT 0,
    ssl_status   TEXT NOT NULL DEFAULT 'pending',
    ssl_error    TEXT,
    created_at   TEXT NOT NULL
);

-- TLS certificates served by the edge; the private key is encrypted (AES-256-GCM
-- under the edge's master key), never stored in clear.
CREATE TABLE edge_certs (
    domain     TEXT PRIMARY KEY,
    cert_pem   TEXT NOT NULL,
    key_sealed BLOB NOT NULL,
    source     TEXT NOT NULL,
    not_after  TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- SSH access to a workspace through the gateway.
CREATE TABLE edge_ssh (
    workspace_id  TEXT PRIMARY KEY REFERENCES workspaces(id) ON DELETE CASCADE,
    enabled       INTEGER NOT NULL DEFAULT 0,
    public_key    TEXT,
    password_hash TEXT,
    updated_at    TEXT NOT NULL
);
