//! The operations (audit) log: every state-changing request and background action.

use crate::{now, Result, Store};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Operation {
    pub id: i64,
    pub at: String,
    pub client_id: Option<String>,
    pub workspace_id: Option<String>,
    pub op: String,
    /// `ok`, `accepted` or `error`.
    pub outcome: String,
    pub detail: Option<String>,
}

impl Store {
    pub async fn log_operation(
        &self,
        client_id: Option<&str>,
        workspace_id: Option<&str>,
        op: &str,
        outcome: &str,
        detail: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO operations (at, client_id, workspace_id, op, outcome, detail)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(now())
        .bind(client_id)
        .bind(workspace_id)
        .bind(op)
        .bind(outcome)
        .bind(detail)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The newest `limit` operations on a workspace, oldest first.
    pub async fn operations(&self, workspace_id: &str, limit: u32) -> Result<Vec<Operation>> {
        let mut ops: Vec<Operation> = sqlx::query_as(
            "SELECT id, at, client_id, workspace_id, op, outcome, detail FROM operations
             WHERE workspace_id = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(workspace_id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        ops.reverse();
        Ok(ops)
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;

    #[tokio::test]
    async fn operations_are_kept_in_order() {
        let s = Store::open_in_memory().await.unwrap();
        s.log_operation(Some("c"), Some("ws_x"), "create", "accepted", None)
            .await
            .unwrap();
        s.log_operation(Some("c"), Some("ws_x"), "stop", "ok", Some("grace 5s"))
            .await
            .unwrap();
        s.log_operation(None, Some("ws_y"), "ttl", "ok", None)
            .await
            .unwrap();
        let ops = s.operations("ws_x", 10).await.unwrap();
        assert_eq!(
            ops.iter().map(|o| o.op.as_str()).collect::<Vec<_>>(),
            ["create", "stop"]
        );
        assert_eq!(ops[1].detail.as_deref(), Some("grace 5s"));
    }
}
