//! Registry replication as a sans-IO state machine (ADR 0021): this node's
//! signed entry pushed to every live member, anti-entropy rounds with one
//! random live member (a digest of versions answered by a reconciliation,
//! Demers et al. 1987, "Epidemic algorithms for replicated database
//! maintenance", push-pull), equivocation proofs gossiped on each round,
//! and the gathering of peers' member lists for a majority view.
//!
//! Inputs are member events, peers' registry requests, the answers to this
//! machine's requests, ticks, view requests and finished flushes; outputs
//! are requests to send, responses owed, gathered views and flushes to run.
//! The machine owns the [`Replica`] (registry and store) and no socket,
//! task or clock; it writes sled but never flushes it: like the job sync
//! machine it asks for an [`Output::Flush`] and acknowledges accepted
//! entries only after [`Input::Flushed`] (group commit), so no fsync runs
//! on the task that owns the sockets. The driver (`crate::net`) moves
//! bytes.

use std::collections::{BTreeMap, HashMap};

use hivemesh_crdt::majority::{Entry, parse_views};
use hivemesh_protocol::{Envelope, NodeId};

use super::evidence::MAX_PROOFS_PER_MESSAGE;
use super::sync::{RequestId, Token};
use super::{Profile, PublishError, Replica, StateRequest, StateResponse};
use crate::membership::MemberId;

/// A registry request from a peer.
#[derive(Debug, Clone)]
pub enum RegistryRequest {
    /// Entries the peer wants this node to hold.
    Push(Vec<Envelope>),
    /// The peer's versions, for a reconciliation.
    Digest(hivemesh_crdt::registry::Digest),
}

/// What the registry machine is told; see [`RegistrySync::handle`].
#[derive(Debug)]
pub enum Input {
    /// A member is alive (up, refuted or restarted): it gets this node's
    /// entry and an anti-entropy round at once, so a restarted node catches
    /// up without waiting for the next tick.
    MemberUp(MemberId),
    /// A member is down or left.
    MemberGone(NodeId),
    /// A peer's request; answered with [`Output::Respond`].
    Request { from: NodeId, request: RegistryRequest, token: Token },
    /// The answer to a request this machine sent; `None` when it failed.
    Response { id: RequestId, response: Option<StateResponse> },
    /// One anti-entropy round with a random live member.
    Tick,
    /// Ask every live member for its member list; `own` is this node's.
    /// Answered with [`Output::Views`] once every member answered or failed.
    CollectViews { own: Vec<Entry>, token: Token },
    /// The flush asked for by the last [`Output::Flush`] finished.
    Flushed { durable: bool },
}

/// What the registry machine asks of its driver, in order; see
/// [`RegistrySync::drain`].
#[derive(Debug)]
pub enum Output {
    /// Send `request` to `to` (at its current addresses); answer with
    /// [`Input::Response`] and `id`.
    Send { to: MemberId, id: RequestId, request: StateRequest },
    /// Answer the peer's request behind `token`.
    Respond { token: Token, response: StateResponse },
    /// The member lists gathered for `token`: this node's first, then each
    /// answer that parsed; `asked` members were asked.
    Views { token: Token, views: Vec<Vec<Entry>>, asked: usize },
    /// Flush the store, then report [`Input::Flushed`]. At most one is
    /// outstanding.
    Flush,
}

/// What an outstanding request was for.
#[derive(Debug)]
enum Pending {
    /// Entries or proofs pushed: nothing waits on the answer.
    Push,
    /// An anti-entropy digest sent to this member.
    Digest(MemberId),
    /// A member list asked for the view collection behind the token.
    View(Token),
}

/// A majority view being gathered.
#[derive(Debug)]
struct Collection {
    waiting: usize,
    asked: usize,
    views: Vec<Vec<Entry>>,
}

/// The registry replication machine: one per node, owning its
/// [`Replica`]. Feed it [`Input`]s with [`RegistrySync::handle`], carry out
/// the [`Output`]s [`RegistrySync::drain`] returns.
pub struct RegistrySync {
    replica: Replica,
    live: BTreeMap<NodeId, MemberId>,
    pending: HashMap<RequestId, Pending>,
    collections: HashMap<Token, Collection>,
    /// The live members last written to disk.
    remembered: Vec<(NodeId, Vec<Vec<u8>>)>,
    next_id: u64,
    outputs: Vec<Output>,
    rng: super::Pick,
    /// Released by the flush under way (`None`: no flush running).
    flushing: Option<Vec<Output>>,
    /// Written since the running flush started; released by the next one.
    waiting: Vec<Output>,
    /// Something was written since the running flush started.
    dirty: bool,
}

impl RegistrySync {
    /// `seed` drives the choice of anti-entropy partners.
    pub fn new(replica: Replica, seed: u64) -> Self {
        Self {
            replica,
            live: BTreeMap::new(),
            pending: HashMap::new(),
            collections: HashMap::new(),
            remembered: Vec::new(),
            next_id: 0,
            outputs: Vec::new(),
            rng: super::Pick::new(seed),
            flushing: None,
            waiting: Vec::new(),
            dirty: false,
        }
    }

    /// The registry and store, for reads (views, stats).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// For the trust side (evidence, force-leave) and frame counters.
    pub fn replica_mut(&mut self) -> &mut Replica {
        &mut self.replica
    }

    /// The members this machine holds live (alive or suspect), by id.
    pub fn live(&self) -> impl Iterator<Item = &MemberId> {
        self.live.values()
    }

    /// Everything produced since the last call, in order.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// Signs this node's entry (with a new profile, if given), stores it
    /// durably and pushes it to every live member.
    ///
    /// # Errors
    /// [`PublishError`] when it cannot be signed or stored; nothing is sent.
    pub fn publish(
        &mut self,
        profile: Option<Profile>,
        addresses: Vec<String>,
        now_ms: u64,
    ) -> Result<Envelope, PublishError> {
        let envelope = self.replica.publish(profile, addresses, 0, now_ms)?;
        let live: Vec<MemberId> = self.live.values().cloned().collect();
        for member in live {
            self.push_to(member, vec![envelope.clone()]);
        }
        Ok(envelope)
    }

    /// Takes one input; what it produces waits in [`RegistrySync::drain`].
    pub fn handle(&mut self, input: Input) {
        match input {
            Input::MemberUp(member) => {
                self.live.insert(member.node, member.clone());
                self.remember_members();
                if let Some(own) = self.replica.registry().get(&self.replica.me()) {
                    let own = own.envelope.clone();
                    self.push_to(member.clone(), vec![own]);
                }
                self.round_with(member);
            }
            Input::MemberGone(node) => {
                self.live.remove(&node);
            }
            Input::Request { from, request, token } => {
                tracing::trace!(peer = %from, "a registry request");
                match request {
                    RegistryRequest::Push(envelopes) => {
                        let (accepted, rejected) = self.replica.merge(envelopes);
                        let respond =
                            Output::Respond { token, response: StateResponse::Ack { accepted, rejected } };
                        if accepted > 0 {
                            // Acknowledged once durable.
                            self.after_flush(Some(respond));
                        } else {
                            self.outputs.push(respond);
                        }
                    }
                    RegistryRequest::Digest(digest) => {
                        let response = StateResponse::Reconcile(self.replica.registry().reconcile(&digest));
                        self.outputs.push(Output::Respond { token, response });
                    }
                }
            }
            Input::Response { id, response } => self.on_response(id, response),
            Input::Tick => {
                self.remember_members();
                if !self.live.is_empty() {
                    let pick = self.rng.below(self.live.len());
                    if let Some(member) = self.live.values().nth(pick).cloned() {
                        self.round_with(member);
                    }
                }
            }
            Input::Flushed { durable } => self.flushed(durable),
            Input::CollectViews { own, token } => {
                let live: Vec<MemberId> = self.live.values().cloned().collect();
                let collection = Collection { waiting: live.len(), asked: live.len(), views: vec![own] };
                self.collections.insert(token, collection);
                for member in live {
                    self.send(member, Pending::View(token), StateRequest::View);
                }
                self.collected(token, None, false);
            }
        }
    }

    fn on_response(&mut self, id: RequestId, response: Option<StateResponse>) {
        let Some(pending) = self.pending.remove(&id) else { return };
        match (pending, response) {
            (Pending::Digest(member), Some(StateResponse::Reconcile(reconciliation))) => {
                let (accepted, _) = self.replica.merge(reconciliation.send);
                if accepted > 0 {
                    self.after_flush(None);
                }
                let wanted = self.replica.registry().envelopes_for(&reconciliation.want);
                if !wanted.is_empty() {
                    self.push_to(member, wanted);
                }
            }
            (Pending::View(token), Some(StateResponse::View(json))) => {
                let view = parse_views(&format!("[{json}]"))
                    .map_err(|error| tracing::debug!(%error, "a peer's view did not parse"))
                    .ok()
                    .and_then(|mut views| views.pop());
                self.collected(token, view, true);
            }
            (Pending::View(token), _) => self.collected(token, None, true),
            (Pending::Push, Some(StateResponse::Ack { rejected, .. })) if !rejected.is_empty() => {
                tracing::warn!(?rejected, "a peer refused registry entries we pushed");
            }
            (_, Some(StateResponse::Refused(reason))) => {
                tracing::debug!(%reason, "a peer refused a registry request");
            }
            _ => {}
        }
    }

    /// Counts one answer (or failure) for the collection behind `token`;
    /// emits the views once none is outstanding.
    fn collected(&mut self, token: Token, view: Option<Vec<Entry>>, answered: bool) {
        let Some(collection) = self.collections.get_mut(&token) else { return };
        if answered {
            collection.waiting = collection.waiting.saturating_sub(1);
        }
        collection.views.extend(view);
        if collection.waiting == 0
            && let Some(done) = self.collections.remove(&token)
        {
            self.outputs.push(Output::Views { token, views: done.views, asked: done.asked });
        }
    }

    /// A digest of our versions to `member`, and the proofs we hold.
    fn round_with(&mut self, member: MemberId) {
        self.replica.stats_mut().anti_entropy_rounds += 1;
        let digest = self.replica.registry().digest();
        self.send(member.clone(), Pending::Digest(member.clone()), StateRequest::Digest(digest));
        let mut proofs = self.replica.evidence().proofs();
        if proofs.is_empty() {
            return;
        }
        // A random window, so every proof reaches every member over the
        // rounds even when more are held than one message carries (a fixed
        // first 64 would let 64 minted keys crowd the real ones out).
        if proofs.len() > MAX_PROOFS_PER_MESSAGE {
            let start = self.rng.below(proofs.len());
            proofs.rotate_left(start);
            proofs.truncate(MAX_PROOFS_PER_MESSAGE);
        }
        self.send(member, Pending::Push, StateRequest::Evidence(proofs));
    }

    fn push_to(&mut self, member: MemberId, envelopes: Vec<Envelope>) {
        self.replica.stats_mut().pushes_sent += 1;
        self.send(member, Pending::Push, StateRequest::Push(envelopes));
    }

    fn send(&mut self, to: MemberId, pending: Pending, request: StateRequest) {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.pending.insert(id, pending);
        self.outputs.push(Output::Send { to, id, request });
    }

    /// Records the live members durably when they changed, so a restarted
    /// node can rejoin without its bootstrap list.
    fn remember_members(&mut self) {
        let remembered: Vec<(NodeId, Vec<Vec<u8>>)> =
            self.live.values().map(|m| (m.node, m.addresses.clone())).collect();
        if remembered.is_empty() || remembered == self.remembered {
            return;
        }
        match self.replica.store().put_members(&remembered) {
            Ok(()) => self.after_flush(None),
            Err(error) => tracing::warn!(%error, "could not record the live members"),
        }
        self.remembered = remembered;
    }

    /// Queues `released` (if any) behind the next flush and asks for one
    /// unless one runs; one flush covers every write before it started.
    fn after_flush(&mut self, released: Option<Output>) {
        self.waiting.extend(released);
        self.dirty = true;
        if self.flushing.is_none() {
            self.start_flush();
        }
    }

    fn start_flush(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        self.flushing = Some(std::mem::take(&mut self.waiting));
        self.outputs.push(Output::Flush);
    }

    /// A failed flush refuses the acknowledgements that waited on it.
    fn flushed(&mut self, durable: bool) {
        for output in self.flushing.take().unwrap_or_default() {
            match output {
                Output::Respond { token, .. } if !durable => {
                    let refused = StateResponse::Refused("the entries could not be made durable here".into());
                    self.outputs.push(Output::Respond { token, response: refused });
                }
                other => self.outputs.push(other),
            }
        }
        self.start_flush();
    }
}
