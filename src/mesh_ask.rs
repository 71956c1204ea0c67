//! `hivemesh mesh --ask`: one job across the local mesh, reported step by
//! step as the job's document fills in. With `--json` the steps go to
//! stderr and stdout holds one JSON document (see [`report`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hivemesh::llm::ChatMessage;
use hivemesh::node::NodeHandle;
use hivemesh::node::federation::Submission;
use hivemesh::node::federation::spec::{Facts, Mode, Outcome};
use hivemesh::node::replica::ViewKind;
use hivemesh::protocol::{Ballot, BallotChoice, Envelope, NodeId, TallyRule, decode_message, open};
use serde::Serialize;
use serde_json::{Value, json};

use crate::mesh_cmd::MeshArgs;
use crate::output::{errln, outln};

/// A progress line: stdout for people, stderr when stdout holds JSON.
macro_rules! say {
    ($json:expr, $($arg:tt)*) => {
        if $json { errln!($($arg)*) } else { outln!($($arg)*) }
    };
}

/// One step of the job as it was seen: a contribution entering the job's
/// document, `at_ms` after the job was asked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub at_ms: u64,
    /// The contribution's kind: `candidate`, `ballot`, `stage.draft`, `outcome`, ...
    pub kind: String,
    /// The author's PeerId and its name in this mesh (`node-N`).
    pub author: String,
    pub name: String,
    /// Tokens and time of the model call, for candidates and stages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

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
    let json = args.json;
    say!(json, "\njob {job} asked at node-0 ({:?}, profile {})", mode, args.profile);
    let mut seen = HashSet::new();
    let mut steps = Vec::new();
    let outcome = loop {
        let view = client.job(job).await?;
        let facts = Facts::read(job, &view.contributions);
        for c in &view.contributions {
            if seen.insert((c.kind.clone(), c.author)) {
                let who = name(&c.author.to_string());
                let elapsed = started.elapsed();
                let t = elapsed.as_secs_f64();
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
                say!(
                    json,
                    "[{t:6.2}s] {:<16} from {who}{}",
                    c.kind,
                    detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
                );
                steps.push(Step {
                    at_ms: elapsed.as_millis() as u64,
                    kind: c.kind.clone(),
                    author: c.author.to_string(),
                    name: who,
                    detail,
                });
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
    let total = started.elapsed();
    if json {
        let asked = Asked { job: job.to_string(), question, mode, profile: &args.profile };
        let document = report(&asked, &outcome, &steps, total, &names);
        outln!("{}", serde_json::to_string_pretty(&document)?);
        return match outcome.answer {
            Some(_) => Ok(()),
            None => bail!("the job ended without an answer ({})", outcome.status),
        };
    }
    outln!("\n== {} in {:.2} s ==", outcome.status, total.as_secs_f64());
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

fn print_ballots(file: &Value, name: &dyn Fn(&str) -> String) {
    let candidates = vote_order(file);
    let names: Vec<String> = candidates.iter().map(|c| name(c)).collect();
    outln!("\nballots (candidates in vote order: {}):", names.join(", "));
    for ballot in ballots(file) {
        let voter = NodeId::to_string(&ballot.voter);
        outln!("  {} {}", name(&voter), reads(&ballot.choice, &names));
    }
}

/// The candidates' authors (PeerIds) in vote order: a ballot's numbers
/// index this list.
fn vote_order(file: &Value) -> Vec<String> {
    file["candidates"].as_array().into_iter().flatten().filter_map(|c| c.as_str()).map(String::from).collect()
}

/// The ballot file's ballots (hex of signed envelopes) that open; a ballot
/// that does not is left out (it was checked when it entered the job).
fn ballots(file: &Value) -> Vec<Ballot> {
    file["ballots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.as_str())
        .filter_map(|hex_ballot| {
            hex::decode(hex_ballot)
                .ok()
                .and_then(|bytes| decode_message::<Envelope>(&bytes).ok())
                .and_then(|envelope| open::<Ballot>(&envelope).ok())
        })
        .collect()
}

/// A ballot in words, `names` being the candidates' authors in vote order.
fn reads(choice: &BallotChoice, names: &[String]) -> String {
    let author = |i: &u32| names.get(*i as usize).cloned().unwrap_or_else(|| format!("#{i}"));
    match choice {
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
    }
}

/// What was asked, for [`report`].
pub struct Asked<'a> {
    pub job: String,
    pub question: &'a str,
    pub mode: Mode,
    pub profile: &'a str,
}

/// The `mesh --ask --json` document:
///
/// `{job, question, mode, profile, status, answer, error, curation,
/// winner: {peer, name} | null, candidates: [{part, author, name, model,
/// text, tokens, prompt_tokens, elapsed_ms, finish_reason}], vote_order:
/// [{peer, name}], ballots: [{voter, name, rule, weight, choice, reads}],
/// tally, excluded, missing: [{peer, name, reason, code}], timings:
/// {total_ms, job_ms, steps: [Step]}}`.
///
/// `candidates` holds every model call whose text the outcome keeps (a
/// council's candidates and the curator's answer; a pipeline's stages),
/// each with its author; a ballot's `choice` numbers index `vote_order`;
/// `total_ms` is from the ask to the outcome as seen here, `job_ms` the
/// job's own time; names are `node-N` as the mesh started them.
pub fn report(
    asked: &Asked<'_>,
    outcome: &Outcome,
    steps: &[Step],
    total: Duration,
    names: &HashMap<String, String>,
) -> Value {
    let name = |peer: &str| names.get(peer).cloned().unwrap_or_else(|| peer.to_string());
    let candidates: Vec<Value> = outcome
        .contributions
        .iter()
        .map(|c| {
            json!({
                "part": c.part, "author": c.peer, "name": name(&c.peer), "model": c.model, "text": c.text,
                "tokens": c.tokens, "prompt_tokens": c.prompt_tokens, "elapsed_ms": c.elapsed_ms,
                "finish_reason": c.finish_reason,
            })
        })
        .collect();
    let file = outcome.ballot_file.clone().unwrap_or(Value::Null);
    let order = vote_order(&file);
    let order_names: Vec<String> = order.iter().map(|peer| name(peer)).collect();
    let ballots: Vec<Value> = ballots(&file)
        .into_iter()
        .map(|b| {
            let voter = NodeId::to_string(&b.voter);
            json!({
                "voter": voter, "name": name(&voter), "rule": b.rule, "weight": b.weight,
                "choice": b.choice, "reads": reads(&b.choice, &order_names),
            })
        })
        .collect();
    let missing: Vec<Value> = outcome
        .missing
        .iter()
        .map(|m| json!({ "peer": m.peer, "name": name(&m.peer), "reason": m.reason, "code": m.code }))
        .collect();
    json!({
        "job": asked.job,
        "question": asked.question,
        "mode": asked.mode,
        "profile": asked.profile,
        "status": outcome.status,
        "answer": outcome.answer,
        "error": outcome.error,
        "curation": outcome.curation,
        "winner": outcome.winner.as_deref().map(|peer| json!({ "peer": peer, "name": name(peer) })),
        "candidates": candidates,
        "vote_order": order.iter().map(|peer| json!({ "peer": peer, "name": name(peer) })).collect::<Vec<_>>(),
        "ballots": ballots,
        "tally": outcome.tally,
        "excluded": outcome.excluded,
        "missing": missing,
        "timings": { "total_ms": total.as_millis() as u64, "job_ms": outcome.elapsed_ms, "steps": steps },
    })
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
