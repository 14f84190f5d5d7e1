//! A small migration runner over the numbered SQL files in `migrations/`, embedded at build
//! time. Safe to run twice and from several processes at once: it takes a transaction-scoped
//! advisory lock per schema and applies everything in one transaction, so a concurrent run
//! waits, then finds nothing left to do.

use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};

use crate::OutboxError;

/// One embedded migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The number in the file name.
    pub version: i32,
    /// The rest of the file name.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

impl Migration {
    fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

/// Every migration of this build, in version order.
pub const MIGRATIONS: &[Migration] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The schema version this build needs.
#[must_use]
pub fn required_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this run, in order.
    pub applied: Vec<i32>,
    /// The schema version after the run.
    pub current: i32,
}

/// Creates the schema if needed and applies every migration not yet applied.
///
/// # Errors
/// [`OutboxError::MigrationEdited`] when an applied file changed, [`OutboxError::Unavailable`]
/// when PostgreSQL is down, [`OutboxError::Database`] when a migration fails (nothing of the
/// run is kept).
pub async fn migrate(pool: &Pool, schema: &str) -> Result<MigrationReport, OutboxError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Serialise runners per schema before touching the catalogue: concurrent
    // `CREATE ... IF NOT EXISTS` statements can still collide on the catalogue's unique index.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('cqrs-migrate:' || $1::text))",
        &[&schema],
    )
    .await?;
    // The schema name was validated as a plain identifier by `PgSettings::pg_config`.
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             checksum   text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;
    let rows = tx
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await?;
    let applied: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut report = MigrationReport {
        applied: vec![],
        current: 0,
    };
    for m in MIGRATIONS {
        match applied.iter().find(|(v, _)| *v == m.version) {
            Some((_, sum)) if *sum == m.checksum() => {}
            Some(_) => return Err(OutboxError::MigrationEdited { version: m.version }),
            None => {
                tx.batch_execute(m.sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[&m.version, &m.name, &m.checksum()],
                )
                .await?;
                report.applied.push(m.version);
            }
        }
        report.current = m.version;
    }
    tx.commit().await?;
    Ok(report)
}

/// The newest migration applied to the database (0 when none is).
///
/// # Errors
/// [`OutboxError::Unavailable`] when PostgreSQL is down.
pub async fn current_version(pool: &Pool) -> Result<i32, OutboxError> {
    let client = pool.get().await?;
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Refuses to run against a schema older than this build: every service calls this at start.
///
/// # Errors
/// [`OutboxError::SchemaBehind`], naming the command to run.
pub async fn ensure_current(pool: &Pool) -> Result<(), OutboxError> {
    let current = current_version(pool).await?;
    let applied: Vec<i32> = if current == 0 {
        vec![]
    } else {
        let client = pool.get().await?;
        client
            .query("SELECT version FROM schema_migrations", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    // Every migration of the build, not only the newest: numbers need not be contiguous, so a
    // database can hold 0007 and still miss 0006.
    let missing: Vec<i32> = MIGRATIONS
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    if !missing.is_empty() {
        return Err(OutboxError::SchemaBehind {
            current,
            required: required_version(),
            missing,
        });
    }
    Ok(())
}
