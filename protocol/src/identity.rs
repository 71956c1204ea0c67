//! Node identity: one ed25519 key that signs application messages and from
//! which the libp2p `PeerId` is derived, so the transport's authenticated peer
//! and the signer of a message are provably the same node.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

/// Why a key could not be created or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the operating system's random source failed: {0}")]
    Randomness(String),
    #[error("not a PKCS#8 ed25519 private key in PEM form: {0}")]
    Malformed(String),
    #[error("could not encode the key: {0}")]
    Encode(String),
}

/// The public half of a node identity: the raw ed25519 public key.
///
/// Displayed and parsed as the libp2p `PeerId` string (`12D3Koo...`),
/// because that is the name users see everywhere else.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The key to verify this node's signatures with; fails if the bytes are
    /// not a valid curve point (a peer can send any 32 bytes).
    pub fn verifying_key(&self) -> Result<VerifyingKey, InvalidNodeId> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| InvalidNodeId)
    }

    /// The libp2p `PeerId` of this node.
    pub fn to_peer_id(&self) -> Result<PeerId, InvalidNodeId> {
        let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0).map_err(|_| InvalidNodeId)?;
        Ok(libp2p_identity::PublicKey::from(key).to_peer_id())
    }

    /// Recovers the node id from a `PeerId`; only ed25519 peer ids have one.
    pub fn from_peer_id(peer: &PeerId) -> Result<Self, InvalidNodeId> {
        let key = libp2p_identity::PublicKey::try_decode_protobuf(peer.as_ref().digest())
            .map_err(|_| InvalidNodeId)?
            .try_into_ed25519()
            .map_err(|_| InvalidNodeId)?;
        Ok(NodeId(key.to_bytes()))
    }
}

/// The bytes are not an ed25519 public key (or the peer id is not ed25519).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid ed25519 node id")]
pub struct InvalidNodeId;

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_peer_id() {
            Ok(peer) => write!(f, "{peer}"),
            Err(_) => write!(f, "invalid-key:{}", hex(&self.0)),
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = InvalidNodeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let peer = PeerId::from_str(s).map_err(|_| InvalidNodeId)?;
        NodeId::from_peer_id(&peer)
    }
}

/// Lower-case hex, for places where a key must be shown but is not a peer id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node's private identity. Never serialized except through [`Self::to_pem`].
pub struct NodeIdentity {
    key: SigningKey,
}

impl NodeIdentity {
    /// A fresh identity from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Randomness(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// A deterministic identity; for tests and the simulation.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(&seed) }
    }

    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    pub fn peer_id(&self) -> PeerId {
        self.to_libp2p_keypair().public().to_peer_id()
    }

    /// The same key in libp2p's type, for the swarm's transport identity.
    pub fn to_libp2p_keypair(&self) -> libp2p_identity::Keypair {
        let mut secret = self.key.to_bytes();
        libp2p_identity::Keypair::ed25519_from_bytes(&mut secret)
            .expect("a 32-byte ed25519 secret is always accepted")
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }

    /// PKCS#8 PEM, the format `openssl pkey` also reads.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(text)
            .map(|key| Self { key })
            .map_err(|e| KeyError::Malformed(e.to_string()))
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeIdentity({})", self.node_id())
    }
}
