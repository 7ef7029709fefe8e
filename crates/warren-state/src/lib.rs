//! The control plane's persistent state, in SQLite.
//!
//! [`Store`] is the typed repository the API and the reconciler use; every SQL
//! statement of the control plane lives in this crate. Migrations are versioned files in
//! `migrations/` embedded at build time and applied on open.
//!
//! Timestamps are RFC 3339 strings in UTC with millisecond precision and a `Z` suffix
//! ([`now`]), so they sort as text and are what the API returns.
//!
//! PostgreSQL later: the queries are plain SQL with positional binds (`?`); moving to
//! sqlx's `Any` driver (or a `Pool<Postgres>`) needs `$n` placeholders, a second
//! migrations directory, and `ON CONFLICT` stays as it is. Nothing here depends on
//! SQLite-only behaviour except `PRAGMA`s in [`Store::open`].

mod clients;
mod edge;
mod metadata;
mod operations;
mod workspaces;

pub use clients::{Client, NewClientSecret};
pub use edge::{EdgeCert, EdgeDomain, EdgePort, EdgeSsh};
pub use operations::Operation;
pub use workspaces::{
    DesiredState, InsertOutcome, NewWorkspace, ObservedState, ProvisioningPhase, ProvisioningState,
    Workspace, WorkspaceFilter,
};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StateError>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Open (creating if needed) the database at `path` and apply pending migrations.
    pub async fn open(path: &Path) -> Result<Store> {
        // The database holds agent tokens: readable by its owner only. SQLite gives
        // its -wal and -shm files the database file's permissions.
        {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path);
        }
        let url = format!("sqlite://{}", path.display());
        let opts = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            // WAL + synchronous=FULL: a committed transaction survives kill -9 and
            // power loss, and readers do not block the writer.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool })
    }

    /// An in-memory database (tests).
    pub async fn open_in_memory() -> Result<Store> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        // One connection: every connection to :memory: is a separate database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool })
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A transaction that writes. `BEGIN IMMEDIATE` takes the write lock at the
    /// start, so the busy timeout applies. A deferred transaction that reads
    /// first and writes later fails at once with `SQLITE_BUSY_SNAPSHOT` (517)
    /// when another connection committed in between, and no timeout helps.
    pub(crate) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// The current time as stored: `2026-01-02T03:04:05.678Z`.
pub fn now() -> String {
    fmt_time(chrono::Utc::now())
}

pub fn fmt_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

pub(crate) fn random_token(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}
