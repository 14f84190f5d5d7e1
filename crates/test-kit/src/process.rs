//! Starting the service binaries as real processes, with their logs captured to files.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Directory of the built binaries: `CQRS_BIN_DIR`, else the directory above the test
/// executable's `deps/` (where cargo puts binaries of the same profile).
///
/// # Panics
/// When the test executable has no such parent directory.
#[must_use]
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CQRS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// The path of workspace binary `name`. Package tests should prefer cargo's
/// `env!("CARGO_BIN_EXE_<name>")`, which cargo guarantees is built.
///
/// # Panics
/// When it was not built, saying how to build it.
#[must_use]
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; `make test` does)",
        path.display()
    );
    path
}

/// Picks a free TCP port on 127.0.0.1.
///
/// # Panics
/// When no port can be bound.
#[must_use]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running service process; killed when dropped.
pub struct Service {
    /// Binary name.
    pub name: String,
    /// Its HTTP port.
    pub port: u16,
    /// The process.
    pub child: Child,
    /// Where its output goes.
    pub log: PathBuf,
    path: PathBuf,
    env: Vec<(String, String)>,
}

impl Service {
    /// Starts the binary at `path` with `env` (plus `HTTP_ADDR` on a free port, and pretty logs
    /// into a file under `log_dir`), without waiting for it to be ready.
    ///
    /// # Panics
    /// When the process cannot be started.
    pub fn spawn(path: &Path, env: &[(String, String)], log_dir: &Path) -> Self {
        let port = free_port();
        let mut env: Vec<(String, String)> = env.to_vec();
        env.push(("HTTP_ADDR".into(), format!("127.0.0.1:{port}")));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("service")
            .to_owned();
        let log = log_dir.join(format!("{name}-{port}.log"));
        let child = start(path, &env, &log);
        Self {
            name,
            port,
            child,
            log,
            path: path.to_path_buf(),
            env,
        }
    }

    /// Base URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until `/readyz` answers 200.
    ///
    /// # Panics
    /// When it does not within `timeout`, printing the log.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + timeout;
        let mut port_retries = 0;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // `free_port` cannot reserve the port: a parallel test may take it between the
                // pick and the bind. Then move to another port and start again.
                if port_retries < 5 && self.log_text().contains("Address already in use") {
                    port_retries += 1;
                    self.move_to_a_free_port();
                    continue;
                }
                panic!("{} exited with {status}:\n{}", self.name, self.log_text());
            }
            if let Ok(r) = client
                .get(format!("{}/readyz", self.url()))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} not ready in {timeout:?}:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The captured output so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    ///
    /// # Panics
    /// When the process does not exit within `timeout`.
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not exit within {timeout:?}:\n{}",
                    self.name,
                    self.log_text()
                )
            })
            .expect("wait")
    }

    /// SIGKILLs the process (a crash) and waits for it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts the same binary again on a newly picked port (the log file is started afresh).
    fn move_to_a_free_port(&mut self) {
        self.port = free_port();
        for (k, v) in &mut self.env {
            if k == "HTTP_ADDR" {
                *v = format!("127.0.0.1:{}", self.port);
            }
        }
        let _ = std::fs::remove_file(&self.log);
        self.child = start(&self.path, &self.env, &self.log);
    }

    /// Starts the same binary again on the same port and settings.
    pub fn restart(&mut self) {
        self.child = start(&self.path, &self.env, &self.log);
    }
}

fn command(path: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(path);
    // A clean environment: the developer's shell settings must not leak into a test.
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("LOG_FORMAT", "pretty")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

fn start(path: &Path, env: &[(String, String)], log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let err = out.try_clone().expect("log file");
    command(path, env)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn service")
}

/// Runs `path args…` to completion and returns (exit code, stdout, stderr).
///
/// # Panics
/// When the binary cannot be run.
pub async fn run(path: &Path, args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let out = command(path, env)
        .args(args)
        .output()
        .await
        .expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
