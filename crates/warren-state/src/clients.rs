//! API clients and their secrets.

use crate::{now, random_token, Result, Store};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Client {
    pub id: String,
    pub name: String,
    pub is_admin: bool,
    pub created_at: String,
}

/// A freshly created client: the only time its secret exists in clear.
#[derive(Debug, Clone)]
pub struct NewClientSecret {
    pub client: Client,
    pub secret: String,
}

fn hash_secret(salt: &str, secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(b"\0");
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// Constant-time comparison of two hex digests.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Store {
    pub async fn create_client(&self, name: &str, is_admin: bool) -> Result<NewClientSecret> {
        let id = format!("wc_{}", random_token(12));
        let secret = format!("wsk_{}", random_token(32));
        let salt = random_token(16);
        let created_at = now();
        sqlx::query(
            "INSERT INTO clients (id, name, secret_salt, secret_hash, is_admin, created_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(name)
        .bind(&salt)
        .bind(hash_secret(&salt, &secret))
        .bind(is_admin)
        .bind(&created_at)
        .execute(self.pool())
        .await?;
        Ok(NewClientSecret {
            client: Client {
                id,
                name: name.to_string(),
                is_admin,
                created_at,
            },
            secret,
        })
    }

    /// The client if `secret` is its secret.
    pub async fn verify_client(&self, id: &str, secret: &str) -> Result<Option<Client>> {
        let row: Option<(String, String, String, bool, String, String)> = sqlx::query_as(
            "SELECT id, name, created_at, is_admin, secret_salt, secret_hash FROM clients WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(
            row.and_then(|(id, name, created_at, is_admin, salt, hash)| {
                same(&hash_secret(&salt, secret), &hash).then_some(Client {
                    id,
                    name,
                    is_admin,
                    created_at,
                })
            }),
        )
    }

    pub async fn count_clients(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM clients")
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secrets_verify_and_are_not_stored_in_clear() {
        let s = Store::open_in_memory().await.unwrap();
        let c = s.create_client("admin", true).await.unwrap();
        assert!(s
            .verify_client(&c.client.id, &c.secret)
            .await
            .unwrap()
            .is_some_and(|x| x.is_admin && x.id == c.client.id));
        assert!(s
            .verify_client(&c.client.id, "wrong")
            .await
            .unwrap()
            .is_none());
        assert!(s
            .verify_client("nobody", &c.secret)
            .await
            .unwrap()
            .is_none());
        let (hash,): (String,) = sqlx::query_as("SELECT secret_hash FROM clients")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert!(!hash.contains(&c.secret[4..]));
        assert_eq!(s.count_clients().await.unwrap(), 1);
    }
}
