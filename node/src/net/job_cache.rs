//! One per-job state cache (ADR 0021): the latest view of every job that
//! changed while held in memory, written by the driver as each change
//! becomes durable and read without a round trip into the driver by the
//! federation, the event streams and the OpenAI endpoint. A job leaves it
//! when it leaves memory (compacted); a miss falls back to the driver,
//! which reads sled.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use hivemesh_protocol::JobId;

use crate::replica::JobView;

/// Cheap to clone: every clone shares one map.
#[derive(Clone, Default)]
pub struct JobCache {
    jobs: Arc<RwLock<HashMap<JobId, Arc<JobView>>>>,
}

impl JobCache {
    /// The job as it stood after its last durable change, if held.
    pub fn get(&self, job: &JobId) -> Option<Arc<JobView>> {
        self.jobs.read().ok()?.get(job).cloned()
    }

    pub(super) fn put(&self, view: &Arc<JobView>) {
        if let Ok(mut jobs) = self.jobs.write() {
            jobs.insert(view.job, view.clone());
        }
    }

    pub(super) fn forget(&self, job: &JobId) {
        if let Ok(mut jobs) = self.jobs.write() {
            jobs.remove(job);
        }
    }

    /// Jobs cached now.
    pub fn len(&self) -> usize {
        self.jobs.read().map(|jobs| jobs.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
