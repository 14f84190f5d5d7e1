//! Checks of an API's OpenAPI document against the running API: its routing agrees with the
//! document (the test that fails when the two drift apart), and schemathesis finds no answer
//! the document does not promise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The methods whose routing is checked on every documented path.
pub const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// Fetches `GET {base}/openapi.json` (no credentials) and parses it.
///
/// # Panics
/// When it does not answer 200 with a JSON document of OpenAPI 3.
pub async fn fetch_document(http: &reqwest::Client, base: &str) -> Value {
    let res = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(res.status(), StatusCode::OK, "GET /openapi.json");
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let doc: Value = res.json().await.expect("the document is JSON");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "not an OpenAPI 3 document: {doc}"
    );
    doc
}

/// Every documented path with its documented methods (of [`METHODS`]), upper case.
#[must_use]
pub fn operations(doc: &Value) -> Vec<(String, Vec<String>)> {
    doc["paths"]
        .as_object()
        .map(|paths| {
            paths
                .iter()
                .map(|(path, item)| {
                    let methods = METHODS
                        .iter()
                        .map(Method::as_str)
                        .filter(|m| item.get(m.to_ascii_lowercase()).is_some())
                        .map(str::to_owned)
                        .collect();
                    (path.clone(), methods)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// For every documented path, sends each of [`METHODS`] with `authorization` (no body) to the
/// URI `concrete(path)` gives (a path whose `{segments}` name a resource that exists, made
/// afresh for each call since a call may delete it): a documented method must reach its
/// handler (neither 404 nor 405), any other must answer 405 `method_not_allowed` with `Allow`
/// listing exactly the documented methods.
///
/// # Panics
/// On the first disagreement, naming it.
pub async fn assert_routing_agrees(
    http: &reqwest::Client,
    base: &str,
    doc: &Value,
    authorization: &str,
    concrete: impl AsyncFn(&str) -> String,
) {
    for (path, documented) in operations(doc) {
        assert!(!documented.is_empty(), "{path} documents no method");
        for method in METHODS {
            let uri = concrete(&path).await;
            let res = http
                .request(method.clone(), format!("{base}{uri}"))
                .header("authorization", authorization)
                .send()
                .await
                .expect("request");
            let status = res.status();
            let allow = res
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body: Value = res.json().await.unwrap_or(Value::Null);
            if documented.iter().any(|m| m == method.as_str()) {
                assert!(
                    status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is documented but answers {status}: {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is not documented: {body}"
                );
                assert_eq!(
                    body["error"]["code"], "method_not_allowed",
                    "{method} {path}"
                );
                let mut allowed: Vec<&str> = allow
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .collect();
                allowed.sort_unstable();
                let mut expected: Vec<&str> = documented.iter().map(String::as_str).collect();
                expected.sort_unstable();
                assert_eq!(allowed, expected, "Allow of {method} {path}");
            }
        }
    }
}

/// What a schemathesis run said.
#[derive(Debug)]
pub struct FuzzOutcome {
    /// Whether it found nothing wrong.
    pub passed: bool,
    /// Its report (stdout and stderr).
    pub report: String,
    /// How long it took, installation included.
    pub elapsed: Duration,
}

/// The repository's `scripts/fuzz-api.sh`.
#[must_use]
pub fn fuzz_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fuzz-api.sh")
}

/// Whether a `python3` is on the `PATH`: without it schemathesis cannot run, and the fuzzing
/// tests say so and skip. With it they run (installing schemathesis first if need be).
#[must_use]
pub fn python3_present() -> bool {
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `scripts/fuzz-api.sh` against the API at `base` with `authorization`, at most
/// `max_examples` generated cases per operation, bounded by `timeout`.
///
/// # Panics
/// When the script cannot be started or outlives `timeout`.
pub async fn fuzz(
    base: &str,
    authorization: &str,
    max_examples: u32,
    timeout: Duration,
) -> FuzzOutcome {
    fuzz_with(base, authorization, max_examples, timeout, &[]).await
}

/// [`fuzz`] with more schemathesis `run` options, e.g. `["--exclude-path", "/health/cqrs"]`
/// for an operation whose documented 503 depends on processes the test does not start
/// (schemathesis counts every 5xx as a server error).
///
/// # Panics
/// As [`fuzz`].
pub async fn fuzz_with(
    base: &str,
    authorization: &str,
    max_examples: u32,
    timeout: Duration,
    options: &[&str],
) -> FuzzOutcome {
    let started = Instant::now();
    let run = tokio::process::Command::new("bash")
        .arg(fuzz_script())
        .arg(base)
        .args(options)
        .env("FUZZ_AUTHORIZATION", authorization)
        .env("FUZZ_MAX_EXAMPLES", max_examples.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| panic!("scripts/fuzz-api.sh ran longer than {timeout:?}"))
        .expect("start scripts/fuzz-api.sh");
    FuzzOutcome {
        passed: out.status.success(),
        report: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        elapsed: started.elapsed(),
    }
}
