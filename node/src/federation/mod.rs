//! Federated LLM consensus jobs. A job is a replicated document (see
//! `spec`); every participant runs the same loop: when the document changes
//! (or a deadline or a death may have changed what is possible), `plan` says
//! what this node should do next, and `work` does it with the node's own
//! model client, writing the result back as a signed contribution.
//!
//! There is no coordinator state outside the document, so any participant
//! can read how far a job got, and a restarted asker picks up where it was.

mod embed;
pub mod outcome;
mod plan;
pub mod quota;
mod reactor;
pub mod spec;
mod work;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hivemesh_gpu::engine::TallyEngine;
use hivemesh_llm::LlmClient;
use hivemesh_llm::pipeline::Profiles;
use hivemesh_protocol::TallyRule;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub use plan::{Action, plan};
pub use reactor::spawn;
pub use spec::{Facts, JobSpec, Mode, Outcome};

/// How this node takes part in jobs.
#[derive(Clone)]
pub struct FederationConfig {
    /// The node's own model client (its provider, keys, limits).
    pub client: Arc<LlmClient>,
    pub profiles: Profiles,
    pub tally: Arc<TallyEngine>,
    pub limits: Limits,
    /// A job's deadline when the asker gives none.
    pub default_deadline: Duration,
    /// How often deadlines and deaths are re-checked.
    pub tick: Duration,
    /// Per-hour limits on what remote peers' jobs may spend here (ADR
    /// 0017); the node's own jobs are never limited. Default: none.
    pub quotas: quota::QuotaConfig,
}

impl std::fmt::Debug for FederationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationConfig")
            .field("provider", &self.client.provider_name())
            .field("limits", &self.limits)
            .field("default_deadline", &self.default_deadline)
            .field("quotas", &self.quotas)
            .finish_non_exhaustive()
    }
}

impl FederationConfig {
    /// Defaults around a model client: built-in profiles, tallying on the
    /// CPU or a GPU when one is worth it, 120 s deadlines.
    pub fn new(client: Arc<LlmClient>, tally: Arc<TallyEngine>) -> Self {
        Self {
            client,
            profiles: Profiles::default(),
            tally,
            limits: Limits::default(),
            default_deadline: Duration::from_secs(120),
            tick: Duration::from_millis(250),
            quotas: quota::QuotaConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Jobs this node asks at once; the next submission is refused as busy.
    pub max_asked_jobs: usize,
    /// Model calls this node runs at once; the rest wait in line.
    pub max_running_calls: usize,
    /// Calls waiting beyond which a submission is refused as busy.
    pub max_queued_calls: usize,
    /// Most completion tokens one model call of a job may produce.
    pub max_tokens_per_call: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_asked_jobs: 10_000,
            max_running_calls: 4,
            max_queued_calls: 10_000,
            max_tokens_per_call: 512,
        }
    }
}

/// What an asker submits.
#[derive(Debug, Clone)]
pub struct Submission {
    pub question: Vec<hivemesh_llm::ChatMessage>,
    pub mode: Mode,
    pub profile: String,
    /// Council size (the asker included); 0 for every live member.
    pub peers: usize,
    pub quorum: Option<u32>,
    pub rule: TallyRule,
    pub deadline: Option<Duration>,
    pub max_tokens: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("busy: {0}")]
    Busy(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Node(#[from] crate::net::ClientError),
}

/// Labels of a model call's latency: the part (`candidate`, `stage.refiner`,
/// `curator`, ...).
pub type PartLabel = Vec<(String, String)>;

/// Seconds, from 10 ms to about 5 min.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

/// Ballots per tally.
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// Counters for `/metrics` and the status report.
#[derive(Debug)]
pub struct FederationStats {
    pub call_seconds: Family<PartLabel, Histogram, fn() -> Histogram>,
    pub tally_ballots: Family<PartLabel, Histogram, fn() -> Histogram>,
    /// Ballots by how the voter ranked: `embeddings` or `lexical`.
    pub votes_by_method: Family<PartLabel, prometheus_client::metrics::counter::Counter>,
    pub submitted: AtomicU64,
    pub finished: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub model_calls: AtomicU64,
    pub model_call_failures: AtomicU64,
    pub stopped_calls: AtomicU64,
    pub queued_calls: AtomicU64,
    pub running_calls: AtomicU64,
    pub ballots_cast: AtomicU64,
    pub tallies: AtomicU64,
}

impl Default for FederationStats {
    fn default() -> Self {
        Self {
            call_seconds: Family::new_with_constructor(latency_histogram),
            tally_ballots: Family::new_with_constructor(batch_histogram),
            votes_by_method: Family::default(),
            submitted: AtomicU64::default(),
            finished: AtomicU64::default(),
            failed: AtomicU64::default(),
            cancelled: AtomicU64::default(),
            model_calls: AtomicU64::default(),
            model_call_failures: AtomicU64::default(),
            stopped_calls: AtomicU64::default(),
            queued_calls: AtomicU64::default(),
            running_calls: AtomicU64::default(),
            ballots_cast: AtomicU64::default(),
            tallies: AtomicU64::default(),
        }
    }
}

impl FederationStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) enum Request {
    Submit(Submission, spec::Sampling, oneshot::Sender<Result<hivemesh_protocol::JobId, SubmitError>>),
    Cancel(hivemesh_protocol::JobId, oneshot::Sender<Result<(), SubmitError>>),
}

/// Talks to the federation loop of a running node.
#[derive(Clone)]
pub struct FederationHandle {
    pub(crate) requests: mpsc::Sender<Request>,
    pub stats: Arc<FederationStats>,
    pub limits: Limits,
    pub profiles: Vec<String>,
    /// Remote peers' use of this node's provider (`/v1/status`, `/metrics`).
    pub quotas: Arc<quota::PeerQuotas>,
}

impl FederationHandle {
    /// Places a job and returns its id once its spec is durable and pushed.
    pub async fn submit(&self, submission: Submission) -> Result<hivemesh_protocol::JobId, SubmitError> {
        self.submit_sampled(submission, spec::Sampling::default()).await
    }

    /// `submit`, with sampling parameters applied to every model call of the job.
    pub async fn submit_sampled(
        &self,
        submission: Submission,
        sampling: spec::Sampling,
    ) -> Result<hivemesh_protocol::JobId, SubmitError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || SubmitError::Node(crate::net::ClientError::Stopped);
        self.requests.send(Request::Submit(submission, sampling, tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Cancels a job this node asked: every participant stops its calls.
    pub async fn cancel(&self, job: hivemesh_protocol::JobId) -> Result<(), SubmitError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || SubmitError::Node(crate::net::ClientError::Stopped);
        self.requests.send(Request::Cancel(job, tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}
