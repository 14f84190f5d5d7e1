//! A command's transaction, with `BEGIN` riding in the first statement's round trip.
//!
//! `tokio_postgres::Transaction` sends `BEGIN` and waits for its answer before the first
//! statement can go: one round trip of the command's four (`BEGIN`, its row, the events,
//! `COMMIT`) that carries nothing but the start. Each round trip costs both processes a
//! wake-up, and at the rates commands run that is most of PostgreSQL's CPU per command (see
//! BENCHMARKS.md, "Where PostgreSQL's CPU goes"). A [`CommandTx`] sends `BEGIN` and the first
//! statement together, pipelined on the connection, and waits for both answers at once.
//!
//! `COMMIT` is not pipelined with the last statement: a statement that fails in the client
//! (before it is sent) would let the `COMMIT` behind it commit what came before it without it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use deadpool_postgres::Object;
use futures::FutureExt as _;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row, Statement};

use crate::OutboxError;

/// A transaction on a pooled connection, begun with its first statement. Finish it with
/// [`CommandTx::commit`] or [`CommandTx::rollback`]; dropped unfinished, it sends a `ROLLBACK`
/// without waiting for it (as `tokio_postgres::Transaction` does), which the connection runs
/// before anything its next user sends.
#[derive(Debug)]
pub struct CommandTx<'a> {
    client: &'a Object,
    /// Whether `BEGIN` was sent.
    begun: AtomicBool,
    /// Whether `COMMIT` or `ROLLBACK` was.
    done: AtomicBool,
}

impl<'a> CommandTx<'a> {
    /// A transaction on `client`, not begun yet: nothing is sent until the first statement.
    #[must_use]
    pub fn new(client: &'a Object) -> Self {
        Self {
            client,
            begun: AtomicBool::new(false),
            done: AtomicBool::new(false),
        }
    }

    /// Runs `statement` inside the transaction: the first one goes in one round trip with
    /// `BEGIN`.
    async fn within<T>(
        &self,
        statement: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        if self.begun.swap(true, Ordering::SeqCst) {
            return statement.await;
        }
        // `join` polls in order, so `BEGIN` is queued on the connection before the statement.
        let (begun, out) =
            futures::future::join(self.client.batch_execute("BEGIN"), statement).await;
        begun?;
        out
    }

    /// A prepared statement for `query`, from the connection's cache (preparing is not part of
    /// the transaction).
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn prepare_cached(&self, query: &str) -> Result<Statement, Error> {
        self.client.prepare_cached(query).await
    }

    /// Executes `statement`; returns the rows it changed.
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn execute(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        self.within(self.client.execute(statement, params)).await
    }

    /// Runs `statement`; returns its row, if any.
    ///
    /// # Errors
    /// When PostgreSQL fails, or the statement returned more than one row.
    pub async fn query_opt(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        self.within(self.client.query_opt(statement, params)).await
    }

    /// Commits (nothing to commit when no statement ran).
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails: the transaction is then rolled back.
    pub async fn commit(self) -> Result<(), OutboxError> {
        self.finish("COMMIT").await
    }

    /// Rolls back.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL fails.
    pub async fn rollback(self) -> Result<(), OutboxError> {
        self.finish("ROLLBACK").await
    }

    async fn finish(self, how: &str) -> Result<(), OutboxError> {
        self.done.store(true, Ordering::SeqCst);
        if self.begun.load(Ordering::SeqCst) {
            self.client.batch_execute(how).await?;
        }
        Ok(())
    }
}

impl Drop for CommandTx<'_> {
    fn drop(&mut self) {
        if !self.begun.load(Ordering::SeqCst) || self.done.load(Ordering::SeqCst) {
            return;
        }
        // A request is queued on the connection when its future is first polled; the answer
        // is then discarded by the connection, unread.
        let mut rollback = Box::pin(self.client.batch_execute("ROLLBACK"));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        if let Poll::Ready(Err(e)) = rollback.poll_unpin(&mut cx) {
            tracing::debug!(error = %e, "cannot roll back an abandoned command transaction");
        }
    }
}

/// What the statements of a command need of the transaction they run in: a [`CommandTx`], or
/// a driver transaction (tests, benchmarks and imports that append events themselves).
pub trait TxClient: Sync {
    /// A prepared statement for `query`, from the connection's cache.
    fn prepare_cached(&self, query: &str) -> impl Future<Output = Result<Statement, Error>> + Send;

    /// Executes `statement`; returns the rows it changed.
    fn execute(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Runs `statement`; returns its row, if any.
    fn query_opt(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send;
}

impl TxClient for CommandTx<'_> {
    fn prepare_cached(&self, query: &str) -> impl Future<Output = Result<Statement, Error>> + Send {
        CommandTx::prepare_cached(self, query)
    }

    fn execute(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, Error>> + Send {
        CommandTx::execute(self, statement, params)
    }

    fn query_opt(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send {
        CommandTx::query_opt(self, statement, params)
    }
}

impl TxClient for deadpool_postgres::Transaction<'_> {
    fn prepare_cached(&self, query: &str) -> impl Future<Output = Result<Statement, Error>> + Send {
        deadpool_postgres::Transaction::prepare_cached(self, query)
    }

    fn execute(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, Error>> + Send {
        tokio_postgres::Transaction::execute(self, statement, params)
    }

    fn query_opt(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send {
        tokio_postgres::Transaction::query_opt(self, statement, params)
    }
}
