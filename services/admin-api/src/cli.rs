//! The operator CLI: `admin-api <command>` calls a running admin-api over HTTP with the token
//! in `ADMIN_TOKEN`, printing tables for people or, with `--json`, the API's own JSON for
//! scripts. `--wait` follows an operation with a progress line (events applied / total, rate,
//! ETA) and exits non-zero if it fails.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use service_kit::Secret;

/// Where the API is and how to call it.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of admin-api.
    #[arg(
        long,
        env = "ADMIN_URL",
        default_value = "http://127.0.0.1:8082",
        global = true
    )]
    pub url: String,
    /// An operator (or, for reads, read-only) token.
    #[arg(long, env = "ADMIN_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<Secret>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Operator commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Ops {
    /// Every projection's status.
    Projections,
    /// One projection's status, in full.
    Projection {
        /// e.g. task_projection
        name: String,
    },
    /// Stop applying (every replica, within 2 s).
    Pause {
        /// The projection.
        name: String,
    },
    /// Apply again.
    Resume {
        /// The projection.
        name: String,
    },
    /// Wipe the read model and rebuild it (reads answer 503 meanwhile).
    Reset {
        /// The projection.
        name: String,
        /// Follow the operation until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Rebuild beside the served read model and switch (no downtime).
    Rebuild {
        /// The projection.
        name: String,
        /// Start from the newest snapshot instead of the first event.
        #[arg(long)]
        from_snapshot: bool,
        /// Follow the operation until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Copy the served read model into PostgreSQL.
    Snapshot {
        /// The projection.
        name: String,
    },
    /// An operation's state.
    Operation {
        /// Its id.
        id: String,
        /// Follow it until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The pipeline's health (exit 1 when unhealthy).
    Health,
    /// Exit 0 when `url` answers 2xx within 2 s, 1 otherwise. The container image has no shell
    /// and no curl, so compose healthchecks of every service run this (`admin-api probe
    /// http://127.0.0.1:8080/readyz`); it needs no token and prints nothing.
    Probe {
        /// The URL to GET, e.g. http://127.0.0.1:9101/readyz
        url: String,
    },
}

/// Dead-letter commands.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List them (oldest first per projection).
    List {
        /// Only this projection's.
        #[arg(long)]
        projection: Option<String>,
        /// At most this many (1–100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Where the previous page stopped.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Totals.
    Stats,
    /// Re-drive one (and the events parked behind it), or all of a projection's.
    Retry {
        /// The dead letter (`<projection>:<entry id>`).
        id: Option<String>,
        /// Every dead letter of this projection instead.
        #[arg(long, conflicts_with = "id")]
        all: Option<String>,
        /// With --all: only say what would be re-driven.
        #[arg(long, requires = "all")]
        dry_run: bool,
    },
    /// Discard one (recorded in the audit log with the reason).
    Discard {
        /// The dead letter (`<projection>:<entry id>`).
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base.trim_end_matches('/')));
        if let Some(t) = &self.token {
            request = request.bearer_auth(t.expose());
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach admin-api at {} (ADMIN_URL)", self.base))?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Calls and fails on an error answer, with its message.
    async fn ok(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.call(method, path).await?;
        if status >= 400 {
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            let hint = if status == 401 {
                " (set ADMIN_TOKEN)"
            } else {
                ""
            };
            bail!("admin-api answered {status}: {message}{hint}");
        }
        Ok(body)
    }
}

/// Runs `command`; the exit code is the process's.
///
/// # Errors
/// admin-api unreachable, an error answer, an operation that failed.
pub async fn run(command: Ops, args: ClientArgs) -> anyhow::Result<i32> {
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?,
        base: args.url.clone(),
        token: args.token.clone(),
    };
    let json = args.json;
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;
    let print = |v: &Value| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match command {
        Ops::Probe { url } => {
            let answered = client
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            return Ok(i32::from(!answered.is_ok_and(|r| r.status().is_success())));
        }
        Ops::Projections => {
            let v = client.ok(get, "/admin/cqrs/projections").await?;
            if json {
                print(&v);
            } else {
                table(
                    &[
                        "NAME", "STATUS", "DESIRED", "GEN", "LAG", "LAG S", "PENDING", "DLQ",
                        "REPLICAS",
                    ],
                    v.as_array().into_iter().flatten().map(|p| {
                        vec![
                            s(&p["name"]),
                            s(&p["status"]),
                            s(&p["desired_state"]),
                            s(&p["generation"]),
                            s(&p["lag_messages"]),
                            format!("{:.1}", p["lag_seconds"].as_f64().unwrap_or(0.0)),
                            s(&p["pending_messages"]),
                            s(&p["dead_letters"]),
                            p["replicas"]
                                .as_array()
                                .map(|r| r.iter().filter(|r| r["live"] == true).count())
                                .unwrap_or(0)
                                .to_string(),
                        ]
                    }),
                );
            }
        }
        Ops::Projection { name } => {
            print(
                &client
                    .ok(get, &format!("/admin/cqrs/projections/{name}"))
                    .await?,
            );
        }
        Ops::Pause { name } => {
            let v = client
                .ok(post, &format!("/admin/cqrs/projections/{name}/pause"))
                .await?;
            say(
                json,
                &v,
                &format!("{name}: pausing (every replica stops within 2 s)"),
            );
        }
        Ops::Resume { name } => {
            let v = client
                .ok(post, &format!("/admin/cqrs/projections/{name}/resume"))
                .await?;
            say(json, &v, &format!("{name}: resuming"));
        }
        Ops::Reset { name, wait } => {
            let v = client
                .ok(post, &format!("/admin/cqrs/projections/{name}/reset"))
                .await?;
            return started(&client, json, &v, wait).await;
        }
        Ops::Rebuild {
            name,
            from_snapshot,
            wait,
        } => {
            let query = if from_snapshot { "?from=snapshot" } else { "" };
            let v = client
                .ok(
                    post,
                    &format!("/admin/cqrs/projections/{name}/rebuild{query}"),
                )
                .await?;
            return started(&client, json, &v, wait).await;
        }
        Ops::Snapshot { name } => {
            let v = client
                .ok(post, &format!("/admin/cqrs/projections/{name}/snapshot"))
                .await?;
            say(
                json,
                &v,
                &format!(
                    "snapshot {} of {name}: {} keys at position {}",
                    s(&v["snapshot_id"]),
                    s(&v["keys"]),
                    s(&v["position"])
                ),
            );
        }
        Ops::Operation { id, wait } => {
            if wait {
                return follow(&client, json, &id).await;
            }
            print(
                &client
                    .ok(get, &format!("/admin/cqrs/operations/{id}"))
                    .await?,
            );
        }
        Ops::Dlq(c) => return dlq(&client, json, c).await,
        Ops::Health => {
            let (status, v) = client.call(get, "/health/cqrs").await?;
            if json {
                print(&v);
            } else {
                println!("{}", s(&v["status"]).to_uppercase());
                table(
                    &["COMPONENT", "STATUS", "MESSAGE"],
                    v["components"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| vec![s(&c["name"]), s(&c["status"]), s(&c["message"])]),
                );
            }
            return Ok(i32::from(status >= 500));
        }
    }
    Ok(0)
}

async fn dlq(client: &Client, json: bool, command: DlqCommand) -> anyhow::Result<i32> {
    let print = |v: &Value| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match command {
        DlqCommand::List {
            projection,
            limit,
            cursor,
        } => {
            let mut path = format!("/admin/cqrs/dlq?limit={limit}");
            if let Some(p) = projection {
                path.push_str(&format!("&projection={p}"));
            }
            if let Some(c) = cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let v = client.ok(reqwest::Method::GET, &path).await?;
            if json {
                print(&v);
            } else {
                table(
                    &["ID", "ERROR TYPE", "ATTEMPTS", "PARKED BEHIND", "ERROR"],
                    v["items"].as_array().into_iter().flatten().map(|d| {
                        vec![
                            s(&d["id"]),
                            s(&d["error_type"]),
                            s(&d["attempts"]),
                            s(&d["parked_behind"]),
                            s(&d["error"]).chars().take(60).collect(),
                        ]
                    }),
                );
                if let Some(next) = v["next_cursor"].as_str() {
                    println!("more: --cursor {next}");
                }
            }
        }
        DlqCommand::Stats => {
            let v = client
                .ok(reqwest::Method::GET, "/admin/cqrs/dlq/stats")
                .await?;
            if json {
                print(&v);
            } else {
                println!(
                    "{} dead letters, the oldest {:.0} s old",
                    s(&v["total"]),
                    v["oldest_age_seconds"].as_f64().unwrap_or(0.0)
                );
                table(
                    &["PROJECTION", "COUNT"],
                    v["by_projection"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, n)| vec![k.clone(), s(n)]),
                );
            }
        }
        DlqCommand::Retry { id, all, dry_run } => {
            let path = match (id, all) {
                (Some(id), None) => format!("/admin/cqrs/dlq/{id}/retry"),
                (None, Some(p)) => {
                    format!("/admin/cqrs/dlq/retry?projection={p}&dry_run={dry_run}")
                }
                _ => bail!("name one dead letter, or --all <projection>"),
            };
            let v = client.ok(reqwest::Method::POST, &path).await?;
            say(json, &v, &serde_json::to_string(&v).unwrap_or_default());
            return Ok(i32::from(v["still_failing"].as_u64().unwrap_or(0) > 0));
        }
        DlqCommand::Discard { id, reason } => {
            let url_reason: String = reason
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            let v = client
                .ok(
                    reqwest::Method::DELETE,
                    &format!("/admin/cqrs/dlq/{id}?reason={url_reason}"),
                )
                .await?;
            say(json, &v, &format!("discarded {id}"));
        }
    }
    Ok(0)
}

/// After starting an operation: its id, and with `wait` its progress until it ends.
async fn started(client: &Client, json: bool, v: &Value, wait: bool) -> anyhow::Result<i32> {
    let id = s(&v["operation_id"]);
    if !wait {
        say(
            json,
            v,
            &format!("operation {id} started; follow it with `admin-api operation {id} --wait`"),
        );
        return Ok(0);
    }
    follow(client, json, &id).await
}

/// Polls operation `id` until it ends, drawing a progress line on a terminal.
async fn follow(client: &Client, json: bool, id: &str) -> anyhow::Result<i32> {
    loop {
        let op = client
            .ok(
                reqwest::Method::GET,
                &format!("/admin/cqrs/operations/{id}"),
            )
            .await?;
        let state = s(&op["state"]);
        if !json {
            eprint!("\r{}", progress_line(&op));
            let _ = std::io::stderr().flush();
        }
        if state != "running" {
            if json {
                println!("{}", serde_json::to_string_pretty(&op).unwrap_or_default());
            } else {
                eprintln!();
                match state.as_str() {
                    "succeeded" => println!("operation {id} succeeded"),
                    _ => println!("operation {id} failed: {}", s(&op["error"])),
                }
            }
            return Ok(i32::from(state != "succeeded"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `[=======>      ]  45%  90,000/200,000 events  17,100/s  ETA 6 s`
#[must_use]
pub fn progress_line(op: &Value) -> String {
    let done = op["events_applied"].as_i64().unwrap_or(0);
    let total = op["events_total"].as_i64().unwrap_or(0);
    let rate = op["rate"].as_f64().unwrap_or(0.0);
    let width = 30usize;
    let fraction = if total > 0 {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let filled = (fraction * width as f64).round() as usize;
    let bar: String = (0..width)
        .map(|i| match i.cmp(&filled) {
            std::cmp::Ordering::Less => '=',
            std::cmp::Ordering::Equal => '>',
            std::cmp::Ordering::Greater => ' ',
        })
        .collect();
    let eta = op["eta_seconds"]
        .as_f64()
        .map_or_else(|| "ETA -".to_owned(), |e| format!("ETA {e:.0} s"));
    format!(
        "[{bar}] {:>3.0}%  {}/{} events  {:.0}/s  {eta}   ",
        fraction * 100.0,
        done,
        total,
        rate
    )
}

fn say(json: bool, v: &Value, text: &str) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{text}");
    }
}

/// A JSON value as table text (`-` for null).
fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints rows under `headers`, columns padded to their widest cell.
fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_shows_done_total_rate_and_eta() {
        let op = serde_json::json!({"events_applied": 50, "events_total": 200, "rate": 10.0, "eta_seconds": 15.0});
        let line = progress_line(&op);
        assert!(line.contains(" 25%"), "{line}");
        assert!(line.contains("50/200 events"), "{line}");
        assert!(line.contains("10/s"), "{line}");
        assert!(line.contains("ETA 15 s"), "{line}");
        let unknown = progress_line(&serde_json::json!({"events_applied": 0, "events_total": 0}));
        assert!(unknown.contains("ETA -"), "{unknown}");
    }
}
