//! Membership tuning: foca's LAN preset, adjusted for a libp2p transport.

use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// How often and how patiently members probe and gossip.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// One random member is probed per period.
    pub probe_period: Duration,
    /// Wait this long for a direct ack before asking others to probe.
    pub probe_rtt: Duration,
    /// Lifeguard's suspicion timeout bounds: a suspect that has not refuted
    /// is declared down after `suspicion_max`, falling to `suspicion_min` as
    /// members confirm the suspicion (see `lifeguard::suspicion_timeout`).
    pub suspicion_min: Duration,
    pub suspicion_max: Duration,
    /// Push pending updates to a few random members this often.
    pub gossip_period: Duration,
    /// Announce to a random member this often; its reply (a feed of members)
    /// is the anti-entropy that repairs views an update never reached.
    pub announce_period: Duration,
    /// Announce to members we believe down this often, so partitions heal.
    pub announce_to_down_period: Duration,
    /// Re-announce to bootstrap peers that are not (yet) members, with
    /// exponential backoff between these bounds.
    pub reannounce_min: Duration,
    pub reannounce_max: Duration,
    /// Largest SWIM packet produced or accepted. Packets ride libp2p streams,
    /// not UDP datagrams, so they can be far larger than an MTU: a joiner's
    /// first feed then lists most of the cluster instead of ~40 members.
    pub max_packet_size: usize,
    /// Used to size dissemination (how many times each update is sent).
    pub expected_cluster_size: u32,
}

impl MembershipConfig {
    /// foca's LAN preset (memberlist's numbers: 1 s probes, 200 ms gossip to
    /// three members) with Lifeguard's suspicion: at least ½ log10(n) probe
    /// periods (and at least one) once confirmed, at most six times that (memberlist's
    /// `SuspicionMaxTimeoutMult`); announce-to-down every 10 s instead of
    /// 65 s, so a healed partition rejoins within seconds. See
    /// docs/adr/0005-membership.md and docs/adr/0022-lifeguard.md.
    pub fn lan(expected_cluster_size: u32) -> Self {
        let n = expected_cluster_size.max(2);
        let probe_period = Duration::from_secs(1);
        let suspicion_min = probe_period.mul_f64((0.5 * f64::from(n).log10()).max(1.0));
        Self {
            probe_period,
            probe_rtt: Duration::from_millis(500),
            suspicion_min,
            suspicion_max: suspicion_min * 6,
            gossip_period: Duration::from_millis(200),
            announce_period: Duration::from_secs(10),
            announce_to_down_period: Duration::from_secs(10),
            reannounce_min: Duration::from_millis(500),
            reannounce_max: Duration::from_secs(30),
            max_packet_size: 64 * 1024,
            expected_cluster_size: n,
        }
    }

    /// The same protocol with every period divided by `factor`; tests use it
    /// to see deaths in seconds rather than tens of seconds.
    pub fn faster(mut self, factor: u32) -> Self {
        let f = factor.max(1);
        for d in [
            &mut self.probe_period,
            &mut self.probe_rtt,
            &mut self.suspicion_min,
            &mut self.suspicion_max,
            &mut self.gossip_period,
            &mut self.announce_period,
            &mut self.announce_to_down_period,
            &mut self.reannounce_min,
            &mut self.reannounce_max,
        ] {
            *d /= f;
        }
        self
    }

    /// Jittered exponential backoff between `reannounce_min` and
    /// `reannounce_max`; seeded so the simulation stays reproducible.
    pub fn reannounce_backoff(&self, seed: u64) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.reannounce_min)
            .with_max_delay(self.reannounce_max)
            .with_jitter()
            .with_jitter_seed(seed)
            .without_max_times()
            .build()
    }

    /// Each update rides on 6 × log10(n + 1) messages (memberlist uses 4):
    /// with simultaneous joins, 4 left a few nodes missing a few members
    /// until the next periodic announce.
    fn max_transmissions(&self) -> NonZeroU8 {
        let tx = (6.0 * f64::from(self.expected_cluster_size.saturating_add(1)).log10()).ceil();
        NonZeroU8::new(tx.clamp(1.0, 255.0) as u8).unwrap_or(NonZeroU8::MIN)
    }

    pub(crate) fn to_foca(&self) -> foca::Config {
        let n = NonZeroU32::new(self.expected_cluster_size.max(2)).unwrap_or(NonZeroU32::MIN);
        let preset = foca::Config::new_lan(n);
        let periodic = |frequency, members: usize| {
            Some(foca::PeriodicParams {
                frequency,
                num_members: NonZeroUsize::new(members).unwrap_or(NonZeroUsize::MIN),
            })
        };
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            // foca's down timer is held and released by the Lifeguard rules.
            suspect_to_down_after: self.suspicion_max,
            max_packet_size: NonZeroUsize::new(self.max_packet_size.max(512)).unwrap_or(NonZeroUsize::MIN),
            max_transmissions: self.max_transmissions(),
            periodic_gossip: periodic(self.gossip_period, 3),
            periodic_announce: periodic(self.announce_period, 1),
            periodic_announce_to_down_members: periodic(self.announce_to_down_period, 2),
            ..preset
        }
    }
}
