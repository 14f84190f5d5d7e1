//! What every admin handler works with, and the audit of mutating calls.

use std::future::Future;

use module_kit::Module;
use outbox::audit::{AuditStore, NewEntry, Outcome};
use projection::snapshot::SnapshotSettings;
use serde_json::{Value, json};
use service_kit::http::ApiError;
use streams::RedisPools;

use crate::auth::Caller;
use crate::health::HealthSettings;
use crate::status::StatusSettings;

/// admin-api's shared state.
#[derive(Debug, Clone)]
pub struct Admin {
    /// PostgreSQL.
    pub pg: outbox::Pool,
    /// Redis.
    pub redis: RedisPools,
    /// Partitions per module stream (`STREAM_PARTITIONS`, as the workers have it).
    pub partitions: u32,
    /// How statuses are judged.
    pub status: StatusSettings,
    /// How `/health/cqrs` judges.
    pub health: HealthSettings,
    /// How snapshots are taken.
    pub snapshots: SnapshotSettings,
}

impl Admin {
    /// The module whose projection is `name`.
    ///
    /// # Errors
    /// 404 for a name no module of this build has.
    pub fn module(name: &str) -> Result<&'static Module, ApiError> {
        modules::by_projection(name).ok_or(ApiError::NotFound)
    }

    /// Runs the mutating action `action` on `target` for `caller`, with its audit entry: the
    /// entry is written first (an action nobody could record does not run: 503), then the
    /// action, then how it ended. Calls without a valid token, with a read-only one, or on a
    /// target that does not exist are recorded as refused. `act` answers its result and the
    /// details worth keeping.
    ///
    /// # Errors
    /// The action's error, or 401/403 for the caller, or 503 when the audit cannot be written.
    pub async fn audited<T, F>(
        &self,
        caller: Result<Caller, ApiError>,
        action: &str,
        target: &str,
        reason: Option<&str>,
        act: F,
    ) -> Result<T, ApiError>
    where
        F: Future<Output = Result<(T, Value), ApiError>>,
    {
        let store = AuditStore::new(self.pg.clone());
        let refused = match &caller {
            Ok(c) => c.require_operator().err().map(|e| (c.actor.clone(), e)),
            Err(e) => Some(("unauthenticated".to_owned(), clone_error(e))),
        };
        if let Some((actor, e)) = refused {
            let entry = NewEntry {
                actor: &actor,
                action,
                target,
                outcome: Outcome::Refused,
                reason: Some(&e.to_string()),
                details: json!({"status": status_of(&e)}),
            };
            store.record(&entry).await?;
            return Err(e);
        }
        let caller = caller?;
        let id = store
            .record(&NewEntry {
                actor: &caller.actor,
                action,
                target,
                outcome: Outcome::Pending,
                reason,
                details: json!({}),
            })
            .await?;
        let result = act.await;
        let (outcome, why, details) = match &result {
            Ok((_, details)) => (Outcome::Accepted, None, details.clone()),
            Err(e) => {
                let outcome = if status_of(e) >= 500 {
                    Outcome::Failed
                } else {
                    Outcome::Refused
                };
                (
                    outcome,
                    Some(e.to_string()),
                    json!({"status": status_of(e), "error": e.to_string()}),
                )
            }
        };
        if let Err(e) = store.finish(id, outcome, why.as_deref(), &details).await {
            tracing::error!(audit_id = id, action, target, error = %resilience::error_chain(&e),
                "cannot record how an audited action ended; its entry stays pending");
        }
        result.map(|(v, _)| v)
    }
}

/// The 401 an extractor answered, again (the original is returned to the caller).
fn clone_error(e: &ApiError) -> ApiError {
    match e {
        ApiError::Unauthorized(m) => ApiError::Unauthorized(m.clone()),
        other => ApiError::Unauthorized(other.to_string()),
    }
}

/// The HTTP status `e` answers with.
fn status_of(e: &ApiError) -> u16 {
    actix_web::ResponseError::status_code(e).as_u16()
}
