//! Connection pools. Every connection gets `search_path` set to the configured schema, which is
//! how deployments (and parallel tests) share one database without seeing each other's rows.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::OutboxError;

/// How to reach PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `postgres://user@host:port/db` connection string.
    pub url: String,
    /// The schema all tables live in (created by `migrate`).
    pub schema: String,
    /// Pool size.
    pub max_connections: usize,
    /// How long to wait for a new connection or a free pooled one before reporting the database
    /// unavailable. Short, so that a request fails fast with 503 during an outage.
    pub connect_timeout: Duration,
    /// `application_name` shown in `pg_stat_activity`, as `<name>@<schema>`.
    pub application_name: String,
}

impl PgSettings {
    /// Settings for `url` and `schema` with defaults for the rest.
    #[must_use]
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: schema.into(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(3),
            application_name: "cqrs".into(),
        }
    }

    /// The driver configuration, with `search_path` pinned to the schema.
    ///
    /// # Errors
    /// [`OutboxError::Config`] when the URL does not parse or the schema name is not a plain
    /// lower-case identifier.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, OutboxError> {
        validate_schema(&self.schema)?;
        let mut cfg: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| OutboxError::Config(format!("DATABASE_URL does not parse: {e}")))?;
        cfg.options(format!("-c search_path={}", self.schema))
            .application_name(format!("{}@{}", self.application_name, self.schema))
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10));
        Ok(cfg)
    }
}

/// Accepts `[a-z_][a-z0-9_]{0,39}`: the name is spliced into `search_path` and into a NOTIFY
/// channel (63 bytes at most), so anything fancier is refused rather than quoted.
fn validate_schema(schema: &str) -> Result<(), OutboxError> {
    let mut bytes = schema.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if first_ok && rest_ok && schema.len() <= 40 {
        Ok(())
    } else {
        Err(OutboxError::Config(format!(
            "DATABASE_SCHEMA {schema:?} must match [a-z_][a-z0-9_]* and be at most 40 characters"
        )))
    }
}

/// Builds a pool. No connection is made until first use.
///
/// # Errors
/// [`OutboxError::Config`] for bad settings.
pub fn connect(settings: &PgSettings) -> Result<Pool, OutboxError> {
    let manager = Manager::from_config(
        settings.pg_config()?,
        NoTls,
        // Fast recycling skips a round trip per checkout; a broken connection is detected
        // by the driver (closed) and replaced.
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.max_connections)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .build()
        .map_err(|e| OutboxError::Config(format!("cannot build PostgreSQL pool: {e}")))
}

/// Round-trips a trivial query: the readiness probe.
///
/// # Errors
/// [`OutboxError::Unavailable`] when PostgreSQL does not answer.
pub async fn ping(pool: &Pool) -> Result<(), OutboxError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["public", "test_1732_abc", "_x"] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Public",
            "1abc",
            "a-b",
            "a;drop",
            "x\"y",
            &"a".repeat(41),
        ] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_url_names_the_setting() {
        let err = PgSettings::new("not a url ::", "public")
            .pg_config()
            .expect_err("must fail");
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    }
}
