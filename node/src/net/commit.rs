//! Group commit (ADR 0021): a write to sled is acknowledged, pushed or
//! announced only once it is durable, and one flush makes durable every
//! write that arrived while the previous flush ran.
//!
//! The driver never blocks on the disk: a flush runs on a blocking thread
//! and reports back; what a write releases waits here until then.

use tokio::sync::mpsc;

use super::driver::Driver;
use crate::replica::Store;

/// What a write releases once it is durable (`true`) or once its flush
/// failed (`false`): replies, responses to peers, pushes, announcements.
pub(super) type Release = Box<dyn FnOnce(&mut Driver, bool) + Send>;

/// Writes waiting for a flush, and the flush under way.
pub(super) struct GroupCommit {
    store: Store,
    /// Released by the flush under way, when there is one.
    in_flush: Option<Vec<Release>>,
    /// Waiting for the next flush.
    waiting: Vec<Release>,
    done_tx: mpsc::UnboundedSender<bool>,
    /// Flushes started, and writes released by them (for the status).
    pub(super) flushes: u64,
    pub(super) released: u64,
}

impl GroupCommit {
    /// `done_tx` is where a finished flush reports (the driver's loop reads
    /// the other end and calls [`Driver::on_flushed`]).
    pub(super) fn new(store: Store, done_tx: mpsc::UnboundedSender<bool>) -> Self {
        Self { store, in_flush: None, waiting: Vec::new(), done_tx, flushes: 0, released: 0 }
    }

    /// Queues `release` behind the next flush, starting it unless one runs.
    pub(super) fn after_durable(&mut self, release: Release) {
        self.waiting.push(release);
        if self.in_flush.is_none() {
            self.start();
        }
    }

    fn start(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        self.in_flush = Some(std::mem::take(&mut self.waiting));
        self.flushes += 1;
        let (store, done) = (self.store.clone(), self.done_tx.clone());
        let batch = self.in_flush.as_ref().map_or(0, Vec::len);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let flushed = store.flush();
            tracing::debug!(batch, took_us = started.elapsed().as_micros() as u64, "group commit flushed");
            let durable = match flushed {
                Ok(()) => true,
                Err(error) => {
                    tracing::error!(%error, "flushing the store failed; writes waiting on it are refused");
                    false
                }
            };
            let _ = done.send(durable);
        });
    }

    /// The flush under way finished: what it released, and the next flush
    /// starts for whatever arrived meanwhile.
    fn finished(&mut self) -> Vec<Release> {
        let released = self.in_flush.take().unwrap_or_default();
        self.released += released.len() as u64;
        self.start();
        released
    }
}

impl Driver {
    /// Runs `release` once every write made so far is durable.
    pub(super) fn after_durable(&mut self, release: impl FnOnce(&mut Driver, bool) + Send + 'static) {
        self.commit.after_durable(Box::new(release));
    }

    /// A flush reported back.
    pub(super) fn on_flushed(&mut self, durable: bool) {
        for release in self.commit.finished() {
            release(self, durable);
        }
    }
}
