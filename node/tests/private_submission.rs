//! A node outside a private swarm cannot hand a keyed node a job or a
//! ballot: it knows the keyed node's address and peer id and pushes a job
//! document holding a signed ballot straight at it, and nothing arrives.
//! Likewise for a peer off an allowlist. Real nodes on loopback (TCP, as a
//! swarm key requires); the separate-host version of the refusal itself is
//! tests/private_swarm.rs.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use hivemesh_node::net::private::PreSharedKey;
use hivemesh_node::{Multiaddr, NodeConfig, NodeHandle, load_or_create, spawn_node};
use hivemesh_protocol::{Ballot, BallotChoice, JobId, NodeId, TallyRule, encode_message, seal};
use libp2p::PeerId;

/// How long the outsider keeps trying (its pushes are retried by the job
/// sync rounds, every anti-entropy period).
const TRYING: Duration = Duration::from_secs(4);
/// The longest wait for the private node to count its first refusal.
const REFUSAL_LIMIT: Duration = Duration::from_secs(30);

async fn start(
    dir: &Path,
    key: Option<PreSharedKey>,
    allow: Option<HashSet<PeerId>>,
    bootstrap: Option<Multiaddr>,
) -> NodeHandle {
    let mut config = NodeConfig::loopback(dir.to_path_buf());
    config.listen.retain(|a| a.to_string().contains("/tcp/"));
    config.swarm_key = key;
    config.allow_peers = allow;
    config.bootstrap = bootstrap.into_iter().collect();
    config.replication.anti_entropy = Duration::from_millis(500);
    spawn_node(config).await.expect("node starts")
}

/// The outsider opens a job with `target` as its only peer and contributes
/// a signed ballot: both are pushed to `target` at once and on every sync
/// round after.
async fn push_job_and_ballot(outsider: &NodeHandle, outsider_dir: &Path, target: &NodeHandle) -> JobId {
    let job = JobId([0x5A; 16]);
    let target_id = NodeId::from_peer_id(&target.peer_id).expect("ed25519 peer");
    let client = outsider.client();
    client.open_job(job, vec![target_id]).await.expect("open the job locally");
    let key = load_or_create(outsider_dir).expect("outsider key").identity;
    let ballot = Ballot {
        job,
        voter: key.node_id(),
        rule: TallyRule::Plurality,
        choice: BallotChoice::Single(0),
        weight: 1,
    };
    let envelope = encode_message(&seal(&key, 1, 1, &ballot).expect("seal")).expect("encode");
    client.contribute(job, "ballot", envelope).await.expect("contribute locally");
    job
}

async fn assert_nothing_arrives(target: &NodeHandle, job: JobId, reason: &str) {
    // At least TRYING, and until a refusal is counted (a handshake with a
    // mismatched key may only fail at its 10 s timeout on a loaded machine).
    let started = Instant::now();
    let mut refused = 0;
    while started.elapsed() < TRYING || refused == 0 {
        assert!(target.client().job(job).await.is_err(), "the job reached the private node");
        refused = target.status().await.expect("status").refused.get(reason).copied().unwrap_or(0);
        if started.elapsed() > REFUSAL_LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(target.client().jobs(10).await.expect("jobs").is_empty(), "no job of any kind arrived");
    assert!(refused >= 1, "the private node refused the outsider's connections ({reason}): {refused}");
    let members = target.members().await.expect("members");
    assert_eq!(members.members.len(), 0, "the outsider is not a member: {members:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_swarm_key_cannot_push_a_job_or_a_ballot() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let keyed = start(dirs[0].path(), Some(PreSharedKey::new([1; 32])), None, None).await;
    let address = keyed.address("tcp").expect("tcp address");
    let outsider = start(dirs[1].path(), Some(PreSharedKey::new([2; 32])), None, Some(address)).await;
    let job = push_job_and_ballot(&outsider, dirs[1].path(), &keyed).await;
    assert_nothing_arrives(&keyed, job, "swarm_key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_swarm_key_cannot_push_a_job_or_a_ballot() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let keyed = start(dirs[0].path(), Some(PreSharedKey::new([1; 32])), None, None).await;
    let address = keyed.address("tcp").expect("tcp address");
    let outsider = start(dirs[1].path(), None, None, Some(address)).await;
    let job = push_job_and_ballot(&outsider, dirs[1].path(), &keyed).await;
    assert_nothing_arrives(&keyed, job, "swarm_key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_off_the_allowlist_cannot_push_a_job_or_a_ballot() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let somebody_else = hivemesh_protocol::NodeIdentity::from_seed([3; 32]).peer_id();
    let private = start(dirs[0].path(), None, Some([somebody_else].into()), None).await;
    let address = private.address("tcp").expect("tcp address");
    let outsider = start(dirs[1].path(), None, None, Some(address)).await;
    let job = push_job_and_ballot(&outsider, dirs[1].path(), &private).await;
    assert_nothing_arrives(&private, job, "not_allowed").await;
}
