//! Prometheus metrics of the node, rendered in the text exposition format at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of rejected requests: the JSON error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error code (`NodeError::code`).
    pub code: String,
}

/// Every metric the node exports. Each one is registered once, in [`Metrics::new`].
pub struct Metrics {
    registry: Registry,
    /// Messages acknowledged as durably scheduled (spawns included).
    pub messages_scheduled: Counter,
    /// Requests answered with an error, by code.
    pub requests_rejected: Family<CodeLabel, Counter>,
    /// Group commits made.
    pub commits: Counter,
    /// Messages per group commit.
    pub commit_batch_size: Histogram,
    /// Seconds per group commit: the store write and its fsync, which every ack waits for.
    pub commit_seconds: Histogram,
    /// Slots computed (results stored).
    pub slots_computed: Counter,
    /// Slots whose result is an error (trap, limit, ABI violation).
    pub slot_errors: Counter,
    /// Processes known to this node.
    pub processes: Gauge,
    /// Outbox messages handed to push.
    pub messages_pushed: Counter,
    /// Pushes queued for their target (a peer node, or this node's sequencer while it was
    /// unavailable), not yet acknowledged.
    pub push_queue_depth: Gauge,
    /// Attempts to deliver a queued push.
    pub push_attempts: Counter,
    /// Attempts that failed (no answer, or the target unavailable): retried after a backoff.
    pub push_failures: Counter,
    /// Queued pushes their target refused for good (recorded in the slot's push record).
    pub push_refused: Counter,
    /// Recomputed slots whose result differs from the stored one (must stay 0: determinism).
    pub replay_mismatches: Counter,
    /// Open HTTP connections (at most `http-connections-max`).
    pub http_connections: Gauge,
    /// HTTP connections closed because the request head did not arrive within
    /// `http-header-timeout-ms` (slow clients, idle keep-alive connections).
    pub http_header_timeouts: Counter,
    /// Bytes in the store's memtables (active and sealed), set when `/metrics` is rendered.
    pub store_write_buffer_bytes: Gauge,
    /// Bytes in the store's block cache, set when `/metrics` is rendered.
    pub store_block_cache_bytes: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferrobeam");
        let messages_scheduled = Counter::default();
        let requests_rejected = Family::<CodeLabel, Counter>::default();
        let commits = Counter::default();
        let commit_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        // 50 µs to 0.4 s: an idle disk's fsync to a stalled one.
        let commit_seconds = Histogram::new(exponential_buckets(50e-6, 2.0, 14));
        let slots_computed = Counter::default();
        let slot_errors = Counter::default();
        let processes = Gauge::default();
        let replay_mismatches = Counter::default();
        let messages_pushed = Counter::default();
        let http_connections = Gauge::default();
        let http_header_timeouts = Counter::default();
        let push_queue_depth = Gauge::default();
        let push_attempts = Counter::default();
        let push_failures = Counter::default();
        let push_refused = Counter::default();
        let store_write_buffer_bytes = Gauge::default();
        let store_block_cache_bytes = Gauge::default();
        registry.register(
            "store_write_buffer_bytes",
            "Bytes in the store's memtables",
            store_write_buffer_bytes.clone(),
        );
        registry.register(
            "store_block_cache_bytes",
            "Bytes in the store's block cache",
            store_block_cache_bytes.clone(),
        );
        registry.register(
            "push_queue_depth",
            "Pushes queued for their target, not yet acknowledged",
            push_queue_depth.clone(),
        );
        registry.register(
            "push_attempts",
            "Attempts to deliver a queued push",
            push_attempts.clone(),
        );
        registry.register(
            "push_failures",
            "Push attempts that failed and will be retried",
            push_failures.clone(),
        );
        registry.register(
            "push_refused",
            "Queued pushes refused for good by their target",
            push_refused.clone(),
        );
        registry.register(
            "messages_scheduled",
            "Messages durably scheduled and acknowledged",
            messages_scheduled.clone(),
        );
        registry.register(
            "requests_rejected",
            "Requests answered with an error, by error code",
            requests_rejected.clone(),
        );
        registry.register("commits", "Group commits to the store", commits.clone());
        registry.register(
            "commit_batch_size",
            "Messages per group commit",
            commit_batch_size.clone(),
        );
        registry.register(
            "commit_seconds",
            "Seconds per group commit (store write and fsync)",
            commit_seconds.clone(),
        );
        registry.register(
            "slots_computed",
            "Slots computed by the executors",
            slots_computed.clone(),
        );
        registry.register(
            "slot_errors",
            "Slots whose result is an error",
            slot_errors.clone(),
        );
        registry.register("processes", "Processes on this node", processes.clone());
        registry.register(
            "messages_pushed",
            "Outbox messages handed to push",
            messages_pushed.clone(),
        );
        registry.register(
            "replay_mismatches",
            "Recomputed slots whose result differs from the stored one",
            replay_mismatches.clone(),
        );
        registry.register(
            "http_connections",
            "Open HTTP connections",
            http_connections.clone(),
        );
        registry.register(
            "http_header_timeouts",
            "HTTP connections closed for not sending a request head in time",
            http_header_timeouts.clone(),
        );
        Self {
            registry,
            messages_scheduled,
            requests_rejected,
            commits,
            commit_batch_size,
            commit_seconds,
            slots_computed,
            slot_errors,
            processes,
            replay_mismatches,
            messages_pushed,
            http_connections,
            http_header_timeouts,
            push_queue_depth,
            push_attempts,
            push_failures,
            push_refused,
            store_write_buffer_bytes,
            store_block_cache_bytes,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
