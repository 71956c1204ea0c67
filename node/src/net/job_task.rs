//! The job sync machine on its own task (ADR 0021): the signatures in a
//! peer's changes are verified here, as each change is accepted, and never
//! on the swarm task. The task takes the node's own job commands straight
//! from its clients and the peers' requests from the driver; it hands the
//! driver only bytes to send and responses to give, keeps the local
//! writers' reply channels, announces each durable change to subscribers
//! and the shared per-job state, and runs the flushes the machine asks for
//! on a blocking thread.

use std::collections::HashMap;

use hivemesh_protocol::{JobId, NodeId};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::driver::unix_ms;
use super::dto::StatusReport;
use super::job_cache::JobCache;
use crate::replica::sync::{Input, JobSync, Output, RequestId, Token};
use crate::replica::{JobChanged, JobError, JobView, StateRequest, StateResponse, Store};

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
    /// Known jobs, newest first: (id, created, finished).
    List {
        limit: usize,
        reply: oneshot::Sender<Vec<(JobId, u64, Option<u64>)>>,
    },
}

/// From the driver to the job task.
pub(super) enum ToJobs {
    /// A machine input from the network side: a peer's request (its token
    /// names the driver's response channel), an answer, a member event, a
    /// tick.
    Machine(Input),
    /// Fill in the job counters of a status report and answer it.
    Status(Box<StatusReport>, oneshot::Sender<StatusReport>),
}

/// From the job task to the driver.
pub(super) enum FromJobs {
    /// Send `request` to `to`; answer with `Input::Response` and `id`.
    Send { to: NodeId, id: RequestId, request: StateRequest },
    /// Answer the peer's request behind `token`.
    Respond { token: Token, response: StateResponse },
}

/// The driver's ends of the job task's channels.
pub(super) struct JobLink {
    pub to: mpsc::UnboundedSender<ToJobs>,
    pub from: mpsc::UnboundedReceiver<FromJobs>,
}

pub(super) struct JobTask {
    machine: JobSync,
    store: Store,
    commands: mpsc::Receiver<JobCommand>,
    inputs: mpsc::UnboundedReceiver<ToJobs>,
    driver: mpsc::UnboundedSender<FromJobs>,
    replies: HashMap<Token, oneshot::Sender<Result<(), JobError>>>,
    next_token: u64,
    events: broadcast::Sender<JobChanged>,
    cache: JobCache,
    flush_done: mpsc::UnboundedSender<bool>,
    flushed: mpsc::UnboundedReceiver<bool>,
}

impl JobTask {
    /// The task and the driver's link to it. It stops when the driver drops
    /// its link.
    pub(super) fn new(
        machine: JobSync,
        store: Store,
        commands: mpsc::Receiver<JobCommand>,
        events: broadcast::Sender<JobChanged>,
        cache: JobCache,
    ) -> (Self, JobLink) {
        let (to, inputs) = mpsc::unbounded_channel();
        let (driver, from) = mpsc::unbounded_channel();
        let (flush_done, flushed) = mpsc::unbounded_channel();
        let task = Self {
            machine,
            store,
            commands,
            inputs,
            driver,
            replies: HashMap::new(),
            next_token: 0,
            events,
            cache,
            flush_done,
            flushed,
        };
        (task, JobLink { to, from })
    }

    pub(super) async fn run(mut self) {
        loop {
            tokio::select! {
                input = self.inputs.recv() => match input {
                    Some(ToJobs::Machine(input)) => self.machine.handle(input, unix_ms()),
                    Some(ToJobs::Status(mut report, reply)) => {
                        report.replication.jobs = self.machine.jobs().stats();
                        report.replication.commit = self.machine.commit_stats().clone();
                        let _ = reply.send(*report);
                    }
                    None => return,
                },
                Some(command) = self.commands.recv() => self.on_command(command),
                Some(durable) = self.flushed.recv() => {
                    self.machine.handle(Input::Flushed { durable }, unix_ms());
                }
            }
            self.apply_outputs();
        }
    }

    fn on_command(&mut self, command: JobCommand) {
        let now = unix_ms();
        match command {
            JobCommand::Open { job, peers, reply } => {
                let token = self.owe(reply);
                self.machine.handle(Input::Open { job, peers, token }, now);
            }
            JobCommand::Create { job, peers, kind, body, reply } => {
                let token = self.owe(reply);
                self.machine.handle(Input::Create { job, peers, kind, body, token }, now);
            }
            JobCommand::Contribute { job, kind, body, reply } => {
                let token = self.owe(reply);
                self.machine.handle(Input::Contribute { job, kind, body, token }, now);
            }
            JobCommand::View { job, reply } => {
                let _ = reply.send(self.machine.jobs().view(job));
            }
            JobCommand::List { limit, reply } => {
                let _ = reply.send(self.machine.jobs().list(limit));
            }
        }
    }

    fn owe(&mut self, reply: oneshot::Sender<Result<(), JobError>>) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        self.replies.insert(token, reply);
        token
    }

    /// Carries out what the machine produced.
    fn apply_outputs(&mut self) {
        for output in self.machine.drain() {
            match output {
                Output::Send { to, id, request } => {
                    let _ = self.driver.send(FromJobs::Send { to, id, request });
                }
                Output::Respond { token, response } => {
                    let _ = self.driver.send(FromJobs::Respond { token, response });
                }
                Output::Reply { token, result, .. } => {
                    if let Some(reply) = self.replies.remove(&token) {
                        let _ = reply.send(result);
                    }
                }
                Output::Changed(change) => {
                    self.cache.put(&change.view);
                    let _ = self.events.send(change);
                }
                Output::Compacted(job) => self.cache.forget(&job),
                Output::Flush => self.start_flush(),
            }
        }
    }

    /// Flushes the store on a blocking thread; the task hears back.
    fn start_flush(&mut self) {
        let (store, done) = (self.store.clone(), self.flush_done.clone());
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
