//! `hivemesh mesh --ask`: one job across the local mesh, reported step by
//! step as the job's document fills in.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hivemesh::llm::ChatMessage;
use hivemesh::node::NodeHandle;
use hivemesh::node::federation::Submission;
use hivemesh::node::federation::spec::{Facts, Mode};
use hivemesh::node::replica::ViewKind;
use hivemesh::protocol::{Ballot, BallotChoice, Envelope, NodeId, TallyRule, decode_message, open};

use crate::mesh_cmd::MeshArgs;
use crate::output::outln;

pub async fn ask(nodes: &[NodeHandle], question: &str, args: &MeshArgs) -> anyhow::Result<()> {
    let mode: Mode = args.mode.parse().map_err(anyhow::Error::msg)?;
    let asker = &nodes[0];
    let names: HashMap<String, String> =
        nodes.iter().enumerate().map(|(i, n)| (n.peer_id.to_string(), format!("node-{i}"))).collect();
    let name = |peer: &str| names.get(peer).cloned().unwrap_or_else(|| peer.to_string());
    wait_for_registry(asker, nodes.len() - 1).await?;
    let federation = asker.federation().context("node-0 takes no part in jobs")?;
    let client = asker.client();
    let mut changes = client.job_changes();
    let started = Instant::now();
    let submission = Submission {
        question: vec![ChatMessage::user(question)],
        mode,
        profile: args.profile.clone(),
        peers: nodes.len(),
        quorum: None,
        rule: TallyRule::Schulze,
        deadline: Some(Duration::from_secs(300)),
        max_tokens: None,
    };
    let job = federation.submit(submission).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    outln!("\njob {job} asked at node-0 ({:?}, profile {})", mode, args.profile);
    let mut seen = HashSet::new();
    let outcome = loop {
        let view = client.job(job).await?;
        let facts = Facts::read(job, &view.contributions);
        for c in &view.contributions {
            if seen.insert((c.kind.clone(), c.author)) {
                let who = name(&c.author.to_string());
                let t = started.elapsed().as_secs_f64();
                let detail = match c.kind.as_str() {
                    "candidate" => facts
                        .candidate_of(&c.author)
                        .map(|o| format!("{} tokens in {} ms", o.tokens, o.elapsed_ms)),
                    kind if kind.starts_with("stage.") => facts
                        .stages
                        .iter()
                        .find(|(s, a, _)| a == &c.author && format!("stage.{}", s.as_str()) == kind)
                        .map(|(_, _, o)| format!("{} tokens in {} ms", o.tokens, o.elapsed_ms)),
                    _ => None,
                };
                outln!(
                    "[{t:6.2}s] {:<16} from {who}{}",
                    c.kind,
                    detail.map(|d| format!(": {d}")).unwrap_or_default()
                );
            }
        }
        if let Some(outcome) = facts.outcome {
            break outcome;
        }
        match tokio::time::timeout(Duration::from_secs(330), changes.recv()).await {
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            _ => bail!("job {job} did not finish"),
        }
    };
    outln!("\n== {} in {:.2} s ==", outcome.status, started.elapsed().as_secs_f64());
    for part in &outcome.contributions {
        outln!(
            "\n{} by {} ({}, {} tokens, {} ms):\n  {}",
            part.part,
            name(&part.peer),
            part.model,
            part.tokens,
            part.elapsed_ms,
            part.text.replace('\n', "\n  ")
        );
    }
    for missing in &outcome.missing {
        outln!("without {}: {}", name(&missing.peer), missing.reason);
    }
    if let Some(file) = &outcome.ballot_file {
        print_ballots(file, &name);
    }
    if let Some(tally) = &outcome.tally {
        outln!(
            "\ntally ({}): ranking {}, winner {}",
            tally["backend"].as_str().unwrap_or("?"),
            tally["result"]["ranking"],
            outcome.winner.as_deref().map(name).unwrap_or_default()
        );
    }
    for excluded in &outcome.excluded {
        outln!("excluded: {excluded}");
    }
    match outcome.curation.as_deref() {
        Some("select") if mode == Mode::Council => outln!("curation: the vote's winner, as written"),
        Some("select") => outln!("curation: the curator chose the draft or the refined answer, as written"),
        Some("rewrite") => outln!("curation: the curator's model wrote the answer"),
        Some(other) => outln!("curation: {other}"),
        None => {}
    }
    if let Some(error) = &outcome.error {
        outln!("note: {error}");
    }
    match &outcome.answer {
        Some(answer) => outln!("\nanswer:\n{answer}"),
        None => bail!("the job ended without an answer ({})", outcome.status),
    }
    Ok(())
}

fn print_ballots(file: &serde_json::Value, name: &dyn Fn(&str) -> String) {
    let candidates: Vec<String> =
        file["candidates"].as_array().into_iter().flatten().filter_map(|c| c.as_str()).map(name).collect();
    outln!("\nballots (candidates in vote order: {}):", candidates.join(", "));
    for hex_ballot in file["ballots"].as_array().into_iter().flatten().filter_map(|b| b.as_str()) {
        let ballot = hex::decode(hex_ballot)
            .ok()
            .and_then(|bytes| decode_message::<Envelope>(&bytes).ok())
            .and_then(|envelope| open::<Ballot>(&envelope).ok());
        if let Some(ballot) = ballot {
            let voter = NodeId::to_string(&ballot.voter);
            let author = |i: &u32| candidates.get(*i as usize).cloned().unwrap_or_else(|| format!("#{i}"));
            let choice = match &ballot.choice {
                BallotChoice::Single(i) => format!("votes for {}'s answer", author(i)),
                BallotChoice::Approve(approved) => {
                    format!("approves {}", approved.iter().map(author).collect::<Vec<_>>().join(", "))
                }
                BallotChoice::Rank(order) => {
                    format!("ranks {}", order.iter().map(author).collect::<Vec<_>>().join(" > "))
                }
                BallotChoice::RankGroups(groups) => {
                    let group = |g: &Vec<u32>| g.iter().map(author).collect::<Vec<_>>().join(" = ");
                    format!("ranks {}", groups.iter().map(group).collect::<Vec<_>>().join(" > "))
                }
            };
            outln!("  {} {choice}", name(&voter));
        }
    }
}

/// Placement reads the registry: wait until node-0 holds every other
/// node's entry.
pub async fn wait_for_registry(node: &NodeHandle, others: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = node.client().view(Some(ViewKind::Registry)).await?;
        if report.members.len() >= others {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node-0 did not learn every node's registry entry in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
