//! Setting groups shared by the binaries (architecture.md §11). Each binary flattens the groups
//! it needs into its own clap `Settings`; every flag also reads the same-named environment
//! variable, and the flag wins.

use std::time::Duration;

use clap::{Args, ValueEnum};
use outbox::PgSettings;
use streams::RedisSettings;

use crate::Secret;

/// PostgreSQL connection settings.
#[derive(Debug, Clone, Args)]
pub struct PostgresArgs {
    /// PostgreSQL connection string.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: Secret,
    /// Schema holding every table of this deployment.
    #[arg(long, env = "DATABASE_SCHEMA", default_value = "public")]
    pub database_schema: String,
    /// Connections in the pool.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub database_pool_size: u16,
}

impl PostgresArgs {
    /// Settings for `localhost` defaults and `schema`: what tests build in code.
    #[must_use]
    pub fn new(url: &str, schema: &str) -> Self {
        Self {
            database_url: Secret::new(url),
            database_schema: schema.into(),
            database_pool_size: 16,
        }
    }

    /// The pool settings, naming the process in `pg_stat_activity`.
    #[must_use]
    pub fn pg_settings(&self, application_name: &str) -> PgSettings {
        PgSettings {
            max_connections: usize::from(self.database_pool_size),
            application_name: application_name.into(),
            ..PgSettings::new(self.database_url.expose(), self.database_schema.clone())
        }
    }
}

/// Redis connection settings.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis connection string.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: Secret,
    /// Prepended to every Redis key, stream and lease of this deployment.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "")]
    pub redis_key_prefix: String,
    /// Connections per Redis pool.
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub redis_pool_size: u16,
}

impl RedisArgs {
    /// Settings for `url` and `prefix`: what tests build in code.
    #[must_use]
    pub fn new(url: &str, prefix: &str) -> Self {
        Self {
            redis_url: Secret::new(url),
            redis_key_prefix: prefix.into(),
            redis_pool_size: 16,
        }
    }

    /// The pool settings.
    #[must_use]
    pub fn redis_settings(&self) -> RedisSettings {
        RedisSettings {
            max_connections: usize::from(self.redis_pool_size),
            ..RedisSettings::new(self.redis_url.expose(), self.redis_key_prefix.clone())
        }
    }
}

/// Stream partitioning; must be equal across all services of a deployment.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// Partitions per module stream.
    #[arg(long, env = "STREAM_PARTITIONS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub stream_partitions: u32,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable, coloured when on a terminal (local runs).
    Pretty,
}

/// Logging settings.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// `json` or `pretty`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,outbox=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub rust_log: String,
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            rust_log: "info".into(),
        }
    }
}

/// HS256 secret of the JWTs that command-api and query-api accept.
#[derive(Debug, Clone, Args)]
pub struct JwtArgs {
    /// HS256 secret (at least 16 bytes).
    #[arg(long, env = "JWT_SECRET", value_parser = parse_jwt_secret)]
    pub jwt_secret: Secret,
}

fn parse_jwt_secret(s: &str) -> Result<Secret, String> {
    if s.len() < 16 {
        return Err("JWT_SECRET must be at least 16 bytes".into());
    }
    Ok(Secret::new(s))
}

/// How long a draining service waits for in-flight work before exiting.
#[derive(Debug, Clone, Args)]
pub struct ShutdownArgs {
    /// Grace period after SIGTERM, in milliseconds.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
}

impl ShutdownArgs {
    /// The grace period.
    #[must_use]
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

impl Default for ShutdownArgs {
    fn default() -> Self {
        Self {
            shutdown_grace_ms: 10_000,
        }
    }
}
