//! Job sync as a sans-IO state machine (ADR 0021): the job documents this
//! node holds, pushed to and repaired with their peers, with group commit.
//!
//! Inputs are the node's own writes, peers' job requests and the answers to
//! this machine's requests, member events, ticks and finished flushes; every
//! input takes `now` in Unix ms. Outputs are requests to send, replies and
//! responses owed, job changes to announce, and flushes to start. The
//! machine holds no socket, task or clock; it writes to the node's sled
//! store through [`Jobs`] and never flushes it itself: it asks for a
//! [`Output::Flush`] and is told [`Input::Flushed`]. The driver moves
//! bytes; the simulation (`crate::sim`) drives the same machine.
//!
//! Group commit: whatever a write releases (a reply to the writer, the
//! acknowledgement to a peer, the push of a signed change) waits for the
//! flush after it. One flush runs at a time and releases every write that
//! arrived before it started; writes arriving meanwhile wait for the next.
//! A peer's change is announced at once: anything written because of it
//! waits for a later flush, which makes it durable too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hivemesh_protocol::{JobId, NodeId, NodeIdentity};

use super::jobs::{JobChanged, JobError, Jobs};
use super::{StateRequest, StateResponse};

/// Sends of one job push, at most: a push whose request failed is sent
/// again at once while the peer is live, rather than left to the next sync
/// round.
pub const MAX_PUSH_ATTEMPTS: u32 = 3;
/// Most job sync rounds one tick starts, so a node holding many jobs spreads
/// its repair work over several ticks.
pub const MAX_SYNCS_PER_TICK: usize = 32;
/// A sync round stops after this many exchanges even if the peers still
/// differ; the next round goes on from there.
pub const MAX_SYNC_EXCHANGES: u32 = 16;

/// A change this node wrote, and the peers to push it to.
type Written = (Vec<u8>, Vec<NodeId>);

/// Names a request this machine sent, so its answer finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// Names what the caller owes an answer to: a local writer's reply or a
/// peer's response channel, kept by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub u64);

/// A job request from a peer.
#[derive(Debug, Clone)]
pub enum JobRequest {
    /// Changes to a job document, pushed by one of its participants.
    Push { job: JobId, changes: Vec<u8> },
    /// One automerge sync message; `first` opens a round.
    Sync { job: JobId, first: bool, message: Vec<u8> },
}

#[derive(Debug)]
pub enum Input {
    /// Hold `job` and replicate it with `peers`; `Reply` when durable.
    Open {
        job: JobId,
        peers: Vec<NodeId>,
        token: Token,
    },
    /// `Open`, then sign this node's first contribution: one step.
    Create {
        job: JobId,
        peers: Vec<NodeId>,
        kind: String,
        body: Vec<u8>,
        token: Token,
    },
    /// Sign this node's contribution; `Reply` when durable, and pushed then.
    Contribute {
        job: JobId,
        kind: String,
        body: Vec<u8>,
        token: Token,
    },
    /// A peer's request; `Respond` (after the flush when it wrote).
    Request {
        from: NodeId,
        request: JobRequest,
        token: Token,
    },
    /// The answer to a request this machine sent; `None` when it failed
    /// (no connection, timeout, malformed answer).
    Response {
        id: RequestId,
        response: Option<StateResponse>,
    },
    /// A member is alive (up, refuted, renamed) or gone (down, left).
    MemberUp(NodeId),
    MemberGone(NodeId),
    /// Anti-entropy: start repair rounds, compact finished jobs.
    Tick,
    /// The flush asked for by the last [`Output::Flush`] finished.
    Flushed {
        durable: bool,
    },
}

#[derive(Debug)]
pub enum Output {
    /// Send `request` to `to`; answer with [`Input::Response`] and `id`.
    Send { to: NodeId, id: RequestId, request: StateRequest },
    /// Answer the local writer behind `token` about its write to `job`.
    Reply { token: Token, job: JobId, result: Result<(), JobError> },
    /// Answer the peer's request behind `token`.
    Respond { token: Token, response: StateResponse },
    /// A job changed: tell subscribers.
    Changed(JobChanged),
    /// A finished job left memory (compacted): forget cached state of it.
    Compacted(JobId),
    /// Flush the store, then report [`Input::Flushed`]. At most one is
    /// outstanding.
    Flush,
}

/// What an outstanding request was for.
#[derive(Debug, Clone)]
enum Pending {
    Push { job: JobId, to: NodeId, changes: Vec<u8>, attempt: u32 },
    Sync { job: JobId, to: NodeId, exchanges: u32 },
}

/// Counters for the status report.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CommitStats {
    /// Flushes run.
    pub flushes: u64,
    /// Outputs released by them (replies, acknowledgements, pushes).
    pub released: u64,
    /// Flushes that failed; what waited on them was refused.
    pub failed: u64,
}

pub struct JobSync {
    jobs: Jobs,
    identity: Arc<NodeIdentity>,
    live: HashSet<NodeId>,
    pending: HashMap<RequestId, Pending>,
    next_id: u64,
    /// Released by the flush under way (`None`: no flush running).
    flushing: Option<Vec<Output>>,
    /// Waiting for the next flush.
    waiting: Vec<Output>,
    outputs: Vec<Output>,
    rng: super::Pick,
    stats: CommitStats,
}

impl JobSync {
    /// `seed` drives the choice of repair peers (the simulation passes its
    /// own, for reproducible runs).
    pub fn new(jobs: Jobs, identity: Arc<NodeIdentity>, seed: u64) -> Self {
        Self {
            jobs,
            identity,
            live: HashSet::new(),
            pending: HashMap::new(),
            next_id: 0,
            flushing: None,
            waiting: Vec::new(),
            outputs: Vec::new(),
            rng: super::Pick::new(seed),
            stats: CommitStats::default(),
        }
    }

    /// The documents, for reads (views, lists, stats).
    pub fn jobs(&mut self) -> &mut Jobs {
        &mut self.jobs
    }

    pub fn commit_stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Whether a write is waiting for, or in, a flush.
    pub fn unflushed(&self) -> bool {
        self.flushing.is_some() || !self.waiting.is_empty()
    }

    /// Everything produced since the last call, in order.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    pub fn handle(&mut self, input: Input, now_ms: u64) {
        match input {
            Input::Open { job, peers, token } => {
                let written = self.jobs.open(job, &peers, now_ms).map(|()| Vec::new());
                self.release_write(job, written, token);
            }
            Input::Create { job, peers, kind, body, token } => {
                let written = self
                    .jobs
                    .open(job, &peers, now_ms)
                    .and_then(|()| self.jobs.contribute(&self.identity, job, &kind, body, now_ms))
                    .map(|change| vec![change]);
                self.release_write(job, written, token);
            }
            Input::Contribute { job, kind, body, token } => {
                let written =
                    self.jobs.contribute(&self.identity, job, &kind, body, now_ms).map(|change| vec![change]);
                self.release_write(job, written, token);
            }
            Input::Request { from, request, token } => self.on_request(from, request, token, now_ms),
            Input::Response { id, response } => self.on_response(id, response, now_ms),
            Input::MemberUp(node) => {
                self.live.insert(node);
            }
            Input::MemberGone(node) => {
                self.live.remove(&node);
            }
            Input::Tick => self.tick(now_ms),
            Input::Flushed { durable } => self.flushed(durable),
        }
    }

    /// A local write: refused at once, else its pushes, announcement and
    /// reply wait for the flush.
    fn release_write(&mut self, job: JobId, written: Result<Vec<Written>, JobError>, token: Token) {
        let changed: Vec<Output> = self.jobs.take_changed().into_iter().map(Output::Changed).collect();
        match written {
            Err(error) => {
                self.after_flush(changed);
                self.outputs.push(Output::Reply { token, job, result: Err(error) });
            }
            Ok(changes) => {
                let mut released = Vec::new();
                for (change, peers) in changes {
                    for to in peers {
                        released.push(self.push(job, to, change.clone(), 0));
                    }
                }
                released.extend(changed);
                released.push(Output::Reply { token, job, result: Ok(()) });
                self.after_flush(released);
            }
        }
    }

    fn on_request(&mut self, from: NodeId, request: JobRequest, token: Token, now_ms: u64) {
        let response = match request {
            JobRequest::Push { job, changes } => match self.jobs.apply_push(from, job, &changes, now_ms) {
                Ok(new) => StateResponse::Ack { accepted: new as u32, rejected: Vec::new() },
                Err(error) => refusal(error),
            },
            JobRequest::Sync { job, first, message } => {
                match self.jobs.sync_receive(from, job, first, &message, now_ms) {
                    Ok(next) => StateResponse::JobSync(next),
                    Err(error) => refusal(error),
                }
            }
        };
        let changed = self.jobs.take_changed();
        let wrote = !changed.is_empty();
        self.outputs.extend(changed.into_iter().map(Output::Changed));
        let respond = Output::Respond { token, response };
        if wrote && !matches!(respond, Output::Respond { response: StateResponse::Refused(_), .. }) {
            self.after_flush(vec![respond]);
        } else {
            self.outputs.push(respond);
        }
    }

    fn on_response(&mut self, id: RequestId, response: Option<StateResponse>, now_ms: u64) {
        let Some(pending) = self.pending.remove(&id) else { return };
        match (pending, response) {
            (Pending::Sync { job, to, exchanges }, Some(StateResponse::JobSync(answer))) => {
                let next = self.jobs.sync_continue(to, job, answer.as_deref(), now_ms);
                let changed = self.jobs.take_changed();
                self.outputs.extend(changed.into_iter().map(Output::Changed));
                match next {
                    Ok(Some(message)) if exchanges < MAX_SYNC_EXCHANGES => {
                        let pending = Pending::Sync { job, to, exchanges: exchanges + 1 };
                        let send =
                            self.request_with(pending, StateRequest::JobSync { job, first: false, message });
                        self.after_flush(vec![send]);
                    }
                    Ok(_) => {}
                    Err(error) => tracing::debug!(peer = %to, %job, %error, "job sync round failed"),
                }
            }
            (
                Pending::Push { job, to, .. } | Pending::Sync { job, to, .. },
                Some(StateResponse::JobClosed(_)),
            ) => {
                // The peer finished and compacted the job: no round with it
                // will ever bring anything (ADR 0021).
                if let Err(error) = self.jobs.closed_at_peer(job, to, now_ms) {
                    tracing::warn!(%job, peer = %to, %error, "could not record a job closed at a peer");
                }
            }
            (Pending::Push { job, to, .. }, Some(StateResponse::Refused(reason))) => {
                tracing::warn!(peer = %to, %job, %reason, "a peer refused a job change we pushed");
            }
            (Pending::Push { job, to, changes, attempt }, None)
                if attempt + 1 < MAX_PUSH_ATTEMPTS && self.live.contains(&to) =>
            {
                // Already durable: sent again at once.
                tracing::debug!(%job, peer = %to, attempt, "a job push failed; sending it again");
                let send = self.push(job, to, changes, attempt + 1);
                self.outputs.push(send);
            }
            (Pending::Push { job, to, .. }, None) => {
                tracing::debug!(%job, peer = %to, "a job push failed; the next sync round repairs it");
            }
            (Pending::Sync { job, to, .. }, other) => {
                tracing::debug!(%job, peer = %to, answer = ?other.map(|r| format!("{r:?}")), "job sync round ended");
            }
            (Pending::Push { .. }, Some(_)) => {}
        }
    }

    /// Starts sync rounds for up to [`MAX_SYNCS_PER_TICK`] jobs, each with
    /// one random live peer of that job; then compacts finished jobs.
    fn tick(&mut self, now_ms: u64) {
        let mut targets = self.jobs.repair_targets();
        targets.sort_unstable_by_key(|(job, _)| *job);
        let start = self.rng.below(targets.len());
        targets.rotate_left(start);
        let mut started = 0;
        for (job, peers) in targets {
            if started == MAX_SYNCS_PER_TICK {
                break;
            }
            let live: Vec<NodeId> = peers.into_iter().filter(|p| self.live.contains(p)).collect();
            if live.is_empty() {
                continue;
            }
            let to = live[self.rng.below(live.len())];
            let Some(message) = self.jobs.sync_start(to, job) else { continue };
            let send = self.request_with(
                Pending::Sync { job, to, exchanges: 1 },
                StateRequest::JobSync { job, first: true, message },
            );
            self.outputs.push(send);
            started += 1;
        }
        match self.jobs.compact_finished(&self.identity, now_ms) {
            Ok(jobs) => self.outputs.extend(jobs.into_iter().map(Output::Compacted)),
            Err(error) => tracing::error!(%error, "could not compact a finished job"),
        }
    }

    fn push(&mut self, job: JobId, to: NodeId, changes: Vec<u8>, attempt: u32) -> Output {
        let request = StateRequest::JobPush { job, changes: changes.clone() };
        self.request_with(Pending::Push { job, to, changes, attempt }, request)
    }

    fn request_with(&mut self, pending: Pending, request: StateRequest) -> Output {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let to = match &pending {
            Pending::Push { to, .. } | Pending::Sync { to, .. } => *to,
        };
        self.pending.insert(id, pending);
        Output::Send { to, id, request }
    }

    /// Queues `released` behind the next flush, asking for one unless one
    /// runs.
    fn after_flush(&mut self, released: Vec<Output>) {
        if released.is_empty() {
            return;
        }
        self.waiting.extend(released);
        if self.flushing.is_none() {
            self.start_flush();
        }
    }

    fn start_flush(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        self.flushing = Some(std::mem::take(&mut self.waiting));
        self.stats.flushes += 1;
        self.outputs.push(Output::Flush);
    }

    fn flushed(&mut self, durable: bool) {
        let released = self.flushing.take().unwrap_or_default();
        self.stats.released += released.len() as u64;
        if !durable {
            self.stats.failed += 1;
        }
        for output in released {
            match output {
                _ if durable => self.outputs.push(output),
                Output::Reply { token, job, result: Ok(()) } => {
                    self.outputs.push(Output::Reply { token, job, result: Err(JobError::NotDurable(job)) })
                }
                Output::Respond { token, .. } => {
                    let refused = StateResponse::Refused("the change could not be made durable here".into());
                    self.outputs.push(Output::Respond { token, response: refused });
                }
                // Not durable: not pushed (the sync rounds carry it if the
                // write did reach the disk).
                Output::Send { id, .. } => {
                    self.pending.remove(&id);
                }
                other => self.outputs.push(other),
            }
        }
        self.start_flush();
    }
}

/// The response refusing a peer's job request: a closed job typed, so the
/// peer stops repairing it here; anything else as text.
fn refusal(error: JobError) -> StateResponse {
    match error {
        JobError::Closed(job) => StateResponse::JobClosed(job),
        other => StateResponse::Refused(other.to_string()),
    }
}
