//! The one `spawn_app` of command-api's tests and what they share: an app on a schema of its
//! own, an HTTP client that signs requests, and the rows a command leaves.
#![allow(dead_code)]

pub use std::time::Duration;

use command_api::{Application, Settings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
pub use service_kit::Secret;
pub use service_kit::http::auth::JwtKeys;
use service_kit::settings::{
    JwtArgs, PostgresArgs, RedisArgs, ShutdownArgs, StreamArgs, TelemetryArgs,
};
use service_kit::startup::App as _;
pub use test_kit::TestDb;
pub use test_kit::proxy::TcpProxy;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const SECRET: &str = "command-api-test-secret";

pub struct TestApp {
    pub base: String,
    pub db: TestDb,
    pub jwt: JwtKeys,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn settings(url: &str, schema: &str) -> Settings {
    Settings {
        postgres: PostgresArgs::new(url, schema),
        streams: StreamArgs {
            stream_partitions: 4,
        },
        // Wake-ups go to a channel of this test's own (no relay listens here).
        redis: RedisArgs::new(&test_kit::redis_url(), &format!("test:{schema}:")),
        jwt: JwtArgs {
            jwt_secret: Secret::new(SECRET),
        },
        telemetry: TelemetryArgs::default(),
        shutdown: ShutdownArgs::default(),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        http_workers: Some(1),
    }
}

pub async fn spawn_app_with(db: TestDb, url: &str) -> TestApp {
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

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestDb::new().await, &test_kit::database_url()).await
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    pub fn field(&self) -> &str {
        self.body["error"]["details"]["field"]
            .as_str()
            .unwrap_or("")
    }
}

impl TestApp {
    pub fn token(&self, user: Uuid) -> String {
        self.jwt
            .issue(user, Duration::from_secs(300))
            .expect("token")
    }

    pub async fn send(
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

    pub async fn create(&self, user: Uuid) -> Answer {
        self.send(
            Method::POST,
            "/v1/tasks",
            Some(user),
            Some(task_body()),
            &[],
        )
        .await
    }

    pub async fn counts(&self) -> (i64, i64, i64) {
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

pub fn task_body() -> Value {
    json!({"title": "Read chapter 3", "type": "learning", "estimated_minutes": 45, "tags": ["rust"], "due_date": "2026-12-01"})
}

pub fn id_of(a: &Answer) -> String {
    a.body["id"].as_str().expect("id").to_owned()
}

/// A correctly signed token whose `exp` is five minutes in the past (beyond the leeway).
pub fn expired_bearer(secret: &str, user: Uuid) -> String {
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
