//! Per-workspace key/value metadata.

use crate::{Result, Store};
use std::collections::BTreeMap;

impl Store {
    pub async fn metadata(&self, workspace_id: &str) -> Result<BTreeMap<String, String>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT key, value FROM workspace_metadata WHERE workspace_id = ? ORDER BY key",
        )
        .bind(workspace_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Replace all metadata (`replace`) or merge into it; in both cases in one
    /// transaction.
    pub async fn set_metadata(
        &self,
        workspace_id: &str,
        values: &BTreeMap<String, String>,
        replace: bool,
    ) -> Result<BTreeMap<String, String>> {
        let mut tx = self.write_tx().await?;
        if replace {
            sqlx::query("DELETE FROM workspace_metadata WHERE workspace_id = ?")
                .bind(workspace_id)
                .execute(&mut *tx)
                .await?;
        }
        for (k, v) in values {
            sqlx::query(
                "INSERT INTO workspace_metadata (workspace_id, key, value) VALUES (?, ?, ?)
                 ON CONFLICT (workspace_id, key) DO UPDATE SET value = excluded.value",
            )
            .bind(workspace_id)
            .bind(k)
            .bind(v)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.metadata(workspace_id).await
    }
}

#[cfg(test)]
mod tests {
    use crate::{NewWorkspace, Store};
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn put_replaces_patch_merges() {
        let s = Store::open_in_memory().await.unwrap();
        let c = s.create_client("a", true).await.unwrap().client.id;
        s.insert_workspace(&NewWorkspace::basic("ws_m", &c))
            .await
            .unwrap();
        let m = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        s.set_metadata("ws_m", &m(&[("a", "1"), ("b", "2")]), true)
            .await
            .unwrap();
        let merged = s
            .set_metadata("ws_m", &m(&[("b", "3"), ("c", "4")]), false)
            .await
            .unwrap();
        assert_eq!(merged, m(&[("a", "1"), ("b", "3"), ("c", "4")]));
        let replaced = s
            .set_metadata("ws_m", &m(&[("z", "9")]), true)
            .await
            .unwrap();
        assert_eq!(replaced, m(&[("z", "9")]));
        s.delete_workspace("ws_m").await.unwrap();
        assert!(s.metadata("ws_m").await.unwrap().is_empty());
    }
}
