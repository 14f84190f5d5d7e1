//! Private PostgreSQL and Redis servers a test can restart, on ports of their own. The shared
//! servers must never be restarted by a test (other tests run against them in parallel), so
//! "PostgreSQL restarted mid-run" is tested on one of these.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::process::free_port;

fn pg_bin(tool: &str) -> PathBuf {
    let root = PathBuf::from("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .last()
        .map_or_else(|| PathBuf::from(tool), |v| v.join("bin").join(tool))
}

/// Runs a command as the `postgres` user when we are root (PostgreSQL refuses to run as root).
fn as_postgres(program: &std::path::Path) -> Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A throwaway PostgreSQL cluster (initdb into a temp dir), trust auth on 127.0.0.1.
pub struct PrivatePostgres {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
}

impl PrivatePostgres {
    /// Creates and starts the cluster.
    ///
    /// # Panics
    /// When initdb or the start fails.
    pub async fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("cqrs-pg-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("data dir");
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        let out = as_postgres(&pg_bin("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .output()
            .await
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Self { port, dir };
        pg.ctl("start").await;
        pg
    }

    async fn ctl(&self, action: &str) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let out = as_postgres(&pg_bin("pg_ctl"))
            .args([action, "-w", "-m", "fast", "-D"])
            .arg(self.dir.join("data"))
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .stdout(Stdio::null())
            .output()
            .await
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {action} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: open transactions roll back).
    pub async fn stop(&self) {
        self.ctl("stop").await;
    }

    /// Starts it again after [`PrivatePostgres::stop`].
    pub async fn start_again(&self) {
        self.ctl("start").await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private redis-server. With `persistent`, every write is fsynced to an append-only file,
/// so a restart keeps the data (the production set-up the relay's "nothing lost" relies on);
/// without, a restart loses everything (what the projector must heal from).
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    /// `--replicaof` arguments, for a replica.
    replica_of: Option<u16>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts the server.
    ///
    /// # Panics
    /// When redis-server cannot start.
    pub async fn start(persistent: bool) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("cqrs-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut r = Self {
            port,
            dir,
            persistent,
            replica_of: None,
            child: None,
        };
        r.start_again().await;
        r
    }

    /// Starts a replica of `primary` (asynchronous replication, as Redis does it), without
    /// persistence, and waits until it is in sync.
    ///
    /// # Panics
    /// When it does not start or sync.
    pub async fn start_replica_of(primary: &Self) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("cqrs-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut r = Self {
            port,
            dir,
            persistent: false,
            replica_of: Some(primary.port),
            child: None,
        };
        r.start_again().await;
        for _ in 0..200 {
            if r.info("replication")
                .await
                .contains("master_link_status:up")
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("replica on {port} did not sync with {}", primary.port);
    }

    /// A section of `INFO`.
    ///
    /// # Panics
    /// When the server does not answer.
    pub async fn info(&self, section: &str) -> String {
        let client = deadpool_redis::redis::Client::open(self.url()).expect("url");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        deadpool_redis::redis::cmd("INFO")
            .arg(section)
            .query_async(&mut c)
            .await
            .expect("info")
    }

    /// Makes a replica a primary of its own (`REPLICAOF NO ONE`): from now on it misses
    /// whatever its former primary is written.
    ///
    /// # Panics
    /// When the server does not answer.
    pub async fn detach(&mut self) {
        let client = deadpool_redis::redis::Client::open(self.url()).expect("url");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let _: String = deadpool_redis::redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query_async(&mut c)
            .await
            .expect("replicaof no one");
        self.replica_of = None;
    }

    /// `redis://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye, like a crash).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts it again on the same port (and, when persistent, the same data).
    ///
    /// # Panics
    /// When it does not come up.
    pub async fn start_again(&mut self) {
        let aof = if self.persistent { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", aof, "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .args(self.replica_of.iter().flat_map(|p| {
                [
                    "--replicaof".to_owned(),
                    "127.0.0.1".to_owned(),
                    p.to_string(),
                ]
            }))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let client = deadpool_redis::redis::Client::open(self.url()).expect("url");
        for _ in 0..100 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let pong: Result<String, _> =
                    deadpool_redis::redis::cmd("PING").query_async(&mut c).await;
                if pong.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private redis on {} did not start", self.port);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
