//! Federated jobs across three real nodes on loopback, each with its own
//! OpenAI-compatible provider (a real SSE server on loopback with its own
//! canned answers): council and pipeline jobs, `hivemesh tally` re-checking
//! an outcome, cancellation reaching every participant, a node killed
//! mid-job, and a peer that equivocates and forges ballots.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hivemesh::node::NodeHandle;
use hivemesh::node::load_or_create;
use hivemesh::protocol::{Ballot, BallotChoice, JobId, NodeIdentity, TallyRule, encode_message, seal};
use mesh::{LIMIT, Mesh};
use serde_json::{Value, json};

fn peer(node: &NodeHandle) -> String {
    node.peer_id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_council_job_is_answered_by_all_three_tallied_and_the_tally_rechecks() {
    let mesh = Mesh::new(
        ["Paris is the capital of France.", "The capital of France is Paris.", "Bananas are yellow."],
        [Duration::from_millis(1); 3],
        1,
    )
    .await;
    let id = mesh.submit(json!({ "question": "What is the capital of France?", "peers": 3 })).await;

    // Follow the job's events until `done`.
    let events = reqwest::get(format!("{}/v1/jobs/{id}/events", mesh.api(0))).await.expect("events");
    let mut body = events.bytes_stream();
    let mut text = String::new();
    let deadline = Instant::now() + LIMIT;
    while !text.contains("event: done") {
        let chunk = tokio::time::timeout_at(deadline.into(), body.next()).await.expect("events in time");
        text.push_str(&String::from_utf8_lossy(&chunk.expect("stream open").expect("chunk")));
    }
    for name in
        ["event: job", "event: candidate", "event: round", "event: ballot", "event: outcome", "event: tokens"]
    {
        assert!(text.contains(name), "{name} missing from the event stream:\n{text}");
    }

    let job = mesh.job(&id).await;
    let outcome = &job["outcome"];
    assert_eq!(outcome["status"], "done", "{job:#}");
    assert_eq!(outcome["answer"], "Final: Paris is the capital of France.");
    let authors: Vec<&str> =
        job["candidates"].as_array().expect("candidates").iter().filter_map(|c| c["peer"].as_str()).collect();
    for node in &mesh.nodes {
        assert!(authors.contains(&peer(node).as_str()), "a candidate from every node: {authors:?}");
    }
    assert_eq!(job["ballots"].as_array().expect("ballots").len(), 3);
    let winner = outcome["winner"].as_str().expect("winner");
    assert_ne!(winner, peer(&mesh.nodes[2]), "the outlier does not win");

    // `hivemesh tally` re-checks the signed ballots to the same winner.
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), outcome["ballot_file"].to_string()).expect("write ballots");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hivemesh"))
        .args(["tally", "--json", "--quorum", "2"])
        .arg(file.path())
        .output()
        .expect("run hivemesh tally");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let recheck: Value = serde_json::from_slice(&output.stdout).expect("tally json");
    assert_eq!(recheck["winner"]["label"].as_str(), Some(winner));
    assert_eq!(recheck["ranking"], outcome["tally"]["result"]["ranking"]);
    assert_eq!(recheck["valid"], 3);

    // Every provider was asked for a candidate; only the asker's curated
    // (an HTTP provider's curator rewrites; docs/adr/0012). Voters with no
    // embedding model of their own also ask peers' models for embeddings
    // (not counted here: those are /v1/embeddings requests).
    for (i, server) in mesh.servers.iter().enumerate() {
        let expected = if i == 0 { 2 } else { 1 };
        let chats = server.seen().iter().filter(|seen| seen.body["messages"].is_array()).count();
        assert_eq!(chats, expected, "chat calls to node {i}'s provider");
    }
    assert_eq!(outcome["curation"], "rewrite", "{outcome:#}");
    // Candidates are independent samples: each member's call has its own
    // seed, so identical requests never share a cached answer.
    let seeds: std::collections::HashSet<u64> = mesh
        .servers
        .iter()
        .map(|server| server.seen()[0].body["seed"].as_u64().expect("every candidate call is seeded"))
        .collect();
    assert_eq!(seeds.len(), 3, "three members, three seeds: {seeds:?}");
    // The API's bad-input paths name the problem.
    let client = reqwest::Client::new();
    let bad = client
        .post(format!("{}/v1/jobs", mesh.api(0)))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), 400);
    let unknown = client
        .post(format!("{}/v1/jobs", mesh.api(0)))
        .json(&json!({"question": "q", "profile": "nope"}))
        .send()
        .await
        .expect("post");
    assert_eq!(unknown.status(), 400);
    assert!(unknown.text().await.expect("body").contains("nope"));
    let missing = reqwest::get(format!("{}/v1/jobs/{}", mesh.api(0), JobId([1; 16]))).await.expect("get");
    assert_eq!(missing.status(), 404);
    let metrics =
        reqwest::get(format!("{}/metrics", mesh.api(0))).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("hivemesh_jobs_total{outcome=\"done\"} 1"), "{metrics}");
    assert!(metrics.contains("hivemesh_members{state=\"alive\"} 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_job_runs_its_stages_on_different_nodes() {
    let mesh = Mesh::new(["Paris.", "Paris.", "Paris."], [Duration::from_millis(1); 3], 1).await;
    let id = mesh.submit(json!({ "question": "Capital of France?", "mode": "pipeline" })).await;
    let job = mesh.wait_status(&id, |s| s != "running").await;
    let outcome = &job["outcome"];
    assert_eq!(outcome["status"], "done", "{job:#}");
    assert_eq!(outcome["answer"], "Final: Paris is the capital of France.");
    let peers: std::collections::HashSet<&str> = outcome["contributions"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(|c| c["peer"].as_str())
        .collect();
    assert_eq!(peers.len(), 3, "stages on three nodes: {outcome:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_every_participant_and_hangs_up_on_their_providers() {
    let slow = Duration::from_millis(200);
    let mesh = Mesh::new(["a b c d e f g h i j k l m n o p q r s t u v w x y z"; 3], [slow; 3], 1).await;
    let id = mesh.submit(json!({ "question": "Spell the alphabet slowly." })).await;
    let deadline = Instant::now() + LIMIT;
    while mesh
        .nodes
        .iter()
        .any(|n| n.federation().expect("fed").stats.running_calls.load(Ordering::Relaxed) == 0)
    {
        assert!(Instant::now() < deadline, "calls did not start everywhere");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancelled = Instant::now();
    let response =
        reqwest::Client::new().delete(format!("{}/v1/jobs/{id}", mesh.api(0))).send().await.expect("delete");
    assert_eq!(response.status(), 202);
    while mesh
        .nodes
        .iter()
        .any(|n| n.federation().expect("fed").stats.running_calls.load(Ordering::Relaxed) > 0)
    {
        assert!(Instant::now() < deadline, "a participant kept calling its model");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eprintln!("every participant stopped {:?} after the cancel", cancelled.elapsed());
    let job = mesh.wait_status(&id, |s| s == "cancelled").await;
    assert!(job["outcome"]["answer"].is_null());
    for (i, server) in mesh.servers.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.hangups().is_empty() {
            assert!(Instant::now() < deadline, "node {i}'s provider saw no hang-up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let again =
        reqwest::Client::new().delete(format!("{}/v1/jobs/{id}", mesh.api(0))).send().await.expect("delete");
    assert_eq!(again.status(), 409, "a finished job cannot be cancelled again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_job_is_left_out_and_the_job_says_so() {
    let mesh = Mesh::new(
        ["Paris is the capital.", "The capital is Paris.", "never finished"],
        [Duration::from_millis(1), Duration::from_millis(1), Duration::from_secs(5)],
        // Fast enough to see c die in a few seconds, slow enough that a
        // loaded CI machine does not falsely declare b down as well.
        2,
    )
    .await;
    let Mesh { mut nodes, servers: _servers, _dirs, _serial } = mesh;
    let c = nodes.pop().expect("c");
    let c_peer = peer(&c);
    let body = json!({ "question": "Capital?", "peers": 3, "quorum": 2 });
    let api = format!("http://{}", nodes[0].api.expect("api"));
    let response =
        reqwest::Client::new().post(format!("{api}/v1/jobs")).json(&body).send().await.expect("post");
    let id = response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.kill().await;
    let deadline = Instant::now() + LIMIT;
    let job = loop {
        let job: Value =
            reqwest::get(format!("{api}/v1/jobs/{id}")).await.expect("get").json().await.expect("json");
        if job["outcome"].is_object() {
            break job;
        }
        assert!(Instant::now() < deadline, "job did not finish without c: {job:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let outcome = &job["outcome"];
    assert_eq!(outcome["status"], "done", "{job:#}");
    let missing = outcome["missing"].as_array().expect("missing");
    assert!(missing.iter().any(|m| m["peer"] == c_peer.as_str() && m["reason"] == "down"), "{outcome:#}");
    assert_eq!(outcome["ballot_file"]["candidates"].as_array().expect("candidates").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivocating_and_forging_peer_has_its_ballots_excluded() {
    let mesh = Mesh::new(
        ["Paris is the capital of France.", "The capital of France is Paris.", "Paris, France."],
        [Duration::from_millis(1); 3],
        1,
    )
    .await;
    let id = mesh.submit(json!({ "question": "Capital of France?", "peers": 3, "quorum": 2 })).await;
    let job_id: JobId = id.parse().expect("job id");
    // As soon as c holds the job, it signs a second, different ballot
    // (a partial ranking, so it differs from any honest one: equivocation)
    // and slips in one signed by a key that is not its own
    // (forgery). Its honest ballot comes later and depends on these changes,
    // so the asker cannot count it without seeing them.
    let c = &mesh.nodes[2];
    let deadline = Instant::now() + LIMIT;
    while c.client().job(job_id).await.is_err() {
        assert!(Instant::now() < deadline, "c never received the job");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let c_key = load_or_create(mesh._dirs[2].path()).expect("c's key").identity;
    let ballot = |voter: &NodeIdentity, choice: Vec<u32>| {
        let ballot = Ballot {
            job: job_id,
            voter: voter.node_id(),
            rule: TallyRule::Schulze,
            choice: BallotChoice::Rank(choice),
            weight: 1,
        };
        encode_message(&seal(voter, 1, 1, &ballot).expect("seal")).expect("encode")
    };
    let stranger = NodeIdentity::from_seed([9; 32]);
    c.client().contribute(job_id, "ballot.second", ballot(&c_key, vec![2, 1])).await.expect("equivocate");
    c.client().contribute(job_id, "ballot.forged", ballot(&stranger, vec![2, 1, 0])).await.expect("forge");
    let job = mesh.wait_status(&id, |s| s != "running" && s != "voting").await;
    let outcome = &job["outcome"];
    assert_eq!(outcome["status"], "done", "{job:#}");
    let excluded = outcome["excluded"].to_string();
    assert!(excluded.contains("equivocation"), "{excluded}");
    assert!(excluded.contains("inside"), "the forged ballot is named: {excluded}");
    assert_eq!(outcome["tally"]["result"]["ballots"], 2, "only a's and b's ballots count");

    // The asker found the equivocation while counting: the proof (c's two
    // signed ballots) is replicated, and every node verifies and counts it.
    // The forged ballot proves nothing about the key it names.
    let c_peer = peer(c);
    let stranger_peer = stranger.peer_id().to_string();
    let http = reqwest::Client::new();
    for i in 0..3 {
        let deadline = Instant::now() + LIMIT;
        let evidence = loop {
            let evidence: Value = http
                .get(format!("{}/v1/byzantine", mesh.api(i)))
                .send()
                .await
                .expect("get evidence")
                .json()
                .await
                .expect("json");
            if evidence["excluded"].as_array().is_some_and(|e| !e.is_empty()) {
                break evidence;
            }
            assert!(Instant::now() < deadline, "node {i} never got the proof: {evidence:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(evidence["excluded"], json!([c_peer]), "node {i}: {evidence:#}");
        assert!(!evidence.to_string().contains(&stranger_peer), "a forgery marks nobody: {evidence:#}");
        let metrics = http.get(format!("{}/metrics", mesh.api(i))).send().await.expect("metrics");
        let metrics = metrics.text().await.expect("text");
        assert!(metrics.contains("hivemesh_byzantine_detections_total 1"), "node {i}: {metrics}");
        assert!(metrics.contains("hivemesh_byzantine_excluded_peers 1"), "node {i}: {metrics}");
    }

    // The next job, asked at b (which never tallied the first), leaves c
    // out: it is neither placed nor an eligible voter.
    let ask_at_b = |question: &'static str| {
        let http = http.clone();
        let api = mesh.api(1);
        async move {
            let response = http
                .post(format!("{api}/v1/jobs"))
                .json(&json!({ "question": question, "peers": 3 }))
                .send()
                .await
                .expect("post");
            assert_eq!(response.status(), 202);
            let id = response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_string();
            let deadline = Instant::now() + LIMIT;
            loop {
                let job: Value = http
                    .get(format!("{api}/v1/jobs/{id}"))
                    .send()
                    .await
                    .expect("get")
                    .json()
                    .await
                    .expect("json");
                if job["outcome"].is_object() {
                    break job;
                }
                assert!(Instant::now() < deadline, "job at b stuck: {job:#}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let next = ask_at_b("Capital of France, again?").await;
    assert_eq!(next["outcome"]["status"], "done", "{next:#}");
    assert!(!next.to_string().contains(&c_peer), "c took part in the next job: {next:#}");

    // b's operator clears the mark on b only; a keeps its own.
    let cleared = http.delete(format!("{}/v1/byzantine/{c_peer}", mesh.api(1))).send().await.expect("clear");
    assert_eq!(cleared.status(), 200);
    let again = http.delete(format!("{}/v1/byzantine/{c_peer}", mesh.api(1))).send().await.expect("clear");
    assert_eq!(again.status(), 404, "nothing left to clear");
    let on_a: Value = http
        .get(format!("{}/v1/byzantine", mesh.api(0)))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(on_a["excluded"], json!([c_peer]), "a clearance is local: {on_a:#}");
    let after = ask_at_b("Capital of France, once more?").await;
    assert!(after.to_string().contains(&c_peer), "b places c again after clearing: {after:#}");
}

/// A provider whose embeddings know that two differently worded answers
/// both say Paris, and that the third does not.
fn concept_embedding(text: &str) -> Vec<f32> {
    let text = text.to_lowercase();
    vec![f32::from(u8::from(text.contains("paris"))), f32::from(u8::from(text.contains("banana")))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_with_an_embedding_model_rank_by_meaning() {
    use hivemesh::llm::provider::openai::OpenAiConfig;
    use hivemesh::protocol::{Envelope, decode_message, open};
    // By word overlap the last two agree best and "Paris." is the outlier;
    // by meaning the first two agree and the bananas are the outlier.
    let answers = ["Paris.", "It is Paris, the French capital city.", "The capital of France is bananas."];
    let serial = mesh::serial().await;
    let mut servers = Vec::new();
    let mut nodes: Vec<NodeHandle> = Vec::new();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    for (answer, dir) in answers.into_iter().zip(&dirs) {
        let server =
            mesh::provider(answer, Duration::from_millis(1)).await.with_embeddings(concept_embedding);
        let mut config = OpenAiConfig::new("test", server.base_url(), "canned");
        config.embedding_model = Some("concepts".into());
        let client = Arc::new(mesh::client_for(config));
        let bootstrap = nodes.first().and_then(|first| first.address("quic-v1"));
        nodes.push(mesh::start_with_client(dir.path(), bootstrap, client, 1, |_| {}).await);
        servers.push(server);
    }
    mesh::wait_for_registry(&nodes).await;
    let mesh = Mesh { nodes, servers, _dirs: dirs, _serial: serial };
    let id = mesh.submit(json!({ "question": "What is the capital of France?", "peers": 3 })).await;
    let job = mesh.wait_status(&id, |s| s != "running" && s != "voting").await;
    let outcome = &job["outcome"];
    assert_eq!(outcome["status"], "done", "{job:#}");

    let outlier = peer(&mesh.nodes[2]);
    let candidates: Vec<&str> = outcome["ballot_file"]["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let outlier_index =
        candidates.iter().position(|c| *c == outlier).expect("the outlier is a candidate") as u32;
    let ballots = outcome["ballot_file"]["ballots"].as_array().expect("ballots");
    assert_eq!(ballots.len(), 3);
    for hex_ballot in ballots {
        let bytes = hex::decode(hex_ballot.as_str().expect("hex")).expect("hex");
        let envelope: Envelope = decode_message(&bytes).expect("envelope");
        let ballot: Ballot = open(&envelope).expect("signed ballot");
        let BallotChoice::Rank(ranking) = &ballot.choice else { panic!("a ranking: {ballot:?}") };
        assert_eq!(
            ranking.last(),
            Some(&outlier_index),
            "the bananas rank last on every ballot: {ranking:?}"
        );
    }
    assert_ne!(outcome["winner"], outlier.as_str());
    let metrics =
        reqwest::get(format!("{}/metrics", mesh.api(1))).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("hivemesh_votes_total{method=\"embeddings\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_without_an_embedding_model_borrow_a_peers_through_the_gateway() {
    use hivemesh::llm::provider::openai::OpenAiConfig;
    use hivemesh::protocol::{Envelope, decode_message, open};
    // As above, but only node 2's provider embeds (`--embedding-model`):
    // nodes 0 and 1 ask their peers for "your embedding model".
    let answers = ["Paris.", "It is Paris, the French capital city.", "The capital of France is bananas."];
    let serial = mesh::serial().await;
    let mut servers = Vec::new();
    let mut nodes: Vec<NodeHandle> = Vec::new();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    for (i, (answer, dir)) in answers.into_iter().zip(&dirs).enumerate() {
        let server = mesh::provider(answer, Duration::from_millis(1)).await;
        let mut config = OpenAiConfig::new("test", server.base_url(), "canned");
        let server = if i == 2 {
            config.embedding_model = Some("concepts".into());
            server.with_embeddings(concept_embedding)
        } else {
            server
        };
        let client = Arc::new(mesh::client_for(config));
        let bootstrap = nodes.first().and_then(|first| first.address("tcp"));
        nodes.push(mesh::start_with_client(dir.path(), bootstrap, client, 1, |_| {}).await);
        servers.push(server);
    }
    mesh::wait_for_registry(&nodes).await;
    let mesh = Mesh { nodes, servers, _dirs: dirs, _serial: serial };
    let id = mesh.submit(json!({ "question": "What is the capital of France?", "peers": 3 })).await;
    let job = mesh.wait_status(&id, |s| s != "running" && s != "voting").await;
    let outcome = &job["outcome"];
    assert_eq!(outcome["status"], "done", "{job:#}");
    let outlier = peer(&mesh.nodes[2]);
    let candidates: Vec<&str> = outcome["ballot_file"]["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let outlier_index = candidates.iter().position(|c| *c == outlier).expect("a candidate") as u32;
    // Every voter ranked by node 2's embeddings: the bananas last.
    let borrowers = [peer(&mesh.nodes[0]), peer(&mesh.nodes[1]), peer(&mesh.nodes[2])];
    for hex_ballot in outcome["ballot_file"]["ballots"].as_array().expect("ballots") {
        let bytes = hex::decode(hex_ballot.as_str().expect("hex")).expect("hex");
        let envelope: Envelope = decode_message(&bytes).expect("envelope");
        let ballot: Ballot = open(&envelope).expect("signed ballot");
        if !borrowers.contains(&ballot.voter.to_string()) {
            continue;
        }
        let BallotChoice::Rank(ranking) = &ballot.choice else { panic!("a ranking: {ballot:?}") };
        assert_eq!(ranking.last(), Some(&outlier_index), "bananas last: {ranking:?}");
    }
    for i in 0..2 {
        let metrics = reqwest::get(format!("{}/metrics", mesh.api(i)))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains("hivemesh_votes_total{method=\"peer_embeddings\"} 1"),
            "node {i}: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_is_never_placed_in_a_job() {
    use hivemesh::node::replica::{Profile, ViewKind};
    use hivemesh::protocol::Role;
    let mesh = Mesh::new(
        ["Paris is the capital of France.", "The capital of France is Paris.", "Paris."],
        [Duration::from_millis(1); 3],
        1,
    )
    .await;
    let observer = &mesh.nodes[2];
    let profile = Profile { role: Role::Observer, models: Vec::new(), gpu: None };
    observer.client().advertise(profile).await.expect("advertise");
    let deadline = Instant::now() + LIMIT;
    loop {
        let view = mesh.nodes[0].client().view(Some(ViewKind::Registry)).await.expect("view");
        let seen =
            view.members.iter().any(|m| m.member.peer_id == peer(observer) && m.role == Some(Role::Observer));
        if seen {
            break;
        }
        assert!(Instant::now() < deadline, "the observer's entry did not spread");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let id =
        mesh.submit(json!({ "question": "What is the capital of France?", "peers": 3, "quorum": 2 })).await;
    let job = mesh.wait_status(&id, |status| ["done", "failed", "cancelled"].contains(&status)).await;
    let participants: Vec<&str> = job["spec"]["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(participants.len(), 2, "the asker and the one worker: {job:#}");
    assert!(!participants.contains(&peer(observer).as_str()), "the observer was placed: {participants:?}");
    assert_eq!(job["outcome"]["status"], "done", "{job:#}");
}
