//! What admin-api's tests share: the binary and the environment of a schema of its own.
#![allow(dead_code)]

use std::path::Path;

use test_kit::TestDb;

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_admin-api"))
}

/// The environment of admin-api on `db`.
pub fn env_for(db: &TestDb) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), test_kit::database_url()),
        ("DATABASE_SCHEMA".into(), db.schema.clone()),
        ("REDIS_URL".into(), test_kit::redis_url()),
    ]
}
