//! Decision records and the group-commit writer that makes them durable.
//!
//! Owns: the [`DecisionRecord`] every request leaves, the writer tasks that batch concurrent records into one
//! transaction each and wake each waiting request, the per-writer hash chain, and `audit verify`.
//! A process runs `audit.writers` writers (two by default on Postgres) over one queue: while one writer's
//! batch is committing, the next records go out through another instead of waiting for that commit. Each
//! writer has its own id and its own chain, so a batch that fails on one writer never leaves a gap in
//! another's chain; order across writers is given by the records' times, not by the chains.
//! A request proceeds only with a [`Recorded`] receipt, which only this module can create, and only after
//! the transaction holding the record committed.
//! Must not: decide anything, or drop a record silently: a failed commit fails every waiter in the batch,
//! and they refuse with `store_unavailable`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::store::{CheckpointRow, DecisionRow, DecisionSink, OutcomeRow, Store, StoreError};

/// The longest string a stored policy input keeps verbatim; a longer one keeps its first
/// [`STORED_STRING_PREFIX`] characters, its length and its SHA-256.
pub const MAX_STORED_STRING: usize = 1024;
const STORED_STRING_PREFIX: usize = 128;
/// The most a stored policy input may take, serialized; past it the request body is kept as its size and
/// SHA-256 only (the fields the policy read about it are in the decision's reasons and action).
pub const MAX_STORED_INPUT: usize = 64 * 1024;

/// The policy input as it may be stored: strings over [`MAX_STORED_STRING`] shortened, and the whole body
/// replaced by its size and hash when the input would still be over [`MAX_STORED_INPUT`]. An agent cannot
/// fill the append-only table with large bodies, denied or not.
pub fn bounded_input(input: std::borrow::Cow<'_, Value>) -> String {
    let input = bounded_strings(input);
    let text = input.to_string();
    if text.len() <= MAX_STORED_INPUT {
        return text;
    }
    let mut owned = input.into_owned();
    if let Some(request) = owned.get_mut("request").and_then(Value::as_object_mut) {
        let bytes = request.get("body").map_or(0, |b| b.to_string().len());
        let sha = request.get("body_sha256").cloned().unwrap_or(Value::Null);
        request.insert(
            "body".to_string(),
            serde_json::json!({"omitted": format!("the parsed body is {bytes} bytes, over the stored limit"),
                               "bytes": bytes, "sha256": sha}),
        );
    }
    owned.to_string()
}

/// Every string (and object key) over [`MAX_STORED_STRING`] in `value` shortened to its start, length and
/// SHA-256: for anything stored that may quote what an agent sent (inputs, reasons).
pub fn bounded_strings(input: std::borrow::Cow<'_, Value>) -> std::borrow::Cow<'_, Value> {
    fn has_long(v: &Value) -> bool {
        match v {
            Value::String(s) => s.len() > MAX_STORED_STRING,
            Value::Array(items) => items.iter().any(has_long),
            Value::Object(map) => map
                .iter()
                .any(|(k, v)| k.len() > MAX_STORED_STRING || has_long(v)),
            _ => false,
        }
    }
    fn shorten(v: &mut Value) {
        match v {
            Value::String(s) if s.len() > MAX_STORED_STRING => {
                let cut = s
                    .char_indices()
                    .nth(STORED_STRING_PREFIX)
                    .map_or(s.len(), |(i, _)| i);
                *s = format!(
                    "{}…[{} bytes, sha256:{}]",
                    &s[..cut],
                    s.len(),
                    hex::encode(Sha256::digest(s.as_bytes()))
                );
            }
            Value::Array(items) => items.iter_mut().for_each(shorten),
            Value::Object(map) => {
                let long: Vec<String> = map
                    .keys()
                    .filter(|k| k.len() > MAX_STORED_STRING)
                    .cloned()
                    .collect();
                for key in long {
                    if let Some(value) = map.remove(&key) {
                        let short = format!(
                            "{}…[sha256:{}]",
                            key.chars().take(STORED_STRING_PREFIX).collect::<String>(),
                            hex::encode(Sha256::digest(key.as_bytes()))
                        );
                        map.insert(short, value);
                    }
                }
                map.values_mut().for_each(shorten);
            }
            _ => {}
        }
    }
    if has_long(&input) {
        let mut owned = input.into_owned();
        shorten(&mut owned);
        std::borrow::Cow::Owned(owned)
    } else {
        input
    }
}

/// A stored text field (path, query, attribution): as it is up to `max` bytes, else its start, its length
/// and its SHA-256.
pub fn bounded_text(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let cut = (0..=STORED_STRING_PREFIX.min(max))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    format!(
        "{}…[{} bytes, sha256:{}]",
        &text[..cut],
        text.len(),
        hex::encode(Sha256::digest(text.as_bytes()))
    )
}

/// How the decision writers anchor their chains.
#[derive(Clone)]
pub struct Checkpoints {
    /// How often a writer whose chain grew writes a checkpoint.
    pub every: Duration,
    pub anchors: Anchors,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Checkpoints {
            every: DEFAULT_CHECKPOINT_EVERY,
            anchors: Anchors::default(),
        }
    }
}

/// The default of `audit.checkpoint_interval_seconds`.
pub const DEFAULT_CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// The external anchor: a file outside the database to which every checkpoint is appended as one JSON line
/// (synced to disk), so that an administrator who can rewrite the tables still cannot rewrite where the
/// chains stood. Several writers (and replicas, on a shared volume) append to one file; each line is written
/// in one `write` call to a file opened for appending.
#[derive(Clone, Default)]
pub struct Anchors {
    file: Option<Arc<std::path::PathBuf>>,
}

impl Anchors {
    pub fn file(path: std::path::PathBuf) -> Anchors {
        Anchors {
            file: Some(Arc::new(path)),
        }
    }

    pub fn is_configured(&self) -> bool {
        self.file.is_some()
    }

    /// Appends one checkpoint line and syncs it.
    pub async fn append(&self, checkpoint: &CheckpointRow) -> std::io::Result<()> {
        let Some(path) = self.file.clone() else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(checkpoint).map_err(std::io::Error::other)?;
        line.push(b'\n');
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path.as_path())?;
            file.write_all(&line)?;
            file.sync_data()
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Every checkpoint in an anchor file. A line that does not parse is an error naming its number: an
    /// anchor that cannot be read proves nothing.
    pub fn read(path: &std::path::Path) -> Result<Vec<CheckpointRow>, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the anchor file {}: {e}", path.display()))?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .map_err(|e| format!("anchor file {} line {}: {e}", path.display(), i + 1))
            })
            .collect()
    }
}

/// Room for bursts well beyond one batch; past it, `record` waits (back-pressure, not loss).
const QUEUE_CAPACITY: usize = 65_536;
/// The hash a writer's chain starts from.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One request's decision, as the proxy knows it. The writer adds the chain fields.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub agent_id: Option<Uuid>,
    pub agent_name: Option<String>,
    pub run_id: Option<String>,
    pub on_behalf_of: Option<String>,
    pub provider: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub action: String,
    pub risk: String,
    /// `allow`, `deny`, `approve` (the policy's word) or `refused` (refused before or after the policy).
    pub outcome: String,
    pub code: Option<String>,
    pub rules: Vec<String>,
    pub reasons: Value,
    pub policy_revision: Option<String>,
    pub charge_cents: Option<i64>,
    pub approval_id: Option<String>,
    /// What the policy said (allow, deny, approve), if it ran.
    pub policy_outcome: Option<String>,
    /// What the shadow bundle said (or "error"), if one is configured.
    pub shadow_outcome: Option<String>,
    /// The policy input as JSON text, secrets removed (identity never puts keys in it; the proxy redacts
    /// secret body fields).
    pub input: Option<String>,
}

/// Proof that a decision record is durably committed. Only the writer creates it.
#[derive(Debug)]
pub struct Recorded {
    decision_id: Uuid,
}

impl Recorded {
    pub fn decision_id(&self) -> Uuid {
        self.decision_id
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the decision record could not be committed")]
    NotCommitted,
    #[error("the audit writer has stopped")]
    WriterStopped,
}

/// A row with everything but its chain fields, its content hash (see [`seal`]) and who waits for it.
type DecisionJob = (
    Box<(DecisionRow, [u8; 32])>,
    oneshot::Sender<Result<(), AuditError>>,
);

/// How long the outcome writer gathers upstream outcomes before it writes them. Nobody waits for an
/// outcome, and writing them beside the decisions would put their commits (and WAL flushes) in the way of
/// the decisions that requests do wait for.
const OUTCOME_LINGER: Duration = Duration::from_millis(20);
/// One more try for an outcome batch that failed, after this long (the decision itself is durable already).
const OUTCOME_RETRY_AFTER: Duration = Duration::from_millis(200);

/// The handle requests use; cheap to clone.
#[derive(Clone)]
pub struct AuditWriter {
    decisions: mpsc::Sender<DecisionJob>,
    outcomes: mpsc::Sender<OutcomeRow>,
    metrics: Arc<Metrics>,
    store: Store,
    ready: WritersReady,
}

/// How many decision writers can commit right now; shared with `/readyz`.
#[derive(Clone, Default)]
pub struct WritersReady(Arc<std::sync::atomic::AtomicUsize>);

impl WritersReady {
    /// True while at least one writer can commit a decision.
    pub fn any(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) > 0
    }
}

/// How long a writer that lost track of its chain waits between attempts to re-read it when no record is
/// queued (so it becomes ready again without traffic, which an unready replica does not get).
const RECOVER_EVERY: Duration = Duration::from_secs(1);

impl AuditWriter {
    /// Starts `writers` decision writers on one queue, each with a fresh id and its own hash chain, and one
    /// outcome writer. The handle finishes when every writer has drained its queue after the last
    /// [`AuditWriter`] clone is dropped.
    pub fn start(
        store: Store,
        writers: usize,
        max_batch: usize,
        checkpoints: Checkpoints,
        metrics: Arc<Metrics>,
    ) -> (AuditWriter, tokio::task::JoinHandle<()>) {
        let (decisions, rx) = mpsc::channel(QUEUE_CAPACITY);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut tasks = tokio::task::JoinSet::new();
        let ready = WritersReady::default();
        for _ in 0..writers.max(1) {
            let writer = Writer {
                sink: store.decision_sink(),
                writer_id: Uuid::now_v7(),
                seq: 0,
                head: GENESIS_HASH.to_string(),
                lost: false,
                pending: None,
                max_batch,
                metrics: metrics.clone(),
                ready: ready.clone(),
                store: store.clone(),
                checkpoints: checkpoints.clone(),
                checkpointed: None,
                next_checkpoint: tokio::time::Instant::now() + checkpoints.every,
            };
            writer.set_ready(true);
            tasks.spawn(writer.run(rx.clone()));
        }
        let (outcomes, outcome_rx) = mpsc::channel(QUEUE_CAPACITY);
        tasks.spawn(write_outcomes(
            store.clone(),
            outcome_rx,
            max_batch,
            metrics.clone(),
        ));
        let handle = tokio::spawn(async move { while tasks.join_next().await.is_some() {} });
        (
            AuditWriter {
                decisions,
                outcomes,
                metrics,
                store,
                ready,
            },
            handle,
        )
    }

    /// Queues the record and waits until the transaction holding it has committed.
    pub async fn record(&self, record: DecisionRecord) -> Result<Recorded, AuditError> {
        let id = record.id;
        // Serializing and hashing the record happens here, on the request's own task, so the writers
        // only chain and write.
        let sealed = seal(record);
        let (done, wait) = oneshot::channel();
        self.metrics.audit_queue_depth.inc();
        if self.decisions.send((Box::new(sealed), done)).await.is_err() {
            self.metrics.audit_queue_depth.dec();
            return Err(AuditError::WriterStopped);
        }
        match wait.await {
            Ok(Ok(())) => Ok(Recorded { decision_id: id }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(AuditError::WriterStopped),
        }
    }

    /// Whether a record whose commit failed with an unknown outcome (the acknowledgement lost) is in the
    /// store after all: its receipt if so, `None` if it is definitely not there.
    pub async fn confirm(&self, decision_id: Uuid) -> Result<Option<Recorded>, StoreError> {
        Ok(self
            .store
            .decision(decision_id)
            .await?
            .map(|_| Recorded { decision_id }))
    }

    /// Whether any decision writer can commit (for `/readyz`).
    pub fn ready(&self) -> WritersReady {
        self.ready.clone()
    }

    /// Queues what happened upstream. Nobody waits for it: the decision itself is already durable.
    pub fn record_outcome(&self, outcome: OutcomeRow) {
        self.metrics.audit_queue_depth.inc();
        if self.outcomes.try_send(outcome).is_err() {
            self.metrics.audit_queue_depth.dec();
            self.metrics.audit_errors_total.inc();
            tracing::error!("audit queue full or closed: an upstream outcome was not recorded");
        }
    }
}

struct Writer {
    sink: DecisionSink,
    writer_id: Uuid,
    seq: i64,
    head: String,
    /// A batch failed and may have committed anyway (a lost acknowledgement): `seq`/`head` are not to be
    /// trusted until re-read from the store.
    lost: bool,
    /// The head the failed batch would have made: after it, the store's head must be this or the head
    /// before the batch. Anything else means someone changed the chain.
    pending: Option<(i64, String)>,
    max_batch: usize,
    metrics: Arc<Metrics>,
    ready: WritersReady,
    store: Store,
    checkpoints: Checkpoints,
    /// The seq of the last checkpoint the store accepted.
    checkpointed: Option<i64>,
    next_checkpoint: tokio::time::Instant,
}

impl Writer {
    async fn run(mut self, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<DecisionJob>>>) {
        let mut jobs = Vec::with_capacity(self.max_batch);
        self.checkpoint("start").await;
        loop {
            if tokio::time::Instant::now() >= self.next_checkpoint {
                self.next_checkpoint = tokio::time::Instant::now() + self.checkpoints.every;
                if !self.lost && self.checkpointed != Some(self.seq) {
                    self.checkpoint("periodic").await;
                }
            }
            // A writer that lost track of its chain finds it again before it takes any record, retrying
            // while the store is unreachable; the other writers go on meanwhile.
            if self.lost && !self.recover().await {
                // The store is unreachable: what is queued meanwhile is failed at once (its requests
                // refuse with `store_unavailable`) instead of waiting for the store to come back.
                let received = tokio::time::timeout(RECOVER_EVERY, async {
                    queue
                        .lock()
                        .await
                        .recv_many(&mut jobs, self.max_batch)
                        .await
                })
                .await;
                match received {
                    Ok(0) => {
                        // Shutting down: one more try to learn the head, so the chain still closes.
                        if self.recover().await {
                            self.checkpoint("shutdown").await;
                        }
                        return;
                    }
                    Ok(_) => {
                        self.metrics.audit_queue_depth.sub(jobs.len() as i64);
                        self.metrics.audit_errors_total.inc();
                        for (_, done) in jobs.drain(..) {
                            let _ = done.send(Err(AuditError::NotCommitted));
                        }
                    }
                    Err(_) => {}
                }
                continue;
            }
            // The idle writer holds the queue; `recv_many` takes whatever is queued (up to the batch size)
            // after waiting for the first job, then the queue passes to the next idle writer. Under load
            // batches grow by themselves while the other writers' transactions are committing.
            let received = tokio::time::timeout_at(self.next_checkpoint, async {
                queue
                    .lock()
                    .await
                    .recv_many(&mut jobs, self.max_batch)
                    .await
            })
            .await;
            let Ok(received) = received else {
                continue; // a checkpoint is due
            };
            if received == 0 {
                self.checkpoint("shutdown").await;
                self.set_ready(false);
                return;
            }
            self.metrics.audit_queue_depth.sub(jobs.len() as i64);
            self.commit(&mut jobs).await;
            jobs.clear();
        }
    }

    /// Re-reads the chain head from the store after a batch with an unknown outcome: the batch's last record
    /// if it committed after all, the previous head if not. True when the writer can go on.
    async fn recover(&mut self) -> bool {
        match self.sink.chain_head(self.writer_id).await {
            Ok(head) => {
                let (seq, hash) = head.unwrap_or_else(|| (0, GENESIS_HASH.to_string()));
                let pending = self.pending.take();
                if (seq, &hash) == (self.seq, &self.head) {
                    // The batch did not commit: the chain goes on from where it was.
                } else if pending
                    .as_ref()
                    .is_some_and(|(ps, ph)| (*ps, ph) == (seq, &hash))
                {
                    tracing::warn!(writer = %self.writer_id, seq, "the failed batch had committed after all; the chain goes on from it");
                    self.seq = seq;
                    self.head = hash;
                } else {
                    // Neither: rows of this chain were deleted or added behind the writer's back. The
                    // last head it knows is checkpointed (and anchored), so `verify` shows what is missing,
                    // and the writer goes on as a new chain instead of certifying the altered one.
                    tracing::error!(
                        writer = %self.writer_id,
                        known_seq = self.seq,
                        found_seq = seq,
                        "the chain in the store is not the one this writer wrote: records were deleted or inserted; checkpointing the known head and starting a new chain"
                    );
                    self.metrics.audit_errors_total.inc();
                    self.checkpoint("periodic").await;
                    self.writer_id = Uuid::now_v7();
                    self.seq = 0;
                    self.head = GENESIS_HASH.to_string();
                    self.checkpointed = None;
                    self.checkpoint("start").await;
                }
                self.lost = false;
                self.metrics.audit_writer_recoveries_total.inc();
                self.set_ready(true);
                true
            }
            Err(e) => {
                tracing::debug!(writer = %self.writer_id, error = %e, "chain head not readable yet");
                false
            }
        }
    }

    /// Records where the chain stands: in the store's append-only checkpoint table and, when configured, in
    /// the anchor file. A failure is logged and counted; the next checkpoint tries again.
    async fn checkpoint(&mut self, kind: &str) {
        let checkpoint = CheckpointRow {
            writer_id: self.writer_id,
            seq: self.seq,
            hash: self.head.clone(),
            kind: kind.to_string(),
            at: Utc::now().trunc_subsecs(6),
            note: None,
        };
        if self.checkpoints.anchors.is_configured() {
            let result = self.checkpoints.anchors.append(&checkpoint).await;
            let label = if result.is_ok() { "ok" } else { "error" };
            self.metrics
                .audit_checkpoints_total
                .with_label_values(&["anchor", label])
                .inc();
            if let Err(e) = result {
                tracing::error!(error = %e, writer = %self.writer_id, "chain checkpoint not written to the anchor file");
            }
        }
        match self.store.insert_checkpoint(&checkpoint).await {
            Ok(()) => {
                self.checkpointed = Some(checkpoint.seq);
                self.metrics
                    .audit_checkpoints_total
                    .with_label_values(&["store", "ok"])
                    .inc();
            }
            Err(e) => {
                self.metrics
                    .audit_checkpoints_total
                    .with_label_values(&["store", "error"])
                    .inc();
                tracing::error!(error = %e, writer = %self.writer_id, kind, "chain checkpoint not written to the store");
            }
        }
    }

    /// Counts this writer in (`true`) or out of [`WritersReady`] and the gauge. Called once at start, then
    /// only on a change: out when a batch fails (or the writer stops), in when it recovers.
    fn set_ready(&self, ready: bool) {
        use std::sync::atomic::Ordering;
        if ready {
            self.ready.0.fetch_add(1, Ordering::AcqRel);
            self.metrics.audit_writers_ready.inc();
        } else {
            self.ready.0.fetch_sub(1, Ordering::AcqRel);
            self.metrics.audit_writers_ready.dec();
        }
    }

    async fn commit(&mut self, jobs: &mut Vec<DecisionJob>) {
        let mut rows = Vec::with_capacity(jobs.len());
        let mut waiters = Vec::with_capacity(jobs.len());
        let (mut seq, mut head) = (self.seq, self.head.clone());
        for (sealed, done) in jobs.drain(..) {
            let (mut row, content) = *sealed;
            seq += 1;
            row.writer_id = self.writer_id;
            row.seq = seq;
            row.hash = chain_hash(&head, &content);
            row.prev_hash = std::mem::replace(&mut head, row.hash.clone());
            rows.push(row);
            waiters.push(done);
        }
        let started = Instant::now();
        let result = self.sink.insert_decisions(&rows).await;
        self.metrics
            .audit_commit_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.audit_batch_size.observe(rows.len() as f64);
        match result {
            Ok(()) => {
                self.seq = seq;
                self.head = head;
                for w in waiters {
                    let _ = w.send(Ok(()));
                }
            }
            Err(e) => {
                // The batch may have committed even so (the server's acknowledgement lost with the
                // connection): the head is re-read before the next batch, so the chain neither forks nor
                // wedges on `UNIQUE(writer_id, seq)`. Its waiters hear "not committed"; one that must know
                // asks `AuditWriter::confirm`.
                self.metrics.audit_errors_total.inc();
                log_store_error(&e, rows.len(), 0);
                self.lost = true;
                self.pending = Some((seq, head));
                self.set_ready(false);
                for w in waiters {
                    let _ = w.send(Err(AuditError::NotCommitted));
                }
            }
        }
    }
}

/// The outcome writer: gathers outcomes for up to [`OUTCOME_LINGER`] (or a full batch) and writes them in one
/// statement; after the last handle is dropped it writes what is left and stops.
async fn write_outcomes(
    store: Store,
    mut queue: mpsc::Receiver<OutcomeRow>,
    max_batch: usize,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut open = true;
    while open {
        if queue.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + OUTCOME_LINGER;
        while batch.len() < max_batch {
            let room = max_batch - batch.len();
            match tokio::time::timeout_at(deadline, queue.recv_many(&mut batch, room)).await {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        metrics.audit_queue_depth.sub(batch.len() as i64);
        let mut result = store.insert_outcomes(&batch).await;
        if result.is_err() && open {
            tokio::time::sleep(OUTCOME_RETRY_AFTER).await;
            result = store.insert_outcomes(&batch).await;
        }
        if let Err(e) = result {
            metrics.audit_errors_total.inc();
            log_store_error(&e, 0, batch.len());
        }
        batch.clear();
    }
}

fn log_store_error(e: &StoreError, decisions: usize, outcomes: usize) {
    tracing::error!(error = %e, decisions, outcomes, "audit batch not committed; its requests are refused");
}

/// Turns a record into its row (JSON serialized once, timestamps cut to the microseconds Postgres keeps, so a
/// row read back hashes the same) and the hash of its content. Chain fields are filled in by the writer.
fn seal(r: DecisionRecord) -> (DecisionRow, [u8; 32]) {
    let row = DecisionRow {
        id: r.id,
        at: r.at.trunc_subsecs(6),
        writer_id: Uuid::nil(),
        seq: 0,
        prev_hash: String::new(),
        hash: String::new(),
        agent_id: r.agent_id,
        agent_name: r.agent_name,
        run_id: r.run_id,
        on_behalf_of: r.on_behalf_of,
        provider: r.provider,
        method: r.method,
        path: r.path,
        query: r.query,
        action: r.action,
        risk: r.risk,
        outcome: r.outcome,
        code: r.code,
        rules: Value::from(r.rules).to_string(),
        reasons: r.reasons.to_string(),
        policy_revision: r.policy_revision,
        charge_cents: r.charge_cents,
        approval_id: r.approval_id,
        policy_outcome: r.policy_outcome,
        shadow_outcome: r.shadow_outcome,
        input: r.input,
    };
    let content = content_hash(&row);
    (row, content)
}

/// sha256 over every recorded field (not the chain fields), each length-prefixed, absent values marked.
pub fn content_hash(row: &DecisionRow) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |value: Option<&str>| match value {
        Some(v) => {
            h.update([1]);
            h.update((v.len() as u64).to_be_bytes());
            h.update(v.as_bytes());
        }
        None => h.update([0]),
    };
    let id = row.id.to_string();
    let at = row.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let agent_id = row.agent_id.map(|u| u.to_string());
    let charge = row.charge_cents.map(|c| c.to_string());
    field(Some(&id));
    field(Some(&at));
    field(agent_id.as_deref());
    field(row.agent_name.as_deref());
    field(row.run_id.as_deref());
    field(row.on_behalf_of.as_deref());
    field(Some(&row.provider));
    field(Some(&row.method));
    field(Some(&row.path));
    field(row.query.as_deref());
    field(Some(&row.action));
    field(Some(&row.risk));
    field(Some(&row.outcome));
    field(row.code.as_deref());
    field(Some(&row.rules));
    field(Some(&row.reasons));
    field(row.policy_revision.as_deref());
    field(charge.as_deref());
    field(row.approval_id.as_deref());
    field(row.input.as_deref());
    field(row.policy_outcome.as_deref());
    field(row.shadow_outcome.as_deref());
    h.finalize().into()
}

/// hash = sha256(prev_hash || content hash), lower-case hex. Writer id and sequence are bound by the chain
/// itself: `verify` checks that seq runs 1, 2, 3… per writer.
pub fn chain_hash(prev_hash: &str, content: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(content);
    hex::encode(h.finalize())
}

/// `audit anchor-existing`: appends every chain's current head to the anchor file (kind `baseline`), so
/// chains written before anchoring was turned on are held against it from now on. Returns the heads
/// anchored.
pub async fn anchor_existing(
    store: &Store,
    anchors: &Anchors,
) -> Result<Vec<CheckpointRow>, anyhow::Error> {
    let checkpoints = store.checkpoints().await?;
    let mut anchored = Vec::new();
    for writer_id in store.writers().await? {
        let rows = store.writer_chain(writer_id).await?;
        let (seq, hash) = match rows.last() {
            Some(r) => (r.seq, r.hash.clone()),
            None => match checkpoints.iter().rfind(|c| c.writer_id == writer_id) {
                Some(c) => (c.seq, c.hash.clone()),
                None => continue,
            },
        };
        let baseline = CheckpointRow {
            writer_id,
            seq,
            hash,
            kind: "baseline".to_string(),
            at: Utc::now().trunc_subsecs(6),
            note: Some("audit anchor-existing".to_string()),
        };
        anchors.append(&baseline).await?;
        anchored.push(baseline);
    }
    Ok(anchored)
}

/// What `audit verify` found for one writer's chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainStatus {
    /// Every link holds and the chain ends at its writer's shutdown checkpoint.
    Closed,
    /// Every link holds, but no shutdown checkpoint closes the chain: its writer is running, or stopped
    /// without shutting down (killed, crashed), or records after its last checkpoint were deleted.
    Open,
    /// A link, a checkpoint or an anchor does not hold.
    Broken,
}

/// What `audit verify` found for one writer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChainReport {
    pub writer_id: Uuid,
    pub status: ChainStatus,
    pub records: usize,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The chain's start was cut by `audit prune` up to this seq.
    pub pruned_through: Option<i64>,
    /// The last checkpoint the store holds for this writer.
    pub last_checkpoint: Option<CheckpointRow>,
    /// Every problem found, the first broken link first.
    pub problems: Vec<String>,
    /// What a reader should know that is not a problem: prunes, an open chain's unanchored records.
    pub notes: Vec<String>,
}

/// Re-computes every writer's chain from the stored rows and holds it against the store's checkpoints and,
/// when given, the external anchors. Finds altered and missing records (a gap in seq or a broken link), a
/// deleted tail (a checkpoint or anchor beyond the last record), a dropped chain (checkpoints or anchors
/// with no record left), a rewritten chain (a checkpoint whose hash is not the record's), and a chain that
/// ends without its writer's shutdown checkpoint.
pub async fn verify(
    store: &Store,
    anchors: Option<&[CheckpointRow]>,
) -> Result<Vec<ChainReport>, StoreError> {
    let checkpoints = store.checkpoints().await?;
    let mut writers = store.writers().await?;
    for anchor in anchors.unwrap_or_default() {
        if !writers.contains(&anchor.writer_id) {
            writers.push(anchor.writer_id);
        }
    }
    writers.sort();
    let mut reports = Vec::with_capacity(writers.len());
    for writer_id in writers {
        let rows = store.writer_chain(writer_id).await?;
        let own: Vec<&CheckpointRow> = checkpoints
            .iter()
            .filter(|c| c.writer_id == writer_id)
            .collect();
        let anchored: Vec<&CheckpointRow> = anchors
            .unwrap_or_default()
            .iter()
            .filter(|c| c.writer_id == writer_id)
            .collect();
        reports.push(verify_chain(
            writer_id,
            &rows,
            &own,
            anchors.map(|_| anchored),
        ));
    }
    Ok(reports)
}

fn verify_chain(
    writer_id: Uuid,
    rows: &[DecisionRow],
    checkpoints: &[&CheckpointRow],
    anchors: Option<Vec<&CheckpointRow>>,
) -> ChainReport {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let prune = checkpoints
        .iter()
        .filter(|c| c.kind == "prune")
        .max_by_key(|c| c.seq);
    // A pruned chain goes on from the prune checkpoint's head; one whose rows are all still there (the
    // prune removed nothing yet) is checked from genesis.
    let (mut expected_seq, mut prev) = match (prune, rows.first()) {
        (Some(p), first) if first.is_none_or(|r| r.seq > p.seq) => (p.seq + 1, p.hash.clone()),
        _ => (1, GENESIS_HASH.to_string()),
    };
    if let Some(p) = prune {
        notes.push(format!(
            "records through seq {} were pruned at {}{}",
            p.seq,
            p.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            p.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ));
    }
    for row in rows {
        let problem = if row.seq != expected_seq {
            Some(format!(
                "expected seq {expected_seq}, found {}: records {expected_seq}..{} are missing",
                row.seq,
                row.seq - 1
            ))
        } else if row.prev_hash != prev {
            Some(format!(
                "seq {}: prev_hash does not match the previous record's hash",
                row.seq
            ))
        } else if chain_hash(&row.prev_hash, &content_hash(row)) != row.hash {
            Some(format!(
                "seq {}: hash does not match the record's contents (the record was altered)",
                row.seq
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            problems.push(p);
            break;
        }
        prev = row.hash.clone();
        expected_seq += 1;
    }

    let last_seq = rows.last().map(|r| r.seq);
    let end = last_seq.or(prune.map(|p| p.seq)).unwrap_or(0);
    let hash_at = |seq: i64| -> Option<&str> {
        rows.binary_search_by_key(&seq, |r| r.seq)
            .ok()
            .map(|i| rows[i].hash.as_str())
    };
    let mut check = |source: &str, c: &CheckpointRow| {
        let when = c.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if c.seq == 0 {
            if c.hash != GENESIS_HASH {
                problems.push(format!(
                    "the {source} {} checkpoint at {when} has seq 0 but not the genesis hash",
                    c.kind
                ));
            }
        } else if let Some(hash) = hash_at(c.seq) {
            if hash != c.hash {
                problems.push(format!(
                    "the {source} {} checkpoint at {when} does not match record seq {}: the chain was rewritten",
                    c.kind, c.seq
                ));
            }
        } else if c.seq > end {
            problems.push(if rows.is_empty() && prune.is_none() {
                format!(
                    "dropped chain: the {source} {} checkpoint at {when} shows seq {}, and no record of this writer remains",
                    c.kind, c.seq
                )
            } else {
                format!(
                    "missing tail: the {source} {} checkpoint at {when} shows seq {}, the records end at seq {end}",
                    c.kind, c.seq
                )
            });
        } else if c.kind == "prune" || prune.is_some_and(|p| c.seq <= p.seq) {
            // Pruned away: nothing left to hold it against.
        } else if !problems.iter().any(|p| p.contains("are missing")) {
            problems.push(format!(
                "the {source} {} checkpoint at {when} shows seq {}, which is not in the chain",
                c.kind, c.seq
            ));
        }
    };
    for c in checkpoints {
        check("stored", c);
    }
    if let Some(anchors) = &anchors {
        for c in anchors {
            check("anchored", c);
        }
        // Every record, checkpoint and timestamp in the store can be written by whoever can write the
        // store; the anchor file is the only thing they cannot. A chain none of whose checkpoints is
        // anchored proves nothing (an invented one with valid hashes looks intact). Chains from before
        // anchoring are anchored once with `tollgate audit anchor-existing`.
        if anchors.iter().all(|a| a.kind == "prune") {
            problems.push(
                "unanchored chain: none of its checkpoints is in the anchor file (inserted by hand, written by a tollgate without this anchor file, or from before anchoring: `tollgate audit anchor-existing` anchors existing chains once)"
                    .to_string(),
            );
        }
        for p in checkpoints.iter().filter(|c| c.kind == "prune") {
            if !anchors.iter().any(|a| a == p) {
                problems.push(format!(
                    "the prune through seq {} at {} is not in the anchor file (pruned without it, or forged)",
                    p.seq,
                    p.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
            }
        }
    }
    if let Some(shutdown) = checkpoints
        .iter()
        .find(|c| c.kind == "shutdown" && c.seq < end)
    {
        problems.push(format!(
            "records after the writer's shutdown checkpoint at seq {}",
            shutdown.seq
        ));
    }

    let last_checkpoint = checkpoints.last().map(|c| (*c).clone());
    // Closed by a shutdown checkpoint at its end (a later prune checkpoint does not reopen it).
    let closed = checkpoints
        .iter()
        .any(|c| c.kind == "shutdown" && c.seq == end);
    let status = if !problems.is_empty() {
        ChainStatus::Broken
    } else if closed {
        ChainStatus::Closed
    } else {
        let since = checkpoints
            .iter()
            .filter(|c| c.kind != "prune")
            .map(|c| c.seq)
            .max();
        notes.push(match since {
            Some(seq) => format!(
                "no shutdown checkpoint: the writer is running, or stopped without shutting down (or its tail was deleted); {} record(s) after its last checkpoint (seq {seq}) are not anchored",
                end - seq.min(end)
            ),
            None => "no checkpoint at all: written before checkpoints existed, or its checkpoints were lost"
                .to_string(),
        });
        ChainStatus::Open
    };
    ChainReport {
        writer_id,
        status,
        records: rows.len(),
        first_seq: rows.first().map(|r| r.seq),
        last_seq,
        pruned_through: prune.map(|p| p.seq),
        last_checkpoint,
        problems,
        notes,
    }
}

#[cfg(test)]
mod stored_input_tests {
    use super::*;
    use serde_json::json;
    use std::borrow::Cow;

    #[test]
    fn stored_inputs_are_bounded() {
        let small = json!({"request": {"body": {"name": "www"}, "body_sha256": "ab"}});
        assert_eq!(bounded_input(Cow::Borrowed(&small)), small.to_string());
        let long = "x".repeat(5000);
        let stored = bounded_input(Cow::Owned(json!({"request": {"body": {"comment": long}}})));
        assert!(stored.len() < 600, "{stored}");
        assert!(stored.contains("5000 bytes, sha256:"), "{stored}");
        // Many short strings: the body goes, its size and hash stay.
        let many: Vec<String> = (0..20_000).map(|i| format!("value-{i}")).collect();
        let big = json!({"request": {"body": {"items": many}, "body_sha256": "cafe"}, "agent": {"name": "a"}});
        let stored = bounded_input(Cow::Owned(big));
        assert!(stored.len() <= MAX_STORED_INPUT, "{}", stored.len());
        let v: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(v["request"]["body"]["sha256"], "cafe");
        assert!(v["request"]["body"]["bytes"].as_u64().unwrap() > 100_000);
        assert_eq!(v["agent"]["name"], "a");
    }
}
