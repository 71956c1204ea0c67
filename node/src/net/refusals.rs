//! The driver's side of private swarms (ADR 0016): which addresses a keyed
//! node may dial, allowlist reloads, and refused connections counted by
//! reason and logged once per peer or host.

use std::collections::HashSet;

use libp2p::{Multiaddr, PeerId, allow_block_list};

use super::describe::error_chain;
use super::driver::Driver;

impl Driver {
    /// Whether this node may dial `addr`: with a swarm key, never over QUIC
    /// (the transport has none; this keeps learned QUIC addresses out).
    pub(super) fn dialable(&self, addr: &Multiaddr) -> bool {
        self.swarm_key.is_none() || !super::private::is_quic(addr)
    }

    /// Applies a new allowlist: peers removed from it are disconnected at
    /// once (allow_block_list closes their connections). `false` when the
    /// node runs without an allowlist.
    pub(super) fn set_allowed(&mut self, peers: HashSet<PeerId>) -> bool {
        let Some(list) = self.swarm.behaviour_mut().allow.as_mut() else { return false };
        let old: HashSet<PeerId> = list.allowed_peers().clone();
        for peer in old.difference(&peers) {
            list.disallow_peer(*peer);
        }
        for peer in peers.difference(&old) {
            list.allow_peer(*peer);
        }
        let (added, removed) = (peers.difference(&old).count(), old.difference(&peers).count());
        tracing::info!(peers = peers.len(), added, removed, "allowlist reloaded");
        // A peer refused before may be admitted now: log its next refusal.
        self.refusals_logged.clear();
        true
    }

    /// A failed incoming connection: refused by the allowlist, or (on a node
    /// with a swarm key) a handshake that failed, which is what a peer with
    /// no key or another key causes.
    pub(super) fn on_incoming_error(
        &mut self,
        from: &Multiaddr,
        error: &libp2p::swarm::ListenError,
        peer: Option<PeerId>,
    ) {
        use libp2p::swarm::ListenError;
        match error {
            ListenError::Denied { cause }
                if cause.downcast_ref::<allow_block_list::NotAllowed>().is_some() =>
            {
                let who = peer.map_or_else(|| from.to_string(), |p| p.to_string());
                self.refuse("not_allowed", &who, || {
                    format!("refused a connection from {who} ({from}): not on the allowlist")
                });
            }
            ListenError::Transport(e) if self.swarm_key.is_some() => {
                let host = host_of(from);
                let reason = error_chain(e);
                self.refuse("swarm_key", &host, || {
                    format!(
                        "refused a connection from {from}: the swarm-key handshake failed (the peer has no key \
                         or another one): {reason}"
                    )
                });
            }
            other => tracing::debug!(%from, error = %other, "incoming connection failed"),
        }
    }

    /// A failed dial. Counted as a refusal when the allowlist denied it, or
    /// when this node has a swarm key and the connection opened but its
    /// handshake failed (the peer has no key or another one). A failure to
    /// reach a bootstrap address or peer is logged once, until it is reached
    /// (later failures at debug level), not on every retry.
    pub(super) fn on_outgoing_error(
        &mut self,
        connection_id: libp2p::swarm::ConnectionId,
        peer_id: Option<PeerId>,
        error: &libp2p::swarm::DialError,
    ) {
        use libp2p::swarm::DialError;
        let reason = super::driver::dial_reason(error);
        if let (DialError::Denied { cause }, Some(peer)) = (error, peer_id)
            && cause.downcast_ref::<allow_block_list::NotAllowed>().is_some()
        {
            self.refuse("not_allowed", &peer.to_string(), || {
                format!("not dialling {peer}: it is not on the allowlist")
            });
        }
        // libp2p reports an upgrade (pnet, then noise) that failed after
        // the TCP connection opened as "Handshake failed"; with a swarm key,
        // a mismatched or missing key is what makes it fail.
        if self.swarm_key.is_some()
            && matches!(error, DialError::Transport(_))
            && reason.contains("Handshake failed")
        {
            let who = peer_id.map_or_else(|| "an address".to_string(), |p| p.to_string());
            self.refuse("swarm_key", &who, || {
                format!(
                    "cannot connect to {who}: the swarm-key handshake failed (it has no key or another one): \
                     {reason}"
                )
            });
        }
        if self.leaving.is_some() {
            return;
        }
        let target = match self.unresolved.dial_ended(connection_id) {
            Some((addr, retry_in)) => Some((
                format!("bootstrap address {addr}"),
                format!("retrying in {:.1} s, then with backoff", retry_in.as_secs_f64()),
            )),
            None => peer_id.filter(|peer| self.is_bootstrap(peer)).map(|peer| {
                (format!("bootstrap peer {peer}"), "will keep retrying with backoff".to_string())
            }),
        };
        match target {
            // The README promises a line for an unreachable bootstrap.
            Some((what, retry)) if self.refusals_logged.insert(format!("unreachable {what}")) => {
                tracing::warn!("cannot reach {what}: {reason}; {retry} (logged once until it is reached)")
            }
            Some((what, _)) => tracing::debug!(%what, %reason, "bootstrap still unreachable"),
            None => tracing::debug!(?peer_id, %error, "outgoing connection failed"),
        }
    }

    /// Counts a refusal and logs it the first time for this reason and peer.
    pub(super) fn refuse(&mut self, reason: &str, who: &str, line: impl FnOnce() -> String) {
        *self.refused.entry(reason.to_string()).or_default() += 1;
        if self.refusals_logged.insert(format!("{reason} {who}")) {
            tracing::warn!("{} (logged once per peer)", line());
        } else {
            tracing::debug!(reason, who, "connection refused again");
        }
    }
}

/// The IP address (or the whole address) of a remote: ports change with
/// every connection, so refusals are logged once per host.
fn host_of(addr: &Multiaddr) -> String {
    use libp2p::multiaddr::Protocol;
    addr.iter()
        .find_map(|p| match p {
            Protocol::Ip4(ip) => Some(ip.to_string()),
            Protocol::Ip6(ip) => Some(ip.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| addr.to_string())
}
