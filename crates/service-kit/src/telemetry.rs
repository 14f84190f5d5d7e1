//! Logs and metrics set-up.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::http::middleware::{HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_TOTAL};
use crate::settings::{LogFormat, TelemetryArgs};

/// Gauge: 1 when this process's last `/readyz` answer was 200, 0 when it was 503. Kubernetes
/// and compose probe it every few seconds, so its `changes()` show readiness flapping.
pub const SERVICE_READY: &str = "cqrs_service_ready";
/// Gauge: resident memory of this process, in bytes (`VmRSS` of `/proc/self/status`).
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
/// CPU seconds (user + system) this process has used; a gauge because `metrics` counters are
/// integers, but it only grows, so `rate()` applies.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
/// Gauge: when this process started, in seconds since the Unix epoch.
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";

/// Installs the global tracing subscriber. A second call (tests spawning several apps in one
/// process) is a no-op.
pub fn init_tracing(args: &TelemetryArgs, service: &'static str) {
    let filter = EnvFilter::try_new(&args.rust_log).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match args.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().compact())
            .try_init(),
    };
    if result.is_ok() {
        tracing::debug!(service, "tracing initialised");
    }
}

/// Histogram buckets for durations in seconds: 0.5 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder, installed on first use. Upkeep (draining histogram
/// buffers) runs on a background thread so that `/metrics` stays cheap.
///
/// # Panics
/// Never: the builder's only failure modes are invalid buckets (ours are fixed and valid) and
/// a recorder already installed, which the `OnceLock` rules out; if one is installed
/// elsewhere, a detached handle is returned so metrics are merely not exported.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(SECONDS_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe_common();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok();
            handle
        })
        .clone()
}

/// The `# HELP` of the metrics every service exports. Each crate describes its own metrics in
/// its `metrics` module; these are the shared ones.
fn describe_common() {
    metrics::describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests answered, by method, route pattern and status"
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by method and route pattern"
    );
    metrics::describe_counter!(
        resilience::DEPENDENCY_ERRORS_TOTAL,
        "Failed calls to PostgreSQL or Redis, by dependency and component (retried with backoff)"
    );
    metrics::describe_gauge!(
        SERVICE_READY,
        "1 when the last /readyz answer was 200 (dependencies reachable, not draining), else 0"
    );
    metrics::describe_gauge!(
        PROCESS_RESIDENT_MEMORY_BYTES,
        metrics::Unit::Bytes,
        "Resident memory of the process"
    );
    metrics::describe_gauge!(
        PROCESS_CPU_SECONDS_TOTAL,
        metrics::Unit::Seconds,
        "CPU time (user + system) used by the process"
    );
    metrics::describe_gauge!(
        PROCESS_START_TIME_SECONDS,
        metrics::Unit::Seconds,
        "Start time of the process since the Unix epoch"
    );
}

/// The metrics page served at `/metrics`: the process's own figures are read first, so
/// RSS and CPU are as of this scrape.
#[must_use]
pub fn render() -> String {
    let handle = metrics_handle();
    if let Some(p) = ProcessStats::read() {
        metrics::gauge!(PROCESS_RESIDENT_MEMORY_BYTES).set(p.resident_bytes);
        metrics::gauge!(PROCESS_CPU_SECONDS_TOTAL).set(p.cpu_seconds);
        metrics::gauge!(PROCESS_START_TIME_SECONDS).set(p.start_time_seconds);
    }
    handle.render()
}

/// What `/proc` says about this process (Linux only; elsewhere nothing is exported).
#[derive(Debug, Clone, Copy, PartialEq)]
struct ProcessStats {
    resident_bytes: f64,
    cpu_seconds: f64,
    start_time_seconds: f64,
}

/// Clock ticks per second of `/proc/*/stat` times: `USER_HZ`, 100 on every Linux ABI we build
/// for (reading `sysconf(_SC_CLK_TCK)` would need `unsafe`, which the workspace forbids).
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    fn read() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        Self::parse(&status, &stat, &boot)
    }

    /// `status`: `/proc/self/status`; `stat`: `/proc/self/stat`; `boot`: `/proc/stat`.
    fn parse(status: &str, stat: &str, boot: &str) -> Option<Self> {
        let rss_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
        // After it come field 3 (state) onwards; utime, stime are fields 14, 15 and starttime
        // (ticks after boot) field 22.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        let btime: f64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(Self {
            resident_bytes: rss_kib * 1024.0,
            cpu_seconds: (field(14)? + field(15)?) / USER_HZ,
            start_time_seconds: btime + field(22)? / USER_HZ,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_are_read_from_proc_formats() {
        let status = "Name:\tcommand-api\nVmRSS:\t   20480 kB\nThreads:\t9\n";
        // A command name with a space and a parenthesis must not shift the fields.
        let stat = "4242 (my (svc) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 \
                    123400 1000000 512 18446744073709551615";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 99\n";
        let p = ProcessStats::parse(status, stat, boot).expect("parses");
        assert_eq!(p.resident_bytes, 20480.0 * 1024.0);
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time_seconds, 1_700_000_000.0 + 1234.0);
    }

    #[test]
    fn this_process_has_stats() {
        let p = ProcessStats::read().expect("/proc is readable on Linux");
        assert!(
            p.resident_bytes > 0.0 && p.start_time_seconds > 1_600_000_000.0,
            "{p:?}"
        );
    }
}
