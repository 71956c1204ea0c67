//! Deterministic simulation of federated jobs: N nodes, each running the
//! real job sync machine (`crate::replica::sync`, on a real sled store in a
//! temporary directory) and the real planning core (`federation::plan`) with
//! the real outcome builders (`federation::outcome`), over a simulated
//! network with latency, loss, a partition and a killed participant, on a
//! virtual clock. Model calls are simulated (a seeded delay and a canned
//! answer). Same seed, same report.
//!
//! Invariants checked at the end (each violation is reported, not panicked):
//! every job ends with an outcome, `done` or a failure that says why; every
//! contribution its live author saw acknowledged is on every live
//! participant once the network has healed; every council outcome's tally
//! re-checks from its own ballot file.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use hivemesh_gpu::ballot_box::{JobSpec as BallotSpec, Quorum, validate};
use hivemesh_gpu::engine::{BackendChoice, TallyEngine};
use hivemesh_llm::ChatMessage;
use hivemesh_llm::council::{lexical_agreement, rank_by_scores};
use hivemesh_llm::pipeline::Curation;
use hivemesh_protocol::{
    Ballot, BallotChoice, Envelope, JobId, NodeId, NodeIdentity, TallyRule, decode_message, encode_message,
    seal,
};
use rand10::rngs::StdRng;
use rand10::{RngExt, SeedableRng};
use serde::Serialize;

use crate::federation::outcome::{count_council, ended, pipeline_outcome};
use crate::federation::spec::{self, Facts, JobSpec, Mode, Output, Sampling};
use crate::federation::{Action, plan};
use crate::replica::sync::{Input, JobRequest, JobSync, Output as SyncOutput, RequestId, Token};
use crate::replica::{Jobs, JobsConfig, StateRequest, StateResponse, Store};

/// Virtual time starts here (Unix ms), so signed envelopes carry
/// plausible timestamps.
const EPOCH_MS: u64 = 1_800_000_000_000;
/// A request that gets no answer fails after this long (virtual ms).
const REQUEST_TIMEOUT_MS: u64 = 1_000;
/// A killed node is marked gone everywhere this long after it dies.
const DETECTION_MS: u64 = 3_000;
/// Anti-entropy and deadline checks, per node (virtual ms).
const TICK_MS: u64 = 1_000;
/// How long one flush takes (virtual ms).
const FLUSH_MS: u64 = 1;
/// Most simulated nodes: each opens a real sled store (its own files and
/// flusher thread), so a thousand would spend the run opening stores.
pub const MAX_NODES: usize = 256;
/// Every job has three participants and needs two of them.
const QUORUM: u32 = 2;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct JobSimConfig {
    pub nodes: usize,
    /// Jobs asked, council and pipeline in turn, one every `spacing_ms`.
    pub jobs: usize,
    pub spacing_ms: u64,
    /// Probability that any one request or response is lost.
    pub loss: f64,
    /// One-way latency, uniformly drawn per message, in milliseconds.
    pub latency_ms: Range<u64>,
    /// How long a simulated model call takes, in milliseconds.
    pub model_ms: Range<u64>,
    /// Split the nodes in two halves from `start` to `end` seconds.
    pub partition: Option<Range<u64>>,
    /// Kill this many participants (never an asker) one second in.
    pub kill: usize,
    /// Each job's deadline, in seconds after it is asked.
    pub deadline_secs: u64,
    pub seed: u64,
}

impl JobSimConfig {
    pub fn new(nodes: usize, jobs: usize, seed: u64) -> Self {
        Self {
            nodes,
            jobs,
            spacing_ms: 100,
            loss: 0.0,
            latency_ms: 1..5,
            model_ms: 200..800,
            partition: None,
            kill: 0,
            deadline_secs: 30,
            seed,
        }
    }
}

/// What the run showed. Times are virtual milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct JobSimReport {
    pub nodes: usize,
    pub seed: u64,
    pub jobs: usize,
    pub done: usize,
    /// Failed jobs by the reason their outcome gives.
    pub failed: BTreeMap<String, usize>,
    /// Jobs without an outcome at the end (an invariant violation).
    pub unfinished: usize,
    /// Submit to outcome at the asker, over finished jobs.
    pub job_p50_ms: Option<u64>,
    pub job_p99_ms: Option<u64>,
    pub requests_sent: u64,
    pub requests_lost: u64,
    pub flushes: u64,
    /// Replies, acknowledgements and pushes released per flush (group
    /// commit at work).
    pub released_per_flush: f64,
    /// Every invariant violation found; empty when all hold.
    pub violations: Vec<String>,
    pub virtual_secs: f64,
}

enum Event {
    Submit { asker: usize, index: usize },
    Deliver { to: usize, from: usize, id: RequestId, request: JobRequest },
    Answer { to: usize, id: RequestId, response: Option<StateResponse> },
    Flushed { node: usize },
    ModelDone { node: usize, job: JobId, part: String },
    Tick { node: usize },
    Kill { node: usize },
    Gone { node: usize },
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct SimNode {
    id: NodeId,
    identity: Arc<NodeIdentity>,
    machine: JobSync,
    alive: bool,
    /// Peers this node's federation counts as live.
    live: HashSet<NodeId>,
    /// Parts of jobs started here, never started twice.
    started: HashSet<(JobId, String)>,
    /// Jobs with a part here whose peers are recorded.
    opened: HashSet<JobId>,
    /// Jobs whose outcome this node holds: never planned again.
    ended: HashSet<JobId>,
    /// Peer requests waiting for this node's response: token to (peer, id).
    owed: HashMap<Token, (usize, RequestId)>,
    /// This node's own writes waiting for their reply: token to (job, kind).
    writes: HashMap<Token, (JobId, String)>,
    /// Contributions whose write was acknowledged (durable) here.
    acknowledged: Vec<(JobId, String)>,
    next_token: u64,
    _dir: tempfile::TempDir,
}

pub struct JobSimulation {
    config: JobSimConfig,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    now: u64,
    rng: StdRng,
    engine: TallyEngine,
    /// Jobs asked: id, asker, asked at.
    asked: Vec<(JobId, usize, u64)>,
    /// When each job's outcome reached its asker.
    finished: HashMap<JobId, u64>,
    sent: u64,
    lost: u64,
}

/// Why a simulation could not start.
#[derive(Debug, thiserror::Error)]
pub enum JobSimError {
    #[error("a simulated node's store: {0}")]
    Store(#[from] crate::replica::StoreError),
    #[error("a temporary directory for a simulated node: {0}")]
    TempDir(#[from] std::io::Error),
    #[error("the CPU tally engine: {0}")]
    Tally(String),
    #[error("the job simulation needs at least 3 nodes, got {0}")]
    TooFewNodes(usize),
    #[error(
        "the job simulation runs a real sled store per node: at most {MAX_NODES} nodes, got {0} \
         (a job has three participants; more nodes add nothing but stores)"
    )]
    TooManyNodes(usize),
}

impl JobSimulation {
    pub fn new(config: JobSimConfig) -> Result<Self, JobSimError> {
        if config.nodes < 3 {
            return Err(JobSimError::TooFewNodes(config.nodes));
        }
        if config.nodes > MAX_NODES {
            return Err(JobSimError::TooManyNodes(config.nodes));
        }
        let mut nodes = Vec::new();
        for i in 0..config.nodes {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&config.seed.to_le_bytes());
            seed[8..16].copy_from_slice(&(i as u64).to_le_bytes());
            let identity = Arc::new(NodeIdentity::from_seed(seed));
            let dir = tempfile::tempdir()?;
            let store = Store::open(dir.path())?;
            let jobs = Jobs::load(store, identity.node_id(), JobsConfig::default());
            let machine = JobSync::new(jobs, identity.clone(), config.seed.wrapping_add(i as u64));
            nodes.push(SimNode {
                id: identity.node_id(),
                identity,
                machine,
                alive: true,
                live: HashSet::new(),
                started: HashSet::new(),
                opened: HashSet::new(),
                ended: HashSet::new(),
                owed: HashMap::new(),
                writes: HashMap::new(),
                acknowledged: Vec::new(),
                next_token: 0,
                _dir: dir,
            });
        }
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        for node in &mut nodes {
            for id in ids.iter().filter(|id| **id != node.id) {
                node.live.insert(*id);
                node.machine.handle(Input::MemberUp(*id), EPOCH_MS);
            }
        }
        let engine = TallyEngine::new(BackendChoice::Cpu).map_err(|e| JobSimError::Tally(e.to_string()))?;
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Self {
            config,
            nodes,
            queue: BinaryHeap::new(),
            seq: 0,
            now: EPOCH_MS,
            rng,
            engine,
            asked: Vec::new(),
            finished: HashMap::new(),
            sent: 0,
            lost: 0,
        })
    }

    fn at(&mut self, after_ms: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at: self.now + after_ms, seq: self.seq, event }));
    }

    pub fn run(mut self) -> JobSimReport {
        let n = self.config.nodes;
        // The last `kill` nodes never ask (an asker's death is its own
        // job's end) but take part in others' jobs, and die one second in.
        let askers = n.saturating_sub(self.config.kill).max(1);
        for index in 0..self.config.jobs {
            let asker = index % askers;
            self.at(index as u64 * self.config.spacing_ms, Event::Submit { asker, index });
        }
        for node in 0..n {
            self.at(TICK_MS + node as u64 * 37, Event::Tick { node });
        }
        for node in askers..n {
            self.at(1_000, Event::Kill { node });
        }
        let last_submit = self.config.jobs as u64 * self.config.spacing_ms;
        let heal_end = self.config.partition.as_ref().map_or(0, |p| p.end * 1_000);
        let limit = EPOCH_MS + last_submit.max(heal_end) + (self.config.deadline_secs + 30) * 1_000;
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at > limit {
                break;
            }
            self.now = next.at;
            self.step(next.event);
            if self.finished.len() == self.config.jobs && self.now > EPOCH_MS + heal_end + 10_000 {
                break;
            }
        }
        self.settle();
        self.report()
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Submit { asker, index } => self.submit(asker, index),
            Event::Deliver { to, from, id, request } => {
                if !self.nodes[to].alive {
                    return self.at(REQUEST_TIMEOUT_MS, Event::Answer { to: from, id, response: None });
                }
                let token = self.token(to);
                self.nodes[to].owed.insert(token, (from, id));
                let from_id = self.nodes[from].id;
                self.nodes[to].machine.handle(Input::Request { from: from_id, request, token }, self.now);
                self.pump(to);
            }
            Event::Answer { to, id, response } => {
                if self.nodes[to].alive {
                    self.nodes[to].machine.handle(Input::Response { id, response }, self.now);
                    self.pump(to);
                }
            }
            Event::Flushed { node } => {
                if self.nodes[node].alive {
                    self.nodes[node].machine.handle(Input::Flushed { durable: true }, self.now);
                    self.pump(node);
                }
            }
            Event::ModelDone { node, job, part } => {
                if self.nodes[node].alive {
                    let text = self.answer_text(node, job);
                    let output = Output {
                        text,
                        model: "sim".into(),
                        tokens: 8,
                        elapsed_ms: 0,
                        prompt_tokens: 0,
                        finish_reason: Some("stop".into()),
                    };
                    self.write(node, job, &part, serde_json::to_vec(&output).unwrap_or_default());
                }
            }
            Event::Tick { node } => {
                if self.nodes[node].alive {
                    self.nodes[node].machine.handle(Input::Tick, self.now);
                    self.pump(node);
                    // Deadlines and deaths: re-plan the unfinished jobs
                    // this node has a part in (an ended one needs nothing,
                    // and reading a compacted one back re-checks it).
                    let n = &self.nodes[node];
                    let jobs: Vec<JobId> = n.opened.difference(&n.ended).copied().collect();
                    let mut jobs = jobs;
                    jobs.sort_unstable();
                    for job in jobs {
                        self.react(node, job);
                    }
                    self.at(TICK_MS, Event::Tick { node });
                }
            }
            Event::Kill { node } => {
                self.nodes[node].alive = false;
                self.at(DETECTION_MS, Event::Gone { node });
            }
            Event::Gone { node } => {
                let gone = self.nodes[node].id;
                for i in 0..self.nodes.len() {
                    if self.nodes[i].alive {
                        self.nodes[i].live.remove(&gone);
                        self.nodes[i].machine.handle(Input::MemberGone(gone), self.now);
                        self.pump(i);
                    }
                }
            }
        }
    }

    fn token(&mut self, node: usize) -> Token {
        let n = &mut self.nodes[node];
        n.next_token += 1;
        Token(n.next_token)
    }

    fn submit(&mut self, asker: usize, index: usize) {
        let n = self.nodes.len();
        let mode = if index.is_multiple_of(2) { Mode::Council } else { Mode::Pipeline };
        let participants: Vec<NodeId> = (0..3).map(|k| self.nodes[(asker + k) % n].id).collect();
        let stages = match mode {
            Mode::Council => Vec::new(),
            Mode::Pipeline => (0..4).map(|i| participants[(i + 1) % participants.len()]).collect(),
        };
        let mut job = [0u8; 16];
        job[..8].copy_from_slice(&self.config.seed.to_le_bytes());
        job[8..].copy_from_slice(&(index as u64).to_le_bytes());
        let job = JobId(job);
        let spec = JobSpec {
            question: vec![ChatMessage::user(format!("Simulated question {index}"))],
            mode,
            profile: "fast".into(),
            participants: participants.clone(),
            stages: stages.clone(),
            quorum: QUORUM,
            rule: TallyRule::Schulze,
            created_ms: self.now,
            deadline_ms: self.now + self.config.deadline_secs * 1_000,
            max_tokens: 64,
            sampling: Sampling::default(),
        };
        let peers: Vec<NodeId> = participants.iter().chain(&stages).copied().collect();
        let token = self.token(asker);
        let body = serde_json::to_vec(&spec).unwrap_or_default();
        self.nodes[asker].writes.insert(token, (job, spec::SPEC.into()));
        self.nodes[asker].opened.insert(job);
        self.asked.push((job, asker, self.now));
        let input = Input::Create { job, peers, kind: spec::SPEC.into(), body, token };
        self.nodes[asker].machine.handle(input, self.now);
        self.pump(asker);
    }

    /// Signs and writes `kind` as `node`'s contribution.
    fn write(&mut self, node: usize, job: JobId, kind: &str, body: Vec<u8>) {
        let token = self.token(node);
        self.nodes[node].writes.insert(token, (job, kind.to_string()));
        self.nodes[node].machine.handle(Input::Contribute { job, kind: kind.into(), body, token }, self.now);
        self.pump(node);
    }

    /// Carries out what `node`'s machine produced.
    fn pump(&mut self, node: usize) {
        loop {
            let outputs = self.nodes[node].machine.drain();
            if outputs.is_empty() {
                return;
            }
            for output in outputs {
                match output {
                    SyncOutput::Send { to, id, request } => self.send(node, to, id, request),
                    SyncOutput::Reply { token, result, .. } => {
                        if let Some(write) = self.nodes[node].writes.remove(&token)
                            && result.is_ok()
                        {
                            self.nodes[node].acknowledged.push(write);
                        }
                    }
                    SyncOutput::Respond { token, response } => {
                        if let Some((from, id)) = self.nodes[node].owed.remove(&token) {
                            let response = self.carry(node, from).then_some(response);
                            let delay = if response.is_some() { self.latency() } else { REQUEST_TIMEOUT_MS };
                            self.at(delay, Event::Answer { to: from, id, response });
                        }
                    }
                    SyncOutput::Changed(change) => self.react(node, change.job()),
                    SyncOutput::Compacted(_) => {}
                    SyncOutput::Flush => self.at(FLUSH_MS, Event::Flushed { node }),
                }
            }
        }
    }

    fn send(&mut self, from: usize, to: NodeId, id: RequestId, request: StateRequest) {
        let Some(to) = self.nodes.iter().position(|n| n.id == to) else { return };
        self.sent += 1;
        let request = match request {
            StateRequest::JobPush { job, changes } => JobRequest::Push { job, changes },
            StateRequest::JobSync { job, first, message } => JobRequest::Sync { job, first, message },
            _ => return,
        };
        if self.carry(from, to) {
            let delay = self.latency();
            self.at(delay, Event::Deliver { to, from, id, request });
        } else {
            self.at(REQUEST_TIMEOUT_MS, Event::Answer { to: from, id, response: None });
        }
    }

    /// Whether a message from `from` to `to` gets through now (loss and the
    /// partition); counts the lost.
    fn carry(&mut self, from: usize, to: usize) -> bool {
        let elapsed_secs = (self.now - EPOCH_MS) / 1_000;
        let half = self.nodes.len() / 2;
        let split = self.config.partition.as_ref().is_some_and(|p| p.contains(&elapsed_secs))
            && (from < half) != (to < half);
        let lost = split || self.rng.random_bool(self.config.loss.clamp(0.0, 1.0));
        if lost {
            self.lost += 1;
        }
        !lost
    }

    fn latency(&mut self) -> u64 {
        let range = &self.config.latency_ms;
        if range.start >= range.end { range.start } else { self.rng.random_range(range.clone()) }
    }

    /// A model's answer: most nodes agree, one in four differs.
    fn answer_text(&self, node: usize, job: JobId) -> String {
        if (node + job.0[15] as usize).is_multiple_of(4) {
            format!("Lyon, said node {node}")
        } else {
            "Paris is the capital of France.".to_string()
        }
    }

    /// Plans `job` at `node` as the real reactor does, and starts what the
    /// plan asks for (each part once).
    fn react(&mut self, node: usize, job: JobId) {
        if self.nodes[node].ended.contains(&job) {
            return;
        }
        let Ok(view) = self.nodes[node].machine.jobs().view(job) else { return };
        let facts = Facts::read(job, &view.contributions);
        let Some(spec) = facts.spec.clone() else { return };
        let me = self.nodes[node].id;
        let asker = facts.asker == Some(me);
        if !asker && !spec.participants.contains(&me) && !spec.stages.contains(&me) {
            return;
        }
        if facts.outcome.is_some() {
            self.nodes[node].ended.insert(job);
            if asker {
                self.finished.entry(job).or_insert(self.now);
            }
            return;
        }
        if self.nodes[node].opened.insert(job) {
            let peers: Vec<NodeId> = spec.participants.iter().chain(&spec.stages).copied().collect();
            let token = self.token(node);
            self.nodes[node].machine.handle(Input::Open { job, peers, token }, self.now);
            self.pump(node);
        }
        let live_set = self.nodes[node].live.clone();
        let live = |peer: &NodeId| *peer == me || live_set.contains(peer);
        let capable: Vec<NodeId> = spec.participants.iter().copied().filter(|p| live(p)).collect();
        for action in plan(me, &facts, &live, &capable, self.now) {
            self.act(node, job, &spec, &facts, action);
        }
    }

    fn act(&mut self, node: usize, job: JobId, spec: &JobSpec, facts: &Facts, action: Action) {
        let part = match &action {
            Action::Answer => spec::CANDIDATE.to_string(),
            Action::RunStage(stage) => spec::stage_kind(*stage),
            Action::OpenRound(_) => spec::ROUND.to_string(),
            Action::Vote => spec::BALLOT.to_string(),
            Action::Reassign(stage, _) => spec::assign_kind(*stage),
            Action::Stop => return,
            _ => spec::OUTCOME.to_string(),
        };
        if !self.nodes[node].started.insert((job, part.clone())) {
            return;
        }
        let now = self.now;
        let body = match action {
            Action::Answer | Action::RunStage(_) => {
                let range = self.config.model_ms.clone();
                let took = if range.start >= range.end { range.start } else { self.rng.random_range(range) };
                return self.at(took, Event::ModelDone { node, job, part });
            }
            Action::OpenRound(round) => serde_json::to_vec(&round),
            Action::Reassign(_, assignment) => serde_json::to_vec(&assignment),
            Action::Vote => return self.vote(node, job, spec, facts),
            Action::Conclude { absent } => {
                match count_council(job, spec, facts, &absent, &self.engine, now) {
                    Ok(mut count) => {
                        if let (Some(winner), Some(round)) = (count.winner, &facts.round) {
                            count.outcome.answer =
                                facts.candidate_of(&round.candidates[winner]).map(|o| o.text.clone());
                            count.outcome.curation = Some(Curation::Select.as_str().into());
                        }
                        count.outcome.contributions = count.contributions;
                        serde_json::to_vec(&count.outcome)
                    }
                    Err(error) => {
                        serde_json::to_vec(&ended(spec, now, "failed", Some(error.to_string()), Vec::new()))
                    }
                }
            }
            Action::FinishPipeline => serde_json::to_vec(&pipeline_outcome(spec, facts, now)),
            Action::Fail { reason, missing } => {
                serde_json::to_vec(&ended(spec, now, "failed", Some(reason), missing))
            }
            Action::ConfirmCancel => serde_json::to_vec(&ended(spec, now, "cancelled", None, Vec::new())),
            Action::Stop => return,
        };
        if let Ok(body) = body {
            self.write(node, job, &part, body);
        }
    }

    /// Ranks the round's candidates by word overlap and casts a signed
    /// ballot, as a voter without a scoring model does.
    fn vote(&mut self, node: usize, job: JobId, spec: &JobSpec, facts: &Facts) {
        let Some(round) = &facts.round else { return };
        let texts: Vec<&str> = round
            .candidates
            .iter()
            .map(|peer| facts.candidate_of(peer).map_or("", |o| o.text.as_str()))
            .collect();
        let ranking = rank_by_scores(&lexical_agreement(&texts));
        let voter = self.nodes[node].id;
        let ballot = Ballot { job, voter, rule: spec.rule, choice: BallotChoice::Rank(ranking), weight: 1 };
        let Ok(envelope) = seal(&self.nodes[node].identity, self.now, self.now, &ballot) else { return };
        if let Ok(bytes) = encode_message(&envelope) {
            self.write(node, job, spec::BALLOT, bytes);
        }
    }

    /// After the run: quiet repair rounds until every live replica agrees
    /// (or a bound), without loss or partition.
    fn settle(&mut self) {
        self.config.loss = 0.0;
        self.config.partition = None;
        for _ in 0..20 {
            for node in 0..self.nodes.len() {
                if self.nodes[node].alive {
                    self.nodes[node].machine.handle(Input::Tick, self.now);
                    self.pump(node);
                }
            }
            while let Some(Reverse(next)) = self.queue.pop() {
                if matches!(next.event, Event::Tick { .. } | Event::Submit { .. }) {
                    continue;
                }
                self.now = next.at;
                self.step(next.event);
            }
        }
    }

    fn report(mut self) -> JobSimReport {
        let mut report = JobSimReport {
            nodes: self.config.nodes,
            seed: self.config.seed,
            jobs: self.config.jobs,
            requests_sent: self.sent,
            requests_lost: self.lost,
            virtual_secs: (self.now - EPOCH_MS) as f64 / 1_000.0,
            ..JobSimReport::default()
        };
        let mut times = Vec::new();
        let asked = self.asked.clone();
        for (job, asker, at) in asked {
            let outcome = self.nodes[asker]
                .machine
                .jobs()
                .view(job)
                .ok()
                .and_then(|view| Facts::read(job, &view.contributions).outcome);
            match outcome {
                Some(outcome) if outcome.status == "done" => {
                    report.done += 1;
                    if let Some(done) = self.finished.get(&job) {
                        times.push(done - at);
                    }
                    if let Some(violation) = self.recheck(job, &outcome) {
                        report.violations.push(violation);
                    }
                }
                Some(outcome) => match outcome.error {
                    Some(reason) if !reason.is_empty() => *report.failed.entry(reason).or_default() += 1,
                    _ => {
                        report.violations.push(format!("job {job} ended {} without a reason", outcome.status))
                    }
                },
                None => {
                    report.unfinished += 1;
                    report.violations.push(format!("job {job} has no outcome at its asker"));
                }
            }
            report.violations.extend(self.check_replicas(job));
        }
        times.sort_unstable();
        let pick = |p: f64| times.get(((times.len() as f64 - 1.0) * p).round() as usize).copied();
        (report.job_p50_ms, report.job_p99_ms) = (pick(0.5), pick(0.99));
        for node in &self.nodes {
            let stats = node.machine.commit_stats();
            report.flushes += stats.flushes;
            report.released_per_flush += stats.released as f64;
        }
        report.released_per_flush /= report.flushes.max(1) as f64;
        report
    }

    /// Every contribution a live author saw acknowledged is on every live
    /// participant, and the live participants agree.
    fn check_replicas(&mut self, job: JobId) -> Vec<String> {
        let mut violations = Vec::new();
        let live: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].alive).collect();
        let acknowledged: Vec<(String, NodeId)> = live
            .iter()
            .flat_map(|i| {
                let author = self.nodes[*i].id;
                self.nodes[*i]
                    .acknowledged
                    .iter()
                    .filter(|(j, _)| *j == job)
                    .map(move |(_, k)| (k.clone(), author))
            })
            .collect();
        let mut held: Vec<(usize, HashSet<(String, NodeId)>)> = Vec::new();
        for i in live {
            let Ok(view) = self.nodes[i].machine.jobs().view(job) else { continue };
            let facts = Facts::read(job, &view.contributions);
            let Some(spec) = facts.spec else { continue };
            let me = self.nodes[i].id;
            if !spec.participants.contains(&me) && !spec.stages.contains(&me) {
                continue;
            }
            held.push((i, view.contributions.iter().map(|c| (c.kind.clone(), c.author)).collect()));
        }
        for (i, kinds) in &held {
            for (kind, author) in &acknowledged {
                if !kinds.contains(&(kind.clone(), *author)) {
                    violations.push(format!("job {job}: node {i} lacks {kind} acknowledged by {author}"));
                }
            }
        }
        if let Some((first, kinds)) = held.first() {
            for (i, other) in &held[1..] {
                if other != kinds {
                    violations.push(format!("job {job}: nodes {first} and {i} hold different contributions"));
                }
            }
        }
        violations
    }

    /// Re-counts a council outcome from its ballot file alone, as `hivemesh
    /// tally` does; `Some` describes a mismatch.
    fn recheck(&self, job: JobId, outcome: &spec::Outcome) -> Option<String> {
        let file = outcome.ballot_file.as_ref()?;
        let parse_ids = |key: &str| -> Vec<NodeId> {
            file[key]
                .as_array()
                .map(|ids| {
                    ids.iter().filter_map(|v| v.as_str()?.parse::<libp2p::PeerId>().ok()).collect::<Vec<_>>()
                })
                .unwrap_or_default()
                .iter()
                .filter_map(|p| NodeId::from_peer_id(p).ok())
                .collect()
        };
        let (candidates, eligible) = (parse_ids("candidates"), parse_ids("eligible"));
        let envelopes: Vec<Envelope> = file["ballots"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter_map(|h| hex::decode(h.as_str()?).ok())
                    .filter_map(|b| decode_message(&b).ok())
                    .collect()
            })
            .unwrap_or_default();
        let spec = BallotSpec {
            job,
            rule: TallyRule::Schulze,
            candidates: candidates.len() as u32,
            eligible,
            quorum: Quorum::AtLeast(QUORUM),
        };
        let counted = validate(&spec, &envelopes);
        let winner = match self.engine.tally(&counted.input).0 {
            Ok(tally) => tally.winner.and_then(|w| candidates.get(w as usize)).map(|c| c.to_string()),
            Err(error) => return Some(format!("job {job}: its ballot file does not re-count: {error}")),
        };
        (winner != outcome.winner).then(|| {
            format!(
                "job {job}: the ballot file re-counts to {winner:?}, the outcome says {:?}",
                outcome.winner
            )
        })
    }
}
