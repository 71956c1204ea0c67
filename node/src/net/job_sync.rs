//! The driver's side of job sync: it moves bytes between libp2p and the
//! sans-IO machine (`crate::replica::sync`, ADR 0021), keeps the reply
//! channels the machine's tokens name, runs the flushes it asks for on a
//! blocking thread, and announces job changes to subscribers and the
//! shared per-job state.

use hivemesh_protocol::{JobId, NodeId};
use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;
use tokio::sync::oneshot;

use super::driver::{Driver, unix_ms};
use super::replication::Pending;
use crate::replica::sync::{Input, JobRequest, Output, RequestId, Token};
use crate::replica::{JobError, JobFrame, JobView, StateRequest, StateResponse};

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

/// What a machine token stands for: a local writer waiting for its reply,
/// or a peer waiting for the response to its request.
pub(super) enum Owed {
    Reply(oneshot::Sender<Result<(), JobError>>),
    Respond(ResponseChannel<Vec<u8>>),
}

impl Driver {
    pub fn on_job_command(&mut self, command: JobCommand) {
        let now = unix_ms();
        match command {
            JobCommand::Open { job, peers, reply } => {
                let token = self.owe(Owed::Reply(reply));
                self.jobs.handle(Input::Open { job, peers, token }, now);
            }
            JobCommand::Create { job, peers, kind, body, reply } => {
                let token = self.owe(Owed::Reply(reply));
                self.jobs.handle(Input::Create { job, peers, kind, body, token }, now);
            }
            JobCommand::Contribute { job, kind, body, reply } => {
                let token = self.owe(Owed::Reply(reply));
                self.jobs.handle(Input::Contribute { job, kind, body, token }, now);
            }
            JobCommand::View { job, reply } => {
                let _ = reply.send(self.jobs.jobs().view(job));
            }
            JobCommand::Frame { to, frame } => {
                if to == self.replica().me() {
                    let _ = self.job_frames.send(frame);
                } else if let Ok(peer) = to.to_peer_id() {
                    self.send_state(peer, &StateRequest::JobFrame(frame), Pending::Unanswered);
                }
            }
            JobCommand::List { limit, reply } => {
                let _ = reply.send(self.jobs.jobs().list(limit));
            }
        }
        self.apply_job_outputs();
    }

    /// A peer's push, sync message or token frame for a job.
    pub fn answer_job_request(
        &mut self,
        peer: &PeerId,
        request: StateRequest,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let Ok(from) = NodeId::from_peer_id(peer) else {
            return self.respond_state(channel, &refused("job requests need an ed25519 peer id"));
        };
        let request = match request {
            StateRequest::JobPush { job, changes } => JobRequest::Push { job, changes },
            StateRequest::JobSync { job, first, message } => JobRequest::Sync { job, first, message },
            StateRequest::JobFrame(frame) if frame.peer == peer.to_string() => {
                let _ = self.job_frames.send(frame);
                let ack = StateResponse::Ack { accepted: 1, rejected: Vec::new() };
                return self.respond_state(channel, &ack);
            }
            StateRequest::JobFrame(_) => {
                return self.respond_state(channel, &refused("a frame must name its sender as its peer"));
            }
            _ => return self.respond_state(channel, &refused("not a job request")),
        };
        let token = self.owe(Owed::Respond(channel));
        self.jobs.handle(Input::Request { from, request, token }, unix_ms());
        self.apply_job_outputs();
    }

    /// The answer to a job request the machine sent (`None`: it failed).
    pub(super) fn on_job_response(&mut self, id: RequestId, response: Option<StateResponse>) {
        self.jobs.handle(Input::Response { id, response }, unix_ms());
        self.apply_job_outputs();
    }

    /// Anti-entropy for job documents: repair rounds, compaction.
    pub fn job_sync_tick(&mut self) {
        self.jobs.handle(Input::Tick, unix_ms());
        self.apply_job_outputs();
    }

    /// A member's liveness, as the machine picks repair and retry peers.
    pub(super) fn job_member(&mut self, node: NodeId, live: bool) {
        let input = if live { Input::MemberUp(node) } else { Input::MemberGone(node) };
        self.jobs.handle(input, unix_ms());
    }

    /// The flush the machine asked for finished.
    pub(super) fn on_flushed(&mut self, durable: bool) {
        self.jobs.handle(Input::Flushed { durable }, unix_ms());
        self.apply_job_outputs();
    }

    fn owe(&mut self, owed: Owed) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        self.owed.insert(token, owed);
        token
    }

    /// Carries out what the machine produced.
    fn apply_job_outputs(&mut self) {
        for output in self.jobs.drain() {
            match output {
                Output::Send { to, id, request } => self.send_job_request(to, id, &request),
                Output::Reply { token, result, .. } => {
                    if let Some(Owed::Reply(reply)) = self.owed.remove(&token) {
                        let _ = reply.send(result);
                    }
                }
                Output::Respond { token, response } => {
                    if let Some(Owed::Respond(channel)) = self.owed.remove(&token) {
                        self.respond_state(channel, &response);
                    }
                }
                Output::Changed(change) => {
                    self.job_cache.put(&change.view);
                    let _ = self.job_events.send(change);
                }
                Output::Compacted(job) => self.job_cache.forget(&job),
                Output::Flush => self.start_flush(),
            }
        }
    }

    /// Sends to the member's current addresses (SWIM's, not only those a
    /// dial may still be trying).
    fn send_job_request(&mut self, to: NodeId, id: RequestId, request: &StateRequest) {
        let member = self.membership.members().into_iter().find(|m| m.id.node == to).map(|m| m.id);
        let peer = match &member {
            Some(member) => self.peer_of(member),
            None => to.to_peer_id().ok(),
        };
        match peer {
            Some(peer) => self.send_state(peer, request, Pending::Job(id)),
            None => self.on_job_response(id, None),
        }
    }

    /// Flushes the store on a blocking thread; the loop hears back.
    fn start_flush(&mut self) {
        let (store, done) = (self.replica().store().clone(), self.flush_done.clone());
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let durable = match store.flush() {
                Ok(()) => true,
                Err(error) => {
                    tracing::error!(%error, "flushing the store failed; writes waiting on it are refused");
                    false
                }
            };
            tracing::debug!(took_us = started.elapsed().as_micros() as u64, "group commit flushed");
            let _ = done.send(durable);
        });
    }
}

fn refused(reason: &str) -> StateResponse {
    StateResponse::Refused(reason.to_string())
}
