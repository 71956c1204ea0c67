//! The three ways a node can see the cluster, and what `members --view`
//! returns for each.

use hivemesh_crdt::majority::Metrics;
use hivemesh_protocol::{GpuInfo, PeerEntry, Role};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::net::MemberInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ViewKind {
    /// Majority rule over every live peer's member list (small clusters).
    Majority,
    /// The signed registry, keeping only nodes SWIM says are alive or suspect.
    Registry,
    /// SWIM's own member list, every state included.
    Swim,
}

/// A name `ViewKind::from_str` does not know (`members --view`, the API's
/// `?view=`): it takes `majority`, `registry` or `swim`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown view {name:?}; expected majority, registry or swim")]
pub struct UnknownView {
    /// The name as given.
    pub name: String,
}

impl std::str::FromStr for ViewKind {
    type Err = UnknownView;

    fn from_str(text: &str) -> Result<Self, UnknownView> {
        match text {
            "majority" => Ok(Self::Majority),
            "registry" => Ok(Self::Registry),
            "swim" => Ok(Self::Swim),
            other => Err(UnknownView { name: other.to_string() }),
        }
    }
}

/// One member in a view: SWIM's facts, plus its registry entry where known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewMember {
    #[serde(flatten)]
    pub member: MemberInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_updated_ms: Option<u64>,
}

impl ViewMember {
    pub fn new(member: MemberInfo, entry: Option<&PeerEntry>) -> Self {
        Self {
            member,
            role: entry.map(|e| e.role),
            models: entry.map(|e| e.capabilities.models.clone()).unwrap_or_default(),
            gpu: entry.and_then(|e| e.capabilities.gpu.clone()),
            load: entry.map(|e| e.load),
            registry_updated_ms: entry.map(|e| e.last_updated_ms),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewReport {
    pub view: ViewKind,
    /// The view this node uses by default (majority at or below the
    /// cluster-size threshold, registry above it).
    pub active_view: ViewKind,
    pub me: ViewMember,
    pub members: Vec<ViewMember>,
    /// Majority view only: the resolver's metrics and how many peers answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub majority: Option<MajorityInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MajorityInfo {
    pub peers_asked: usize,
    pub peers_answered: usize,
    pub metrics: Metrics,
}

/// A member as a majority-rule entry: `id` is its PeerId, `last_updated` the
/// reporter's last change for it; state, addresses, incarnation and
/// generation form the version peers vote on.
pub fn member_entry(member: &MemberInfo) -> serde_json::Value {
    let seconds = (member.last_change_ms / 1000) as i64;
    let nanos = (member.last_change_ms % 1000) as i128 * 1_000_000;
    let instant = OffsetDateTime::from_unix_timestamp(seconds)
        .map(|t| t + time::Duration::nanoseconds(nanos as i64))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let last_updated = instant.format(&Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
    serde_json::json!({
        "id": member.peer_id,
        "last_updated": last_updated,
        "state": member.state,
        "addresses": member.addresses,
        "incarnation": member.incarnation,
        "generation": member.generation,
    })
}

/// Back from a resolved entry to a member (the fields `member_entry` wrote).
pub fn member_from_entry(entry: &serde_json::Map<String, serde_json::Value>) -> Option<MemberInfo> {
    let text = |key: &str| entry.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let last_change_ms = text("last_updated")
        .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok())
        .map_or(0, |t| (t.unix_timestamp_nanos() / 1_000_000) as u64);
    Some(MemberInfo {
        peer_id: text("id")?,
        state: text("state").unwrap_or_else(|| "alive".into()),
        addresses: serde_json::from_value(entry.get("addresses")?.clone()).unwrap_or_default(),
        incarnation: entry.get("incarnation").and_then(|v| v.as_u64()).unwrap_or(0) as u16,
        generation: entry.get("generation").and_then(|v| v.as_u64()).unwrap_or(0),
        last_change_ms,
        // A majority entry is about the member, not about our path to it.
        path: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_names_parse_and_an_unknown_one_is_named() {
        assert_eq!("majority".parse::<ViewKind>(), Ok(ViewKind::Majority));
        assert_eq!("registry".parse::<ViewKind>(), Ok(ViewKind::Registry));
        assert_eq!("swim".parse::<ViewKind>(), Ok(ViewKind::Swim));
        let error = "gossip".parse::<ViewKind>().expect_err("unknown view");
        assert_eq!(error, UnknownView { name: "gossip".into() });
        assert_eq!(error.to_string(), "unknown view \"gossip\"; expected majority, registry or swim");
    }
}
