//! The binary itself: start-up refusals and the token subcommand.

use std::path::Path;

use test_kit::process::run;
use uuid::Uuid;

use crate::helpers::*;

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
