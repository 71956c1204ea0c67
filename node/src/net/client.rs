//! The handle to a running node's driver: commands in, answers and pushed
//! events out.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::driver::{Channels, Command};
use super::dto::{MembersReport, StatusReport};
use super::job_cache::JobCache;
use super::job_task::JobCommand;
use crate::membership::MemberEvent;
use crate::replica::{JobChanged, JobError, JobFrame, JobView, Profile, ViewKind, ViewReport};
use hivemesh_protocol::{JobId, NodeId};

/// Why a request to the driver failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The driver task has ended (the node left, was killed or panicked).
    #[error("the node has stopped")]
    Stopped,
    /// [`NodeClient::set_allowed_peers`] on a node started without one.
    #[error("the node runs without --allow-peers: there is no allowlist to change")]
    NoAllowlist,
    /// The registry refused a new advertisement, or it could not be stored.
    #[error("replication: {0}")]
    Replication(#[from] crate::replica::PublishError),
    /// A job command failed (unknown job, limits, storage).
    #[error(transparent)]
    Job(#[from] JobError),
}

/// A cheap, cloneable way to ask a node things (the HTTP API uses one).
#[derive(Clone)]
pub struct NodeClient {
    commands: mpsc::Sender<Command>,
    /// Straight to the job task, which runs the job sync machine.
    job_commands: mpsc::Sender<JobCommand>,
    events: broadcast::Sender<MemberEvent>,
    job_events: broadcast::Sender<JobChanged>,
    job_frames: broadcast::Sender<JobFrame>,
    job_cache: JobCache,
    streams: libp2p_stream::Control,
}

impl NodeClient {
    pub async fn members(&self) -> Result<MembersReport, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Members(tx)).await.map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Status(tx)).await.map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// `node`'s verified registry entry as this node holds it (`None`: none
    /// held). Cheap: one lookup, no report built.
    pub async fn registry_entry(
        &self,
        node: NodeId,
    ) -> Result<Option<hivemesh_protocol::PeerEntry>, ClientError> {
        self.command(|tx| Command::RegistryEntry(node, tx)).await
    }

    /// The cluster as `kind` sees it; `None` for the node's active view.
    pub async fn view(&self, kind: Option<ViewKind>) -> Result<ViewReport, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::View(kind, tx)).await.map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// Replaces what this node advertises; resolves once the new entry is
    /// durable and on its way to every live member.
    pub async fn advertise(&self, profile: Profile) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Advertise(profile, tx)).await.map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)?.map_err(ClientError::Replication)
    }

    /// Starts holding `job` and replicating it with `peers`.
    pub async fn open_job(&self, job: JobId, peers: Vec<NodeId>) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.job_command(JobCommand::Open { job, peers, reply }, rx).await
    }

    /// Like [`NodeClient::open_job`] without waiting for durability: the
    /// command is queued ahead of anything sent after it, so a contribution
    /// from work started next is pushed to these peers too. Only when the
    /// queue is full does it go behind (sent by a task), and then the job's
    /// sync rounds carry what a push missed.
    pub fn open_job_queued(&self, job: JobId, peers: Vec<NodeId>) {
        let (reply, _) = oneshot::channel();
        let command = JobCommand::Open { job, peers, reply };
        if let Err(mpsc::error::TrySendError::Full(command)) = self.job_commands.try_send(command) {
            let commands = self.job_commands.clone();
            tokio::spawn(async move { commands.send(command).await });
        }
    }

    /// Opens `job` with `peers` and signs this node's first contribution to
    /// it, in one step; resolves once both are durable and the contribution
    /// is on its way to the peers.
    pub async fn create_job(
        &self,
        job: JobId,
        peers: Vec<NodeId>,
        kind: &str,
        body: Vec<u8>,
    ) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        let kind = kind.to_string();
        self.job_command(JobCommand::Create { job, peers, kind, body, reply }, rx).await
    }

    /// Signs and stores this node's `kind` contribution to `job`; resolves once
    /// it is durable and on its way to the job's peers.
    pub async fn contribute(&self, job: JobId, kind: &str, body: Vec<u8>) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.job_command(JobCommand::Contribute { job, kind: kind.to_string(), body, reply }, rx).await
    }

    /// Every verified contribution to `job`: from the shared per-job state
    /// when the job changed while held, else read by the driver from memory
    /// or sled.
    pub async fn job(&self, job: JobId) -> Result<Arc<JobView>, ClientError> {
        if let Some(view) = self.job_cache.get(&job) {
            return Ok(view);
        }
        let (reply, rx) = oneshot::channel();
        self.job_command(JobCommand::View { job, reply }, rx).await.map(Arc::new)
    }

    /// Known jobs, newest first: (id, created ms, finished ms).
    pub async fn jobs(&self, limit: usize) -> Result<Vec<(JobId, u64, Option<u64>)>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.job_commands.send(JobCommand::List { limit, reply }).await.map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// Sends streamed text of a job to `to` (the asker); best effort.
    pub async fn send_frame(&self, to: NodeId, frame: JobFrame) -> Result<(), ClientError> {
        self.commands.send(Command::Frame { to, frame }).await.map_err(|_| ClientError::Stopped)
    }

    /// Like `send_frame`, from synchronous code: a full command queue drops
    /// the frame (the signed output in the document is what counts).
    pub fn try_send_frame(&self, to: NodeId, frame: JobFrame) {
        let _ = self.commands.try_send(Command::Frame { to, frame });
    }

    /// Streamed text arriving for jobs this node asked.
    /// Opens raw streams to peers (the gateway, ADR 0020).
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    pub fn job_frames(&self) -> broadcast::Receiver<JobFrame> {
        self.job_frames.subscribe()
    }

    /// Each durable change to a job document (local or from peers): the
    /// job as it now stands and the contributions the change brought.
    pub fn job_changes(&self) -> broadcast::Receiver<JobChanged> {
        self.job_events.subscribe()
    }

    /// Members coming up, going down, leaving, renamed (typed SWIM events).
    pub fn member_events(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    /// Sends one command and waits for its answer.
    pub(super) async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    async fn job_command<T>(
        &self,
        command: JobCommand,
        rx: oneshot::Receiver<Result<T, JobError>>,
    ) -> Result<T, ClientError> {
        self.job_commands.send(command).await.map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)?.map_err(ClientError::Job)
    }

    /// Replaces the allowlist (a SIGHUP reload): peers no longer on it are
    /// disconnected at once. `NoAllowlist` when the node started without one.
    pub async fn set_allowed_peers(&self, peers: HashSet<PeerId>) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::SetAllowed(peers, tx)).await.map_err(|_| ClientError::Stopped)?;
        if rx.await.map_err(|_| ClientError::Stopped)? { Ok(()) } else { Err(ClientError::NoAllowlist) }
    }

    /// Resolves once the node's driver has stopped (it left, was killed or
    /// panicked): open streams use it to end with an error, not a cut.
    pub async fn stopped(&self) {
        self.commands.closed().await;
    }

    /// Asks the node to leave; resolves once it has stopped.
    pub async fn leave(&self, deadline: Duration) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Leave { deadline, done: tx }).await.map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }
}

impl NodeClient {
    /// A client, the driver's ends of its channels and the job task's:
    /// commands (64 queued), job commands (256), member events (1024), job
    /// changes and job frames (4096 each).
    pub(super) fn with_channels(streams: libp2p_stream::Control) -> (Self, Channels, JobChannels) {
        let (commands, commands_rx) = mpsc::channel(64);
        let (job_commands, job_commands_rx) = mpsc::channel(256);
        let (events, _) = broadcast::channel(1024);
        let (job_events, _) = broadcast::channel(4096);
        let (job_frames, _) = broadcast::channel(4096);
        let job_cache = JobCache::default();
        let client = Self {
            commands,
            job_commands,
            events: events.clone(),
            job_events: job_events.clone(),
            job_frames: job_frames.clone(),
            job_cache: job_cache.clone(),
            streams,
        };
        let channels = Channels { commands: commands_rx, events, job_frames };
        (client, channels, JobChannels { commands: job_commands_rx, events: job_events, cache: job_cache })
    }
}

/// The job task's ends of a client's channels.
pub(super) struct JobChannels {
    pub commands: mpsc::Receiver<JobCommand>,
    /// Each durable change to a job, with what it brought.
    pub events: broadcast::Sender<JobChanged>,
    /// The per-job state the task keeps current for every reader.
    pub cache: JobCache,
}
