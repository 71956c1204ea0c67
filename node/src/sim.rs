//! Deterministic simulation: many membership machines (the real code) in one
//! process, on a virtual clock, over a simulated network with latency, loss
//! and partitions. Same seed, same report.

pub mod jobs;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;
use std::time::Duration;

use hivemesh_protocol::identity::NodeId;
use rand10::rngs::StdRng;
use rand10::{RngExt, SeedableRng};
use serde::Serialize;

use crate::membership::{MemberEvent, MemberId, Membership, MembershipConfig, Output, Timer};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    /// Probability that any one frame is lost.
    pub loss: f64,
    /// One-way latency, uniformly drawn per frame, in milliseconds.
    pub latency_ms: Range<u64>,
    /// Split the cluster in two halves from `start` to `end` (seconds after
    /// the kill phase), then measure how long it takes to heal.
    pub partition: Option<Range<u64>>,
    /// How many nodes to kill (no goodbye) once the cluster has converged.
    pub kill: usize,
    /// Extra virtual seconds at the end, watching for false downs.
    pub soak_secs: u64,
    pub seed: u64,
    pub membership: MembershipConfig,
}

impl SimConfig {
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            loss: 0.0,
            latency_ms: 1..5,
            partition: None,
            kill: 1,
            soak_secs: 30,
            seed,
            membership: MembershipConfig::lan(nodes as u32),
        }
    }
}

/// Convergence figures, in virtual milliseconds. `None`: not reached within
/// the phase's time limit.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SimReport {
    pub nodes: usize,
    pub seed: u64,
    /// Every node sees every other alive, counted from the first start.
    pub initial_convergence_ms: Option<u64>,
    /// One more node joins a converged cluster: until every node sees it.
    pub join_visible_ms: Option<u64>,
    /// Until every live node marks every killed node down.
    pub kill_detected_ms: Option<u64>,
    /// After a partition is lifted: until every node again sees every live one.
    pub partition_heal_ms: Option<u64>,
    /// Live nodes declared down by a live node, outside a partition and
    /// its healing.
    pub false_downs: u64,
    /// Every live node sees every other live one at the end.
    pub converged_at_end: bool,
    pub frames_sent: u64,
    pub frames_lost: u64,
    /// Mean membership traffic sent per node per virtual second.
    pub bytes_per_node_per_sec: f64,
    pub virtual_secs: f64,
}

enum Event {
    Deliver {
        to: usize,
        from: NodeId,
        frame: Vec<u8>,
    },
    /// The transport's acknowledgement (or refusal) of a frame, back at
    /// its sender: a request-response exchange, as on real connections.
    Receipt {
        node: usize,
        peer: NodeId,
        delivered: bool,
    },
    Timer {
        node: usize,
        epoch: u32,
        timer: Timer,
    },
}

struct SimNode {
    machine: Membership,
    alive: bool,
    epoch: u32,
}

/// One simulated cluster.
pub struct Simulation {
    config: SimConfig,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Event>>,
    free_slots: Vec<usize>,
    seq: u64,
    now_us: u64,
    rng: StdRng,
    partitioned: bool,
    healing: bool,
    report: SimReport,
}

fn node_id(index: usize) -> NodeId {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(index as u64 + 1).to_le_bytes());
    NodeId(bytes)
}

fn index_of(node: &NodeId) -> usize {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&node.0[..8]);
    u64::from_le_bytes(raw).saturating_sub(1) as usize
}

impl Simulation {
    pub fn new(config: SimConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        let report = SimReport { nodes: config.nodes, seed: config.seed, ..SimReport::default() };
        Self {
            config,
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free_slots: Vec::new(),
            seq: 0,
            now_us: 0,
            rng,
            partitioned: false,
            healing: false,
            report,
        }
    }

    fn now_ms(&self) -> u64 {
        self.now_us / 1000
    }

    /// Runs every phase and returns the figures.
    pub fn run(mut self) -> SimReport {
        let total = self.config.nodes.max(2);
        let founders = total - 1;
        for i in 0..founders {
            self.start_node(i);
        }
        let limit = 120_000;
        self.report.initial_convergence_ms = self.run_until(limit, |s| s.all_see_all_live());

        self.start_node(founders);
        self.report.join_visible_ms = self.run_until(limit, |s| s.all_see_all_live());

        let kill = self.config.kill.min(total.saturating_sub(2));
        let victims: Vec<usize> = (0..kill).map(|k| 1 + k * (total - 1) / kill.max(1)).collect();
        for &v in &victims {
            self.nodes[v].alive = false;
        }
        if !victims.is_empty() {
            self.report.kill_detected_ms = self.run_until(limit, |s| s.all_see_all_live());
        }

        if let Some(window) = self.config.partition.clone() {
            self.run_for(window.start * 1000);
            self.partitioned = true;
            // Downs across the split are expected until the halves rejoin.
            self.healing = true;
            self.run_for(window.end.saturating_sub(window.start) * 1000);
            self.partitioned = false;
            self.report.partition_heal_ms = self.run_until(limit, |s| s.all_see_all_live());
            self.healing = false;
        }

        self.run_for(self.config.soak_secs * 1000);
        self.report.converged_at_end = self.all_see_all_live();
        self.report.virtual_secs = self.now_us as f64 / 1e6;
        let bytes: u64 = self.nodes.iter().map(|n| n.machine.stats().bytes_out).sum();
        let node_secs = self.nodes.len() as f64 * self.report.virtual_secs.max(1e-9);
        self.report.bytes_per_node_per_sec = bytes as f64 / node_secs;
        self.report
    }

    fn start_node(&mut self, index: usize) {
        let me = MemberId::new(node_id(index), self.now_ms(), Vec::new());
        let seed = self.config.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut machine = Membership::new(me, self.config.membership.clone(), seed, self.now_ms());
        if index > 0 {
            machine.add_bootstrap(MemberId::placeholder(node_id(0), Vec::new()), self.now_ms());
        }
        self.nodes.push(SimNode { machine, alive: true, epoch: 0 });
        self.flush(index);
    }

    fn all_see_all_live(&self) -> bool {
        let live = self.nodes.iter().filter(|n| n.alive).count();
        let dead: Vec<NodeId> = self.nodes.iter().filter(|n| !n.alive).map(|n| n.machine.me().node).collect();
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .all(|n| n.machine.active_count() == live - 1 && dead.iter().all(|d| !n.machine.is_active(d)))
    }

    /// Runs until `done` holds (checked every 50 virtual ms) or `limit_ms`
    /// more milliseconds pass; returns the time it took.
    fn run_until(&mut self, limit_ms: u64, done: impl Fn(&Self) -> bool) -> Option<u64> {
        let start = self.now_ms();
        while self.now_ms() - start <= limit_ms {
            if done(self) {
                return Some(self.now_ms() - start);
            }
            self.run_for(50);
        }
        None
    }

    fn run_for(&mut self, ms: u64) {
        let until = self.now_us + ms * 1000;
        while let Some(Reverse((at, _, slot))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now_us = at;
            if let Some(event) = self.events[slot].take() {
                self.free_slots.push(slot);
                self.dispatch(event);
            }
        }
        self.now_us = until;
    }

    fn dispatch(&mut self, event: Event) {
        let now = self.now_ms();
        match event {
            Event::Deliver { to, from, frame } => {
                if !self.nodes[to].alive {
                    return;
                }
                let _ = self.nodes[to].machine.handle_frame(from, &frame, now);
                self.flush(to);
            }
            Event::Receipt { node, peer, delivered } => {
                if !self.nodes[node].alive {
                    return;
                }
                self.nodes[node].machine.delivery(peer, delivered, now);
                self.flush(node);
            }
            Event::Timer { node, epoch, timer } => {
                if !self.nodes[node].alive || self.nodes[node].epoch != epoch {
                    return;
                }
                self.nodes[node].machine.handle_timer(timer, now);
                self.flush(node);
            }
        }
    }

    fn flush(&mut self, index: usize) {
        let from = self.nodes[index].machine.me().node;
        for output in self.nodes[index].machine.drain() {
            match output {
                Output::Send { to, frame } => self.transmit(index, from, &to, frame),
                Output::Schedule { after, timer } => {
                    let epoch = self.nodes[index].epoch;
                    self.schedule(after, Event::Timer { node: index, epoch, timer });
                }
                Output::Event(MemberEvent::Down(id)) => self.check_false_down(index, &id),
                Output::Event(_) => {}
            }
        }
    }

    fn check_false_down(&mut self, observer: usize, id: &MemberId) {
        let target = index_of(&id.node);
        let target_alive = self.nodes.get(target).is_some_and(|n| n.alive);
        if target_alive && self.nodes[observer].alive && !self.partitioned && !self.healing {
            self.report.false_downs += 1;
        }
    }

    fn transmit(&mut self, from_index: usize, from: NodeId, to: &MemberId, frame: Vec<u8>) {
        self.report.frames_sent += 1;
        let to_index = index_of(&to.node);
        let half = self.nodes.len() / 2;
        let split = self.partitioned && ((from_index < half) != (to_index < half));
        if split || self.rng.random_bool(self.config.loss.clamp(0.0, 1.0)) {
            self.report.frames_lost += 1;
            return;
        }
        let range = self.config.latency_ms.clone();
        let latency = if range.is_empty() { range.start } else { self.rng.random_range(range) };
        let peer = to.node;
        let receiver_alive = self.nodes.get(to_index).is_some_and(|n| n.alive);
        // A dead node's host refuses the connection; a live one acknowledges
        // (the acknowledgement can be lost like any frame).
        let receipt_lost = receiver_alive && self.rng.random_bool(self.config.loss.clamp(0.0, 1.0));
        if !receipt_lost {
            let receipt = Event::Receipt { node: from_index, peer, delivered: receiver_alive };
            self.schedule(Duration::from_millis(latency * 2), receipt);
        }
        self.schedule(Duration::from_millis(latency), Event::Deliver { to: to_index, from, frame });
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        let at = self.now_us + after.as_micros() as u64;
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.events[slot] = Some(event);
                slot
            }
            None => {
                self.events.push(Some(event));
                self.events.len() - 1
            }
        };
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, slot)));
    }
}
