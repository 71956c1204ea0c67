//! The federation loop of one node: is pushed each durable change to a job
//! (the job's new state, ADR 0021) and each SWIM member event, asks `plan`
//! what to do, and runs each action as a task, at most one per
//! (job, part). A `Stop` aborts a job's running tasks, which drops their
//! model streams and so hangs up on the provider.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hivemesh_llm::pipeline::Stage;
use hivemesh_protocol::{JobId, NodeId, NodeIdentity};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinHandle};

use super::plan::{Action, plan};
use super::spec::{self, Facts, JobSpec, Mode, Part, Sampling};
use super::work::{self, WorkContext};
use super::{FederationConfig, FederationHandle, FederationStats, Request, Submission, SubmitError};
use crate::membership::MemberEvent;
use crate::net::{NodeClient, unix_ms};
use crate::replica::{JobView, ViewKind};

/// Starts the federation loop for the node behind `node`.
pub fn spawn(
    node: NodeClient,
    identity: NodeIdentity,
    config: FederationConfig,
) -> (FederationHandle, JoinHandle<()>) {
    let stats = Arc::new(FederationStats::default());
    let (requests, requests_rx) = mpsc::channel(256);
    let quotas = Arc::new(super::quota::PeerQuotas::new(config.quotas));
    let handle = FederationHandle {
        requests,
        stats: stats.clone(),
        limits: config.limits.clone(),
        profiles: config.profiles.names().map(str::to_string).collect(),
        quotas: quotas.clone(),
    };
    let me = identity.node_id();
    let ctx = Arc::new(WorkContext {
        node: node.clone(),
        me,
        identity: Arc::new(identity),
        client: config.client,
        profiles: config.profiles,
        tally: config.tally,
        stats,
        calls: Arc::new(Semaphore::new(config.limits.max_running_calls.max(1))),
        limits: config.limits,
        quotas,
        peer_embeddings: Default::default(),
    });
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let reactor = Reactor {
        node,
        me,
        ctx,
        running: HashMap::new(),
        watched: HashMap::new(),
        asked: HashSet::new(),
        peered: HashSet::new(),
        done_tx,
        live: HashSet::new(),
        live_version: 0,
        ticked_version: 0,
        default_deadline: config.default_deadline,
    };
    let task = tokio::spawn(reactor.run(requests_rx, done_rx, config.tick));
    (handle, task)
}

struct Reactor {
    node: NodeClient,
    me: NodeId,
    ctx: Arc<WorkContext>,
    /// The task running each part of each job.
    running: HashMap<JobId, HashMap<Part, AbortHandle>>,
    /// Jobs this node has a part in that are not finished, with their
    /// deadlines.
    watched: HashMap<JobId, u64>,
    /// Unfinished jobs this node asked.
    asked: HashSet<JobId>,
    /// Unfinished jobs whose every participant this node pushes to.
    peered: HashSet<JobId>,
    done_tx: mpsc::UnboundedSender<(JobId, Part)>,
    /// Members alive or suspect (a suspect may yet refute; only down and
    /// left peers are written off), kept from SWIM's pushed events.
    live: HashSet<NodeId>,
    /// Bumped whenever `live` changes; the tick re-plans every job when it
    /// moved since the last tick.
    live_version: u64,
    ticked_version: u64,
    default_deadline: Duration,
}

impl Reactor {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut done: mpsc::UnboundedReceiver<(JobId, Part)>,
        tick: Duration,
    ) {
        let mut changes = self.node.job_changes();
        let mut members = self.node.member_events();
        self.read_live().await;
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(change) => self.react_to(change.job(), change.view).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "job changes lagged; re-reading every watched job");
                        self.react_all().await;
                    }
                    Err(_) => return,
                },
                Some((job, part)) = done.recv() => {
                    if let Some(parts) = self.running.get_mut(&job) {
                        parts.remove(&part);
                        if parts.is_empty() {
                            self.running.remove(&job);
                        }
                    }
                    self.react(job).await;
                }
                request = requests.recv() => match request {
                    Some(Request::Submit(submission, sampling, reply)) => {
                        let _ = reply.send(self.submit(submission, sampling).await);
                    }
                    Some(Request::Cancel(job, reply)) => {
                        let _ = reply.send(self.cancel(job).await);
                    }
                    None => return,
                },
                event = members.recv() => match event {
                    Ok(event) => self.on_member_event(event),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.read_live().await,
                    Err(_) => return,
                },
                _ = ticker.tick() => self.tick().await,
            }
        }
    }

    /// Keeps `live` from SWIM's events; a change re-plans every job at the
    /// next tick.
    fn on_member_event(&mut self, event: MemberEvent) {
        let changed = match event {
            MemberEvent::Up(member) => self.live.insert(member.node),
            MemberEvent::Renamed { old, new } => self.live.remove(&old.node) | self.live.insert(new.node),
            MemberEvent::Down(member) | MemberEvent::Left(member) => self.live.remove(&member.node),
            MemberEvent::Alone => !std::mem::take(&mut self.live).is_empty(),
            MemberEvent::Joined | MemberEvent::Rejoined(_) | MemberEvent::Defunct => false,
        };
        if changed {
            self.live_version += 1;
        }
    }

    /// Reads the live members whole: at start, and after missing events.
    async fn read_live(&mut self) {
        let Ok(report) = self.node.members().await else { return };
        let live: HashSet<NodeId> = report
            .members
            .iter()
            .filter(|m| m.state == "alive" || m.state == "suspect")
            .filter_map(|m| m.peer_id.parse::<libp2p::PeerId>().ok())
            .filter_map(|p| NodeId::from_peer_id(&p).ok())
            .collect();
        if live != self.live {
            self.live = live;
            self.live_version += 1;
        }
    }

    async fn react_all(&mut self) {
        let jobs: Vec<JobId> = self.watched.keys().copied().collect();
        for job in jobs {
            self.react(job).await;
        }
    }

    /// A plan changes only with the document (handled as it changes), with
    /// who is alive, and at the deadline: re-read every job when the live
    /// set moved, else only the jobs past their deadline.
    async fn tick(&mut self) {
        if self.live_version != self.ticked_version {
            self.ticked_version = self.live_version;
            return self.react_all().await;
        }
        let now = unix_ms();
        let due: Vec<JobId> =
            self.watched.iter().filter(|(_, deadline)| now >= **deadline).map(|(job, _)| *job).collect();
        for job in due {
            self.react(job).await;
        }
    }

    /// Re-plans `job` from its current state (read from the shared per-job
    /// state, or the driver when it is not there).
    async fn react(&mut self, job: JobId) {
        let Ok(view) = self.node.job(job).await else { return };
        self.react_to(job, view).await;
    }

    /// Plans `job` as `view` shows it and starts or stops work.
    async fn react_to(&mut self, job: JobId, view: Arc<JobView>) {
        let facts = Facts::read(job, &view.contributions);
        let Some(spec) = &facts.spec else { return };
        let asker = facts.asker == Some(self.me);
        if !asker && !spec.participants.contains(&self.me) && !spec.stages.contains(&self.me) {
            return;
        }
        if facts.outcome.is_none() && self.peered.insert(job) {
            // Push to every participant, not only to whoever pushed here:
            // otherwise a change that depends on a third peer's change waits
            // in automerge's queue for the next sync round.
            let peers: Vec<NodeId> = spec.participants.iter().chain(&spec.stages).copied().collect();
            self.node.open_job_queued(job, peers);
        }
        let me = self.me;
        let live = |peer: &NodeId| *peer == me || self.live.contains(peer);
        let capable: Vec<NodeId> = spec.participants.iter().copied().filter(|p| live(p)).collect();
        let actions = plan(self.me, &facts, &live, &capable, unix_ms());
        if facts.outcome.is_none() {
            self.watched.insert(job, spec.deadline_ms);
        }
        for action in actions {
            match action {
                Action::Stop => self.stop(job, facts.outcome.is_some() || !asker),
                action => self.start(job, &facts, action),
            }
        }
        if facts.outcome.is_some() {
            self.asked.remove(&job);
        }
    }

    /// Aborts the job's running work except the asker writing its outcome
    /// (the one part a `Stop` leaves running); `forget` stops watching it too.
    fn stop(&mut self, job: JobId, forget: bool) {
        if let Some(parts) = self.running.get_mut(&job) {
            let stopping: Vec<Part> = parts.keys().filter(|part| **part != Part::Outcome).copied().collect();
            for part in stopping {
                let Some(task) = parts.remove(&part) else { continue };
                tracing::debug!(%job, %part, "stopping job work");
                task.abort();
                FederationStats::bump(&self.ctx.stats.stopped_calls);
            }
        }
        if forget {
            self.watched.remove(&job);
            self.peered.remove(&job);
        }
    }

    fn start(&mut self, job: JobId, facts: &Facts, action: Action) {
        let Some(part) = part_of(&action) else { return };
        let parts = self.running.entry(job).or_default();
        if parts.contains_key(&part) {
            return;
        }
        tracing::debug!(%job, %part, me = %self.me, "starting job work");
        let (ctx, done, label) = (self.ctx.clone(), self.done_tx.clone(), part);
        let task = if matches!(action, Action::Answer | Action::RunStage(_)) {
            // Queued as data: the waiting task holds the job id, not its
            // facts nor the call's future (ADR 0021).
            let asker = facts.asker.unwrap_or(self.me);
            tokio::spawn(async move {
                work::run_model_call(ctx, job, asker, action).await;
                let _ = done.send((job, label));
            })
        } else {
            let facts = facts.clone();
            tokio::spawn(async move {
                work::run(ctx, job, facts, action).await;
                let _ = done.send((job, label));
            })
        };
        parts.insert(part, task.abort_handle());
    }

    async fn submit(&mut self, submission: Submission, sampling: Sampling) -> Result<JobId, SubmitError> {
        let limits = &self.ctx.limits;
        if self.asked.len() >= limits.max_asked_jobs {
            return Err(SubmitError::Busy(format!("{} jobs asked here are still running", self.asked.len())));
        }
        let queued = self.ctx.stats.queued_calls.load(std::sync::atomic::Ordering::Relaxed) as usize;
        if queued >= limits.max_queued_calls {
            return Err(SubmitError::Busy(format!("{queued} model calls are waiting here")));
        }
        self.ctx.profiles.get(&submission.profile).map_err(|e| SubmitError::Invalid(e.to_string()))?;
        if submission.question.iter().all(|m| m.content.trim().is_empty()) {
            return Err(SubmitError::Invalid("the question is empty".into()));
        }
        let spec = JobSpec { sampling, ..self.place(&submission).await? };
        let job = JobId(random_bytes());
        let peers: Vec<NodeId> = spec.participants.iter().chain(&spec.stages).copied().collect();
        let body = serde_json::to_vec(&spec).map_err(|e| SubmitError::Invalid(e.to_string()))?;
        self.node.create_job(job, peers, spec::SPEC, body).await?;
        FederationStats::bump(&self.ctx.stats.submitted);
        self.asked.insert(job);
        self.watched.insert(job, spec.deadline_ms);
        tracing::info!(%job, mode = ?spec.mode, participants = spec.participants.len(), "job submitted");
        Ok(job)
    }

    /// Picks the job's participants from the registry: live (never suspect
    /// or down) peers with no equivocation proof against them, those offering the profile's models first, least
    /// loaded first; and, in pipeline mode, a peer per stage.
    async fn place(&mut self, submission: &Submission) -> Result<JobSpec, SubmitError> {
        let profile = self
            .ctx
            .profiles
            .get(&submission.profile)
            .map_err(|e| SubmitError::Invalid(e.to_string()))?
            .clone();
        let report = self.node.view(Some(ViewKind::Registry)).await?;
        // Peers with a verified, uncleared equivocation proof are neither
        // placed nor eligible to vote (docs/adr/0019).
        let excluded: HashSet<String> = self.node.evidence().await?.excluded.into_iter().collect();
        let wanted: Vec<String> = Stage::ALL.iter().map(|s| profile.stage(*s).model.clone()).collect();
        let mut peers: Vec<(bool, u32, String, NodeId)> = report
            .members
            .iter()
            .filter(|m| m.member.state == "alive" && !excluded.contains(&m.member.peer_id))
            // An observer follows the swarm but takes no jobs (protocol's `Role`).
            .filter(|m| m.role != Some(hivemesh_protocol::Role::Observer))
            .filter_map(|m| {
                let node = NodeId::from_peer_id(&m.member.peer_id.parse().ok()?).ok()?;
                let offers = m.models.iter().any(|model| wanted.contains(model));
                Some((!offers, m.load.unwrap_or(0), m.member.peer_id.clone(), node))
            })
            .collect();
        peers.sort();
        let size = if submission.peers == 0 { peers.len() + 1 } else { submission.peers };
        let mut participants = vec![self.me];
        participants.extend(peers.iter().map(|p| p.3).take(size.saturating_sub(1)));
        let stages = match submission.mode {
            Mode::Council => Vec::new(),
            // Generator, refiner, validator, curator round the participants,
            // the asker last so it curates when there are fewer than four.
            Mode::Pipeline => (0..4).map(|i| participants[(i + 1) % participants.len()]).collect(),
        };
        let count = participants.len() as u32;
        let quorum = submission.quorum.unwrap_or(count / 2 + 1);
        if quorum == 0 || quorum > count {
            return Err(SubmitError::Invalid(format!(
                "quorum {quorum} is not between 1 and the {count} participants"
            )));
        }
        let now = unix_ms();
        let deadline = submission.deadline.unwrap_or(self.default_deadline);
        Ok(JobSpec {
            question: submission.question.clone(),
            mode: submission.mode,
            profile: submission.profile.clone(),
            participants,
            stages,
            quorum,
            rule: submission.rule,
            created_ms: now,
            deadline_ms: now + deadline.as_millis() as u64,
            max_tokens: submission.max_tokens.unwrap_or(self.ctx.limits.max_tokens_per_call),
            sampling: Sampling::default(),
        })
    }

    async fn cancel(&mut self, job: JobId) -> Result<(), SubmitError> {
        let view = self.node.job(job).await?;
        let facts = Facts::read(job, &view.contributions);
        if facts.asker != Some(self.me) {
            return Err(SubmitError::Invalid(format!("job {job} was not asked on this node")));
        }
        if let Some(outcome) = facts.outcome {
            return Err(SubmitError::Invalid(format!("job {job} has already ended ({})", outcome.status)));
        }
        self.node.contribute(job, spec::CANCEL, b"cancelled by the asker".to_vec()).await?;
        Ok(())
    }
}

/// The part an action does; `None` for `Stop`, which runs no task.
fn part_of(action: &Action) -> Option<Part> {
    Some(match action {
        Action::Answer => Part::Candidate,
        Action::RunStage(stage) => Part::Stage(*stage),
        Action::OpenRound(_) => Part::Round,
        Action::Vote => Part::Ballot,
        Action::Conclude { .. } | Action::FinishPipeline | Action::Fail { .. } | Action::ConfirmCancel => {
            Part::Outcome
        }
        Action::Reassign(stage, _) => Part::Assign(*stage),
        Action::Stop => return None,
    })
}

fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        bytes[..8].copy_from_slice(&unix_ms().to_le_bytes());
    }
    bytes
}
