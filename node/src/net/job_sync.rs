//! The driver's job-document side: local contributions are pushed to the
//! job's peers as soon as they are durable; sync rounds (automerge's
//! protocol over the state request-response, one message per request)
//! repair what a push missed, e.g. after a partition or a restart.
//!
//! Every write here is released (replied to, acknowledged to the peer,
//! pushed) only after the group commit's next flush (ADR 0021,
//! `super::commit`). A peer's change is announced to this node's own
//! subscribers at once: anything they write in turn waits for a later
//! flush, which makes the peer's change durable too.

use hivemesh_protocol::{JobId, NodeId};
use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;
use tokio::sync::oneshot;

use super::driver::{Driver, unix_ms};
use super::replication::Pending;
use crate::membership::MemberState;
use crate::replica::{JobChanged, JobError, JobFrame, JobView, StateRequest, StateResponse};

/// Most job sync rounds one anti-entropy tick starts, so a node holding many
/// jobs spreads its repair work over several ticks.
const MAX_JOB_SYNCS_PER_TICK: usize = 32;
/// A sync round stops after this many exchanges even if the peers still
/// differ; the next round goes on from there.
const MAX_SYNC_EXCHANGES: u32 = 16;

/// A change this node wrote, and the peers to push it to.
type Written = (Vec<u8>, Vec<NodeId>);

/// Requests about job documents from the node's own side (API, federation).
pub enum JobCommand {
    /// Hold `job` and replicate it with `peers`.
    Open {
        job: JobId,
        peers: Vec<NodeId>,
        reply: oneshot::Sender<Result<(), JobError>>,
    },
    /// Hold `job` with `peers` and sign, store and push this node's first
    /// contribution to it, in one step (a submission's spec).
    Create {
        job: JobId,
        peers: Vec<NodeId>,
        kind: String,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<(), JobError>>,
    },
    /// Sign, store and push this node's contribution.
    Contribute {
        job: JobId,
        kind: String,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<(), JobError>>,
    },
    View {
        job: JobId,
        reply: oneshot::Sender<Result<JobView, JobError>>,
    },
    /// Stream a frame to the asker (delivered locally when that is us).
    Frame {
        to: NodeId,
        frame: JobFrame,
    },
    /// Known jobs, newest first: (id, created, finished).
    List {
        limit: usize,
        reply: oneshot::Sender<Vec<(JobId, u64, Option<u64>)>>,
    },
}

impl Driver {
    pub fn on_job_command(&mut self, command: JobCommand) {
        match command {
            JobCommand::Open { job, peers, reply } => {
                let opened = self.replica.jobs().open(job, &peers, unix_ms());
                self.reply_when_durable(job, opened.map(|()| Vec::new()), reply);
            }
            JobCommand::Create { job, peers, kind, body, reply } => {
                let now = unix_ms();
                let created = self.replica.jobs().open(job, &peers, now);
                let contributed = created.and_then(|()| self.replica.contribute(job, &kind, body, now));
                self.reply_when_durable(job, contributed.map(|c| vec![c]), reply);
            }
            JobCommand::Contribute { job, kind, body, reply } => {
                let contributed = self.replica.contribute(job, &kind, body, unix_ms());
                self.reply_when_durable(job, contributed.map(|c| vec![c]), reply);
            }
            JobCommand::View { job, reply } => {
                let _ = reply.send(self.replica.jobs().view(job));
            }
            JobCommand::Frame { to, frame } => {
                if to == self.replica.me() {
                    let _ = self.job_frames.send(frame);
                } else if let Ok(peer) = to.to_peer_id() {
                    self.send_state(peer, &StateRequest::JobFrame(frame), Pending::Push);
                }
            }
            JobCommand::List { limit, reply } => {
                let _ = reply.send(self.replica.jobs().list(limit));
            }
        }
    }

    /// Once the write is durable: pushes each change to its peers, tells
    /// subscribers, and replies. A refused write is answered at once.
    fn reply_when_durable(
        &mut self,
        job: JobId,
        written: Result<Vec<Written>, JobError>,
        reply: oneshot::Sender<Result<(), JobError>>,
    ) {
        let changed = self.replica.jobs().take_changed();
        match written {
            Err(error) => {
                self.announce_when_durable(changed);
                let _ = reply.send(Err(error));
            }
            Ok(changes) => self.after_durable(move |driver, durable| {
                if !durable {
                    let _ = reply.send(Err(JobError::NotDurable(job)));
                    return;
                }
                for (change, peers) in changes {
                    for peer in peers {
                        driver.push_job_change(peer, job, change.clone());
                    }
                }
                driver.announce(changed);
                let _ = reply.send(Ok(()));
            }),
        }
    }

    fn push_job_change(&mut self, to: NodeId, job: JobId, changes: Vec<u8>) {
        self.send_job_push(to, job, changes, 0);
    }

    /// Sends one push, after giving the swarm the member's current
    /// addresses (SWIM's, not only those a dial may still be trying).
    pub(super) fn send_job_push(&mut self, to: NodeId, job: JobId, changes: Vec<u8>, attempt: u32) {
        let member = self.membership.members().into_iter().find(|m| m.id.node == to).map(|m| m.id);
        let peer = match &member {
            Some(member) => self.peer_of(member),
            None => to.to_peer_id().ok(),
        };
        let Some(peer) = peer else { return };
        let pending = Pending::JobPush { job, to, changes: changes.clone(), attempt };
        self.send_state(peer, &StateRequest::JobPush { job, changes }, pending);
    }

    /// Answers a peer's push or sync message for a job document: a write
    /// is acknowledged once it is durable, a refusal at once.
    pub fn answer_job_request(
        &mut self,
        peer: &PeerId,
        request: StateRequest,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let response = self.job_response(peer, request);
        let changed = self.replica.jobs().take_changed();
        // This node's own subscribers may act on a peer's change before it
        // is durable here: whatever they write in turn is released only
        // after a later flush, which covers this write too.
        let wrote = !changed.is_empty();
        self.announce(changed);
        if matches!(response, StateResponse::Refused(_)) || !wrote {
            return self.respond(channel, &response);
        }
        self.after_durable(move |driver, durable| {
            if durable {
                driver.respond(channel, &response);
            } else {
                let refused = StateResponse::Refused("the change could not be made durable here".into());
                driver.respond(channel, &refused);
            }
        });
    }

    fn respond(&mut self, channel: ResponseChannel<Vec<u8>>, response: &StateResponse) {
        let bytes = self.replica.encode(response);
        let _ = self.swarm.behaviour_mut().state.send_response(channel, bytes);
    }

    fn job_response(&mut self, peer: &PeerId, request: StateRequest) -> StateResponse {
        let Ok(from) = NodeId::from_peer_id(peer) else {
            return StateResponse::Refused("job requests need an ed25519 peer id".into());
        };
        let now = unix_ms();
        let response = match request {
            StateRequest::JobPush { job, changes } => {
                match self.replica.jobs().apply_push(from, job, &changes, now) {
                    Ok(new) => StateResponse::Ack { accepted: new as u32, rejected: Vec::new() },
                    Err(error) => StateResponse::Refused(error.to_string()),
                }
            }
            StateRequest::JobSync { job, first, message } => {
                match self.replica.jobs().sync_receive(from, job, first, &message, now) {
                    Ok(next) => StateResponse::JobSync(next),
                    Err(error) => StateResponse::Refused(error.to_string()),
                }
            }
            StateRequest::JobFrame(frame) if frame.peer == peer.to_string() => {
                let _ = self.job_frames.send(frame);
                StateResponse::Ack { accepted: 1, rejected: Vec::new() }
            }
            StateRequest::JobFrame(_) => {
                StateResponse::Refused("a frame must name its sender as its peer".into())
            }
            _ => StateResponse::Refused("not a job request".into()),
        };
        if let StateResponse::Refused(reason) = &response {
            tracing::debug!(%peer, %reason, "refused a job request");
        }
        response
    }

    /// The peer's answer in a sync round we started: apply it and go on
    /// while either side still has something to send.
    pub fn on_job_sync_answer(&mut self, peer: PeerId, job: JobId, exchanges: u32, answer: Option<Vec<u8>>) {
        let Ok(to) = NodeId::from_peer_id(&peer) else { return };
        let next = self.replica.jobs().sync_continue(to, job, answer.as_deref(), unix_ms());
        let changed = self.replica.jobs().take_changed();
        self.announce(changed);
        match next {
            Ok(Some(message)) if exchanges < MAX_SYNC_EXCHANGES => {
                self.after_durable(move |driver, durable| {
                    if durable {
                        let request = StateRequest::JobSync { job, first: false, message };
                        driver.send_state(peer, &request, Pending::JobSync { job, exchanges: exchanges + 1 });
                    }
                })
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%peer, %job, %error, "job sync round failed"),
        }
    }

    /// Starts sync rounds for up to `MAX_JOB_SYNCS_PER_TICK` jobs, each with
    /// one random live peer of that job; then compacts finished jobs.
    pub fn job_sync_tick(&mut self) {
        let live: std::collections::HashSet<NodeId> = self
            .membership
            .members()
            .iter()
            .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
            .map(|m| m.id.node)
            .collect();
        let mut targets = self.replica.jobs().repair_targets();
        let start = random_index(targets.len());
        targets.rotate_left(start);
        let mut started = 0;
        for (job, peers) in targets {
            if started == MAX_JOB_SYNCS_PER_TICK {
                break;
            }
            let live_peers: Vec<NodeId> = peers.into_iter().filter(|p| live.contains(p)).collect();
            if live_peers.is_empty() {
                continue;
            }
            let to = live_peers[random_index(live_peers.len())];
            let (Ok(peer), Some(message)) = (to.to_peer_id(), self.replica.jobs().sync_start(to, job)) else {
                continue;
            };
            self.send_state(
                peer,
                &StateRequest::JobSync { job, first: true, message },
                Pending::JobSync { job, exchanges: 1 },
            );
            started += 1;
        }
        for job in self.replica.compact_finished_jobs(unix_ms()) {
            self.job_cache.forget(&job);
        }
    }

    /// Announces `changed` once what is written so far is durable.
    fn announce_when_durable(&mut self, changed: Vec<JobChanged>) {
        if !changed.is_empty() {
            self.after_durable(move |driver, _| driver.announce(changed));
        }
    }

    /// Tells subscribers what changed in which job, and keeps the shared
    /// per-job state current.
    fn announce(&mut self, changed: Vec<JobChanged>) {
        for change in changed {
            self.job_cache.put(&change.view);
            let _ = self.job_events.send(change);
        }
    }
}

fn random_index(len: usize) -> usize {
    (getrandom::u64().unwrap_or_else(|_| unix_ms()) % len.max(1) as u64) as usize
}
