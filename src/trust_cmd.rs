//! `hivemesh force-leave` and `hivemesh byzantine`: an operator's tools for
//! failed and misbehaving peers (docs/adr/0019). Both talk to a running
//! node's API; the node signs, verifies and gossips.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, anyhow};
use hivemesh::node::api::{ApiClient, Method};
use hivemesh::protocol::{Envelope, EquivocationProof, NodeId, decode_message};
use serde_json::{Value, json};

use crate::output::outln;

/// Signs a force-leave claim on the node for `peer`'s current generation.
pub async fn force_leave(api: &ApiClient, peer: &str, as_json: bool) -> anyhow::Result<()> {
    let report = api
        .call(Method::POST, "/v1/force-leave", Some(&json!({ "peer": peer })))
        .await
        .map_err(|e| anyhow!(e))?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    outln!(
        "{} (generation {}, was {}) marked left; the signed claim went to {} live members",
        report["peer"].as_str().unwrap_or(peer),
        report["generation"],
        report["previous_state"].as_str().unwrap_or("?"),
        report["sent_to"]
    );
    if report["previous_state"] == "alive" {
        outln!("note: the peer was alive; if it still runs, SWIM lets it rejoin under a new generation");
    }
    Ok(())
}

/// Prints the proofs the node holds and whom they exclude.
pub async fn list(api: &ApiClient, as_json: bool) -> anyhow::Result<()> {
    let report = api.call(Method::GET, "/v1/byzantine", None).await.map_err(|e| anyhow!(e))?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let proofs = report["proofs"].as_array().cloned().unwrap_or_default();
    if proofs.is_empty() {
        outln!("no equivocation proofs held");
        return Ok(());
    }
    for proof in proofs {
        let state = if proof["cleared"] == true { "cleared here" } else { "excluded" };
        outln!(
            "{}  {state}  (two ballots for job {})",
            proof["peer"].as_str().unwrap_or("?"),
            proof["job"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

pub async fn clear(api: &ApiClient, peer: &str) -> anyhow::Result<()> {
    let path = format!("/v1/byzantine/{}", peer.trim());
    api.call(Method::DELETE, &path, None).await.map_err(|e| anyhow!(e))?;
    outln!(
        "{peer}: equivocation mark cleared on this node (other nodes keep theirs until their operators clear it)"
    );
    Ok(())
}

/// Finds every voter in a ballot file (`hivemesh tally`'s format) with two
/// different valid ballots for one job, and hands each proof to the node.
pub async fn report(api: &ApiClient, file: &Path) -> anyhow::Result<()> {
    let proofs = proofs_in(file)?;
    if proofs.is_empty() {
        outln!("{}: no voter signed two different ballots", file.display());
        return Ok(());
    }
    for proof in proofs {
        let ballots: Vec<String> = proof
            .ballots
            .iter()
            .map(|e| hivemesh::protocol::encode_message(e).map(hex::encode))
            .collect::<Result<_, _>>()?;
        let answer = api
            .call(Method::POST, "/v1/byzantine", Some(&json!({ "ballots": ballots })))
            .await
            .map_err(|e| anyhow!(e))?;
        let held = if answer["new"] == true { "new here" } else { "already held" };
        outln!(
            "{}: equivocated in job {} ({held})",
            answer["peer"].as_str().unwrap_or("?"),
            answer["job"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn proofs_in(file: &Path) -> anyhow::Result<Vec<EquivocationProof>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let ballots = doc["ballots"].as_array().ok_or_else(|| {
        anyhow!("{}: no \"ballots\" array (expected a ballot file, see `hivemesh tally`)", file.display())
    })?;
    let mut by_voter: BTreeMap<NodeId, Vec<Envelope>> = BTreeMap::new();
    for (i, ballot) in ballots.iter().enumerate() {
        let hex_text = ballot.as_str().ok_or_else(|| anyhow!("ballot {i} is not a string"))?;
        let bytes = hex::decode(hex_text.trim()).with_context(|| format!("ballot {i} is not hex"))?;
        let envelope: Envelope =
            decode_message(&bytes).with_context(|| format!("ballot {i} is not an envelope"))?;
        by_voter.entry(envelope.sender).or_default().push(envelope);
    }
    let mut proofs = Vec::new();
    for envelopes in by_voter.into_values() {
        let first = &envelopes[0];
        let found = envelopes[1..]
            .iter()
            .map(|other| EquivocationProof { ballots: [first.clone(), other.clone()] })
            .find(|proof| proof.verify().is_ok());
        proofs.extend(found);
    }
    Ok(proofs)
}
