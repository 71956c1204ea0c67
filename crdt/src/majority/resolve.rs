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

/// Everything known about one id while resolving.
struct IdSlot<'a> {
    /// The first report seen, kept for comparing ids.
    key: &'a Entry,
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
    slot: u32,
    count: u32,
    /// This version's report with the newest `last_updated`.
    newest: &'a Entry,
    next: Option<u32>,
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
            id_index: HashTable::with_capacity(capacity),
            ids: Vec::with_capacity(capacity),
            group_index: HashTable::new(),
            groups: Vec::with_capacity(capacity),
            reports: 0,
        }
    }

    /// Counts every entry as it comes. Gives up (None) at the first id that
    /// one view lists twice, since rule 2 may then un-count a report.
    fn single_pass<V: AsRef<[Entry]>>(views: &'a [V]) -> Option<Self> {
        let mut tally = Self::new(views[0].as_ref().len().max(16));
        for (view_index, view) in views.iter().enumerate() {
            for entry in view.as_ref() {
                let (slot, seen) = tally.slot_of(entry, view_index);
                if let Seen::InSameView = seen {
                    return None;
                }
                tally.count(slot, entry);
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
            for entry in view.as_ref() {
                let (slot, seen) = tally.slot_of(entry, view_index);
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

    fn slot_of(&mut self, entry: &'a Entry, view_index: usize) -> (u32, Seen) {
        let ids = &mut self.ids;
        let hash = entry.id_hash();
        if let Some(&slot) = self.id_index.find(hash, |&slot| ids[slot as usize].key.same_id(entry)) {
            let id = &mut ids[slot as usize];
            if id.last_view == view_index {
                return (slot, Seen::InSameView);
            }
            id.last_view = view_index;
            return (slot, Seen::Again);
        }
        let slot = ids.len() as u32;
        self.id_index.insert_unique(hash, slot, |&slot| ids[slot as usize].key.id_hash());
        ids.push(IdSlot {
            key: entry,
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
    fn count(&mut self, slot: u32, entry: &'a Entry) {
        self.reports += 1;
        let id_capacity = self.ids.capacity();
        let id = &mut self.ids[slot as usize];
        let groups = &mut self.groups;
        id.reports += 1;
        id.newest = id.newest.max(entry.instant());
        // Most reports repeat their id's commonest version: try it before
        // hashing. Only ids with several versions enter the group index.
        let found = if id.versions == 0 {
            None
        } else if groups[id.largest_group as usize].newest.same_version(entry) {
            Some(id.largest_group)
        } else if id.versions == 1 {
            None
        } else {
            self.group_index
                .find(group_hash(slot, entry), |&group| {
                    let group = &groups[group as usize];
                    group.slot == slot && group.newest.same_version(entry)
                })
                .copied()
        };
        let group_index = match found {
            Some(group_index) => {
                let group = &mut groups[group_index as usize];
                group.count += 1;
                if entry.instant() > group.newest.instant() {
                    group.newest = entry;
                }
                group_index
            }
            None => {
                let group_index = groups.len() as u32;
                groups.push(Group {
                    slot,
                    count: 1,
                    newest: entry,
                    next: (id.versions > 0).then_some(id.first_group),
                });
                if id.versions == 1 {
                    // The first conflict: size the index once for every id.
                    if self.group_index.capacity() == 0 {
                        let groups = &*groups;
                        self.group_index.reserve(2 * id_capacity, |&group| {
                            group_hash(groups[group as usize].slot, groups[group as usize].newest)
                        });
                    }
                    self.group_index.insert_unique(
                        group_hash(slot, groups[id.first_group as usize].newest),
                        id.first_group,
                        |&group| group_hash(groups[group as usize].slot, groups[group as usize].newest),
                    );
                }
                if id.versions >= 1 {
                    self.group_index.insert_unique(group_hash(slot, entry), group_index, |&group| {
                        group_hash(groups[group as usize].slot, groups[group as usize].newest)
                    });
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

/// Where one id's version sits in the group index.
fn group_hash(slot: u32, entry: &Entry) -> u64 {
    entry.version_hash() ^ u64::from(slot).wrapping_mul(0x9e37_79b9_7f4a_7c15)
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
        let at_newest = group.newest.instant() == id.newest;
        let best_at_newest = best.newest.instant() == id.newest;
        if at_newest
            && (!best_at_newest
                || (group.count, group.newest.version()) > (best.count, best.newest.version()))
        {
            best = group;
        }
    }
    best.newest
}
