//! Starting the service binaries as real processes: [`Service`] for tests (logs captured to a
//! file, killed when dropped), [`Process`] for benchmarks (output discarded, stopped with
//! SIGTERM when dropped, as in production), and what a benchmark measures of a process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Where workspace binary `name` was built: `CQRS_BIN_DIR` if set, else beside the running
/// executable (a benchmark binary sits with the services it starts) or one directory up (a
/// test executable sits in `deps/`, below the binaries of its profile).
///
/// # Errors
/// When it was not built, saying how to build it.
pub fn find_binary(name: &str) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match std::env::var("CQRS_BIN_DIR") {
        Ok(dir) => vec![PathBuf::from(dir)],
        Err(_) => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            exe.ancestors()
                .skip(1)
                .take(2)
                .map(Path::to_path_buf)
                .collect()
        }
    };
    candidates
        .iter()
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
        .ok_or_else(|| {
            format!(
                "{name} is not built next to {}: build the binaries first \
                 (`cargo build --workspace --bins`; `make test` and `make bench` do)",
                candidates
                    .first()
                    .map_or_else(String::new, |d| d.display().to_string())
            )
        })
}

/// The path of workspace binary `name`. Package tests should prefer cargo's
/// `env!("CARGO_BIN_EXE_<name>")`, which cargo guarantees is built.
///
/// # Panics
/// When it was not built, saying how to build it.
#[must_use]
pub fn binary(name: &str) -> PathBuf {
    find_binary(name).unwrap_or_else(|e| panic!("{e}"))
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
            // Ready means *this* process answers: with ports picked before the bind, another
            // test's service may hold the port and answer for it.
            if ready_pid(&self.url())
                .await
                .is_some_and(|pid| Some(pid) == self.child.id())
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

    /// Changes one setting for the next start (say, the Redis a restart connects to).
    pub fn set_env(&mut self, key: &str, value: &str) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.env.push((key.to_owned(), value.to_owned())),
        }
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

/// The pid of the process answering `/readyz` with 200 at `base_url`.
async fn ready_pid(base_url: &str) -> Option<u32> {
    let response = reqwest::Client::new()
        .get(format!("{base_url}/readyz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()
        .filter(|r| r.status().is_success())?;
    let body: serde_json::Value = response.json().await.ok()?;
    body["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

async fn is_ready(base_url: &str) -> bool {
    reqwest::Client::new()
        .get(format!("{base_url}/readyz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Waits until `base_url/readyz` answers 200.
///
/// # Errors
/// When it does not within `timeout`.
pub async fn wait_ready(base_url: &str, timeout: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    while !is_ready(base_url).await {
        if std::time::Instant::now() > deadline {
            return Err(format!("{base_url} not ready within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A service process of a benchmark. Dropping it stops it as production does, with SIGTERM
/// (then SIGKILL after 5 s), so it releases its leases: a killed process's leases would make
/// the next one wait for them to expire.
pub struct Process(std::process::Child);

impl Process {
    /// Starts workspace binary `name` with exactly `env` (plus `PATH`), output discarded.
    ///
    /// # Errors
    /// When the binary is missing or cannot start.
    pub fn spawn(name: &str, env: &[(&str, String)]) -> std::io::Result<Self> {
        let path = find_binary(name).map_err(std::io::Error::other)?;
        let child = std::process::Command::new(path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Self(child))
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of process `pid` in MiB (0 when unknown).
#[must_use]
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (user + system) process `pid` has used so far (zero when unknown).
#[must_use]
pub fn cpu_time(pid: u32) -> Duration {
    // Fields 14 and 15 of /proc/<pid>/stat, in clock ticks (100 per second on Linux); the
    // command name (field 2) may hold spaces, so count from the closing parenthesis.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some(ticks(&fields, 11..=12))
        })
        .unwrap_or_default()
}

/// Calls `f` with the command name and the fields after it of every process's
/// `/proc/<pid>/stat` (the name may hold spaces, so fields count from its closing parenthesis:
/// index 0 is field 3, the state).
fn each_process(mut f: impl FnMut(&str, &[&str])) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((comm, rest)) = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
        {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            f(comm, &fields);
        }
    }
}

/// Clock ticks (100 per second on Linux) in `fields` at `range`, as a duration.
fn ticks(fields: &[&str], range: std::ops::RangeInclusive<usize>) -> Duration {
    let ticks: u64 = range
        .filter_map(|i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// CPU time used so far by the processes named `name`, with that of their children which
/// exited and were waited for (fields 16 and 17 of `/proc/<pid>/stat`): PostgreSQL's backends
/// end with their connection, and their CPU then shows only in the postmaster's count.
#[must_use]
pub fn cpu_with_reaped(name: &str) -> Duration {
    let mut total = Duration::ZERO;
    each_process(|comm, fields| {
        if comm == name {
            total += ticks(fields, 11..=14);
        }
    });
    total
}

/// CPU time used so far by every process on the machine, summed by command name (as
/// `/proc/<pid>/stat` gives it, at most 15 characters): where the cores went in a run.
#[must_use]
pub fn cpu_by_command() -> std::collections::BTreeMap<String, Duration> {
    let mut out = std::collections::BTreeMap::new();
    each_process(|comm, fields| {
        *out.entry(comm.to_owned()).or_insert(Duration::ZERO) += ticks(fields, 11..=12);
    });
    out
}
