//! How every loop in the system behaves while a dependency is down: exponential backoff with a
//! cap and jitter, and outage logging that reports the first failure (warn) and the recovery
//! (info), counting everything in between in `cqrs_dependency_errors_total` instead of writing
//! one log line per retry. The system this replaces logged 8,494 errors in one outage.
//!
//! No IO here: callers sleep and retry; this crate only decides how long and what to say.
#![warn(missing_docs)]

use std::time::{Duration, Instant};

/// Counter of failed calls to a dependency, labelled `dependency` and `component`.
pub const DEPENDENCY_ERRORS_TOTAL: &str = "cqrs_dependency_errors_total";

/// Exponential backoff: `base × 2ⁿ`, capped, with up to 20 % jitter so that replicas that
/// failed together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and never exceeding `cap`.
    #[must_use]
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next retry, without jitter; advances the attempt counter.
    #[must_use]
    pub fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        self.attempt = self.attempt.saturating_add(1);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// [`Backoff::next_delay`] minus up to 20 % random jitter.
    #[must_use]
    pub fn next_delay_jittered(&mut self) -> Duration {
        let d = self.next_delay();
        let jitter = rand::random_range(0.0..0.2);
        d.mul_f64(1.0 - jitter)
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Tracks whether a dependency is down, so that an outage produces two log lines, not one per
/// retry.
#[derive(Debug)]
pub struct Outage {
    dependency: &'static str,
    component: &'static str,
    down_since: Option<Instant>,
    failures: u64,
}

impl Outage {
    /// A tracker for `dependency` (e.g. `postgres`) as seen by `component` (e.g. `relay`).
    /// Registers its error counter at 0, so `rate()` over it works before the first failure.
    #[must_use]
    pub fn new(dependency: &'static str, component: &'static str) -> Self {
        metrics::counter!(DEPENDENCY_ERRORS_TOTAL, "dependency" => dependency, "component" => component)
            .increment(0);
        Self {
            dependency,
            component,
            down_since: None,
            failures: 0,
        }
    }

    /// Records a failed call. Logs at warn only when this starts an outage; every failure is
    /// counted in [`DEPENDENCY_ERRORS_TOTAL`]. Returns whether this call started the outage.
    pub fn failed(&mut self, error: &dyn std::error::Error) -> bool {
        metrics::counter!(DEPENDENCY_ERRORS_TOTAL, "dependency" => self.dependency, "component" => self.component)
            .increment(1);
        self.failures += 1;
        if self.down_since.is_some() {
            return false;
        }
        self.down_since = Some(Instant::now());
        tracing::warn!(
            dependency = self.dependency,
            component = self.component,
            error = %error_chain(error),
            "dependency unavailable; retrying with backoff (further failures are counted, not logged)"
        );
        true
    }

    /// Records a successful call. Logs at info when this ends an outage. Returns whether it did.
    pub fn succeeded(&mut self) -> bool {
        let Some(since) = self.down_since.take() else {
            return false;
        };
        tracing::info!(
            dependency = self.dependency,
            component = self.component,
            down_for_ms = since.elapsed().as_millis() as u64,
            failed_attempts = self.failures,
            "dependency recovered"
        );
        self.failures = 0;
        true
    }

    /// Whether the dependency is currently considered down.
    #[must_use]
    pub fn is_down(&self) -> bool {
        self.down_since.is_some()
    }
}

/// An error and all of its sources on one line: `a: b: c`.
#[must_use]
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Drivers often repeat their source's text in their own message.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        for _ in 0..100 {
            let _ = b.next_delay();
        }
        assert_eq!(
            b.next_delay(),
            Duration::from_secs(1),
            "no overflow after many attempts"
        );
    }

    #[test]
    fn jitter_only_shortens_by_at_most_a_fifth() {
        let mut b = Backoff::new(Duration::from_millis(1000), Duration::from_secs(1));
        for _ in 0..50 {
            let d = b.next_delay_jittered();
            assert!(
                d <= Duration::from_millis(1000) && d >= Duration::from_millis(800),
                "{d:?}"
            );
        }
    }

    #[test]
    fn outage_reports_transitions_once_and_counts_every_failure() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let mut o = Outage::new("postgres", "test");
            let err = std::io::Error::other("connection refused");
            assert!(!o.succeeded(), "no recovery without an outage");
            assert!(o.failed(&err), "first failure starts the outage");
            assert!(!o.failed(&err));
            assert!(!o.failed(&err));
            assert!(o.is_down());
            assert!(o.succeeded(), "first success ends it");
            assert!(!o.succeeded());
            assert!(o.failed(&err), "a new outage is reported again");
        });
        let text = handle.render();
        assert!(
            text.contains(
                r#"cqrs_dependency_errors_total{dependency="postgres",component="test"} 4"#
            ),
            "{text}"
        );
    }

    #[test]
    fn error_chain_joins_sources_without_repeats() {
        let inner = std::io::Error::other("refused");
        let outer = Wrap(inner);
        assert_eq!(error_chain(&outer), "pool timed out: refused");
    }

    #[derive(Debug)]
    struct Wrap(std::io::Error);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("pool timed out")
        }
    }
    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
