//! Rules 1–6 of ../shared/spec/majority-rule.md in expected linear time: one
//! hashing pass that counts each id's versions (two passes when some view
//! lists an id twice), a walk over each id's few versions, and a sort of the
//! distinct ids only.

use std::cmp::Ordering;
use std::time::Instant;

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};

use super::entry::Entry;

/// What the resolution did, as the spec names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    pub peer_count: usize,
    pub total_entries: usize,
    pub unique_ids: usize,
    pub conflicts: usize,
    pub majority_resolved: usize,
    pub tie_breaks: usize,
    pub single_reports: usize,
    /// Measured with a monotonic clock; the only field that varies between runs.
    pub duration_micros: u64,
}

/// The merged view: one entry per id, sorted by id, each exactly as reported.
#[derive(Debug, Clone)]
pub struct Resolution<'a> {
    pub entries: Vec<&'a Entry>,
    pub metrics: Metrics,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no peer views to resolve")]
    NoViews,
    #[error("too many entries for one resolution ({0}); the limit is {max}", max = u32::MAX)]
    TooManyEntries(usize),
}

/// Resolves peer views into one list by majority rule. Same input, same
/// entries and counts, in every process.
pub fn resolve<V: AsRef<[Entry]>>(views: &[V]) -> Result<Resolution<'_>, ResolveError> {
    let started = Instant::now();
    if views.is_empty() {
        return Err(ResolveError::NoViews);
    }
    let total: usize = views.iter().map(|view| view.as_ref().len()).sum();
    if total >= u32::MAX as usize {
        return Err(ResolveError::TooManyEntries(total));
    }
    let tally = Tally::single_pass(views).unwrap_or_else(|| Tally::deduplicating(views, total));

    let threshold = views.len() / 2 + 1;
    let mut metrics = Metrics {
        peer_count: views.len(),
        total_entries: tally.reports,
        unique_ids: tally.ids.len(),
        conflicts: 0,
        majority_resolved: 0,
        tie_breaks: 0,
        single_reports: 0,
        duration_micros: 0,
    };
    let mut entries: Vec<&Entry> =
        tally.ids.iter().map(|id| decide(id, &tally.groups, threshold, &mut metrics)).collect();
    entries.sort_unstable_by(|a, b| a.id().cmp(b.id()));
    metrics.duration_micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    Ok(Resolution { entries, metrics })
}

/// Everything known about one id while resolving. The id's text and hash
/// are copied here so that matching a report reads this slot and the report,
/// nothing else.
struct IdSlot<'a> {
    id_hash: u64,
    /// The id's text (interned: usually the same pointer as the report's).
    id: &'a str,
    /// The last view that reported this id.
    last_view: usize,
    reports: u32,
    /// Head of this id's list of version groups (`Group::next`).
    first_group: u32,
    versions: u32,
    newest: (i64, u32),
    largest_group: u32,
}

/// One version of one id and its reports.
struct Group<'a> {
    version_hash: u64,
    version: &'a str,
    /// `newest.instant()`, kept beside the count.
    newest_instant: (i64, u32),
    /// This version's report with the newest `last_updated`.
    newest: &'a Entry,
    slot: u32,
    count: u32,
    next: Option<u32>,
}

impl Group<'_> {
    fn holds(&self, entry: &Entry) -> bool {
        entry.has_version(self.version, self.version_hash)
    }
}

/// Whether an id was seen before, and by the same view.
enum Seen {
    First,
    Again,
    InSameView,
}

/// Reports counted per id and per version.
struct Tally<'a> {
    id_index: HashTable<u32>,
    ids: Vec<IdSlot<'a>>,
    group_index: HashTable<u32>,
    groups: Vec<Group<'a>>,
    reports: usize,
}

impl<'a> Tally<'a> {
    fn new(capacity: usize) -> Self {
        Self {
            id_index: HashTable::new(),
            ids: Vec::with_capacity(capacity),
            group_index: HashTable::new(),
            groups: Vec::with_capacity(2 * capacity),
            reports: 0,
        }
    }

    /// Counts every entry as it comes. Gives up (None) at the first id that
    /// one view lists twice, since rule 2 may then un-count a report.
    fn single_pass<V: AsRef<[Entry]>>(views: &'a [V]) -> Option<Self> {
        let mut tally = Self::new(views[0].as_ref().len().max(16));
        for (view_index, view) in views.iter().enumerate() {
            let mut hint = 0;
            for entry in view.as_ref() {
                let (slot, seen) = tally.slot_of(entry, view_index, hint);
                if let Seen::InSameView = seen {
                    return None;
                }
                tally.count(slot, entry);
                hint = slot as usize + 1;
            }
        }
        Some(tally)
    }

    /// Rule 2 first (one report per id per view, its newest, ties to the
    /// greatest version), then the counting.
    fn deduplicating<V: AsRef<[Entry]>>(views: &'a [V], total: usize) -> Self {
        let mut tally = Self::new(views[0].as_ref().len().max(16));
        let mut reports: Vec<(u32, &Entry)> = Vec::with_capacity(total);
        // Where each id's report from the current view sits in `reports`.
        let mut current: Vec<usize> = Vec::new();
        for (view_index, view) in views.iter().enumerate() {
            let mut hint = 0;
            for entry in view.as_ref() {
                let (slot, seen) = tally.slot_of(entry, view_index, hint);
                hint = slot as usize + 1;
                if let Seen::InSameView = seen {
                    let kept = &mut reports[current[slot as usize]].1;
                    if supersedes(entry, kept) {
                        *kept = entry;
                    }
                    continue;
                }
                if let Seen::First = seen {
                    current.push(0);
                }
                current[slot as usize] = reports.len();
                reports.push((slot, entry));
            }
        }
        for (slot, entry) in reports {
            tally.count(slot, entry);
        }
        tally
    }

    /// The slot of `entry`'s id. Views tend to list ids in the same order,
    /// so the slot after the previous entry's (`hint`) is tried before
    /// searching.
    #[inline(always)]
    fn slot_of(&mut self, entry: &'a Entry, view_index: usize, hint: usize) -> (u32, Seen) {
        let ids = &mut self.ids;
        let hash = entry.id_hash();
        let found = match ids.get(hint) {
            Some(id) if entry.has_id(id.id, id.id_hash) => Some(hint as u32),
            _ if ids.len() <= LINEAR_IDS => {
                ids.iter().position(|id| entry.has_id(id.id, id.id_hash)).map(|slot| slot as u32)
            }
            _ => self
                .id_index
                .find(hash, |&slot| entry.has_id(ids[slot as usize].id, ids[slot as usize].id_hash))
                .copied(),
        };
        if let Some(slot) = found {
            let id = &mut ids[slot as usize];
            if id.last_view == view_index {
                return (slot, Seen::InSameView);
            }
            id.last_view = view_index;
            return (slot, Seen::Again);
        }
        let slot = ids.len() as u32;
        if ids.len() == LINEAR_IDS {
            // One id too many for a linear search: index them all.
            self.id_index.reserve(ids.capacity().max(2 * LINEAR_IDS), |&slot| ids[slot as usize].id_hash);
            for (listed, id) in ids.iter().enumerate() {
                self.id_index.insert_unique(id.id_hash, listed as u32, |&slot| ids[slot as usize].id_hash);
            }
        }
        if ids.len() >= LINEAR_IDS {
            self.id_index.insert_unique(hash, slot, |&slot| ids[slot as usize].id_hash);
        }
        ids.push(IdSlot {
            id_hash: hash,
            id: entry.id(),
            last_view: view_index,
            reports: 0,
            first_group: 0,
            versions: 0,
            newest: entry.instant(),
            largest_group: 0,
        });
        (slot, Seen::First)
    }

    /// Adds one view's report for an id to its version's group.
    #[inline(always)]
    fn count(&mut self, slot: u32, entry: &'a Entry) {
        self.reports += 1;
        let id = &mut self.ids[slot as usize];
        let groups = &mut self.groups;
        let instant = entry.instant();
        id.reports += 1;
        id.newest = id.newest.max(instant);
        // Most reports repeat their id's commonest version: try it first.
        // Ids with more than a few versions enter the group index.
        let found = if id.versions == 0 {
            None
        } else if groups[id.largest_group as usize].holds(entry) {
            Some(id.largest_group)
        } else if id.versions <= LINEAR_VERSIONS {
            // A few versions: walking their list beats hashing.
            let mut next = Some(id.first_group);
            let mut found = None;
            while let Some(group_index) = next {
                let group = &groups[group_index as usize];
                if group_index != id.largest_group && group.holds(entry) {
                    found = Some(group_index);
                    break;
                }
                next = group.next;
            }
            found
        } else {
            self.group_index
                .find(group_hash(slot, entry.version_hash()), |&group| {
                    let group = &groups[group as usize];
                    group.slot == slot && group.holds(entry)
                })
                .copied()
        };
        let group_index = match found {
            Some(group_index) => {
                let group = &mut groups[group_index as usize];
                group.count += 1;
                if instant > group.newest_instant {
                    group.newest = entry;
                    group.newest_instant = instant;
                }
                group_index
            }
            None => {
                let group_index = groups.len() as u32;
                groups.push(Group {
                    version_hash: entry.version_hash(),
                    version: entry.version(),
                    newest_instant: instant,
                    newest: entry,
                    slot,
                    count: 1,
                    next: (id.versions > 0).then_some(id.first_group),
                });
                let rehash = |&group: &u32| {
                    group_hash(groups[group as usize].slot, groups[group as usize].version_hash)
                };
                if id.versions == LINEAR_VERSIONS {
                    // One version too many for walking the list: index them all.
                    let mut next = Some(id.first_group);
                    while let Some(listed) = next {
                        let group = &groups[listed as usize];
                        next = group.next;
                        self.group_index.insert_unique(group_hash(slot, group.version_hash), listed, rehash);
                    }
                }
                if id.versions >= LINEAR_VERSIONS {
                    self.group_index.insert_unique(
                        group_hash(slot, entry.version_hash()),
                        group_index,
                        rehash,
                    );
                }
                id.first_group = group_index;
                id.versions += 1;
                group_index
            }
        };
        if id.versions == 1 || groups[group_index as usize].count > groups[id.largest_group as usize].count {
            id.largest_group = group_index;
        }
    }
}

/// Up to this many ids, a report's id is found by a linear search over the
/// slots' hashes (no index to allocate); past it, through the id index.
const LINEAR_IDS: usize = 16;

/// Up to this many versions, an id's versions are found by walking their
/// list; past it, through the group index.
const LINEAR_VERSIONS: u32 = 8;

/// Where one id's version sits in the group index.
fn group_hash(slot: u32, version_hash: u64) -> u64 {
    version_hash ^ u64::from(slot).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Newer wins; at the same instant the greater canonical version wins.
fn supersedes(candidate: &Entry, kept: &Entry) -> bool {
    match candidate.instant().cmp(&kept.instant()) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => candidate.version() > kept.version(),
    }
}

/// Rules 3, 4 and 5 for one id.
fn decide<'a>(id: &IdSlot<'a>, groups: &[Group<'a>], threshold: usize, metrics: &mut Metrics) -> &'a Entry {
    let largest = &groups[id.largest_group as usize];
    if id.reports == 1 {
        metrics.single_reports += 1;
        return largest.newest;
    }
    if id.versions > 1 {
        metrics.conflicts += 1;
    }
    if largest.count as usize >= threshold {
        metrics.majority_resolved += 1;
        return largest.newest;
    }
    metrics.tie_breaks += 1;
    let mut best = largest;
    let mut next = Some(id.first_group);
    while let Some(group_index) = next {
        let group = &groups[group_index as usize];
        next = group.next;
        let at_newest = group.newest_instant == id.newest;
        let best_at_newest = best.newest_instant == id.newest;
        if at_newest
            && (!best_at_newest
                || (group.count, group.newest.version()) > (best.count, best.newest.version()))
        {
            best = group;
        }
    }
    best.newest
}
