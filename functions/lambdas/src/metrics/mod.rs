//! The cloud's metrics (observability.md §2): the one owner of every metric family. A
//! [`CloudMetrics`] (in [`crate::Deps`] as `deps.metrics`, shared by every handler of the
//! process) holds a `prometheus_client` registry with **every** family of §2 registered at
//! construction, so `# HELP` / `# TYPE` are there from start-up, before any sample.
//!
//! Counters are per process and move where an outcome is decided — one call site each:
//! ingest outcomes after the envelope's commit ([`crate::ingest::handle`], mapped by the pure
//! [`ingest::increments`]), replayed rows per chunk ([`crate::replay`]), controls published
//! ([`crate::control_publisher::publish_due`], `device_unknown`), dead letters parked
//! ([`crate::dead_letter::park`]), durations per envelope / chunk / sweep run / API request.
//! Gauges are replaced as a whole from one [`FleetGauges`] snapshot ([`CloudMetrics::set_gauges`]).
//!
//! Label values are closed sets ([`edge_cloud_core::metrics`]): every counter label is a
//! `&'static str`, so an increment builds no string (the ingest hot path: one hash lookup per
//! family touched, per batch, never per row).
//!
//! The runner exposes the registry on its own listener ([`serve`]); a Lambda writes the
//! counters' increments of each invocation as EMF lines ([`CloudMetrics::emf_lines`],
//! [`emf::gauge_lines`] for the sweep's gauges).
//!
//! # Layout
//! - this file — [`CloudMetrics`]: the registry, its families, the recording calls
//! - [`ingest`] — an ingest [`crate::ingest::Outcome`] → its counter increments (pure)
//! - [`gauges`] — a [`FleetGauges`] snapshot → the gauge series (shared by the registry and EMF)
//! - [`emf`] — the per-invocation tally and the EMF lines of counters, durations and gauges
//! - [`serve`] — the runner's `/metrics` listener (`--metrics`)
//! - [`settings`] — [`settings::MetricsSettings`]: listener, collector interval, silence, cap

pub mod emf;
pub mod gauges;
pub mod ingest;
pub mod serve;
pub mod settings;

use std::sync::{Mutex, RwLock};
use std::time::Instant;

use edge_cloud_core::metrics::{
    code_label, control_kind_label, counter, gauge, staging_label, Attempt, BatchKind, BatchStatus,
    FailureClass, Handler, RowPath, Transport, DURATION_BUCKETS, HANDLER_DURATION,
};
use edge_cloud_store::health::FleetGauges;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use self::emf::Tally;
use self::ingest::IngestIncrements;

/// A counter family over `N` static labels.
type Counters<const N: usize> = Family<[(&'static str, &'static str); N], Counter>;
/// A gauge family; labels hold database values (project ids, device names).
type Gauges = Family<Vec<(&'static str, String)>, Gauge>;
type Durations = Family<[(&'static str, &'static str); 1], Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// A family registered so that its `# HELP` / `# TYPE` are encoded even before its first
/// sample (prometheus-client leaves out families without samples, the spec wants every family
/// from start-up).
#[derive(Debug)]
struct Always<F>(F);

impl<F: EncodeMetric> EncodeMetric for Always<F> {
    fn encode(&self, encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// The metric families of a process (see the module docs).
pub struct CloudMetrics {
    registry: Registry,
    /// Off: every recording call returns at once (the benchmark's baseline).
    enabled: bool,
    batches: Counters<2>,
    batches_rejected: Counters<2>,
    stale_epochs: Counters<0>,
    tenant_stripped: Counters<0>,
    rows_materialized: Counters<2>,
    rows_staged: Counters<1>,
    materialization_failures: Counters<1>,
    controls_published: Counters<2>,
    dead_letters: Counters<1>,
    durations: Durations,
    /// Gauge families in [`gauge::ALL`]'s order.
    gauges: Vec<(&'static str, Gauges)>,
    /// Held for writing while [`CloudMetrics::set_gauges`] swaps the snapshot, for reading
    /// while the registry is encoded: a scrape never sees half a snapshot.
    snapshot: RwLock<()>,
    /// The increments since the last [`CloudMetrics::emf_lines`] (Lambdas only).
    tally: Option<Mutex<Tally>>,
}

impl std::fmt::Debug for CloudMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudMetrics")
            .field("enabled", &self.enabled)
            .field("emf", &self.tally.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for CloudMetrics {
    fn default() -> Self {
        CloudMetrics::new()
    }
}

/// `HELP` texts (prometheus-client adds the final period).
fn help(name: &str) -> &'static str {
    match name {
        counter::BATCHES => "Ledger outcomes of batches, by kind and status",
        counter::BATCHES_REJECTED => "Rejected batches, by kind and rejection code",
        counter::STALE_JOURNAL_EPOCHS => {
            "Batches of a journal epoch older than one already materialized for their lineage"
        }
        counter::TENANT_FIELDS_STRIPPED => "Payloads whose tenant fields ingress stripped",
        counter::ROWS_MATERIALIZED => "Rows written to mirrors and data points, by kind and path",
        counter::ROWS_STAGED => "Rows staged, by reason",
        counter::MATERIALIZATION_FAILURES => "Failed mirror writes, by class",
        counter::CONTROLS_PUBLISHED => "Controls published to devices, by kind and attempt",
        counter::DEAD_LETTERS => "Messages parked as dead letters, by transport",
        HANDLER_DURATION => {
            "Handler duration: per envelope (ingest), chunk (replay), run (sweep), request (api)"
        }
        gauge::LINEAGES => "Lineages by project, status and pause reason",
        gauge::STAGED_ROWS => "Staged rows per project",
        gauge::STAGED_BYTES => "Staged bytes per project",
        gauge::MIRROR_LAG_SECONDS_MAX => "Worst mirror lag of a project's lineages",
        gauge::DEVICES_SILENT => {
            "Devices whose newest batch is between the silence threshold and 24 h old"
        }
        gauge::SCHEMA_REVIEWS_OPEN => "Open schema reviews by project, scope and status",
        gauge::REPLAY_INTENTS_OPEN => "Replay intents pending or running",
        gauge::REPLAY_INTENTS_FAILED => "Replay intents failed, awaiting an operator",
        gauge::CONTROLS_PENDING => "Controls not yet acknowledged, by project and kind",
        gauge::DEAD_LETTERS_OPEN => "Unresolved dead letters",
        gauge::LINEAGE_STAGED_ROWS => "Staged rows of a lineage (the worst lineages only)",
        gauge::LINEAGE_STAGED_BYTES => "Staged bytes of a lineage (the worst lineages only)",
        gauge::LINEAGE_MIRROR_LAG_SECONDS => "Mirror lag of a lineage (the worst lineages only)",
        gauge::LINEAGE_LAST_BATCH_TIMESTAMP_SECONDS => {
            "When a lineage's last batch was received, Unix seconds (the worst lineages only)"
        }
        gauge::LINEAGE_PAUSED => {
            "1 when a lineage is paused, 0 when active (the worst lineages only)"
        }
        gauge::LINEAGE_SERIES_DROPPED => {
            "Lineages left out of the edge_lineage_* series by the cap"
        }
        _ => "edge-sync metric",
    }
}

/// prometheus-client appends `_total` to a counter's name: register the stem.
fn stem(name: &'static str) -> &'static str {
    name.strip_suffix("_total").unwrap_or(name)
}

impl CloudMetrics {
    /// Every family registered, recording on, no EMF tally (the runner, tests).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        fn reg<const N: usize>(r: &mut Registry, name: &'static str) -> Counters<N> {
            let f = Counters::<N>::default();
            r.register(stem(name), help(name), Always(f.clone()));
            f
        }
        let batches = reg(&mut registry, counter::BATCHES);
        let batches_rejected = reg(&mut registry, counter::BATCHES_REJECTED);
        let stale_epochs = reg(&mut registry, counter::STALE_JOURNAL_EPOCHS);
        let tenant_stripped = reg(&mut registry, counter::TENANT_FIELDS_STRIPPED);
        let rows_materialized = reg(&mut registry, counter::ROWS_MATERIALIZED);
        let rows_staged = reg(&mut registry, counter::ROWS_STAGED);
        let materialization_failures = reg(&mut registry, counter::MATERIALIZATION_FAILURES);
        let controls_published = reg(&mut registry, counter::CONTROLS_PUBLISHED);
        let dead_letters = reg(&mut registry, counter::DEAD_LETTERS);
        // The label-less counters read 0 from start-up.
        drop(stale_epochs.get_or_create(&[]));
        drop(tenant_stripped.get_or_create(&[]));
        let durations = Durations::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(
            HANDLER_DURATION,
            help(HANDLER_DURATION),
            Always(durations.clone()),
        );
        let gauges = gauge::ALL
            .iter()
            .map(|name| {
                let f = Gauges::default();
                registry.register(*name, help(name), Always(f.clone()));
                (*name, f)
            })
            .collect();
        CloudMetrics {
            registry,
            enabled: true,
            batches,
            batches_rejected,
            stale_epochs,
            tenant_stripped,
            rows_materialized,
            rows_staged,
            materialization_failures,
            controls_published,
            dead_letters,
            durations,
            gauges,
            snapshot: RwLock::new(()),
            tally: None,
        }
    }

    /// [`CloudMetrics::new`] that also tallies each invocation's increments for
    /// [`CloudMetrics::emf_lines`] (the Lambdas).
    pub fn with_emf() -> Self {
        CloudMetrics {
            tally: Some(Mutex::new(Tally::default())),
            ..CloudMetrics::new()
        }
    }

    /// Families registered (the exposition still lists them) but nothing recorded: the
    /// baseline of the metrics-on/off benchmark.
    pub fn disabled() -> Self {
        CloudMetrics {
            enabled: false,
            ..CloudMetrics::new()
        }
    }

    /// The registry in the Prometheus text format 0.0.4
    /// ([`prometheus_client::encoding::prometheus_text::CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let _snapshot = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    fn count<const N: usize>(
        &self,
        name: &'static str,
        family: &Counters<N>,
        labels: [(&'static str, &'static str); N],
        n: u64,
    ) {
        if n == 0 {
            return;
        }
        family.get_or_create(&labels).inc_by(n);
        if let Some(tally) = &self.tally {
            tally
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add(name, &labels, n);
        }
    }

    /// The counters of one handled envelope ([`ingest::increments`]), after its commit.
    pub fn record_ingest(&self, kind: BatchKind, inc: &IngestIncrements) {
        if !self.enabled {
            return;
        }
        let k = ("kind", kind.as_str());
        if let Some(status) = inc.status {
            self.count(
                counter::BATCHES,
                &self.batches,
                [k, ("status", status.as_str())],
                1,
            );
            if status == BatchStatus::Rejected {
                let code = code_label(inc.code.unwrap_or(edge_cloud_core::metrics::OTHER));
                self.count(
                    counter::BATCHES_REJECTED,
                    &self.batches_rejected,
                    [k, ("code", code)],
                    1,
                );
            }
        }
        self.rows(kind, RowPath::Live, inc.rows_materialized);
        for (reason, rows) in inc.staged.iter() {
            self.count(
                counter::ROWS_STAGED,
                &self.rows_staged,
                [("reason", staging_label(reason))],
                u64::try_from(rows).unwrap_or(0),
            );
        }
        if inc.permanent_failure {
            self.failure(FailureClass::Permanent);
        }
        if inc.stale_epoch {
            self.count(counter::STALE_JOURNAL_EPOCHS, &self.stale_epochs, [], 1);
        }
        if inc.tenant_fields_stripped {
            self.count(
                counter::TENANT_FIELDS_STRIPPED,
                &self.tenant_stripped,
                [],
                1,
            );
        }
    }

    fn rows(&self, kind: BatchKind, path: RowPath, rows: i64) {
        self.count(
            counter::ROWS_MATERIALIZED,
            &self.rows_materialized,
            [("kind", kind.as_str()), ("path", path.as_str())],
            u64::try_from(rows).unwrap_or(0),
        );
    }

    /// `edge_materialization_failures_total{class}` += 1.
    pub fn failure(&self, class: FailureClass) {
        if self.enabled {
            self.count(
                counter::MATERIALIZATION_FAILURES,
                &self.materialization_failures,
                [("class", class.as_str())],
                1,
            );
        }
    }

    /// A committed replay chunk of a lineage of `lineage_kind`: `drained` rows materialized,
    /// `failed` of them refused again (a permanent failure of the chunk's write).
    pub fn record_replay_chunk(&self, lineage_kind: &str, drained: i64, failed: i64) {
        if !self.enabled {
            return;
        }
        self.rows(
            BatchKind::of_lineage(lineage_kind),
            RowPath::Replay,
            drained,
        );
        if failed > 0 {
            self.failure(FailureClass::Permanent);
        }
    }

    /// A control of `kind` reached the transport; `attempts` counts this publish (1 = first).
    pub fn control_published(&self, kind: &str, attempts: i32) {
        if self.enabled {
            self.count(
                counter::CONTROLS_PUBLISHED,
                &self.controls_published,
                [
                    ("kind", control_kind_label(kind)),
                    ("attempt", Attempt::of_attempts(attempts).as_str()),
                ],
                1,
            );
        }
    }

    /// A message was parked as a dead letter (`transport` as stored: `mqtt` / `sqs`).
    pub fn dead_letter_parked(&self, transport: &str) {
        if let (true, Some(t)) = (self.enabled, Transport::parse(transport)) {
            self.count(
                counter::DEAD_LETTERS,
                &self.dead_letters,
                [("transport", t.as_str())],
                1,
            );
        }
    }

    /// `handler` ran from `started` until now.
    pub fn observe(&self, handler: Handler, started: Instant) {
        if !self.enabled {
            return;
        }
        let seconds = started.elapsed().as_secs_f64();
        self.durations
            .get_or_create(&[("handler", handler.as_str())])
            .observe(seconds);
        if let Some(tally) = &self.tally {
            tally
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .duration(handler, seconds);
        }
    }

    /// Replaces every gauge family's contents with `snapshot` (a series that is not in it —
    /// a lineage that left the worst N, a project that emptied — is gone afterwards).
    pub fn set_gauges(&self, snapshot: &FleetGauges) {
        let series = gauges::series(snapshot, None);
        let _swap = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        for (_, family) in &self.gauges {
            family.clear();
        }
        for s in series {
            if let Some((_, family)) = self.gauges.iter().find(|(n, _)| *n == s.name) {
                family.get_or_create(&s.labels).set(s.value);
            }
        }
    }

    /// The EMF lines of the counters and durations recorded since the last call (which they
    /// are drained from), stamped `timestamp_ms`; empty without a tally ([`CloudMetrics::with_emf`]).
    pub fn emf_lines(&self, timestamp_ms: i64) -> Vec<String> {
        match &self.tally {
            Some(tally) => {
                let drained = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
                drained.lines(timestamp_ms)
            }
            None => Vec::new(),
        }
    }

    /// Writes [`CloudMetrics::emf_lines`] on stdout (the end of a Lambda invocation).
    pub fn write_emf(&self) {
        let lines = self.emf_lines(now_ms());
        if !lines.is_empty() {
            println!("{}", lines.join("\n"));
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}
