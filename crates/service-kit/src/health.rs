//! `/healthz`, `/readyz` and `/metrics`, served by every binary.
//!
//! `/healthz` says the process is alive and never checks dependencies (a liveness probe that
//! fails when PostgreSQL is down would restart every pod at once). `/readyz` pings every
//! dependency with a short timeout and says not-ready while one is unreachable or the process
//! is draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::{HttpResponse, web};
use futures::future::{BoxFuture, join_all};
use serde::Serialize;

use crate::http::Routes;
use crate::http::middleware::{HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_TOTAL};
use crate::telemetry::{self, SERVICE_READY};

/// A readiness check: resolves to `Err(reason)` when its dependency is unreachable.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The health state of a process.
#[derive(Clone)]
pub struct Health {
    service: &'static str,
    checks: Vec<(&'static str, Check)>,
    draining: Arc<AtomicBool>,
    /// The runtime the service was built on. Checks run there, not on the HTTP worker that
    /// asked: a pooled connection lives on the runtime that opened it, and the HTTP workers'
    /// runtimes end first at shutdown, closing connections the service's own loops may hold
    /// at that moment (seen: the relay's lease release failing with "connection closed").
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckResult {
    /// Dependency name.
    pub name: &'static str,
    /// Whether it answered.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `/readyz` answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Ready to take work.
    pub ready: bool,
    /// Draining after a shutdown request.
    pub draining: bool,
    /// Per-dependency results.
    pub checks: Vec<CheckResult>,
    /// The answering process: a supervisor (or a test) that started it can tell its own
    /// process from another one that took the port.
    pub pid: u32,
}

impl Health {
    /// Health with no checks yet; its checks will run on the current Tokio runtime (build it
    /// where the service's own loops run). Registers the HTTP metrics of the health routes
    /// and the readiness gauge, so `/metrics` shows them (at 0) before the first request.
    #[must_use]
    pub fn new(service: &'static str) -> Self {
        telemetry::metrics_handle();
        for route in ["/healthz", "/readyz", "/metrics"] {
            metrics::counter!(HTTP_REQUESTS_TOTAL, "method" => "GET", "route" => route, "status" => "200")
                .increment(0);
            let _ = metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "method" => "GET", "route" => route);
        }
        metrics::gauge!(SERVICE_READY).set(0.0);
        Self {
            service,
            checks: vec![],
            draining: Arc::new(AtomicBool::new(false)),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Adds a named check.
    #[must_use]
    pub fn with_check(mut self, name: &'static str, check: Check) -> Self {
        self.checks.push((name, check));
        self
    }

    /// Adds a PostgreSQL ping.
    #[must_use]
    pub fn with_postgres(self, pool: outbox::Pool) -> Self {
        self.with_check(
            "postgres",
            Arc::new(move || {
                let pool = pool.clone();
                Box::pin(async move {
                    outbox::pool::ping(&pool)
                        .await
                        .map_err(|e| resilience::error_chain(&e))
                })
            }),
        )
    }

    /// Adds a Redis ping.
    #[must_use]
    pub fn with_redis(self, pools: streams::RedisPools) -> Self {
        self.with_check(
            "redis",
            Arc::new(move || {
                let pools = pools.clone();
                Box::pin(async move { pools.ping().await.map_err(|e| resilience::error_chain(&e)) })
            }),
        )
    }

    /// Adds a check that Redis never evicts keys (`maxmemory-policy noeviction`): a read
    /// model, or a stream entry not yet applied, that Redis evicts is lost without a trace. Any
    /// other policy is logged as an error once, at start, and keeps `/readyz` failing. A server
    /// that refuses `CONFIG GET` passes.
    #[must_use]
    pub fn with_redis_noeviction(self, pools: streams::RedisPools) -> Self {
        self.with_check(
            "redis_eviction",
            Arc::new(move || {
                let pools = pools.clone();
                Box::pin(async move {
                    match pools.eviction_policy().await {
                        Ok(Some(policy)) if policy != "noeviction" => {
                            Err(eviction_message(&policy))
                        }
                        Ok(_) => Ok(()),
                        Err(e) => Err(resilience::error_chain(&e)),
                    }
                })
            }),
        )
    }

    /// Marks the process as draining: `/readyz` answers 503 from now on, so load balancers stop
    /// sending work while in-flight work finishes.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Runs every check concurrently, each bounded by a timeout.
    pub async fn readiness(&self) -> Readiness {
        let checks = join_all(self.checks.iter().map(|(name, check)| async move {
            let run = tokio::time::timeout(CHECK_TIMEOUT, check());
            let outcome = match &self.runtime {
                Some(rt) => rt
                    .spawn(run)
                    .await
                    .unwrap_or_else(|e| Ok(Err(format!("check task failed: {e}")))),
                None => run.await,
            };
            let error = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
            };
            CheckResult {
                name,
                ok: error.is_none(),
                error,
            }
        }))
        .await;
        let draining = self.draining.load(Ordering::SeqCst);
        Readiness {
            ready: !draining && checks.iter().all(|c| c.ok),
            draining,
            checks,
            pid: std::process::id(),
        }
    }
}

/// What to tell an operator about a Redis that may evict keys.
#[must_use]
pub fn eviction_message(policy: &str) -> String {
    format!(
        "Redis maxmemory-policy is {policy}: set it to noeviction (CONFIG SET maxmemory-policy \
         noeviction, and in redis.conf), or Redis may drop read models and unapplied stream \
         entries when it runs out of memory"
    )
}

/// The `/healthz` answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Alive {
    /// Always `ok`: answering at all is the news.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// Which binary answered.
    #[schema(example = "command-api")]
    pub service: &'static str,
}

/// Liveness: the process answers. Never checks dependencies.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Alive", body = Alive)),
)]
async fn healthz(health: web::Data<Health>) -> HttpResponse {
    let alive = Alive {
        status: "ok",
        service: health.service,
    };
    // Through a `Value` (sorted keys), as this answer has always been written.
    HttpResponse::Ok().json(serde_json::json!(alive))
}

/// Readiness: every dependency answered within 2 s and the process is not draining.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to take work", body = Readiness),
        (status = 503, description = "A dependency is unreachable, or the process is draining",
         body = Readiness),
    ),
)]
async fn readyz(health: web::Data<Health>) -> HttpResponse {
    let r = health.readiness().await;
    metrics::gauge!(SERVICE_READY).set(if r.ready { 1.0 } else { 0.0 });
    if r.ready {
        HttpResponse::Ok().json(r)
    } else {
        HttpResponse::ServiceUnavailable().json(r)
    }
}

/// The process's metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4",
         content_type = "text/plain", body = String),
    ),
)]
async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(telemetry::render())
}

/// Registers `/healthz`, `/readyz` and `/metrics`. The app must carry `web::Data<Health>`.
pub fn routes(routes: &mut Routes) {
    routes
        .add(__path_healthz, healthz)
        .add(__path_readyz, readyz)
        .add(__path_metrics, metrics);
}
