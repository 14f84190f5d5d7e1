//! admin-api as a process: migrations from several processes at once, start-up checks,
//! graceful shutdown.

use std::time::Duration;

use test_kit::TestDb;
use test_kit::process::{Service, run};

use crate::helpers::*;

#[tokio::test]
async fn migrate_from_two_processes_at_once_then_again_is_safe() {
    let db = TestDb::unmigrated().await;
    let env = env_for(&db);
    let (a, b) = tokio::join!(
        run(bin(), &["migrate"], &env),
        run(bin(), &["migrate"], &env)
    );
    assert_eq!(a.0, 0, "first: {}{}", a.1, a.2);
    assert_eq!(b.0, 0, "second: {}{}", b.1, b.2);
    // As for a module added since: its projection has no control row yet.
    db.pool
        .get()
        .await
        .expect("client")
        .execute("DELETE FROM projections", &[])
        .await
        .expect("delete");
    let (code, out, err) = run(bin(), &["migrate"], &env).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("applied=[]"),
        "a third run applies nothing: {out}{err}"
    );
    let c = db.pool.get().await.expect("client");
    let n: i64 = c
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n as usize, outbox::migrate::MIGRATIONS.len());
    let tables: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
            &[&db.schema],
        )
        .await
        .expect("tables")
        .get(0);
    assert!(tables >= 6, "schema created with its tables ({tables})");
    let mut rows: Vec<String> = c
        .query("SELECT name FROM projections", &[])
        .await
        .expect("projections")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut registry: Vec<String> = modules::specs().map(|s| s.projection.to_owned()).collect();
    rows.sort();
    registry.sort();
    assert_eq!(
        rows, registry,
        "one control row per projection of the registry"
    );
}

#[tokio::test]
async fn serving_needs_a_migrated_schema_and_an_operator_token() {
    let db = TestDb::unmigrated().await;
    let mut env = env_for(&db);
    env.push(("HTTP_ADDR".into(), "127.0.0.1:0".into()));
    let (code, out, err) = run(bin(), &[], &env).await;
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("ADMIN_TOKENS"),
        "names the setting: {out}{err}"
    );
    env.push(("ADMIN_TOKENS".into(), "operator-token-0123456789".into()));
    let (code, out, err) = run(bin(), &[], &env).await;
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("admin-api migrate"),
        "names the command to run: {out}{err}"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_logging_at_info() {
    let db = TestDb::new().await;
    let mut env = env_for(&db);
    env.push(("ADMIN_TOKENS".into(), "operator-token-0123456789".into()));
    let dir = std::env::temp_dir();
    let mut svc = Service::spawn(bin(), &env, &dir);
    svc.wait_ready(Duration::from_secs(10)).await;
    let status = svc.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}: {}", svc.log_text());
    let log = svc.log_text();
    assert!(
        log.contains("INFO") && log.contains("shutdown requested"),
        "{log}"
    );
    assert!(!log.contains("ERROR"), "a shutdown is not an error: {log}");
    let _ = std::fs::remove_file(&svc.log);
}
