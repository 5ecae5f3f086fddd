//! Counters, gauges and latency histograms. Each worker owns one [`Stats`] and is its only
//! writer (relaxed atomics, an uncontended mutex around each histogram); a scrape reads all
//! of them and merges: `stub_status` in nginx's exact format, `metrics` in Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Which upstream fetch a result belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Head,
    Tail,
    Object,
    Manifest,
    Metadata,
}

const SEGMENTS: [(Segment, &str); 5] = [
    (Segment::Head, "head"),
    (Segment::Tail, "tail"),
    (Segment::Object, "object"),
    (Segment::Manifest, "manifest"),
    (Segment::Metadata, "metadata"),
];

/// How an upstream request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    ConnectError,
    Timeout,
    IoError,
    Status4xx,
    Status5xx,
    Mismatch,
}

const OUTCOMES: [(Outcome, &str); 7] = [
    (Outcome::Ok, "ok"),
    (Outcome::ConnectError, "connect_error"),
    (Outcome::Timeout, "timeout"),
    (Outcome::IoError, "io_error"),
    (Outcome::Status4xx, "status_4xx"),
    (Outcome::Status5xx, "status_5xx"),
    (Outcome::Mismatch, "mismatch"),
];

/// Client connection states, as nginx's stub_status counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Reading,
    Writing,
    Waiting,
}

/// One worker's numbers.
pub struct Stats {
    pub accepts: AtomicU64,
    pub handled: AtomicU64,
    pub requests: AtomicU64,
    reading: AtomicI64,
    writing: AtomicI64,
    waiting: AtomicI64,
    /// Responses by status code, 100..=599 at `code - 100`.
    status: Vec<AtomicU64>,
    pub sent_bytes: AtomicU64,
    upstream: Vec<AtomicU64>,
    pub resumes: AtomicU64,
    pub truncations: AtomicU64,
    pub slow_clients: AtomicU64,
    /// Bytes of relay buffers held by responses in progress (not the idle pool).
    pub relay_buffer_bytes: AtomicI64,
    pub pool_idle: AtomicI64,
    pub pool_active: AtomicI64,
    pub tail_cache_hits: AtomicU64,
    pub tail_cache_misses: AtomicU64,
    pub tail_cache_bytes: AtomicI64,
    pub spliced_bytes: AtomicU64,
    pub connect_failures: AtomicU64,
    pub connections_opened: AtomicU64,
    /// Times this worker gave the allocator's free memory back to the system.
    pub memory_trims: AtomicU64,
    /// Microseconds.
    durations: Mutex<Histogram<u64>>,
    first_byte: Mutex<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // Invariant: constant bounds, 1 µs .. 1 h at 3 significant digits, which hdrhistogram
    // accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            accepts: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            reading: AtomicI64::new(0),
            writing: AtomicI64::new(0),
            waiting: AtomicI64::new(0),
            status: (100..600).map(|_| AtomicU64::new(0)).collect(),
            sent_bytes: AtomicU64::new(0),
            upstream: (0..SEGMENTS.len() * OUTCOMES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            resumes: AtomicU64::new(0),
            truncations: AtomicU64::new(0),
            slow_clients: AtomicU64::new(0),
            relay_buffer_bytes: AtomicI64::new(0),
            pool_idle: AtomicI64::new(0),
            pool_active: AtomicI64::new(0),
            tail_cache_hits: AtomicU64::new(0),
            tail_cache_misses: AtomicU64::new(0),
            tail_cache_bytes: AtomicI64::new(0),
            spliced_bytes: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            memory_trims: AtomicU64::new(0),
            durations: Mutex::new(histogram()),
            first_byte: Mutex::new(histogram()),
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    pub fn enter(&self, s: ConnState) {
        self.gauge(s).fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self, s: ConnState) {
        self.gauge(s).fetch_sub(1, Ordering::Relaxed);
    }

    fn gauge(&self, s: ConnState) -> &AtomicI64 {
        match s {
            ConnState::Reading => &self.reading,
            ConnState::Writing => &self.writing,
            ConnState::Waiting => &self.waiting,
        }
    }

    /// One finished response.
    pub fn response(&self, status: u16, body_bytes: u64, total: Duration, first_byte: Duration) {
        if let Some(c) = status
            .checked_sub(100)
            .and_then(|i| self.status.get(usize::from(i)))
        {
            add(c, 1);
        }
        add(&self.sent_bytes, body_bytes);
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        if let Ok(mut h) = self.durations.lock() {
            h.saturating_record(us(total));
        }
        if let Ok(mut h) = self.first_byte.lock() {
            h.saturating_record(us(first_byte));
        }
    }

    pub fn upstream(&self, segment: Segment, outcome: Outcome) {
        let s = SEGMENTS
            .iter()
            .position(|(k, _)| *k == segment)
            .unwrap_or(0);
        let o = OUTCOMES
            .iter()
            .position(|(k, _)| *k == outcome)
            .unwrap_or(0);
        if let Some(c) = self.upstream.get(s * OUTCOMES.len() + o) {
            add(c, 1);
        }
    }
}

/// All workers' stats, for scrapes.
#[derive(Default)]
pub struct Registry {
    workers: Mutex<Vec<Arc<Stats>>>,
}

impl Registry {
    pub fn register(&self) -> Arc<Stats> {
        let s = Arc::new(Stats::default());
        if let Ok(mut w) = self.workers.lock() {
            w.push(Arc::clone(&s));
        }
        s
    }

    fn all(&self) -> Vec<Arc<Stats>> {
        self.workers.lock().map(|w| w.clone()).unwrap_or_default()
    }

    fn sum(&self, f: impl Fn(&Stats) -> u64) -> u64 {
        self.all().iter().map(|s| f(s)).sum()
    }

    fn sum_i(&self, f: impl Fn(&Stats) -> i64) -> i64 {
        self.all().iter().map(|s| f(s)).sum::<i64>().max(0)
    }

    /// Requests read so far by all workers.
    pub fn requests(&self) -> u64 {
        self.sum(|s| s.requests.load(Ordering::Relaxed))
    }

    /// Client connections reading a request or writing a response (not idle ones).
    pub fn busy(&self) -> i64 {
        let g = |a: &AtomicI64| a.load(Ordering::Relaxed);
        self.sum_i(|s| g(&s.reading) + g(&s.writing))
    }

    /// nginx's stub_status page, byte for byte.
    pub fn stub_status(&self) -> String {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let g = |a: &AtomicI64| a.load(Ordering::Relaxed);
        let (reading, writing, waiting) = (
            self.sum_i(|s| g(&s.reading)),
            self.sum_i(|s| g(&s.writing)),
            self.sum_i(|s| g(&s.waiting)),
        );
        format!(
            "Active connections: {} \nserver accepts handled requests\n {} {} {} \nReading: {reading} Writing: {writing} Waiting: {waiting} \n",
            reading + writing + waiting,
            self.sum(|s| l(&s.accepts)),
            self.sum(|s| l(&s.handled)),
            self.sum(|s| l(&s.requests)),
        )
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn prometheus(&self) -> String {
        let all = self.all();
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let g = |a: &AtomicI64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP tailgate_requests_total Responses sent, by status code."
        );
        let _ = writeln!(out, "# TYPE tailgate_requests_total counter");
        for code in 100u16..600 {
            let n: u64 = all
                .iter()
                .map(|s| l(&s.status[usize::from(code - 100)]))
                .sum();
            if n > 0 {
                let _ = writeln!(out, "tailgate_requests_total{{status=\"{code}\"}} {n}");
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "tailgate_sent_bytes_total",
            "Body bytes sent to clients.",
            self.sum(|s| l(&s.sent_bytes)),
        );
        let _ = writeln!(
            out,
            "# HELP tailgate_upstream_requests_total Upstream requests, by segment and result."
        );
        let _ = writeln!(out, "# TYPE tailgate_upstream_requests_total counter");
        for (si, (_, seg)) in SEGMENTS.iter().enumerate() {
            for (oi, (_, res)) in OUTCOMES.iter().enumerate() {
                let n: u64 = all
                    .iter()
                    .map(|s| l(&s.upstream[si * OUTCOMES.len() + oi]))
                    .sum();
                let _ = writeln!(
                    out,
                    "tailgate_upstream_requests_total{{segment=\"{seg}\",result=\"{res}\"}} {n}"
                );
            }
        }
        counter(
            &mut out,
            "tailgate_upstream_resumes_total",
            "Segment fetches resumed after an upstream failure.",
            self.sum(|s| l(&s.resumes)),
        );
        counter(
            &mut out,
            "tailgate_upstream_connect_failures_total",
            "Connections to an upstream address refused, unreachable or timed out (the request may have gone on to the next address).",
            self.sum(|s| l(&s.connect_failures)),
        );
        counter(
            &mut out,
            "tailgate_upstream_connections_opened_total",
            "Connections to S3 opened (and, over HTTPS, handshaken): requests the keep-alive pool could not serve.",
            self.sum(|s| l(&s.connections_opened)),
        );
        counter(
            &mut out,
            "tailgate_memory_trims_total",
            "Times the allocator's free memory was given back to the system: after a burst, or when the process went quiet.",
            self.sum(|s| l(&s.memory_trims)),
        );
        counter(
            &mut out,
            "tailgate_truncations_total",
            "Responses cut short, their connection closed.",
            self.sum(|s| l(&s.truncations)),
        );
        counter(
            &mut out,
            "tailgate_slow_client_responses_total",
            "Responses whose client took 1 s or more for one write, counted then; the rest goes through a 64 KiB buffer.",
            self.sum(|s| l(&s.slow_clients)),
        );
        counter(
            &mut out,
            "tailgate_tail_cache_hits_total",
            "Tail fetches served from the tail cache (tail_cache_size).",
            self.sum(|s| l(&s.tail_cache_hits)),
        );
        counter(
            &mut out,
            "tailgate_tail_cache_misses_total",
            "Tail fetches the tail cache admits but did not hold.",
            self.sum(|s| l(&s.tail_cache_misses)),
        );
        counter(
            &mut out,
            "tailgate_spliced_bytes_total",
            "Body bytes moved from upstream to client socket by splice (relay_splice).",
            self.sum(|s| l(&s.spliced_bytes)),
        );
        let _ = writeln!(
            out,
            "# HELP tailgate_tail_cache_bytes Tail bytes held in the tail cache.\n# TYPE tailgate_tail_cache_bytes gauge\ntailgate_tail_cache_bytes {}",
            self.sum_i(|s| g(&s.tail_cache_bytes))
        );
        let _ = writeln!(
            out,
            "# HELP tailgate_relay_buffer_bytes Relay buffers held by responses in progress (relay, large or slow-client buffers; idle ones not counted).\n# TYPE tailgate_relay_buffer_bytes gauge\ntailgate_relay_buffer_bytes {}",
            self.sum_i(|s| g(&s.relay_buffer_bytes))
        );
        let _ = writeln!(out, "# HELP tailgate_upstream_pool_connections Upstream connections, idle in the pool or in use.");
        let _ = writeln!(out, "# TYPE tailgate_upstream_pool_connections gauge");
        let _ = writeln!(
            out,
            "tailgate_upstream_pool_connections{{state=\"idle\"}} {}",
            self.sum_i(|s| g(&s.pool_idle))
        );
        let _ = writeln!(
            out,
            "tailgate_upstream_pool_connections{{state=\"active\"}} {}",
            self.sum_i(|s| g(&s.pool_active))
        );
        let _ = writeln!(
            out,
            "# HELP tailgate_connections Client connections by state."
        );
        let _ = writeln!(out, "# TYPE tailgate_connections gauge");
        for (name, f) in [("reading", 0), ("writing", 1), ("waiting", 2)] {
            let v = self.sum_i(|s| g([&s.reading, &s.writing, &s.waiting][f]));
            let _ = writeln!(out, "tailgate_connections{{state=\"{name}\"}} {v}");
        }
        summary(
            &mut out,
            "tailgate_request_duration_seconds",
            "Time from a request head to the end of its response.",
            &all,
            |s| &s.durations,
        );
        summary(
            &mut out,
            "tailgate_first_byte_seconds",
            "Time from a request head to the first response byte written.",
            &all,
            |s| &s.first_byte,
        );
        out
    }
}

fn summary(
    out: &mut String,
    name: &str,
    help: &str,
    all: &[Arc<Stats>],
    pick: impl Fn(&Stats) -> &Mutex<Histogram<u64>>,
) {
    let mut merged = histogram();
    for s in all {
        if let Ok(h) = pick(s).lock() {
            let _ = merged.add(&*h);
        }
    }
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} summary");
    for q in [0.5, 0.9, 0.99, 0.999] {
        let v = if merged.is_empty() {
            0.0
        } else {
            merged.value_at_quantile(q) as f64 / 1e6
        };
        let _ = writeln!(out, "{name}{{quantile=\"{q}\"}} {v}");
    }
    let sum: f64 = merged
        .iter_recorded()
        .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
        .sum::<f64>()
        / 1e6;
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {}", merged.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_status_is_nginx_format() {
        let r = Registry::default();
        let a = r.register();
        let b = r.register();
        add(&a.accepts, 3);
        add(&a.handled, 3);
        add(&b.requests, 7);
        a.enter(ConnState::Writing);
        b.enter(ConnState::Waiting);
        assert_eq!(
            r.stub_status(),
            "Active connections: 2 \nserver accepts handled requests\n 3 3 7 \nReading: 0 Writing: 1 Waiting: 1 \n"
        );
    }

    #[test]
    fn prometheus_merges_workers() {
        let r = Registry::default();
        let a = r.register();
        let b = r.register();
        a.response(200, 10, Duration::from_millis(5), Duration::from_millis(1));
        b.response(200, 5, Duration::from_millis(15), Duration::from_millis(2));
        b.response(404, 0, Duration::from_millis(1), Duration::from_millis(1));
        a.upstream(Segment::Tail, Outcome::Timeout);
        let text = r.prometheus();
        for line in [
            "tailgate_requests_total{status=\"200\"} 2",
            "tailgate_requests_total{status=\"404\"} 1",
            "tailgate_sent_bytes_total 15",
            "tailgate_upstream_requests_total{segment=\"tail\",result=\"timeout\"} 1",
            "tailgate_request_duration_seconds_count 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
