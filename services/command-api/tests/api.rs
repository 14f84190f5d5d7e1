//! command-api end to end over HTTP, on a real PostgreSQL schema of its own.

use std::time::Duration;

use command_api::{Application, Settings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use service_kit::Secret;
use service_kit::http::auth::JwtKeys;
use service_kit::settings::{JwtArgs, PostgresArgs, ShutdownArgs, StreamArgs, TelemetryArgs};
use test_kit::TestDb;
use test_kit::proxy::TcpProxy;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SECRET: &str = "command-api-test-secret";

struct TestApp {
    base: String,
    db: TestDb,
    jwt: JwtKeys,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn settings(url: &str, schema: &str) -> Settings {
    Settings {
        postgres: PostgresArgs::new(url, schema),
        streams: StreamArgs {
            stream_partitions: 4,
        },
        jwt: JwtArgs {
            jwt_secret: Secret::new(SECRET),
        },
        telemetry: TelemetryArgs::default(),
        shutdown: ShutdownArgs::default(),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        http_workers: Some(1),
    }
}

async fn spawn_app_with(db: TestDb, url: &str) -> TestApp {
    let app = Application::build(settings(url, &db.schema))
        .await
        .expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        base,
        db,
        jwt: JwtKeys::new(&Secret::new(SECRET)),
        http: reqwest::Client::new(),
        shutdown,
    }
}

async fn spawn_app() -> TestApp {
    spawn_app_with(TestDb::new().await, &test_kit::database_url()).await
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    fn field(&self) -> &str {
        self.body["error"]["details"]["field"]
            .as_str()
            .unwrap_or("")
    }
}

impl TestApp {
    fn token(&self, user: Uuid) -> String {
        self.jwt
            .issue(user, Duration::from_secs(300))
            .expect("token")
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        user: Option<Uuid>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(u) = user {
            req = req.bearer_auth(self.token(u));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn create(&self, user: Uuid) -> Answer {
        self.send(
            Method::POST,
            "/v1/tasks",
            Some(user),
            Some(task_body()),
            &[],
        )
        .await
    }

    async fn counts(&self) -> (i64, i64, i64) {
        let c = self.db.pool.get().await.expect("client");
        let row = c
            .query_one(
                "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM event_store), (SELECT count(*) FROM outbox)",
                &[],
            )
            .await
            .expect("counts");
        (row.get(0), row.get(1), row.get(2))
    }
}

fn task_body() -> Value {
    json!({"title": "Read chapter 3", "type": "learning", "estimated_minutes": 45, "tags": ["rust"], "due_date": "2026-12-01"})
}

fn id_of(a: &Answer) -> String {
    a.body["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn create_commits_row_event_and_outbox_entry_with_the_request_id() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let a = app
        .send(
            Method::POST,
            "/v1/tasks",
            Some(user),
            Some(task_body()),
            &[("x-request-id", "req-42")],
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let id = id_of(&a);
    assert_eq!(a.headers["location"], format!("/v1/tasks/{id}").as_str());
    assert_eq!(a.headers["x-request-id"], "req-42");
    assert_eq!(
        (a.body["version"].as_i64(), a.body["changed"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(a.body["event_ids"].as_array().map(Vec::len), Some(1));
    let token =
        events::ConsistencyToken::decode(a.body["consistency_token"].as_str().expect("token"))
            .expect("decode");
    assert_eq!(
        (token.aggregate_id.to_string(), token.version),
        (id.clone(), 1)
    );
    assert_eq!(app.counts().await, (1, 1, 1));
    let c = app.db.pool.get().await.expect("client");
    let row = c
        .query_one("SELECT event_type, metadata, payload FROM event_store WHERE aggregate_id = $1::text::uuid", &[&id])
        .await
        .expect("event");
    assert_eq!(row.get::<_, &str>(0), "task.created");
    let metadata: Value = row.get(1);
    assert_eq!(metadata["correlation_id"], "req-42");
    assert_eq!(metadata["user_id"], user.to_string());
    let payload: Value = row.get(2);
    assert_eq!(payload["title"], "Read chapter 3");
    let task = c
        .query_one(
            "SELECT status, version, user_id FROM tasks WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("row");
    assert_eq!(
        (
            task.get::<_, &str>(0),
            task.get::<_, i64>(1),
            task.get::<_, Uuid>(2)
        ),
        ("pending", 1, user)
    );
}

#[tokio::test]
async fn a_request_id_is_generated_when_absent_and_echoed() {
    let app = spawn_app().await;
    let a = app.create(Uuid::now_v7()).await;
    let rid = a.headers["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(!rid.is_empty());
    let c = app.db.pool.get().await.expect("client");
    let meta: Value = c
        .query_one("SELECT metadata FROM event_store", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(meta["correlation_id"], rid.as_str());
}

#[tokio::test]
async fn the_full_life_of_a_task_over_http() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let id = id_of(&app.create(user).await);
    let path = |s: &str| format!("/v1/tasks/{id}{s}");
    let upd = app
        .send(
            Method::PATCH,
            &path(""),
            Some(user),
            Some(json!({"title": "Read chapter 4", "due_date": null})),
            &[],
        )
        .await;
    assert_eq!(
        (upd.status, upd.body["version"].as_i64()),
        (StatusCode::OK, Some(2))
    );
    let same = app
        .send(
            Method::PATCH,
            &path(""),
            Some(user),
            Some(json!({"title": "Read chapter 4"})),
            &[],
        )
        .await;
    assert_eq!(
        (
            same.status,
            same.body["changed"].as_bool(),
            same.body["version"].as_i64()
        ),
        (StatusCode::OK, Some(false), Some(2))
    );
    assert_eq!(same.body["event_ids"], json!([]));
    let started = app
        .send(
            Method::POST,
            &path("/start"),
            Some(user),
            None,
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(
        (started.status, started.body["version"].as_i64()),
        (StatusCode::OK, Some(3))
    );
    let done = app
        .send(
            Method::POST,
            &path("/complete"),
            Some(user),
            Some(json!({"actual_minutes": 50, "note": "ok"})),
            &[],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK);
    let gone = app
        .send(Method::DELETE, &path(""), Some(user), None, &[])
        .await;
    assert_eq!(
        (gone.status, gone.body["version"].as_i64()),
        (StatusCode::OK, Some(5))
    );
    let again = app
        .send(Method::POST, &path("/start"), Some(user), None, &[])
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::NOT_FOUND, "not_found"),
        "deleted tasks are 404 everywhere"
    );
    let c = app.db.pool.get().await.expect("client");
    let types: Vec<String> = c
        .query(
            "SELECT event_type FROM event_store ORDER BY aggregate_version",
            &[],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        types,
        [
            "task.created",
            "task.updated",
            "task.started",
            "task.completed",
            "task.deleted"
        ]
    );
    let row = c.query_one("SELECT status, actual_minutes, due_date IS NULL, deleted_at IS NOT NULL, version FROM tasks", &[]).await.expect("row");
    assert_eq!(row.get::<_, &str>(0), "completed");
    assert_eq!(row.get::<_, Option<i32>>(1), Some(50));
    assert!(row.get::<_, bool>(2) && row.get::<_, bool>(3));
    assert_eq!(row.get::<_, i64>(4), 5);
}

#[tokio::test]
async fn abandon_takes_an_optional_body() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let a = id_of(&app.create(user).await);
    let b = id_of(&app.create(user).await);
    let r = app
        .send(
            Method::POST,
            &format!("/v1/tasks/{a}/abandon"),
            Some(user),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app
        .send(
            Method::POST,
            &format!("/v1/tasks/{b}/abandon"),
            Some(user),
            Some(json!({"reason": "later"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let c = app.db.pool.get().await.expect("client");
    let reason: Option<String> = c
        .query_one(
            "SELECT abandon_reason FROM tasks WHERE id = $1::text::uuid",
            &[&b],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(reason.as_deref(), Some("later"));
}

/// Every rejection of http-api.md: its status and code, and nothing written.
#[tokio::test]
async fn every_bad_input_is_rejected_with_its_code_and_writes_nothing() {
    let app = spawn_app().await;
    let owner = Uuid::now_v7();
    let stranger = Uuid::now_v7();
    let id = id_of(&app.create(owner).await);
    let start = format!("/v1/tasks/{id}/start");
    let complete = format!("/v1/tasks/{id}/complete");
    let before = app.counts().await;
    assert_eq!(before, (1, 1, 1));

    let raw = |body: &str, ct: &str| {
        let req = app
            .http
            .post(format!("{}/v1/tasks", app.base))
            .bearer_auth(app.token(owner))
            .header("content-type", ct.to_owned())
            .body(body.to_owned());
        async move {
            let res = req.send().await.expect("send");
            let status = res.status();
            let body: Value = res.json().await.expect("json");
            (
                status,
                body["error"]["code"].as_str().unwrap_or("").to_owned(),
                body["error"]["details"]["field"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        }
    };
    assert_eq!(
        raw("{\"title\": ", "application/json").await,
        (
            StatusCode::BAD_REQUEST,
            "invalid_json".into(),
            String::new()
        )
    );
    let mut unknown = task_body();
    unknown["colour"] = json!("red");
    assert_eq!(
        raw(&unknown.to_string(), "application/json").await,
        (
            StatusCode::BAD_REQUEST,
            "validation_failed".into(),
            "colour".into()
        )
    );
    assert_eq!(
        raw(&task_body().to_string(), "text/plain").await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let big = json!({"title": "x".repeat(1024 * 1024), "type": "learning", "estimated_minutes": 1})
        .to_string();
    let (status, code, _) = raw(&big, "application/json").await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    for (title, why) in [("   ", "blank"), (&"t".repeat(300) as &str, "300 chars")] {
        let mut b = task_body();
        b["title"] = json!(title);
        let a = app
            .send(Method::POST, "/v1/tasks", Some(owner), Some(b), &[])
            .await;
        assert_eq!(
            (a.status, a.code(), a.field()),
            (StatusCode::BAD_REQUEST, "validation_failed", "title"),
            "{why}"
        );
    }
    let mut b = task_body();
    b["estimated_minutes"] = json!("forty");
    let a = app
        .send(Method::POST, "/v1/tasks", Some(owner), Some(b), &[])
        .await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::BAD_REQUEST, "estimated_minutes")
    );

    let a = app
        .send(
            Method::POST,
            "/v1/tasks/not-a-uuid/start",
            Some(owner),
            None,
            &[],
        )
        .await;
    assert_eq!(
        (a.status, a.code(), a.field()),
        (StatusCode::BAD_REQUEST, "validation_failed", "id")
    );

    let a = app
        .send(Method::POST, "/v1/tasks", None, Some(task_body()), &[])
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized"),
        "missing JWT"
    );
    let expired = app
        .send(
            Method::POST,
            "/v1/tasks",
            None,
            Some(task_body()),
            &[("authorization", &expired_bearer(SECRET, owner))],
        )
        .await;
    assert_eq!(
        (expired.status, expired.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized"),
        "expired JWT"
    );
    let forged = JwtKeys::new(&Secret::new("some-other-secret-123"))
        .issue(owner, Duration::from_secs(60))
        .expect("forge");
    let a = app
        .send(
            Method::POST,
            "/v1/tasks",
            None,
            Some(task_body()),
            &[("authorization", &format!("Bearer {forged}"))],
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized"),
        "forged JWT"
    );
    let a = app
        .send(
            Method::POST,
            "/v1/tasks",
            None,
            Some(task_body()),
            &[("authorization", "Basic abc")],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "not a bearer token");

    for (method, path) in [
        (Method::POST, start.clone()),
        (Method::DELETE, format!("/v1/tasks/{id}")),
        (Method::PATCH, format!("/v1/tasks/{id}")),
    ] {
        let body = (method == Method::PATCH).then(|| json!({"priority": 5}));
        let a = app
            .send(method.clone(), &path, Some(stranger), body, &[])
            .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::NOT_FOUND, "not_found"),
            "another user's task: {method} {path}"
        );
    }
    let a = app
        .send(
            Method::POST,
            &format!("/v1/tasks/{}/start", Uuid::now_v7()),
            Some(owner),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "unknown task");

    let a = app
        .send(
            Method::POST,
            &complete,
            Some(owner),
            Some(json!({"actual_minutes": 5})),
            &[],
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "invalid_transition"),
        "complete a pending task"
    );
    let a = app
        .send(
            Method::POST,
            &start,
            Some(owner),
            None,
            &[("if-match", "\"7\"")],
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::PRECONDITION_FAILED, "version_mismatch")
    );
    assert_eq!(a.body["error"]["details"]["current_version"], 1);
    let a = app
        .send(
            Method::POST,
            &start,
            Some(owner),
            None,
            &[("if-match", "soon")],
        )
        .await;
    assert_eq!((a.status, a.field()), (StatusCode::BAD_REQUEST, "If-Match"));
    let a = app
        .send(
            Method::PATCH,
            &format!("/v1/tasks/{id}"),
            Some(owner),
            Some(json!({})),
            &[],
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "validation_failed"),
        "empty patch"
    );
    let a = app
        .send(
            Method::PATCH,
            &format!("/v1/tasks/{id}"),
            Some(owner),
            Some(json!({"title": null})),
            &[],
        )
        .await;
    assert_eq!((a.status, a.field()), (StatusCode::BAD_REQUEST, "title"));
    let a = app
        .send(
            Method::POST,
            &complete,
            Some(owner),
            Some(json!({"actual_minutes": 2000})),
            &[],
        )
        .await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::BAD_REQUEST, "actual_minutes")
    );
    let a = app
        .send(Method::GET, "/v1/tasks", Some(owner), None, &[])
        .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let a = app
        .send(Method::GET, "/v1/nothing-here", Some(owner), None, &[])
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, "not_found"));

    assert_eq!(
        app.counts().await,
        before,
        "no rejected command left a row, an event or an outbox entry"
    );
    let c = app.db.pool.get().await.expect("client");
    let version: i64 = c
        .query_one("SELECT version FROM tasks", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(version, 1);
}

/// A correctly signed token whose `exp` is five minutes in the past (beyond the leeway).
fn expired_bearer(secret: &str, user: Uuid) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({"sub": user.to_string(), "iat": now - 600, "exp": now - 300});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign");
    format!("Bearer {token}")
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_answer_and_refuse_reuse() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let key = [("idempotency-key", "create-once")];
    let first = app
        .send(
            Method::POST,
            "/v1/tasks",
            Some(user),
            Some(task_body()),
            &key,
        )
        .await;
    let second = app
        .send(
            Method::POST,
            "/v1/tasks",
            Some(user),
            Some(task_body()),
            &key,
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(
        (second.status, &second.body),
        (StatusCode::CREATED, &first.body),
        "same answer"
    );
    assert_eq!(second.headers["location"], first.headers["location"]);
    assert_eq!(second.headers["idempotency-replayed"], "true");
    assert_eq!(app.counts().await, (1, 1, 1), "the retry wrote nothing");
    let mut other = task_body();
    other["title"] = json!("Something else");
    let reused = app
        .send(Method::POST, "/v1/tasks", Some(user), Some(other), &key)
        .await;
    assert_eq!(
        (reused.status, reused.code()),
        (StatusCode::CONFLICT, "idempotency_key_reused")
    );
    // Keys are per user: another user's identical key is independent.
    let theirs = app
        .send(
            Method::POST,
            "/v1/tasks",
            Some(Uuid::now_v7()),
            Some(task_body()),
            &key,
        )
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    assert_ne!(theirs.body["id"], first.body["id"]);
    let long = "k".repeat(256);
    let a = app
        .send(
            Method::POST,
            "/v1/tasks",
            Some(user),
            Some(task_body()),
            &[("idempotency-key", &long)],
        )
        .await;
    assert_eq!(
        (a.status, a.field()),
        (StatusCode::BAD_REQUEST, "Idempotency-Key")
    );
    assert_eq!(app.counts().await, (2, 2, 2));
}

#[tokio::test]
async fn concurrent_retries_with_one_key_write_once() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let sends = (0..8).map(|_| {
        app.send(
            Method::POST,
            "/v1/tasks",
            Some(user),
            Some(task_body()),
            &[("idempotency-key", "race")],
        )
    });
    let answers = futures::future::join_all(sends).await;
    let ids: std::collections::BTreeSet<_> =
        answers.iter().map(|a| a.body["id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "every retry got the same task");
    assert_eq!(app.counts().await, (1, 1, 1));
}

#[tokio::test]
async fn a_database_outage_answers_503_with_retry_after_and_recovers() {
    let proxy = TcpProxy::postgres().await;
    let app = spawn_app_with(TestDb::new().await, &proxy.postgres_url()).await;
    let user = Uuid::now_v7();
    assert_eq!(app.create(user).await.status, StatusCode::CREATED);
    proxy.down();
    let a = app.create(user).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert!(a.headers.contains_key("retry-after"));
    assert!(
        !a.body.to_string().contains("SELECT"),
        "no internals in the body"
    );
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    proxy.up();
    test_kit::eventually(Duration::from_secs(10), "writes succeed again", || async {
        (app.create(user).await.status == StatusCode::CREATED).then_some(())
    })
    .await;
    assert_eq!(
        app.counts().await,
        (2, 2, 2),
        "the failed command wrote nothing"
    );
}

#[tokio::test]
async fn health_endpoints_answer() {
    let app = spawn_app().await;
    let h = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(h.status(), StatusCode::OK);
    let r: Value = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(r["ready"], true);
    app.create(Uuid::now_v7()).await;
    let m = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(m.contains("http_requests_total"), "{m}");
    assert!(
        m.contains(r#"route="/v1/tasks""#),
        "routes are labelled by pattern: {m}"
    );
}

mod process {
    use std::path::Path;

    use super::*;
    use test_kit::process::run;

    fn bin() -> &'static Path {
        Path::new(env!("CARGO_BIN_EXE_command-api"))
    }

    #[tokio::test]
    async fn refuses_an_older_schema_naming_the_command_to_run() {
        let db = TestDb::unmigrated().await;
        let env = vec![
            ("DATABASE_URL".to_owned(), test_kit::database_url()),
            ("DATABASE_SCHEMA".to_owned(), db.schema.clone()),
            ("JWT_SECRET".to_owned(), SECRET.to_owned()),
            ("HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ];
        let (code, out, err) = run(bin(), &[], &env).await;
        assert_ne!(code, 0);
        assert!(
            format!("{out}{err}").contains("admin-api migrate"),
            "{out}{err}"
        );
    }

    #[tokio::test]
    async fn token_prints_a_usable_token_and_a_missing_secret_is_named() {
        let user = Uuid::now_v7();
        let env = vec![("JWT_SECRET".to_owned(), SECRET.to_owned())];
        let (code, out, err) = run(
            bin(),
            &["token", "--user", &user.to_string(), "--ttl", "2h"],
            &env,
        )
        .await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            JwtKeys::new(&Secret::new(SECRET))
                .verify(out.trim())
                .expect("valid"),
            user
        );
        let (code, _, err) = run(bin(), &["token", "--user", &user.to_string()], &[]).await;
        assert_eq!(code, 2);
        assert!(
            err.contains("JWT_SECRET") || err.contains("jwt-secret"),
            "{err}"
        );
        let short = vec![("JWT_SECRET".to_owned(), "short".to_owned())];
        let (code, _, err) = run(bin(), &["token", "--user", &user.to_string()], &short).await;
        assert_eq!(code, 2);
        assert!(err.contains("at least 16"), "{err}");
    }
}
