//! Readiness checks must not open pooled connections that die with the HTTP workers at
//! shutdown, while the service's own loops still hold them.

use std::time::Duration;

use service_kit::health::Health;
use service_kit::http::server::{self, ServerOptions};
use test_kit::TestDb;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_opened_by_a_readiness_check_outlives_the_http_workers() {
    let db = TestDb::new().await;
    // A pool of its own, empty: the first /readyz opens its only connection.
    let pool = outbox::connect(&outbox::PgSettings {
        max_connections: 1,
        ..outbox::PgSettings::new(test_kit::database_url(), db.schema.clone())
    })
    .expect("pool");
    let health = Health::new("test").with_postgres(pool.clone());
    let listener = server::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let options = ServerOptions {
        workers: Some(1),
        grace: Duration::from_secs(1),
    };
    let srv = server::start(listener, options, health.clone(), |_| {}).expect("server");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(server::run_until_cancelled(srv, health, shutdown.clone()));
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    assert_eq!(
        pool.status().size,
        1,
        "the check opened the pool's connection"
    );

    // A loop of the service holds that connection while the HTTP server stops...
    let client = pool.get().await.expect("connection");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops")
        .expect("task")
        .expect("server");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...and can still use it (a lease release at shutdown, say).
    client
        .simple_query("SELECT 1")
        .await
        .expect("the connection outlives the HTTP workers");
}
