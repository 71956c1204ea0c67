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
            if let Some(embeddings) = parse(&bytes, texts.len()) {
                return Some(embeddings);
            }
        }
        None
    }
}

/// OpenAI's embeddings list, in input order; `None` unless it holds exactly
/// `count` vectors of one length.
fn parse(bytes: &[u8], count: usize) -> Option<Vec<Vec<f32>>> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let mut rows: Vec<(u64, Vec<f32>)> = value["data"]
        .as_array()?
        .iter()
        .map(|row| {
            let index = row["index"].as_u64()?;
            let vector: Option<Vec<f32>> =
                row["embedding"].as_array()?.iter().map(|x| x.as_f64().map(|x| x as f32)).collect();
            Some((index, vector?))
        })
        .collect::<Option<_>>()?;
    rows.sort_by_key(|(index, _)| *index);
    let in_order = rows.iter().enumerate().all(|(i, (index, _))| *index == i as u64);
    let width = rows.first().map(|(_, v)| v.len())?;
    (rows.len() == count && in_order && width > 0 && rows.iter().all(|(_, v)| v.len() == width))
        .then(|| rows.into_iter().map(|(_, v)| v).collect())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn an_embeddings_list_is_read_in_input_order_or_not_at_all() {
        let body = br#"{"data":[{"index":1,"embedding":[0.0,1.0]},{"index":0,"embedding":[1.0,0.0]}]}"#;
        assert_eq!(parse(body, 2), Some(vec![vec![1.0, 0.0], vec![0.0, 1.0]]));
        assert_eq!(parse(body, 3), None, "one vector per text");
        assert_eq!(parse(br#"{"data":[{"index":0,"embedding":[1.0]},{"index":1,"embedding":[]}]}"#, 2), None);
        assert_eq!(parse(br#"{"error":{"message":"not an embedding model"}}"#, 2), None);
        assert_eq!(parse(b"not json", 1), None);
    }
}
