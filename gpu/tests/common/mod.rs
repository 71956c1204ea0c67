//! Helpers shared by the tally tests: elections written as text.

#![allow(dead_code)]

use hivemesh_gpu::{TallyInput, TallyResult, cpu};
use hivemesh_protocol::TallyRule;

/// Ballots written one group of voters per line, `A > C = D * 5`: `>`
/// separates groups best first, `=` ties candidates inside a group, `* k`
/// repeats the ballot k times (once without it). Candidates are single
/// letters, A = 0, B = 1, ...; unlisted candidates tie last.
pub fn profile(text: &str) -> Vec<Vec<Vec<u32>>> {
    let mut ballots = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (order, count) = match line.split_once('*') {
            Some((order, count)) => (order, count.trim().parse::<usize>().expect("count")),
            None => (line, 1),
        };
        let groups: Vec<Vec<u32>> = order
            .split('>')
            .map(|group| group.split('=').map(|c| u32::from(c.trim().as_bytes()[0] - b'A')).collect())
            .collect();
        ballots.extend(std::iter::repeat_n(groups, count));
    }
    ballots
}

/// Candidate letters, for readable assertions.
pub fn letters(candidates: &[u32]) -> String {
    candidates.iter().map(|&c| char::from(b'A' + c as u8)).collect()
}

/// Tallies `text` (see [`profile`]) under `rule` on the CPU backend.
pub fn tally(rule: TallyRule, candidates: u32, text: &str) -> TallyResult {
    cpu::tally(&TallyInput::weak_orders(rule, candidates, &profile(text))).expect("tally")
}
