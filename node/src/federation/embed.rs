//! Council voters whose own provider has no embedding model borrow a live
//! peer's, through the swarm gateway (docs/adr/0020), to rank candidates
//! by meaning rather than by word overlap.
//!
//! The signed registry lists model names, not what each model does, so the
//! voter asks peers for "your embedding model" (an embeddings request with
//! an empty model name): a peer with `--embedding-model` answers with it, a
//! peer without one says so at once, without calling its provider. Which
//! peers have none is remembered for [`FORGET_AFTER`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hivemesh_llm::provider::openai::embeddings_response;
use hivemesh_protocol::NodeId;
use libp2p::PeerId;

use crate::gateway::{Candidate, Endpoint, ForwardRequest, forward};
use crate::net::NodeClient;
use crate::replica::ViewKind;

/// How long a peer that has no embedding model is not asked again.
pub const FORGET_AFTER: Duration = Duration::from_secs(300);

/// Largest embeddings response read.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Peers known to have no embedding model, and since when.
#[derive(Default)]
pub struct PeerEmbeddings {
    without: Mutex<HashMap<PeerId, Instant>>,
}

impl PeerEmbeddings {
    fn without(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Instant>> {
        self.without.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One embedding per text, in order, from the first live peer (least
    /// loaded first) that has an embedding model; `None` when none does.
    pub async fn embed(&self, node: &NodeClient, me: NodeId, texts: &[String]) -> Option<Vec<Vec<f32>>> {
        let report = node.view(Some(ViewKind::Registry)).await.ok()?;
        let me = me.to_peer_id().ok();
        let mut peers: Vec<Candidate> = report
            .members
            .iter()
            .filter(|m| m.member.state == "alive")
            .filter_map(|m| {
                let peer = m.member.peer_id.parse::<PeerId>().ok()?;
                Some(Candidate { peer, load: m.load.unwrap_or(0), me: false })
            })
            .filter(|c| Some(c.peer) != me)
            .collect();
        {
            let mut without = self.without();
            without.retain(|_, since| since.elapsed() < FORGET_AFTER);
            peers.retain(|c| !without.contains_key(&c.peer));
        }
        peers.sort_by_key(|c| (c.load, c.peer.to_bytes()));
        let mut control = node.streams();
        for candidate in &peers {
            let body = serde_json::json!({ "model": "", "input": texts }).to_string().into_bytes();
            let request = ForwardRequest { endpoint: Endpoint::Embeddings, model: String::new(), body };
            let Ok(answer) = forward(&mut control, None, candidate, request).await else { continue };
            if answer.head.status == 404 {
                self.without().insert(candidate.peer, Instant::now());
                continue;
            }
            if answer.head.status != 200 {
                continue;
            }
            let mut bytes = Vec::new();
            let mut body = answer.body;
            while let Some(Ok(chunk)) = body.next().await {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > MAX_RESPONSE_BYTES {
                    break;
                }
            }
            match embeddings_response(&candidate.peer.to_string(), &bytes, texts.len()) {
                Ok(embeddings) => return Some(embeddings),
                Err(error) => tracing::debug!(%error, "a peer's embeddings did not parse"),
            }
        }
        None
    }
}
