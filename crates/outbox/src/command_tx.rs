//! A command's transaction, pipelined: statements whose answer the command does not need are
//! sent at once and their answers read at the next point that needs one.
//!
//! A create used to take four round trips (`BEGIN`, its row, the events, `COMMIT`), each costing
//! both processes a wake-up; at the rates commands run that is most of PostgreSQL's CPU per
//! command (see BENCHMARKS.md, "Where PostgreSQL's CPU goes"). A [`CommandTx`] sends `BEGIN`
//! with the first statement, and [`CommandTx::send`] queues a write on the connection without
//! waiting for it: a create's row, events and `COMMIT` then leave in one write and come back in
//! one read.
//!
//! Why that cannot commit half a command:
//! - a statement the client cannot encode fails inside [`CommandTx::send`], before anything
//!   behind it is sent, and the caller's `?` drops the transaction, which rolls it back;
//! - a statement PostgreSQL refuses aborts the transaction: everything behind it fails, and
//!   the `COMMIT` is answered by a rollback. [`CommandTx::commit`] (and any statement that
//!   reads an answer) reports the first refused statement's own error, never the "transaction
//!   is aborted" of the ones behind it.
//!
//! While sent statements wait, every later wait on the connection also drives them: the driver
//! hands each request's answer over a channel of two messages, and an answer nobody reads
//! would stall the connection for everything behind it.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use deadpool_postgres::Object;
use futures::FutureExt as _;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row, Statement};

use crate::OutboxError;

/// A parameter of a statement sent with [`CommandTx::send`]: owned, because the statement's
/// answer is read after the caller's stack frame is gone.
pub type Param = Box<dyn ToSql + Send + Sync>;

/// Boxes `value` as a [`Param`].
pub fn param(value: impl ToSql + Send + Sync + 'static) -> Param {
    Box::new(value)
}

/// A statement sent whose answer is not read yet.
type Sent<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// A transaction on a pooled connection, begun with its first statement. Finish it with
/// [`CommandTx::commit`] or [`CommandTx::rollback`]; dropped unfinished, it sends a `ROLLBACK`
/// without waiting for it (as `tokio_postgres::Transaction` does), which the connection runs
/// before anything its next user sends.
pub struct CommandTx<'a> {
    client: &'a Object,
    /// Whether `BEGIN` was sent.
    begun: AtomicBool,
    /// Whether `COMMIT` or `ROLLBACK` was.
    done: AtomicBool,
    /// Statements sent, in order, whose answers are not read yet.
    sent: Mutex<Vec<Sent<'a>>>,
    /// The first error among answers read from `sent`, kept for the next statement that
    /// reports.
    refused: Mutex<Option<Error>>,
}

impl std::fmt::Debug for CommandTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandTx")
            .field("begun", &self.begun)
            .field("done", &self.done)
            .field("unanswered", &lock(&self.sent).len())
            .finish_non_exhaustive()
    }
}

/// Locks `m`; a panic elsewhere cannot leave these lists inconsistent (each change is one push
/// or one `retain`), so a poisoned lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<'a> CommandTx<'a> {
    /// A transaction on `client`, not begun yet: nothing is sent until the first statement.
    #[must_use]
    pub fn new(client: &'a Object) -> Self {
        Self {
            client,
            begun: AtomicBool::new(false),
            done: AtomicBool::new(false),
            sent: Mutex::new(Vec::new()),
            refused: Mutex::new(None),
        }
    }

    /// Queues `request` on the connection now (its first poll encodes and queues it) and keeps
    /// it for its answer.
    ///
    /// # Errors
    /// When the client refused it before sending (encoding, closed connection).
    fn queue(&self, mut request: Sent<'a>) -> Result<(), Error> {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match request.poll_unpin(&mut cx) {
            Poll::Ready(result) => result,
            Poll::Pending => {
                lock(&self.sent).push(request);
                Ok(())
            }
        }
    }

    /// Sends `BEGIN` unless it was.
    fn begin(&self) -> Result<(), Error> {
        if self.begun.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let client = self.client;
        self.queue(Box::pin(async move { client.batch_execute("BEGIN").await }))
    }

    /// Polls every sent statement once, keeping the error that aborted the transaction.
    fn poll_sent(&self, cx: &mut Context<'_>) -> bool {
        let mut sent = lock(&self.sent);
        let mut refused = lock(&self.refused);
        sent.retain_mut(|request| match request.poll_unpin(cx) {
            Poll::Pending => true,
            Poll::Ready(Ok(())) => false,
            Poll::Ready(Err(e)) => {
                // Answers arrive in order, but with the connection driven on another thread a
                // later statement's "transaction is aborted" can be seen in the same pass as,
                // and before, the refusal that caused it: the cause wins.
                let aborted = |e: &Error| e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION);
                if refused
                    .as_ref()
                    .is_none_or(|kept| aborted(kept) && !aborted(&e))
                {
                    *refused = Some(e);
                }
                false
            }
        });
        sent.is_empty()
    }

    /// Awaits `op` while driving the sent statements (their answers come first on the
    /// connection).
    async fn drive<T>(&self, op: impl Future<Output = T>) -> T {
        let mut op = pin!(op);
        poll_fn(|cx| {
            self.poll_sent(cx);
            op.as_mut().poll(cx)
        })
        .await
    }

    /// Reads every sent statement's answer; the first refusal, if any.
    async fn settle(&self) -> Result<(), Error> {
        poll_fn(|cx| {
            if self.poll_sent(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        lock(&self.refused).take().map_or(Ok(()), Err)
    }

    /// Runs `statement` inside the transaction and reads its answer, after those of the
    /// statements sent before it: an earlier refusal is what it reports.
    async fn within<T>(
        &self,
        statement: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        self.begin()?;
        let out = self.drive(statement).await;
        self.settle().await?;
        out
    }

    /// A prepared statement for `query`, from the connection's cache (preparing is not part of
    /// the transaction; a cached one costs no round trip, so it does not wait for the answers
    /// of statements sent).
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn prepare_cached(&self, query: &str) -> Result<Statement, Error> {
        let prepared = self.drive(self.client.prepare_cached(query)).await;
        if prepared.is_err() {
            // PostgreSQL refuses to parse inside an aborted transaction: report what aborted it.
            self.settle().await?;
        }
        prepared
    }

    /// Sends `statement` without waiting for its answer, which is read (and a refusal
    /// reported) by the next statement that waits for its own, or by [`CommandTx::commit`].
    /// For writes whose result the command does not need: they ride in the same round trip as
    /// what follows them.
    ///
    /// # Errors
    /// When the client cannot send it (a parameter that does not encode to its column's type,
    /// a closed connection): nothing of it reached PostgreSQL.
    pub fn send(&self, statement: &Statement, params: Vec<Param>) -> Result<(), Error> {
        self.begin()?;
        let client = self.client;
        let statement = statement.clone();
        self.queue(Box::pin(async move {
            client.execute_raw(&statement, params).await.map(drop)
        }))
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

    /// Commits (nothing to commit when no statement ran). The `COMMIT` rides with the
    /// statements sent before it.
    ///
    /// # Errors
    /// [`OutboxError`] when PostgreSQL refused a statement or the commit: the transaction is
    /// then rolled back.
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
        if !self.begun.load(Ordering::SeqCst) {
            self.done.store(true, Ordering::SeqCst);
            return Ok(());
        }
        // Queued behind the statements sent, so they are in the transaction it ends.
        let end = self.drive(self.client.batch_execute(how));
        self.done.store(true, Ordering::SeqCst);
        let ended = end.await;
        self.settle().await?;
        Ok(ended?)
    }
}

impl Drop for CommandTx<'_> {
    fn drop(&mut self) {
        if !self.begun.load(Ordering::SeqCst) || self.done.load(Ordering::SeqCst) {
            return;
        }
        // A request is queued on the connection when its future is first polled; the answer
        // is then discarded by the connection, unread (as are those of statements sent and
        // dropped with the transaction).
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

    /// Runs a write whose result is not needed: a [`CommandTx`] only sends it (see
    /// [`CommandTx::send`]), a driver transaction runs it.
    fn send(
        &self,
        statement: &Statement,
        params: Vec<Param>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
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

    fn send(
        &self,
        statement: &Statement,
        params: Vec<Param>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        std::future::ready(CommandTx::send(self, statement, params))
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

    async fn send(&self, statement: &Statement, params: Vec<Param>) -> Result<(), Error> {
        tokio_postgres::Transaction::execute_raw(self, statement, params)
            .await
            .map(drop)
    }
}
