//! One automerge document per job, replicated among its participants.
//!
//! The root map holds one signed value per key `KIND/AUTHOR_HEX`: a postcard
//! `Envelope` around a `JobContribution` written by AUTHOR. Changes from the
//! network are checked op by op before they touch the document: only puts of
//! validly signed values at the root, under the key their author owns, are
//! accepted; anything else (a forged value, a delete, a nested object) is
//! refused and counted. Each value's signature is verified once, when it
//! arrives (from a peer, or from disk on load); the document keeps the value
//! that counts under each key beside the automerge state, so reads verify
//! nothing and a change's newly counting contributions can be handed on
//! (`take_fresh`). See docs/adr/0007-job-documents.md and 0021.

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use automerge::ChangeHash;
use automerge::legacy::{Key, ObjectId, OpType};
use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutoCommit, Automerge, AutomergeError, Change, LoadOptions, OnPartialLoad, ROOT, ReadDoc,
    ScalarValue, Value,
};
use hivemesh_protocol::identity::hex;
use hivemesh_protocol::limits::MAX_FRAME_BYTES;
use hivemesh_protocol::{
    Envelope, JobContribution, JobId, MessageError, NodeId, NodeIdentity, SignedMessage, decode_message,
    encode_message, open, seal,
};

/// Largest saved job document accepted from disk or built from the network.
pub const MAX_JOB_DOC_BYTES: usize = 4 * 1024 * 1024;
/// Largest sync message or pushed change accepted from a peer.
pub const MAX_SYNC_MESSAGE_BYTES: usize = MAX_FRAME_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobDocError {
    #[error("{what} of {size} bytes exceeds the limit of {max}")]
    TooLarge { what: &'static str, size: usize, max: usize },
    #[error("not an automerge {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("value at {key:?} rejected: {reason}")]
    Forged { key: String, reason: String },
    #[error("change {change} does something a job document forbids: {what}")]
    ForbiddenOp { change: String, what: String },
    #[error("cannot sign a contribution: {0}")]
    Seal(#[from] MessageError),
}

impl JobDocError {
    /// A short stable label, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Malformed { .. } => "malformed",
            Self::Forged { .. } => "forged",
            Self::ForbiddenOp { .. } => "forbidden_op",
            Self::Seal(_) => "seal",
        }
    }
}

/// A contribution whose signature and key were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub kind: String,
    pub author: NodeId,
    pub body: Vec<u8>,
}

/// The sync protocol's state with one peer for one document.
#[derive(Debug, Default)]
pub struct SyncSession {
    state: sync::State,
}

impl SyncSession {
    pub fn new() -> Self {
        Self::default()
    }
}

pub struct JobDoc {
    job: JobId,
    doc: AutoCommit,
    /// The value that counts under each key (see [`JobDoc::contributions`]),
    /// kept current as changes land.
    current: BTreeMap<String, Verified>,
    /// Values verified as their change was accepted and not yet read into
    /// `current`: a signature is checked once, on arrival, never on reads.
    verified: HashMap<Vec<u8>, Verified>,
    /// Counting values that changed since the last [`JobDoc::take_fresh`].
    fresh: Vec<Verified>,
    /// Bytes accepted into the document (saves, changes, sync messages'
    /// changes): an upper bound on its saved size, held under
    /// [`MAX_JOB_DOC_BYTES`] without re-encoding the document per change.
    size: usize,
}

impl JobDoc {
    /// An empty document; this node's changes carry its NodeId as actor.
    pub fn new(job: JobId, me: &NodeId) -> Self {
        Self {
            job,
            doc: AutoCommit::new().with_actor(ActorId::from(me.0.as_slice())),
            current: BTreeMap::new(),
            verified: HashMap::new(),
            fresh: Vec::new(),
            size: 0,
        }
    }

    /// A document saved by [`JobDoc::save`]. Every change is checked as if it
    /// came from the network.
    pub fn load(job: JobId, me: &NodeId, bytes: &[u8]) -> Result<Self, JobDocError> {
        let mut doc = Self::new(job, me);
        doc.apply_changes(bytes)?;
        Ok(doc)
    }

    pub fn job(&self) -> JobId {
        self.job
    }

    /// Signs `body` as this node's `kind` and commits it. Returns the change,
    /// ready to push to the other participants.
    pub fn contribute(
        &mut self,
        identity: &NodeIdentity,
        kind: &str,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Result<Vec<u8>, JobDocError> {
        let contribution =
            JobContribution { job: self.job, author: identity.node_id(), kind: kind.to_owned(), body };
        let envelope = seal(identity, now_ms, now_ms, &contribution)?;
        let value = encode_message(&envelope).map_err(MessageError::from)?;
        let key = key_for(kind, &identity.node_id());
        let before = self.doc.get_heads();
        let verified =
            Verified { kind: contribution.kind, author: contribution.author, body: contribution.body };
        self.verified.insert(value.clone(), verified);
        self.doc
            .put(ROOT, key, ScalarValue::Bytes(value))
            .map_err(|error| JobDocError::Malformed { what: "local edit", reason: error.to_string() })?;
        let seconds = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        self.doc.commit_with(CommitOptions::default().with_time(seconds));
        // Not `get_last_local_change().bytes()`: in automerge 0.12 that
        // leaves ~300 KiB behind in every document (measured: 318 KiB per
        // one-change document against 20 KiB), which capped how many jobs a
        // node could hold.
        let change = self.doc.save_after(&before);
        if change.is_empty() {
            return Err(JobDocError::Malformed {
                what: "local edit",
                reason: "commit produced no change".into(),
            });
        }
        self.size += change.len();
        self.refresh(&before);
        Ok(change)
    }

    /// Applies pushed changes (or a saved document) after checking every op.
    /// Returns how many changes were new.
    pub fn apply_changes(&mut self, bytes: &[u8]) -> Result<usize, JobDocError> {
        check_size("changes", bytes.len(), MAX_JOB_DOC_BYTES)?;
        let before = self.doc.get_heads();
        let mut fork = self.checked_fork(std::slice::from_ref(&bytes))?;
        let new = fork.get_changes(&before).len();
        self.doc = fork;
        self.refresh(&before);
        Ok(new)
    }

    /// The next sync message for this peer, if it needs one.
    pub fn sync_message(&mut self, session: &mut SyncSession) -> Option<Vec<u8>> {
        self.doc.sync().generate_sync_message(&mut session.state).map(sync::Message::encode)
    }

    /// Applies a peer's sync message after checking the changes it carries.
    pub fn receive_sync(&mut self, session: &mut SyncSession, bytes: &[u8]) -> Result<(), JobDocError> {
        check_size("sync message", bytes.len(), MAX_SYNC_MESSAGE_BYTES)?;
        let message = sync::Message::decode(bytes)
            .map_err(|error| JobDocError::Malformed { what: "sync message", reason: error.to_string() })?;
        let chunks: Vec<&[u8]> = message.changes.iter().collect();
        if !chunks.is_empty() {
            self.checked_fork(&chunks)?;
        }
        let before = self.doc.get_heads();
        self.doc
            .sync()
            .receive_sync_message(&mut session.state, message)
            .map_err(|error| JobDocError::Malformed { what: "sync message", reason: error.to_string() })?;
        self.refresh(&before);
        Ok(())
    }

    /// A copy of the document with `chunks` applied, refused unless every new
    /// op is a valid signed put and the result stays within the size limit.
    /// On success the values it verified are remembered (and the size grows):
    /// the caller applies the same chunks to the document itself.
    fn checked_fork(&mut self, chunks: &[&[u8]]) -> Result<AutoCommit, JobDocError> {
        let size = self.size + chunks.iter().map(|chunk| chunk.len()).sum::<usize>();
        check_size("job document", size, MAX_JOB_DOC_BYTES)?;
        let before = self.doc.get_heads();
        let mut fork = self.doc.fork();
        // `fork` gives the copy a random actor; the copy replaces the
        // document, whose own changes must keep carrying this node's id
        // (ADR 0007), and every new actor would grow the document.
        fork.set_actor(self.doc.get_actor().clone());
        for chunk in chunks {
            check_parses(chunk)?;
            fork.load_incremental(chunk)
                .map_err(|error| JobDocError::Malformed { what: "change", reason: error.to_string() })?;
        }
        let mut accepted = Vec::new();
        for change in fork.get_changes(&before) {
            check_change(self.job, &change, &mut accepted)?;
        }
        self.size = size;
        self.verified.extend(accepted);
        Ok(fork)
    }

    /// Re-reads the keys the changes since `before` touched: their counting
    /// values go into `current`, and those that changed into `fresh`.
    fn refresh(&mut self, before: &[ChangeHash]) {
        let touched: BTreeSet<String> = self
            .doc
            .get_changes(before)
            .iter()
            .flat_map(|change| change.decode().operations)
            .filter_map(|op| match op.key {
                Key::Map(key) => Some(key.to_string()),
                Key::Seq(_) => None,
            })
            .collect();
        for key in touched {
            match self.valid_at(&key) {
                Some((verified, _)) if self.current.get(&key) != Some(&verified) => {
                    self.fresh.push(verified.clone());
                    self.current.insert(key, verified);
                }
                Some(_) => {}
                None => {
                    self.current.remove(&key);
                }
            }
        }
        self.verified.clear();
    }

    /// Every valid contribution, in key order. Where concurrent writes left
    /// several values under one key, the greatest valid one counts, the same
    /// on every replica. Verifies nothing: values were checked on arrival.
    pub fn contributions(&self) -> Vec<Verified> {
        self.current.values().cloned().collect()
    }

    /// Contributions that began to count since the last call (a new key, or
    /// a greater value under a key), in the order they landed: what a
    /// change brought, for subscribers that keep their own copy.
    pub fn take_fresh(&mut self) -> Vec<Verified> {
        std::mem::take(&mut self.fresh)
    }

    /// One author's contribution of one kind.
    pub fn contribution(&self, kind: &str, author: &NodeId) -> Option<Verified> {
        self.current.get(&key_for(kind, author)).cloned()
    }

    /// Whether any author holds a valid contribution of `kind`.
    pub fn has_kind(&self, kind: &str) -> bool {
        let prefix = format!("{kind}/");
        self.current.range(prefix.clone()..).next().is_some_and(|(key, _)| key.starts_with(&prefix))
    }

    /// The stored bytes of the value counting under `key` (one in `current`).
    /// A lone value was verified when it arrived; only concurrent values
    /// under one key (an author that wrote twice) are checked again.
    fn counting_bytes(&self, key: &str) -> Option<Vec<u8>> {
        let values = self.doc.get_all(ROOT, key).ok()?;
        if let [(Value::Scalar(scalar), _)] = values.as_slice()
            && let ScalarValue::Bytes(bytes) = scalar.as_ref()
        {
            return Some(bytes.clone());
        }
        self.valid_at(key).map(|(_, bytes)| bytes)
    }

    /// The value that counts under `key`, checked, with its stored bytes.
    /// A value accepted before is looked up, not verified again.
    fn valid_at(&self, key: &str) -> Option<(Verified, Vec<u8>)> {
        let values = self.doc.get_all(ROOT, key).ok()?;
        values
            .into_iter()
            .filter_map(|(value, _)| match value {
                Value::Scalar(scalar) => match scalar.as_ref() {
                    ScalarValue::Bytes(bytes) => match self.verified.get(bytes) {
                        Some(verified) => Some((verified.clone(), bytes.clone())),
                        None => verify_value(self.job, key, bytes).ok().map(|v| (v, bytes.clone())),
                    },
                    _ => None,
                },
                Value::Object(_) => None,
            })
            .max_by(|a, b| a.0.body.cmp(&b.0.body))
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// The whole document, compressed.
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// Changes since `heads`, for an incremental save or a push.
    pub fn save_after(&mut self, heads: &[ChangeHash]) -> Vec<u8> {
        self.doc.save_after(heads)
    }

    /// Replaces the history with one change holding the current valid
    /// values, written by an actor derived from the job id at time 0, so every
    /// replica that compacts the same contributions gets the same bytes and
    /// heads. Meant for finished jobs, which are no longer synced.
    pub fn compact(&mut self, identity: &NodeIdentity) -> Result<(), JobDocError> {
        let mut fresh = AutoCommit::new().with_actor(ActorId::from(self.job.0.as_slice()));
        let keys: Vec<String> = self.current.keys().cloned().collect();
        for key in keys {
            let Some(bytes) = self.counting_bytes(&key) else { continue };
            fresh
                .put(ROOT, key, ScalarValue::Bytes(bytes))
                .map_err(|error| JobDocError::Malformed { what: "compaction", reason: error.to_string() })?;
        }
        fresh.commit_with(CommitOptions::default().with_time(0));
        self.doc = fresh;
        self.doc.set_actor(ActorId::from(identity.node_id().0.as_slice()));
        self.size = self.doc.save().len();
        Ok(())
    }
}

/// automerge's incremental load skips what it cannot parse (with a log
/// line); a peer's garbage must be an error instead. Missing dependencies are
/// fine: those changes wait in the queue until their parents arrive.
///
/// The chunk is parsed strictly behind an empty document chunk: automerge
/// accepts changes with absent dependencies after a document chunk, and so
/// returns `Ok` for a well-formed incremental chunk. Loading the chunk alone
/// returned `Err(MissingDeps)` for every incremental save, which automerge's
/// `#[instrument(err)]` logged as `ERROR ... change's deps should already be
/// in the document` on every push although nothing was wrong.
fn check_parses(chunk: &[u8]) -> Result<(), JobDocError> {
    static EMPTY_DOCUMENT: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| Automerge::new().save());
    if chunk.is_empty() {
        return Ok(());
    }
    let mut framed = Vec::with_capacity(EMPTY_DOCUMENT.len() + chunk.len());
    framed.extend_from_slice(&EMPTY_DOCUMENT);
    framed.extend_from_slice(chunk);
    let strict = LoadOptions::new().on_partial_load(OnPartialLoad::Error);
    match Automerge::load_with_options(&framed, strict) {
        Ok(_) | Err(AutomergeError::MissingDeps) => Ok(()),
        Err(error) => Err(JobDocError::Malformed { what: "change", reason: error.to_string() }),
    }
}

fn key_for(kind: &str, author: &NodeId) -> String {
    format!("{kind}/{}", hex(&author.0))
}

fn check_size(what: &'static str, size: usize, max: usize) -> Result<(), JobDocError> {
    if size > max {
        return Err(JobDocError::TooLarge { what, size, max });
    }
    Ok(())
}

/// Only signed puts at the root: no objects, deletes, counters or marks.
/// Each valid put's bytes and contribution go to `accepted`.
fn check_change(
    job: JobId,
    change: &Change,
    accepted: &mut Vec<(Vec<u8>, Verified)>,
) -> Result<(), JobDocError> {
    let forbidden = |what: String| JobDocError::ForbiddenOp { change: change.hash().to_string(), what };
    for op in change.decode().operations {
        if op.obj != ObjectId::Root || op.insert {
            return Err(forbidden("an edit below the root map".into()));
        }
        let Key::Map(key) = &op.key else {
            return Err(forbidden("a sequence edit".into()));
        };
        match &op.action {
            OpType::Put(ScalarValue::Bytes(bytes)) => {
                let verified = verify_value(job, key, bytes)?;
                accepted.push((bytes.clone(), verified));
            }
            OpType::Delete => return Err(forbidden(format!("a delete of {key:?}"))),
            other => return Err(forbidden(format!("{other:?} at {key:?}"))),
        }
    }
    Ok(())
}

/// A value is valid when it is a signed contribution to this job whose kind
/// and author are exactly the key it sits under.
fn verify_value(job: JobId, key: &str, bytes: &[u8]) -> Result<Verified, JobDocError> {
    let forged = |reason: String| JobDocError::Forged { key: key.to_owned(), reason };
    let envelope: Envelope = decode_message(bytes).map_err(|error| forged(error.to_string()))?;
    envelope.verify_stateless(JobContribution::DOMAIN).map_err(|error| forged(error.to_string()))?;
    let contribution: JobContribution = open(&envelope).map_err(|error| forged(error.to_string()))?;
    if contribution.job != job {
        return Err(forged("signed for another job".into()));
    }
    if key_for(&contribution.kind, &contribution.author) != key {
        return Err(forged(format!("signed as {}/{}", contribution.kind, hex(&contribution.author.0))));
    }
    Ok(Verified { kind: contribution.kind, author: contribution.author, body: contribution.body })
}
