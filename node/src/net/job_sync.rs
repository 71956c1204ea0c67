//! The driver's job-document side: local contributions are pushed to the
//! job's peers at once; sync rounds (automerge's protocol over the state
//! request-response, one message per request) repair what a push missed,
//! e.g. after a partition or a restart.

use hivemesh_protocol::{JobId, NodeId};
use libp2p::PeerId;
use tokio::sync::oneshot;

use super::driver::{Driver, unix_ms};
use super::replication::Pending;
use crate::membership::MemberState;
use crate::replica::{JobError, JobFrame, JobView, StateRequest, StateResponse};

/// Most job sync rounds one anti-entropy tick starts, so a node holding many
/// jobs spreads its repair work over several ticks.
const MAX_JOB_SYNCS_PER_TICK: usize = 32;
/// A sync round stops after this many exchanges even if the peers still
/// differ; the next round goes on from there.
const MAX_SYNC_EXCHANGES: u32 = 16;

/// Requests about job documents from the node's own side (API, federation).
pub enum JobCommand {
    /// Hold `job` and replicate it with `peers`.
    Open {
        job: JobId,
        peers: Vec<NodeId>,
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
                let _ = reply.send(self.replica.jobs().open(job, &peers, unix_ms()));
            }
            JobCommand::Contribute { job, kind, body, reply } => {
                let result = self.replica.contribute(job, &kind, body, unix_ms());
                let _ = reply.send(result.map(|(change, peers)| {
                    for peer in peers {
                        self.push_job_change(peer, job, change.clone());
                    }
                }));
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
        self.announce_job_changes();
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

    /// Answers a peer's push or sync message for a job document.
    pub fn answer_job_request(&mut self, peer: &PeerId, request: StateRequest) -> StateResponse {
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
        self.announce_job_changes();
        response
    }

    /// The peer's answer in a sync round we started: apply it and go on
    /// while either side still has something to send.
    pub fn on_job_sync_answer(&mut self, peer: PeerId, job: JobId, exchanges: u32, answer: Option<Vec<u8>>) {
        let Ok(to) = NodeId::from_peer_id(&peer) else { return };
        let next = self.replica.jobs().sync_continue(to, job, answer.as_deref(), unix_ms());
        self.announce_job_changes();
        match next {
            Ok(Some(message)) if exchanges < MAX_SYNC_EXCHANGES => {
                let request = StateRequest::JobSync { job, first: false, message };
                self.send_state(peer, &request, Pending::JobSync { job, exchanges: exchanges + 1 });
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
        self.replica.compact_finished_jobs(unix_ms());
    }

    /// Tells subscribers which job documents changed.
    pub fn announce_job_changes(&mut self) {
        for job in self.replica.jobs().take_changed() {
            let _ = self.job_events.send(job);
        }
    }
}

fn random_index(len: usize) -> usize {
    (getrandom::u64().unwrap_or_else(|_| unix_ms()) % len.max(1) as u64) as usize
}
