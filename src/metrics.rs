//! What `GET /metrics` reports, in the Prometheus text exposition format: counters and
//! histograms recorded as things happen, and gauges read when scraped.
//!
//! The recorders are process-wide (as a Prometheus client's default registry is), so the writer,
//! the workers and the runner each record with one line instead of carrying a handle through
//! every constructor. Every label value is one of kiln's own names (statuses, outcomes), known
//! when the code is written, so nothing needs escaping and no series is created by a request.
//! That is also why this is written out here rather than taken from `prometheus-client`: with
//! fixed series a counter is one atomic and the exposition a page of `write!`s, where the crate's
//! label families put a lock and a map on every increment.
//!
//! Counts of committed events (submits, claims, ends, webhook calls) are taken after each
//! commit from the events it appended (SQLite's writer's notices, the PostgreSQL store's own
//! tally), so a write that was rolled back is never counted, and on a cluster each node counts
//! what it committed itself. Counters start
//! at zero when the process starts, as Prometheus expects; the totals of the whole history are
//! in the database.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::bus::Notice;
use crate::job::{EventKind, JobId, Outcome};

/// The recorders of this process.
pub static METRICS: Metrics = Metrics::new();

/// Seconds: from a millisecond to ten minutes (the longest wall-clock limit by default).
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Operations per writer transaction, up to the writer's cap of 1024.
const OPERATIONS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

pub struct Metrics {
    submitted: AtomicU64,
    batches_submitted: AtomicU64,
    claimed: AtomicU64,
    retried: AtomicU64,
    finished: Labeled,
    runs: Labeled,
    sandbox_start_failures: AtomicU64,
    webhooks_delivered: AtomicU64,
    webhook_failures: AtomicU64,
    commit_failures: AtomicU64,
    queue_wait: Histogram<18>,
    run_time: Histogram<18>,
    commit_time: Histogram<18>,
    commit_operations: Histogram<11>,
}

/// What is read when scraped rather than counted.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Jobs in the database by status.
    pub jobs: BTreeMap<String, i64>,
    pub wal_bytes: u64,
    pub sse_streams: usize,
    pub running: usize,
}

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            submitted: AtomicU64::new(0),
            batches_submitted: AtomicU64::new(0),
            claimed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            finished: Labeled::new(),
            runs: Labeled::new(),
            sandbox_start_failures: AtomicU64::new(0),
            webhooks_delivered: AtomicU64::new(0),
            webhook_failures: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            queue_wait: Histogram::new(SECONDS),
            run_time: Histogram::new(SECONDS),
            commit_time: Histogram::new(SECONDS),
            commit_operations: Histogram::new(OPERATIONS),
        }
    }

    /// One writer transaction: how long it took (to the end of its fsync), how many operations
    /// it carried, and the events it committed (`None` if it failed and was rolled back).
    pub fn writer_commit(&self, took: Duration, operations: usize, committed: Option<&[Notice]>) {
        self.commit_time.observe(took.as_secs_f64());
        self.commit_operations.observe(operations as f64);
        let Some(notices) = committed else {
            self.commit_failures.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.committed(notices.iter().map(|notice| notice.kind));
    }

    /// Events this process committed, by kind: what they say happened is counted.
    pub fn committed(&self, kinds: impl IntoIterator<Item = EventKind>) {
        for kind in kinds {
            let counter = match kind {
                EventKind::Queued => &self.submitted,
                EventKind::BatchQueued => &self.batches_submitted,
                EventKind::Started => &self.claimed,
                EventKind::Retrying => &self.retried,
                EventKind::WebhookDelivered => &self.webhooks_delivered,
                EventKind::WebhookFailed => &self.webhook_failures,
                kind if kind.is_terminal() => {
                    let status = kind.as_str().trim_start_matches("job.");
                    self.finished.add(status);
                    continue;
                }
                _ => continue,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A worker claimed a job: a first attempt's wait since it was submitted (its UUIDv7 id
    /// holds that time; a retry's wait since its requeue is not known here).
    pub fn claimed(&self, id: JobId, attempt: u32) {
        let submitted = id.get_timestamp().map(|t| t.to_unix());
        if let (1, Some((secs, nanos))) = (attempt, submitted) {
            let at = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
            let waited = at.elapsed().unwrap_or_default();
            self.queue_wait.observe(waited.as_secs_f64());
        }
    }

    /// A run's end was recorded: its outcome, and how long it ran (`wall_ms`) if it got to run
    /// at all.
    pub fn run_recorded(&self, outcome: Outcome, wall_ms: u64) {
        self.runs.add(outcome.as_str());
        if !matches!(outcome, Outcome::RunnerError | Outcome::InvalidRequest) {
            self.run_time.observe(wall_ms as f64 / 1000.0);
        }
    }

    pub fn sandbox_start_failed(&self) {
        self.sandbox_start_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition: every metric with its help and type.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(8192);
        let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
            header(out, name, help, "counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        };
        header(
            &mut out,
            "kiln_jobs",
            "Jobs in the database, by status.",
            "gauge",
        );
        for (status, n) in &gauges.jobs {
            let _ = writeln!(out, "kiln_jobs{{status=\"{status}\"}} {n}");
        }
        counter(
            &mut out,
            "kiln_jobs_submitted_total",
            "Jobs committed, alone or as cases of a batch.",
            &self.submitted,
        );
        counter(
            &mut out,
            "kiln_batches_submitted_total",
            "Batches committed.",
            &self.batches_submitted,
        );
        counter(
            &mut out,
            "kiln_jobs_claimed_total",
            "Attempts started by this server's workers.",
            &self.claimed,
        );
        counter(
            &mut out,
            "kiln_jobs_retried_total",
            "Attempts taken back and requeued (lease expired, shutdown).",
            &self.retried,
        );
        header(
            &mut out,
            "kiln_jobs_finished_total",
            "Jobs that reached a terminal status, by status.",
            "counter",
        );
        self.finished
            .render(&mut out, "kiln_jobs_finished_total", "status");
        header(
            &mut out,
            "kiln_runs_total",
            "Runs whose end a worker of this server recorded, by outcome.",
            "counter",
        );
        self.runs.render(&mut out, "kiln_runs_total", "outcome");
        self.run_time.render(
            &mut out,
            "kiln_job_run_seconds",
            "Wall-clock time of recorded runs.",
        );
        self.queue_wait.render(
            &mut out,
            "kiln_job_queue_wait_seconds",
            "Time from submit to the start of the first attempt.",
        );
        counter(
            &mut out,
            "kiln_sandbox_start_failures_total",
            "Runs whose sandbox could not be started.",
            &self.sandbox_start_failures,
        );
        counter(
            &mut out,
            "kiln_webhook_deliveries_total",
            "Webhook calls answered with a 2xx.",
            &self.webhooks_delivered,
        );
        counter(
            &mut out,
            "kiln_webhook_failures_total",
            "Webhook call attempts that failed (each retry counts).",
            &self.webhook_failures,
        );
        self.commit_operations.render(
            &mut out,
            "kiln_writer_batch_operations",
            "Operations per writer transaction (group commit).",
        );
        self.commit_time.render(
            &mut out,
            "kiln_writer_commit_seconds",
            "Writer transactions from BEGIN to the end of COMMIT, fsync included.",
        );
        counter(
            &mut out,
            "kiln_writer_commit_failures_total",
            "Writer transactions rolled back as a whole (busy, disk full, read-only).",
            &self.commit_failures,
        );
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            header(out, name, help, "gauge");
            let _ = writeln!(out, "{name} {value}");
        };
        gauge(
            &mut out,
            "kiln_wal_bytes",
            "Size of the database's write-ahead log.",
            gauges.wal_bytes,
        );
        gauge(
            &mut out,
            "kiln_sse_streams",
            "Live (Server-Sent Events) streams open.",
            gauges.sse_streams as u64,
        );
        gauge(
            &mut out,
            "kiln_running_jobs",
            "Jobs running on this server's workers.",
            gauges.running as u64,
        );
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A counter per label value; values appear once first counted.
struct Labeled(Mutex<BTreeMap<&'static str, u64>>);

impl Labeled {
    const fn new() -> Labeled {
        Labeled(Mutex::new(BTreeMap::new()))
    }

    fn add(&self, label: &'static str) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(label).or_default() += 1;
    }

    fn render(&self, out: &mut String, name: &str, label: &str) {
        let counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (value, n) in counts.iter() {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
        }
    }
}

/// A histogram with fixed upper bounds; the sum is kept in millionths of the unit.
struct Histogram<const N: usize> {
    bounds: &'static [f64],
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_millionths: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: &'static [f64]) -> Histogram<N> {
        assert!(bounds.len() == N);
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            count: AtomicU64::new(0),
            sum_millionths: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let millionths = (value.max(0.0) * 1e6) as u64;
        self.sum_millionths.fetch_add(millionths, Ordering::Relaxed);
    }

    /// Buckets are cumulative in the exposition; each is stored alone so observing is one add.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_millionths.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_the_count() {
        static H: Histogram<3> = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [0.5, 1.5, 1.5, 3.0, 9.0] {
            H.observe(v);
        }
        let mut out = String::new();
        H.render(&mut out, "h", "test");
        for line in [
            "h_bucket{le=\"1\"} 1",
            "h_bucket{le=\"2\"} 3",
            "h_bucket{le=\"4\"} 4",
            "h_bucket{le=\"+Inf\"} 5",
            "h_sum 15.5",
            "h_count 5",
        ] {
            assert!(out.lines().any(|l| l == line), "{line:?} in\n{out}");
        }
    }
}
