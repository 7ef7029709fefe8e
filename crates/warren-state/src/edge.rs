//! The edge's state: published ports, custom domains, certificates, SSH access.

use crate::{now, Result, StateError, Store};

/// A published port: `https://<slug>.<preview domain>` -> the workspace's `port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgePort {
    pub workspace_id: String,
    pub port: u16,
    pub slug: String,
    pub label: Option<String>,
    pub created_at: String,
}

#[derive(sqlx::FromRow)]
struct PortRow {
    workspace_id: String,
    port: i64,
    slug: String,
    label: Option<String>,
    created_at: String,
}

impl From<PortRow> for EdgePort {
    fn from(r: PortRow) -> Self {
        EdgePort {
            workspace_id: r.workspace_id,
            port: u16::try_from(r.port).unwrap_or(0),
            slug: r.slug,
            label: r.label,
            created_at: r.created_at,
        }
    }
}

/// A custom domain routed to a port of a workspace.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EdgeDomain {
    pub domain: String,
    pub workspace_id: String,
    pub port: i64,
    pub include_www: bool,
    pub ssl_status: String,
    pub ssl_error: Option<String>,
    pub created_at: String,
}

/// A certificate the edge serves; `key_sealed` is the encrypted private key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EdgeCert {
    pub domain: String,
    pub cert_pem: String,
    pub key_sealed: Vec<u8>,
    pub source: String,
    pub not_after: String,
    pub created_at: String,
}

/// SSH access to a workspace.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct EdgeSsh {
    pub workspace_id: String,
    pub enabled: bool,
    pub public_key: Option<String>,
    pub password_hash: Option<String>,
    pub updated_at: String,
}

fn duplicate(e: sqlx::Error, what: String) -> StateError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StateError::Duplicate(what),
        _ => StateError::Db(e),
    }
}

impl Store {
    pub async fn edge_ports(&self, workspace_id: &str) -> Result<Vec<EdgePort>> {
        let rows: Vec<PortRow> =
            sqlx::query_as("SELECT * FROM edge_ports WHERE workspace_id = ? ORDER BY port")
                .bind(workspace_id)
                .fetch_all(self.pool())
                .await?;
        Ok(rows.into_iter().map(EdgePort::from).collect())
    }

    pub async fn edge_port_by_slug(&self, slug: &str) -> Result<Option<EdgePort>> {
        let row: Option<PortRow> = sqlx::query_as("SELECT * FROM edge_ports WHERE slug = ?")
            .bind(slug)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(EdgePort::from))
    }

    /// Publish a port, refusing a 21st (`max`) in the same transaction.
    /// `Duplicate` names the port or the slug that is taken.
    pub async fn insert_edge_port(
        &self,
        workspace_id: &str,
        port: u16,
        slug: &str,
        label: Option<&str>,
        max: usize,
    ) -> Result<std::result::Result<EdgePort, usize>> {
        let mut tx = self.write_tx().await?;
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM edge_ports WHERE workspace_id = ?")
                .bind(workspace_id)
                .fetch_one(&mut *tx)
                .await?;
        if count as usize >= max {
            return Ok(Err(count as usize));
        }
        let exists: Option<(i64,)> =
            sqlx::query_as("SELECT port FROM edge_ports WHERE workspace_id = ? AND port = ?")
                .bind(workspace_id)
                .bind(port as i64)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_some() {
            return Err(StateError::Duplicate(format!("port {port}")));
        }
        let created = now();
        sqlx::query(
            "INSERT INTO edge_ports (workspace_id, port, slug, label, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(workspace_id)
        .bind(port as i64)
        .bind(slug)
        .bind(label)
        .bind(&created)
        .execute(&mut *tx)
        .await
        .map_err(|e| duplicate(e, format!("slug {slug}")))?;
        tx.commit().await?;
        Ok(Ok(EdgePort {
            workspace_id: workspace_id.into(),
            port,
            slug: slug.into(),
            label: label.map(str::to_string),
            created_at: created,
        }))
    }

    /// Change a published port's slug and/or label; `None` when it is not published.
    pub async fn update_edge_port(
        &self,
        workspace_id: &str,
        port: u16,
        slug: Option<&str>,
        label: Option<&str>,
    ) -> Result<Option<EdgePort>> {
        let r = sqlx::query(
            "UPDATE edge_ports SET slug = COALESCE(?, slug), label = COALESCE(?, label) \
             WHERE workspace_id = ? AND port = ?",
        )
        .bind(slug)
        .bind(label)
        .bind(workspace_id)
        .bind(port as i64)
        .execute(self.pool())
        .await
        .map_err(|e| duplicate(e, format!("slug {}", slug.unwrap_or_default())))?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        let row: Option<PortRow> =
            sqlx::query_as("SELECT * FROM edge_ports WHERE workspace_id = ? AND port = ?")
                .bind(workspace_id)
                .bind(port as i64)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(EdgePort::from))
    }

    /// Unpublish; false when it was not published.
    pub async fn delete_edge_port(&self, workspace_id: &str, port: u16) -> Result<bool> {
        let r = sqlx::query("DELETE FROM edge_ports WHERE workspace_id = ? AND port = ?")
            .bind(workspace_id)
            .bind(port as i64)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn edge_domain_of(&self, workspace_id: &str) -> Result<Option<EdgeDomain>> {
        Ok(
            sqlx::query_as("SELECT * FROM edge_domains WHERE workspace_id = ?")
                .bind(workspace_id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    pub async fn edge_domain(&self, domain: &str) -> Result<Option<EdgeDomain>> {
        Ok(
            sqlx::query_as("SELECT * FROM edge_domains WHERE domain = ?")
                .bind(domain)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Connect (or replace) the workspace's custom domain.
    pub async fn set_edge_domain(&self, d: &EdgeDomain) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM edge_domains WHERE workspace_id = ?")
            .bind(&d.workspace_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO edge_domains (domain, workspace_id, port, include_www, ssl_status, ssl_error, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&d.domain)
        .bind(&d.workspace_id)
        .bind(d.port)
        .bind(d.include_www)
        .bind(&d.ssl_status)
        .bind(&d.ssl_error)
        .bind(&d.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| duplicate(e, format!("domain {}", d.domain)))?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_edge_domain(&self, workspace_id: &str) -> Result<Option<String>> {
        let d = self.edge_domain_of(workspace_id).await?;
        sqlx::query("DELETE FROM edge_domains WHERE workspace_id = ?")
            .bind(workspace_id)
            .execute(self.pool())
            .await?;
        Ok(d.map(|d| d.domain))
    }

    pub async fn edge_cert(&self, domain: &str) -> Result<Option<EdgeCert>> {
        Ok(sqlx::query_as("SELECT * FROM edge_certs WHERE domain = ?")
            .bind(domain)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn edge_certs(&self) -> Result<Vec<EdgeCert>> {
        Ok(sqlx::query_as("SELECT * FROM edge_certs ORDER BY domain")
            .fetch_all(self.pool())
            .await?)
    }

    pub async fn put_edge_cert(&self, c: &EdgeCert) -> Result<()> {
        sqlx::query(
            "INSERT INTO edge_certs (domain, cert_pem, key_sealed, source, not_after, created_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(domain) DO UPDATE SET cert_pem = excluded.cert_pem, \
             key_sealed = excluded.key_sealed, source = excluded.source, not_after = excluded.not_after, \
             created_at = excluded.created_at",
        )
        .bind(&c.domain)
        .bind(&c.cert_pem)
        .bind(&c.key_sealed)
        .bind(&c.source)
        .bind(&c.not_after)
        .bind(&c.created_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn edge_ssh(&self, workspace_id: &str) -> Result<Option<EdgeSsh>> {
        Ok(
            sqlx::query_as("SELECT * FROM edge_ssh WHERE workspace_id = ?")
                .bind(workspace_id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    pub async fn put_edge_ssh(&self, s: &EdgeSsh) -> Result<()> {
        sqlx::query(
            "INSERT INTO edge_ssh (workspace_id, enabled, public_key, password_hash, updated_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT(workspace_id) DO UPDATE SET enabled = excluded.enabled, \
             public_key = excluded.public_key, password_hash = excluded.password_hash, \
             updated_at = excluded.updated_at",
        )
        .bind(&s.workspace_id)
        .bind(s.enabled)
        .bind(&s.public_key)
        .bind(&s.password_hash)
        .bind(now())
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concurrent writers on a database file (the server's case, not the
    /// single-connection in-memory one): a read-then-write transaction must wait
    /// for the lock, not fail with "database is locked".
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_wait_for_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).await.unwrap();
        let c = s.create_client("t", true).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..8 {
            let id = format!("ws_conc{i}");
            s.insert_workspace(&crate::NewWorkspace::basic(&id, &c.client.id))
                .await
                .unwrap();
            ids.push(id);
        }
        let mut tasks = Vec::new();
        for id in ids {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for p in 1..=20u16 {
                    s.insert_edge_port(&id, p, &format!("{id}-{p}"), None, 20)
                        .await?
                        .map_err(|n| StateError::Corrupt(format!("limit at {n}")))?;
                    let m = std::collections::BTreeMap::from([("k".to_string(), p.to_string())]);
                    s.set_metadata(&id, &m, p % 2 == 0).await?;
                }
                Ok::<_, StateError>(())
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn ports_limit_duplicates_and_slugs() {
        let s = Store::open_in_memory().await.unwrap();
        let c = s.create_client("t", true).await.unwrap();
        let id = "ws_edge".to_string();
        s.insert_workspace(&crate::NewWorkspace::basic(&id, &c.client.id))
            .await
            .unwrap();
        for p in 1..=3u16 {
            s.insert_edge_port(&id, p, &format!("s{p}"), None, 3)
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(
            s.insert_edge_port(&id, 9, "s9", None, 3).await.unwrap(),
            Err(3)
        );
        s.delete_edge_port(&id, 3).await.unwrap();
        assert!(matches!(
            s.insert_edge_port(&id, 2, "x", None, 3).await,
            Err(StateError::Duplicate(_))
        ));
        assert!(matches!(
            s.insert_edge_port(&id, 4, "s1", None, 3).await,
            Err(StateError::Duplicate(_))
        ));
        assert_eq!(s.edge_ports(&id).await.unwrap().len(), 2);
        assert_eq!(s.edge_port_by_slug("s2").await.unwrap().unwrap().port, 2);
        let d = EdgeDomain {
            domain: "app.example.org".into(),
            workspace_id: id.clone(),
            port: 8080,
            include_www: false,
            ssl_status: "active".into(),
            ssl_error: None,
            created_at: now(),
        };
        s.set_edge_domain(&d).await.unwrap();
        assert_eq!(
            s.edge_domain("app.example.org").await.unwrap(),
            Some(d.clone())
        );
        assert_eq!(s.edge_domain_of(&id).await.unwrap(), Some(d));
        assert_eq!(
            s.delete_edge_domain(&id).await.unwrap().as_deref(),
            Some("app.example.org")
        );
        assert_eq!(s.edge_domain("app.example.org").await.unwrap(), None);
    }
}
