//! The tally input: one job's ballots, flattened into plain integer arrays so
//! the CPU kernels stream them and the GPU can take them as buffers as-is.

use hivemesh_protocol::TallyRule;
use serde::Serialize;

/// Flag bit on a list item (`Approval`, `Borda`, `Schulze`): this candidate
/// ties with the item before it, i.e. belongs to the same group of a weak
/// order. The candidate index is `item & !TIED_WITH_PREVIOUS`. The first item
/// of a ballot never carries it (such a ballot is invalid).
pub const TIED_WITH_PREVIOUS: u32 = 1 << 31;

/// One job's ballots for one rule.
///
/// - `Plurality`, `WeightedPlurality`: `items[i]` is ballot i's candidate.
/// - `Approval`, `Borda`, `Schulze`: ballot i is `items[offsets[i]..offsets[i+1]]`:
///   approved candidates, or a ranking best first, where an item carrying
///   [`TIED_WITH_PREVIOUS`] ties with the one before it (a weak order: groups
///   best first, ties inside a group); unranked candidates tie last, below
///   every ranked one. Approval ignores the ties (every listed candidate is
///   approved).
/// - `weights`: for `WeightedPlurality`, required, `weights[i]` is ballot
///   i's weight. For every other rule, either empty (each ballot counts once)
///   or one per ballot: ballot i then stands for `weights[i]` identical
///   ballots (a PrefLib `count: order` line), counted as if repeated, without
///   the memory of repeating it. The GPU kernels take no multiplicities; such
///   input is counted on the CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TallyInput {
    pub rule: TallyRule,
    pub candidates: u32,
    pub items: Vec<u32>,
    pub weights: Vec<u32>,
    pub offsets: Vec<u32>,
}

impl TallyInput {
    pub fn plurality(candidates: u32, choices: Vec<u32>) -> Self {
        Self { rule: TallyRule::Plurality, candidates, items: choices, weights: vec![], offsets: vec![] }
    }

    pub fn weighted(candidates: u32, choices: Vec<u32>, weights: Vec<u32>) -> Self {
        Self { rule: TallyRule::WeightedPlurality, candidates, items: choices, weights, offsets: vec![] }
    }

    /// Approval, Borda or Schulze input from one list per ballot.
    pub fn lists(rule: TallyRule, candidates: u32, ballots: &[Vec<u32>]) -> Self {
        let mut offsets = Vec::with_capacity(ballots.len() + 1);
        let mut items = Vec::with_capacity(ballots.iter().map(Vec::len).sum());
        offsets.push(0);
        for ballot in ballots {
            items.extend_from_slice(ballot);
            offsets.push(items.len() as u32);
        }
        Self { rule, candidates, items, weights: vec![], offsets }
    }

    /// Input from weak orders: per ballot, groups of candidates best first;
    /// the members of a group tie, candidates in no group tie last. Strict
    /// rankings are the case of one candidate per group.
    ///
    /// - `Approval`, `Borda`, `Schulze`: groups flattened into `items`, every
    ///   member after a group's first carrying [`TIED_WITH_PREVIOUS`]; empty
    ///   groups are skipped.
    /// - `Plurality`, `WeightedPlurality` (weight 1 each): the ballot's first
    ///   non-empty group, which must be one candidate; a ballot with a tie
    ///   at the top, or an empty one, becomes an out-of-range vote, so the
    ///   tally fails with [`TallyError::InvalidBallot`] naming it.
    ///
    /// Candidate indices must be below `candidates` (checked when counting).
    pub fn weak_orders(rule: TallyRule, candidates: u32, ballots: &[Vec<Vec<u32>>]) -> TallyInput {
        if !matches!(rule, TallyRule::Approval | TallyRule::Borda | TallyRule::Schulze) {
            let choices: Vec<u32> = ballots
                .iter()
                .map(|groups| match groups.iter().find(|g| !g.is_empty()) {
                    Some(top) if top.len() == 1 => top[0],
                    _ => u32::MAX,
                })
                .collect();
            return match rule {
                TallyRule::WeightedPlurality => {
                    let weights = vec![1; choices.len()];
                    Self::weighted(candidates, choices, weights)
                }
                _ => Self::plurality(candidates, choices),
            };
        }
        let mut offsets = Vec::with_capacity(ballots.len() + 1);
        let mut items = Vec::with_capacity(ballots.iter().flatten().map(Vec::len).sum());
        offsets.push(0);
        for groups in ballots {
            for group in groups {
                for (i, &c) in group.iter().enumerate() {
                    items.push(if i == 0 { c } else { c | TIED_WITH_PREVIOUS });
                }
            }
            offsets.push(items.len() as u32);
        }
        Self { rule, candidates, items, weights: vec![], offsets }
    }

    pub fn uses_lists(&self) -> bool {
        matches!(self.rule, TallyRule::Approval | TallyRule::Borda | TallyRule::Schulze)
    }

    /// Ballot entries in the input (distinct entries when multiplicities are
    /// given).
    pub fn ballot_count(&self) -> usize {
        if self.uses_lists() { self.offsets.len().saturating_sub(1) } else { self.items.len() }
    }

    /// True when `weights` are multiplicities (any rule but
    /// `WeightedPlurality`, with one weight per ballot).
    pub fn has_multiplicities(&self) -> bool {
        self.rule != TallyRule::WeightedPlurality && !self.weights.is_empty()
    }

    /// Voters the input stands for: the sum of the multiplicities if there
    /// are any, else [`TallyInput::ballot_count`]. What `TallyResult::ballots`
    /// reports.
    pub fn voter_count(&self) -> u64 {
        if self.has_multiplicities() {
            self.weights.iter().map(|&w| u64::from(w)).sum()
        } else {
            self.ballot_count() as u64
        }
    }

    /// Structural checks that cost O(ballots) for list rules and O(1)
    /// otherwise; candidate ranges are checked by the kernels as they count.
    pub fn check_shape(&self) -> Result<(), TallyError> {
        if self.candidates == 0 || self.candidates as usize > hivemesh_protocol::limits::MAX_CANDIDATES {
            return Err(TallyError::CandidateCount(self.candidates));
        }
        if self.rule == TallyRule::WeightedPlurality && self.weights.len() != self.items.len() {
            return Err(TallyError::Shape(format!(
                "{} weights for {} ballots",
                self.weights.len(),
                self.items.len()
            )));
        }
        if self.has_multiplicities() && self.weights.len() != self.ballot_count() {
            return Err(TallyError::Shape(format!(
                "{} multiplicities for {} ballots",
                self.weights.len(),
                self.ballot_count()
            )));
        }
        if self.uses_lists() {
            if self.offsets.first() != Some(&0)
                || self.offsets.last().map(|&e| e as usize) != Some(self.items.len())
            {
                return Err(TallyError::Shape("offsets must start at 0 and end at items.len()".into()));
            }
            if let Some(i) = self.offsets.windows(2).position(|w| w[0] > w[1]) {
                return Err(TallyError::Shape(format!("offsets decrease at ballot {i}")));
            }
            if self.items.len() > u32::MAX as usize {
                return Err(TallyError::Shape("more than 2^32 list items".into()));
            }
        }
        Ok(())
    }

    /// Index of the first ballot that names an unknown candidate, names one
    /// twice, or (list rules) starts with a [`TIED_WITH_PREVIOUS`] item; used
    /// to build a precise error once a kernel saw a bad ballot.
    pub fn first_invalid_ballot(&self) -> Option<usize> {
        let n = self.candidates as usize;
        if !self.uses_lists() {
            return self.items.iter().position(|&c| c as usize >= n);
        }
        let mut seen = vec![false; n];
        (0..self.ballot_count()).find(|&b| {
            let list = &self.items[self.offsets[b] as usize..self.offsets[b + 1] as usize];
            seen.iter_mut().for_each(|s| *s = false);
            list.first().is_some_and(|&c| c & TIED_WITH_PREVIOUS != 0)
                || list
                    .iter()
                    .map(|&c| (c & !TIED_WITH_PREVIOUS) as usize)
                    .any(|c| c >= n || std::mem::replace(&mut seen[c], true))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TallyError {
    #[error("candidate count {0} is outside 1..={max}", max = hivemesh_protocol::limits::MAX_CANDIDATES)]
    CandidateCount(u32),
    #[error("malformed tally input: {0}")]
    Shape(String),
    #[error("ballot {ballot} names an unknown candidate, names one twice, or starts with a tie")]
    InvalidBallot { ballot: usize },
    #[error("GPU backend failed: {0}")]
    Gpu(String),
}

/// What was counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Counts {
    /// Points per candidate (votes, weight, approvals or Borda points).
    Scores(Vec<u64>),
    /// Schulze: `pairwise[a*n+b]` ballots prefer a over b; `strongest[a*n+b]`
    /// is the strength of the strongest path from a to b.
    Pairwise { pairwise: Vec<u64>, strongest: Vec<u64> },
}

/// The result of one job's tally. Identical on every backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TallyResult {
    pub rule: TallyRule,
    pub ballots: u64,
    /// Every candidate, best first: by score, or by the Schulze order's
    /// tiers. Ties: the lower candidate index first.
    pub ranking: Vec<u32>,
    /// `ranking[0]`, unless there were no ballots.
    pub winner: Option<u32>,
    /// Candidates sharing first place, by index (the winner is the first):
    /// every top scorer, or every Schulze winner (beaten by nobody on
    /// strongest paths). Empty when there were no ballots.
    pub tied_for_first: Vec<u32>,
    pub counts: Counts,
}
