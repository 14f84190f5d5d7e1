//! Errors of the PostgreSQL side, named for what the caller does about them.

use deadpool_postgres::PoolError;

/// An error talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// PostgreSQL could not be reached, or the connection broke.
    ///
    /// # Handling
    /// Nothing was committed: answer 503 with `Retry-After`, or back off and retry.
    #[error("PostgreSQL is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A unique constraint refused the write (a concurrent writer got there first).
    ///
    /// # Handling
    /// Nothing was committed: answer 409 `conflict`, or retry the whole command.
    #[error("conflicting concurrent write: {0}")]
    Conflict(#[source] tokio_postgres::Error),
    /// The database schema is older than this build needs.
    ///
    /// # Handling
    /// Refuse to start; the operator runs `admin-api migrate`.
    #[error(
        "database schema is at version {current} but this build needs version {required} \
         (not applied: {missing:?}): run `admin-api migrate` (or `make migrate`) first"
    )]
    SchemaBehind {
        /// The newest migration applied to the database.
        current: i32,
        /// The newest migration this build knows.
        required: i32,
        /// The migrations of this build not applied (numbers need not be contiguous, so one
        /// below `current` may be missing: a module's migration merged after a later one).
        missing: Vec<i32>,
    },
    /// A migration already applied differs from the file this build carries.
    ///
    /// # Handling
    /// Refuse to start; shipped migrations must never be edited (add a new one instead).
    #[error("migration {version} was changed after it was applied (checksum mismatch)")]
    MigrationEdited {
        /// The edited migration.
        version: i32,
    },
    /// Bad configuration, e.g. an unparsable `DATABASE_URL` or an invalid schema name.
    ///
    /// # Handling
    /// Refuse to start, naming the setting.
    #[error("invalid PostgreSQL setting: {0}")]
    Config(String),
    /// Something waited on did not happen in time (transactions still in flight).
    ///
    /// # Handling
    /// Nothing was changed: answer 503 with `Retry-After`, or retry later.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Any other database error: a bug or a broken invariant.
    ///
    /// # Handling
    /// Log the cause chain, answer 500.
    #[error("database error")]
    Database(#[source] tokio_postgres::Error),
}

impl OutboxError {
    /// Whether retrying later may succeed (the database was unreachable).
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<tokio_postgres::Error> for OutboxError {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        match e.code() {
            Some(code) if *code == SqlState::UNIQUE_VIOLATION => Self::Conflict(e),
            // Server going away mid-statement: the transaction did not commit.
            Some(code)
                if *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CRASH_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW =>
            {
                Self::Unavailable(Box::new(e))
            }
            Some(_) => Self::Database(e),
            // No SQLSTATE: an IO error or a closed connection.
            None => Self::Unavailable(Box::new(e)),
        }
    }
}

impl From<PoolError> for OutboxError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(inner) => inner.into(),
            other => Self::Unavailable(Box::new(other)),
        }
    }
}
