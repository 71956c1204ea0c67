//! A running node: its addresses, its client, and the tasks to stop.

use std::net::SocketAddr;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::federation::FederationHandle;
use crate::membership::MemberEvent;
use crate::net::{ClientError, MembersReport, NodeClient, StatusReport};

/// How long a leaving node keeps its API up after the driver stopped, so
/// open event streams can write the error they end with.
const STREAM_GRACE: Duration = Duration::from_millis(100);

/// A running node. Dropping every handle (and API client) stops it without a
/// goodbye; `leave` is the graceful way out.
pub struct NodeHandle {
    pub peer_id: PeerId,
    pub listen: Vec<Multiaddr>,
    pub api: Option<SocketAddr>,
    /// Time from `spawn_node` to listening with the API up.
    pub ready_in: Duration,
    pub(super) client: NodeClient,
    pub(super) task: JoinHandle<()>,
    pub(super) api_task: Option<JoinHandle<()>>,
    pub(super) federation: Option<(FederationHandle, JoinHandle<()>)>,
    /// Serves forwarded OpenAI requests (ADR 0020); with jobs only.
    pub(super) gateway_task: Option<JoinHandle<()>>,
}

impl NodeHandle {
    pub fn client(&self) -> NodeClient {
        self.client.clone()
    }

    pub async fn members(&self) -> Result<MembersReport, ClientError> {
        self.client.members().await
    }

    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.client.status().await
    }

    /// Submitting and cancelling jobs, when the node takes part in them.
    pub fn federation(&self) -> Option<FederationHandle> {
        self.federation.as_ref().map(|(handle, _)| handle.clone())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.client.member_events()
    }

    /// A dialable address with `/p2p/<peer>`, preferring `transport`
    /// ("quic-v1" or "tcp").
    pub fn address(&self, transport: &str) -> Option<Multiaddr> {
        let addr = self.listen.iter().find(|a| a.to_string().contains(transport))?;
        Some(addr.clone().with(libp2p::multiaddr::Protocol::P2p(self.peer_id)))
    }

    /// Graceful leave: peers mark this node "left" at once.
    pub async fn leave(self, deadline: Duration) {
        let _ = self.client.leave(deadline).await;
        let _ = self.task.await;
        // Open event streams end with an error once the driver stops; let
        // them write it before the API goes.
        tokio::time::sleep(STREAM_GRACE).await;
        if let Some(api) = self.api_task {
            api.abort();
        }
        if let Some((_, federation)) = self.federation {
            federation.abort();
        }
        if let Some(gateway) = self.gateway_task {
            gateway.abort();
        }
    }

    /// Stops the node without a goodbye, as a crash would: its tasks are
    /// aborted and awaited, so its data directory (sled holds an exclusive
    /// lock on it) is free for a restart once this returns.
    pub async fn kill(self) {
        self.task.abort();
        if let Some(api) = &self.api_task {
            api.abort();
        }
        if let Some((_, federation)) = &self.federation {
            federation.abort();
        }
        if let Some(gateway) = &self.gateway_task {
            gateway.abort();
        }
        let _ = self.task.await;
        if let Some(api) = self.api_task {
            let _ = api.await;
        }
        if let Some((_, federation)) = self.federation {
            let _ = federation.await;
        }
        if let Some(gateway) = self.gateway_task {
            let _ = gateway.await;
        }
    }

    /// Resolves when the node stops (after a leave requested over the API).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.task).await;
        tokio::time::sleep(STREAM_GRACE).await;
        if let Some(api) = self.api_task.take() {
            api.abort();
        }
        if let Some((_, federation)) = self.federation.take() {
            federation.abort();
        }
        if let Some(gateway) = self.gateway_task.take() {
            gateway.abort();
        }
    }
}
