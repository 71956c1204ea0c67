//! Fair use of this node's provider credits: per-remote-peer limits on the
//! model calls, tokens and USD that other peers' jobs may spend here per
//! hour (ADR 0017).
//!
//! Accounting is a sliding one-hour window of sixty one-minute buckets per
//! peer. A call is admitted when the peer's calls in the window are below
//! its call limit and its tokens and USD are *below* theirs (the cost of a
//! call is known only after it: it is charged then, so the last admitted
//! calls may overshoot a token or USD limit by at most what the calls
//! running at once spend). The node's own jobs never pass through here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The window every limit is counted over.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// The window's granularity: usage leaves the window a bucket at a time.
const BUCKET: Duration = Duration::from_secs(60);
const BUCKETS: u64 = WINDOW.as_secs() / BUCKET.as_secs();

/// The `quota` failure code a refused call's `Failure` carries.
pub const QUOTA_CODE: &str = "quota";

/// Per-hour limits for one peer; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QuotaLimits {
    /// Model calls per hour.
    pub calls: Option<u64>,
    /// Prompt plus completion tokens per hour (as the provider reports them;
    /// streamed chunks when it reports none).
    pub tokens: Option<u64>,
    /// US dollars per hour, as the provider reports each call's cost
    /// (OpenRouter does; calls without a reported cost count 0).
    pub usd: Option<f64>,
}

impl QuotaLimits {
    /// No limit on anything.
    pub const UNLIMITED: Self = Self { calls: None, tokens: None, usd: None };
}

/// Why a quota setting could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuotaParseError {
    #[error("{0:?} is not NAME=VALUE (names: calls, tokens, usd)")]
    NotAPair(String),
    #[error("unknown quota {0:?} (use calls, tokens or usd)")]
    UnknownLimit(String),
    #[error("quota {name}={value:?} is not a number of {unit} (or `none`)")]
    BadValue { name: &'static str, value: String, unit: &'static str },
    #[error("{0:?} is not PEERID:LIMITS (e.g. 12D3KooW...:calls=10)")]
    NoPeer(String),
    #[error("{0:?} is not a peer id")]
    BadPeer(String),
    #[error("no limits given: write `none` for no limit, or e.g. calls=100")]
    Empty,
    #[error("quota {0} is given twice")]
    Repeated(&'static str),
}

/// `calls=100,tokens=200000,usd=0.50`; any subset; `none` (as the whole
/// text or as a value) is no limit. Empty text is an error (an unset shell
/// variable must not turn quotas off), and so is a name given twice.
impl FromStr for QuotaLimits {
    type Err = QuotaParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut limits = Self::UNLIMITED;
        let text = text.trim();
        if text.eq_ignore_ascii_case("none") {
            return Ok(limits);
        }
        let mut given: Vec<&str> = Vec::with_capacity(3);
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) =
                pair.split_once('=').ok_or_else(|| QuotaParseError::NotAPair(pair.to_string()))?;
            let (name, value) = (name.trim(), value.trim());
            if given.contains(&name) {
                let name = ["calls", "tokens", "usd"].into_iter().find(|n| *n == name).unwrap_or("limit");
                return Err(QuotaParseError::Repeated(name));
            }
            given.push(name);
            let none = value.eq_ignore_ascii_case("none");
            let bad = |name, unit| QuotaParseError::BadValue { name, value: value.to_string(), unit };
            match name {
                "calls" => {
                    limits.calls =
                        (!none).then(|| value.parse()).transpose().map_err(|_| bad("calls", "calls"))?
                }
                "tokens" => {
                    limits.tokens =
                        (!none).then(|| value.parse()).transpose().map_err(|_| bad("tokens", "tokens"))?
                }
                "usd" => {
                    let usd: Option<f64> =
                        (!none).then(|| value.parse()).transpose().map_err(|_| bad("usd", "US dollars"))?;
                    if usd.is_some_and(|usd| !usd.is_finite() || usd < 0.0) {
                        return Err(bad("usd", "US dollars"));
                    }
                    limits.usd = usd;
                }
                other => return Err(QuotaParseError::UnknownLimit(other.to_string())),
            }
        }
        if given.is_empty() {
            return Err(QuotaParseError::Empty);
        }
        Ok(limits)
    }
}

/// One peer's override: `PEERID:calls=...` (`--peer-quota-for`).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerOverride {
    /// The peer's libp2p `PeerId`, as text.
    pub peer: String,
    pub limits: QuotaLimits,
}

impl FromStr for PeerOverride {
    type Err = QuotaParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (peer, limits) = text.split_once(':').ok_or_else(|| QuotaParseError::NoPeer(text.to_string()))?;
        let peer = peer.trim();
        libp2p::PeerId::from_str(peer).map_err(|_| QuotaParseError::BadPeer(peer.to_string()))?;
        Ok(Self { peer: peer.to_string(), limits: limits.parse()? })
    }
}

/// The limits every remote peer gets, and the peers that get others.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QuotaConfig {
    pub default: QuotaLimits,
    /// Overrides by `PeerId`; each replaces the default entirely.
    pub peers: BTreeMap<String, QuotaLimits>,
}

impl QuotaConfig {
    /// A default and overrides (a later override of the same peer wins).
    pub fn new(default: QuotaLimits, overrides: impl IntoIterator<Item = PeerOverride>) -> Self {
        Self { default, peers: overrides.into_iter().map(|o| (o.peer, o.limits)).collect() }
    }

    /// The limits of `peer` (a `PeerId` as text).
    pub fn limits_of(&self, peer: &str) -> QuotaLimits {
        self.peers.get(peer).copied().unwrap_or(self.default)
    }
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Limit {
    Calls,
    Tokens,
    Usd,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Calls => "calls",
            Self::Tokens => "tokens",
            Self::Usd => "usd",
        }
    }
}

/// A call refused: which limit, what was used of it this hour.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("quota: {peer} has used {used} of its {allowed} {} per hour here", limit.as_str())]
pub struct Refusal {
    pub peer: String,
    pub limit: Limit,
    /// Used in the window, in the limit's unit (calls, tokens, USD).
    pub used: f64,
    pub allowed: f64,
}

/// What a peer spent in one bucket (or a window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub calls: u64,
    pub tokens: u64,
    pub usd: f64,
}

impl Usage {
    fn add(&mut self, other: &Usage) {
        // Token counts come from the provider's stream: never trust them
        // not to overflow.
        self.calls = self.calls.saturating_add(other.calls);
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.usd += other.usd;
    }
}

#[derive(Debug, Default)]
struct PeerAccount {
    /// (bucket number, usage in it), oldest first, none older than the window.
    buckets: VecDeque<(u64, Usage)>,
    /// Everything since the node started.
    total: Usage,
    refused: BTreeMap<Limit, u64>,
}

impl PeerAccount {
    fn window(&mut self, bucket: u64) -> Usage {
        while self.buckets.front().is_some_and(|(b, _)| b + BUCKETS <= bucket) {
            self.buckets.pop_front();
        }
        let mut sum = Usage::default();
        for (_, usage) in &self.buckets {
            sum.add(usage);
        }
        sum
    }

    fn charge(&mut self, bucket: u64, usage: Usage) {
        match self.buckets.back_mut() {
            Some((b, current)) if *b == bucket => current.add(&usage),
            _ => self.buckets.push_back((bucket, usage)),
        }
        self.total.add(&usage);
    }
}

/// One peer's line in `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerQuotaReport {
    pub peer: String,
    /// Used in the last hour.
    pub hour: Usage,
    pub limits: QuotaLimits,
    /// Used since the node started.
    pub total: Usage,
    /// Calls refused since the node started, by limit.
    pub refused: BTreeMap<Limit, u64>,
}

/// The `quota` part of `/v1/status`: the limits, and every peer that has
/// called here (and only those).
#[derive(Debug, Clone, Serialize)]
pub struct QuotaReport {
    pub window_s: u64,
    pub default: QuotaLimits,
    pub overrides: BTreeMap<String, QuotaLimits>,
    pub peers: Vec<PeerQuotaReport>,
}

/// The per-peer accounts of one node. Thread-safe; every method takes the
/// time so tests can move it.
#[derive(Debug)]
pub struct PeerQuotas {
    config: QuotaConfig,
    started: Instant,
    accounts: Mutex<HashMap<String, PeerAccount>>,
}

impl PeerQuotas {
    pub fn new(config: QuotaConfig) -> Self {
        Self { config, started: Instant::now(), accounts: Mutex::new(HashMap::new()) }
    }

    fn bucket(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs() / BUCKET.as_secs()
    }

    fn accounts(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerAccount>> {
        // A panic while holding the lock leaves sums that are still sums.
        self.accounts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits one model call for `peer` and charges it as a call, or says
    /// which limit refuses it (counted in `refused`). Tokens and USD are
    /// checked as "not yet exhausted": their cost comes with `charge`.
    pub fn admit(&self, peer: &str, now: Instant) -> Result<(), Refusal> {
        let limits = self.config.limits_of(peer);
        let bucket = self.bucket(now);
        let mut accounts = self.accounts();
        let account = accounts.entry(peer.to_string()).or_default();
        let used = account.window(bucket);
        let over = [
            limits.calls.filter(|l| used.calls >= *l).map(|l| (Limit::Calls, used.calls as f64, l as f64)),
            limits
                .tokens
                .filter(|l| used.tokens >= *l)
                .map(|l| (Limit::Tokens, used.tokens as f64, l as f64)),
            limits.usd.filter(|l| used.usd >= *l).map(|l| (Limit::Usd, used.usd, l)),
        ];
        if let Some((limit, used, allowed)) = over.into_iter().flatten().next() {
            *account.refused.entry(limit).or_default() += 1;
            return Err(Refusal { peer: peer.to_string(), limit, used, allowed });
        }
        account.charge(bucket, Usage { calls: 1, tokens: 0, usd: 0.0 });
        Ok(())
    }

    /// Whether `peer` has used up any of its limits this hour (nothing is
    /// charged or counted): a voter then ranks without calling its model.
    pub fn exhausted(&self, peer: &str, now: Instant) -> bool {
        let limits = self.config.limits_of(peer);
        let bucket = self.bucket(now);
        let used = self.accounts().get_mut(peer).map(|account| account.window(bucket)).unwrap_or_default();
        limits.calls.is_some_and(|l| used.calls >= l)
            || limits.tokens.is_some_and(|l| used.tokens >= l)
            || limits.usd.is_some_and(|l| used.usd >= l)
    }

    /// Charges what an admitted call spent, once it is known.
    pub fn charge(&self, peer: &str, tokens: u64, usd: f64, now: Instant) {
        let bucket = self.bucket(now);
        let usd = if usd.is_finite() && usd > 0.0 { usd } else { 0.0 };
        self.accounts().entry(peer.to_string()).or_default().charge(bucket, Usage { calls: 0, tokens, usd });
    }

    /// The limits and each calling peer's usage, peers in `PeerId` order.
    pub fn report(&self, now: Instant) -> QuotaReport {
        let bucket = self.bucket(now);
        let mut accounts = self.accounts();
        let mut peers: Vec<PeerQuotaReport> = accounts
            .iter_mut()
            .map(|(peer, account)| PeerQuotaReport {
                peer: peer.clone(),
                hour: account.window(bucket),
                limits: self.config.limits_of(peer),
                total: account.total,
                refused: account.refused.clone(),
            })
            .collect();
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        QuotaReport {
            window_s: WINDOW.as_secs(),
            default: self.config.default,
            overrides: self.config.peers.clone(),
            peers,
        }
    }
}

impl fmt::Display for QuotaLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        write!(
            f,
            "calls={},tokens={},usd={}",
            show(self.calls.map(|v| v.to_string())),
            show(self.tokens.map(|v| v.to_string())),
            show(self.usd.map(|v| v.to_string()))
        )
    }
}

#[cfg(test)]
#[path = "quota_tests.rs"]
mod tests;

impl QuotaReport {
    /// Registers, under the registry's prefix: `peer_quota_refusals_total
    /// {peer,limit}`, `peer_quota_hour{peer,resource}` (calls, tokens, usd
    /// used in the last hour), `peer_quota_limit{peer,resource}` (absent
    /// when unlimited) and `peer_usage_total{peer,resource}` (since start).
    /// Only peers that have called here get series.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;
        type Labels = Vec<(String, String)>;
        let labels = |peer: &str, key: &str, value: &str| -> Labels {
            vec![("peer".into(), peer.into()), (key.into(), value.into())]
        };
        let refusals = Family::<Labels, Counter>::default();
        let hour = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let limit = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let total = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        for peer in &self.peers {
            let p = peer.peer.as_str();
            for (which, n) in &peer.refused {
                refusals.get_or_create(&labels(p, "limit", which.as_str())).inc_by(*n);
            }
            let rows = [
                (
                    "calls",
                    peer.hour.calls as f64,
                    peer.total.calls as f64,
                    peer.limits.calls.map(|l| l as f64),
                ),
                (
                    "tokens",
                    peer.hour.tokens as f64,
                    peer.total.tokens as f64,
                    peer.limits.tokens.map(|l| l as f64),
                ),
                ("usd", peer.hour.usd, peer.total.usd, peer.limits.usd),
            ];
            for (resource, used, since_start, allowed) in rows {
                hour.get_or_create(&labels(p, "resource", resource)).set(used);
                total.get_or_create(&labels(p, "resource", resource)).inc_by(since_start);
                if let Some(allowed) = allowed {
                    limit.get_or_create(&labels(p, "resource", resource)).set(allowed);
                }
            }
        }
        registry.register(
            "peer_quota_refusals",
            "Remote peers' model calls refused by quota, by limit",
            refusals,
        );
        registry.register(
            "peer_quota_hour",
            "Remote peers' use of this node's provider in the last hour",
            hour,
        );
        registry.register("peer_quota_limit", "Remote peers' hourly limits here (absent: no limit)", limit);
        registry.register("peer_usage", "Remote peers' use of this node's provider since it started", total);
    }
}
