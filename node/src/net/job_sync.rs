//! The driver's side of job sync: it moves bytes between libp2p and the
//! job task (`super::job_task`), which runs the sans-IO machine
//! (`crate::replica::sync`, ADR 0021). The driver decodes a peer's job
//! request and keeps its response channel; the task verifies and applies
//! it. Token frames, which are not state, stay here.

use hivemesh_protocol::NodeId;
use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;

use super::driver::Driver;
use super::job_task::{FromJobs, ToJobs};
use super::replication::Pending;
use crate::replica::sync::{Input, JobRequest, RequestId};
use crate::replica::{JobFrame, StateRequest, StateResponse};

impl Driver {
    /// Streams a frame to the asker (delivered locally when that is us).
    pub(super) fn send_frame_to(&mut self, to: NodeId, frame: JobFrame) {
        if to == self.replica().me() {
            let _ = self.job_frames.send(frame);
        } else if let Ok(peer) = to.to_peer_id() {
            self.send_state(peer, &StateRequest::JobFrame(frame), Pending::Unanswered);
        }
    }

    /// A peer's push, sync message or token frame for a job.
    pub(super) fn answer_job_request(
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
        let token = self.owe_response(channel);
        self.feed_jobs(Input::Request { from, request, token });
    }

    /// The answer to a job request the machine sent (`None`: it failed).
    pub(super) fn on_job_response(&mut self, id: RequestId, response: Option<StateResponse>) {
        self.feed_jobs(Input::Response { id, response });
    }

    /// Anti-entropy for job documents: repair rounds, compaction.
    pub(super) fn job_sync_tick(&mut self) {
        self.feed_jobs(Input::Tick);
    }

    /// A member's liveness, as the machine picks repair and retry peers.
    pub(super) fn job_member(&mut self, node: NodeId, live: bool) {
        self.feed_jobs(if live { Input::MemberUp(node) } else { Input::MemberGone(node) });
    }

    fn feed_jobs(&mut self, input: Input) {
        if self.jobs.to.send(ToJobs::Machine(input)).is_err() {
            tracing::error!("the job task has stopped; job requests are dropped");
        }
    }

    /// What the job task asks of the network.
    pub(super) fn on_from_jobs(&mut self, message: FromJobs) {
        match message {
            FromJobs::Send { to, id, request } => self.send_job_request(to, id, &request),
            FromJobs::Respond { token, response } => self.respond_owed(token, &response),
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
}

fn refused(reason: &str) -> StateResponse {
    StateResponse::Refused(reason.to_string())
}
