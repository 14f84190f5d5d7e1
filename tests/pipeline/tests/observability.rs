//! What an operator sees of the running pipeline: every metric the dashboard and the alerts
//! use is exported from the start (at 0, with its `# HELP`), and every expression of the
//! shipped Grafana dashboard returns data from a real Prometheus scraping the real services,
//! which also loads the shipped alert rules and evaluates them without error.
//!
//! The second test needs the `prometheus` binary (Debian's package; `scripts/check-deploy.sh`
//! installs it, `PROMETHEUS` names another one).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{Options, Pipeline};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_kit::eventually;
use uuid::Uuid;

/// Metrics every service exports.
const COMMON: &[&str] = &[
    "http_requests_total",
    "http_request_duration_seconds",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_start_time_seconds",
    "cqrs_service_ready",
];

/// Metrics of one service beyond [`COMMON`], by binary name.
fn specific(service: &str) -> &'static [&'static str] {
    match service {
        "outbox-relay" => &[
            "cqrs_outbox_pending_count",
            "cqrs_outbox_oldest_pending_age_seconds",
            "cqrs_outbox_publish_lag_seconds",
            "cqrs_events_published_total",
            "cqrs_relay_partitions_held",
            "cqrs_stream_trimmed_entries_total",
            "cqrs_stream_length",
            "cqrs_outbox_dead_tuples",
            "cqrs_dependency_errors_total",
        ],
        "projector-worker" => &[
            "cqrs_events_processed_total",
            "cqrs_event_processing_duration_seconds",
            "cqrs_duplicate_events_total",
            "cqrs_worker_errors_total",
            "cqrs_projection_lag_seconds",
            "cqrs_consumer_lag_messages",
            "cqrs_retry_attempts_total",
            "cqrs_dlq_messages_total",
            "cqrs_projector_partitions_held",
            "cqrs_gap_repairs_total",
            "cqrs_rebuilds_total",
            "cqrs_redis_rollbacks_total",
            "cqrs_dependency_errors_total",
        ],
        "admin-api" => &[
            "cqrs_health_status",
            "cqrs_projection_live_replicas",
            "cqrs_projection_lag_messages",
            "cqrs_projection_oldest_unapplied_age_seconds",
            "cqrs_projection_dead_letters",
            "cqrs_relay_live_replicas",
            "cqrs_relay_partitions_without_owner",
        ],
        _ => &[],
    }
}

/// One `/metrics` page, parsed: samples by metric family, and the families with a `# HELP`.
struct Page {
    /// Family name → its sample lines (`name{labels} value`).
    samples: BTreeMap<String, Vec<String>>,
    helped: BTreeSet<String>,
    typed: BTreeSet<String>,
}

impl Page {
    fn parse(text: &str) -> Self {
        let mut page = Page {
            samples: BTreeMap::new(),
            helped: BTreeSet::new(),
            typed: BTreeSet::new(),
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split_whitespace().next().unwrap_or_default();
                page.helped.insert(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split_whitespace().next().unwrap_or_default();
                page.typed.insert(name.to_owned());
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let series = line.split(['{', ' ']).next().unwrap_or_default();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| series.strip_suffix(s))
                    .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                    .unwrap_or(series);
                page.samples
                    .entry(family.to_owned())
                    .or_default()
                    .push(line.to_owned());
            }
        }
        page
    }

    /// The value of every sample of `family` whose series line contains `filter`.
    fn values(&self, family: &str, filter: &str) -> Vec<f64> {
        self.samples
            .get(family)
            .into_iter()
            .flatten()
            .filter(|l| l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    }
}

async fn metrics_page(p: &Pipeline, service: &str) -> Page {
    let res = p
        .http
        .get(p.url(service, "/metrics"))
        .send()
        .await
        .expect("/metrics");
    assert_eq!(res.status(), StatusCode::OK);
    Page::parse(&res.text().await.expect("body"))
}

/// The binary a harness service name (`projector-worker#0`) runs.
fn binary_of(name: &str) -> &str {
    name.split('#').next().unwrap_or(name)
}

#[tokio::test]
async fn every_metric_is_exported_at_zero_with_help_before_any_traffic_and_probes_answer() {
    let p = Pipeline::start(&[], Options::default()).await;
    for name in p.services.keys() {
        let service = binary_of(name);
        // admin-api's gauges come from its first health check, right after start.
        let page = eventually(
            Duration::from_secs(20),
            &format!("{name}'s metrics"),
            || async {
                let page = metrics_page(&p, name).await;
                let missing: Vec<&&str> = COMMON
                    .iter()
                    .chain(specific(service))
                    .filter(|m| !page.samples.contains_key(**m))
                    .collect();
                missing.is_empty().then_some(page)
            },
        )
        .await;
        // Every family exported, ours or not, says what it is.
        let unexplained: Vec<&String> = page
            .samples
            .keys()
            .filter(|f| !page.helped.contains(*f) || !page.typed.contains(*f))
            .collect();
        assert!(
            unexplained.is_empty(),
            "{name}: no # HELP or # TYPE for {unexplained:?}"
        );
        // No traffic yet: nothing counted.
        for family in [
            "cqrs_events_published_total",
            "cqrs_events_processed_total",
            "cqrs_dlq_messages_total",
            "cqrs_worker_errors_total",
            "cqrs_duplicate_events_total",
        ] {
            let values = page.values(family, "");
            assert!(
                values.iter().all(|v| *v == 0.0),
                "{name}: {family} is not 0 before any event: {values:?}"
            );
        }
    }
    // The image's healthcheck (no curl in it): `admin-api probe URL` exits 0 on a 2xx only.
    for name in p.services.keys() {
        let (code, out, err) = p.admin_cli(&["probe", &p.url(name, "/readyz")]).await;
        assert_eq!((code, out.as_str()), (0, ""), "{name}: {err}");
    }
    let (code, _, _) = p
        .admin_cli(&["probe", &p.url("command-api", "/no-such-path")])
        .await;
    assert_eq!(code, 1, "a 404 is not healthy");
    let closed = format!("http://127.0.0.1:{}/readyz", test_kit::process::free_port());
    let (code, _, _) = p.admin_cli(&["probe", &closed]).await;
    assert_eq!(code, 1, "nothing listening is not healthy");
    // Per projection of the registry, per event type: so a module added later is covered.
    let projector = metrics_page(&p, "projector-worker#0").await;
    let relay = metrics_page(&p, "outbox-relay#0").await;
    for spec in modules::specs() {
        let projection = format!("projection=\"{}\"", spec.projection);
        for family in specific("projector-worker")
            .iter()
            .filter(|f| **f != "cqrs_dependency_errors_total")
        {
            assert!(
                !projector.values(family, &projection).is_empty(),
                "{family} has no series for {projection}"
            );
        }
        for event_type in spec.event_types {
            let label = format!("event_type=\"{event_type}\"");
            assert_eq!(
                projector.values(
                    "cqrs_events_processed_total",
                    &format!("{label},{projection}")
                ),
                vec![0.0],
                "{event_type} processed"
            );
            assert_eq!(
                relay.values("cqrs_events_published_total", &label),
                vec![0.0],
                "{event_type} published"
            );
        }
    }
}

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `expr` of the dashboard's panels (rows included), with the panel's title.
fn dashboard_expressions() -> Vec<(String, String)> {
    let path = root().join("deploy/grafana/dashboards/cqrs-pipeline.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("json");
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            for t in panel["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("every target has an expr");
                let title = panel["title"].as_str().unwrap_or_default();
                out.push((title.to_owned(), expr.to_owned()));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The Prometheus binary: `PROMETHEUS`, or `prometheus` on the PATH.
fn prometheus_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PROMETHEUS") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "prometheus is not installed: run scripts/check-deploy.sh (it installs Debian's \
                 package), or set PROMETHEUS to its path"
            )
        })
}

/// Asks Prometheus for an instant query; `None` while it answers nothing usable.
async fn instant(http: &reqwest::Client, base: &str, query: &str) -> Option<Vec<Value>> {
    let url = reqwest::Url::parse_with_params(&format!("{base}/api/v1/query"), [("query", query)])
        .expect("query url");
    let res = http.get(url).send().await.ok()?;
    let body: Value = res.json().await.ok()?;
    assert_ne!(body["status"], "error", "{query}: {body}");
    body["data"]["result"].as_array().cloned()
}

/// Whether a result holds at least one finite sample (a histogram quantile without
/// observations is NaN: that is no data).
fn has_finite_sample(result: &[Value]) -> bool {
    result.iter().any(|s| {
        s["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

/// One round of what users do: a few commands of every module, a refused command, a read each.
async fn traffic_round(p: &Pipeline, users: &[Uuid], round: u64) {
    let statuses = p.random_commands(users, 3, round).await;
    assert!(
        statuses.keys().any(|s| (200..300).contains(s)),
        "{statuses:?}"
    );
    let (status, _) = p
        .command(
            users[0],
            reqwest::Method::POST,
            "/v1/tasks",
            Some(json!({"title": ""})),
        )
        .await;
    assert!(status.is_client_error(), "{status}");
    for user in users {
        let (status, _, _) = p.query(*user, "/v1/me/tasks", None).await;
        assert_eq!(status, StatusCode::OK);
    }
    p.wait_idle(Duration::from_secs(60), "the round applied")
        .await;
}

#[tokio::test]
async fn every_dashboard_expression_returns_data_from_a_real_prometheus() {
    let prometheus = prometheus_binary();
    let users: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let p = Pipeline::start(&users, Options::default()).await;

    // Prometheus scraping every service each second, with the shipped rules.
    let dir = p.log_dir.join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let mut jobs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, svc) in &p.services {
        jobs.entry(binary_of(name))
            .or_default()
            .push(format!("127.0.0.1:{}", svc.port));
    }
    let scrape: Vec<Value> = jobs
        .iter()
        .map(|(job, targets)| json!({"job_name": job, "static_configs": [{"targets": targets}]}))
        .collect();
    let rules_dir = root().join("deploy/prometheus/rules");
    let config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [format!("{}/*.yml", rules_dir.display())],
        "scrape_configs": scrape,
    });
    // JSON is YAML.
    std::fs::write(dir.join("prometheus.yml"), config.to_string()).expect("config");
    let port = test_kit::process::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
    let _prometheus = tokio::process::Command::new(&prometheus)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "Prometheus ready", || async {
        let r = http.get(format!("{base}/-/ready")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    // Every target scraped once before any traffic: a counter first seen after its events
    // has no increase to show.
    let targets = p.services.len();
    eventually(Duration::from_secs(30), "every service scraped", || async {
        let up = instant(&http, &base, "up == 1").await?;
        (up.len() == targets).then_some(())
    })
    .await;
    // Every expression as Grafana would send it: the rate window of a 1 s scrape, every
    // projection selected.
    let expressions = dashboard_expressions();
    assert!(expressions.len() >= 20, "{expressions:?}");
    let mut waiting: Vec<(String, String)> = expressions
        .iter()
        .map(|(title, expr)| {
            let q = expr
                .replace("$__rate_interval", "30s")
                .replace("$projection", ".+");
            (title.clone(), q)
        })
        .collect();
    // Traffic in rounds, as users send it, until every expression has data: commands of every
    // module, a refused command (the errors panel), reads. Each round is applied before the
    // next, so the read side moves between scrapes.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut round = 0u64;
    while !waiting.is_empty() {
        round += 1;
        traffic_round(&p, &users, round).await;
        let mut still = Vec::new();
        for (title, q) in waiting {
            let result = instant(&http, &base, &q).await.unwrap_or_default();
            if !has_finite_sample(&result) {
                still.push((title, q));
            }
        }
        waiting = still;
        assert!(
            waiting.is_empty() || std::time::Instant::now() < deadline,
            "dashboard expressions without data after 90 s:\n{}",
            waiting
                .iter()
                .map(|(t, q)| format!("  [{t}] {q}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // The shipped rules loaded and evaluate without error against the real series.
    let groups = eventually(Duration::from_secs(20), "every rule evaluated", || async {
        let body: Value = http
            .get(format!("{base}/api/v1/rules"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let groups = body["data"]["groups"].as_array()?.clone();
        let rules: Vec<&Value> = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let evaluated = !rules.is_empty()
            && rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
        evaluated.then_some(groups)
    })
    .await;
    let rules: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert!(rules.len() >= 11, "{rules:?}");
    for r in &rules {
        assert_eq!(
            r["health"], "ok",
            "rule {} fails: {}",
            r["name"], r["lastError"]
        );
    }
    // Every metric the rules name is one the services export (a misspelt name would leave
    // its alert silent forever).
    let names: BTreeSet<String> = {
        let body: Value = http
            .get(format!("{base}/api/v1/label/__name__/values"))
            .send()
            .await
            .expect("names")
            .json()
            .await
            .expect("json");
        body["data"]
            .as_array()
            .expect("names")
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect()
    };
    let rules_text =
        std::fs::read_to_string(rules_dir.join("cqrs-alerts.yml")).expect("the alert rules");
    let used: BTreeSet<&str> = rules_text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|t| {
            ["cqrs_", "http_", "process_"]
                .iter()
                .any(|p| t.starts_with(p))
        })
        .collect();
    assert!(used.len() >= 8, "{used:?}");
    let unknown: Vec<&&str> = used.iter().filter(|n| !names.contains(**n)).collect();
    assert!(
        unknown.is_empty(),
        "the rules use metrics nobody exports: {unknown:?}"
    );
    // A healthy pipeline raises no alert (none pending either).
    let firing: Vec<&&Value> = rules.iter().filter(|r| r["state"] != "inactive").collect();
    assert!(
        firing.is_empty(),
        "alerts on a healthy pipeline: {firing:?}"
    );
}

/// KEDA's redis-streams scaler takes one stream per trigger, so the prod ScaledObject must
/// list every partition of every module's stream with that module's consumer group: a module
/// added to the registry without its triggers would lag with nothing scaling on it.
#[test]
fn prod_keda_scales_the_projector_on_every_stream_of_every_module() {
    let overlay = root().join("k8s/overlays/prod");
    let kustomization =
        std::fs::read_to_string(overlay.join("kustomization.yaml")).expect("kustomization");
    let partitions: u32 = kustomization
        .lines()
        .find_map(|l| l.trim().strip_prefix("- STREAM_PARTITIONS="))
        .expect("prod sets STREAM_PARTITIONS")
        .parse()
        .expect("a number");
    let scaled = std::fs::read_to_string(overlay.join("projector-scaledobject.yaml"))
        .expect("the ScaledObject");
    let triggers: Vec<(String, String)> = scaled
        .split("- type: redis-streams")
        .skip(1)
        .map(|t| {
            let field = |key: &str| {
                t.lines()
                    .find_map(|l| l.trim().strip_prefix(key))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            (field("stream:"), field("consumerGroup:"))
        })
        .collect();
    let mut missing = Vec::new();
    for spec in modules::specs() {
        for p in 0..partitions {
            let stream = if partitions == 1 {
                format!("cqrs:stream:{}", spec.name)
            } else {
                format!("cqrs:stream:{}:{p}", spec.name)
            };
            if !triggers.contains(&(stream.clone(), spec.consumer_group.to_owned())) {
                missing.push(format!("{stream} (group {})", spec.consumer_group));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "k8s/overlays/prod/projector-scaledobject.yaml lacks a redis-streams trigger for: {}",
        missing.join(", ")
    );
    let max: u32 = scaled
        .lines()
        .find_map(|l| l.trim().strip_prefix("maxReplicaCount:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("maxReplicaCount");
    assert!(
        max <= partitions,
        "more projector replicas than partitions would idle"
    );
}
