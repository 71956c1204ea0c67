//! `hivemesh force-leave` and `hivemesh byzantine`: an operator's tools for
//! failed and misbehaving peers (docs/adr/0019). Both talk to a running
//! node's API; the node signs, verifies and gossips.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, anyhow};
use hivemesh::node::api::{ApiClient, Method};
use hivemesh::protocol::{Envelope, EquivocationProof, NodeId, decode_message};
use serde_json::{Value, json};

use crate::output::{errln, outln};

/// Signs a force-leave claim on the node for `peer`'s current generation.
pub async fn force_leave(api: &ApiClient, peer: &str, as_json: bool) -> anyhow::Result<()> {
    let report = api.call(Method::POST, "/v1/force-leave", Some(&json!({ "peer": peer }))).await?;
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
    let report = api.call(Method::GET, "/v1/byzantine", None).await?;
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

pub async fn clear(api: &ApiClient, peer: &str, as_json: bool) -> anyhow::Result<()> {
    let path = format!("/v1/byzantine/{}", peer.trim());
    let answer = api.call(Method::DELETE, &path, None).await?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        outln!(
            "{peer}: equivocation mark cleared on this node (other nodes keep theirs until their operators clear it)"
        );
    }
    Ok(())
}

/// Finds every voter in a ballot file (`hivemesh tally`'s format, `-` for
/// stdin) with two different valid ballots for one job, and hands each
/// proof to the node. Entries that are not signed envelopes are skipped
/// and named on stderr; they cannot be evidence of anything.
pub async fn report(api: &ApiClient, file: &Path, as_json: bool) -> anyhow::Result<()> {
    let (proofs, skipped) = proofs_in(file)?;
    for line in &skipped {
        errln!("{}: {line} (skipped)", file.display());
    }
    let mut reported = Vec::new();
    for proof in proofs {
        let ballots: Vec<String> = proof
            .ballots
            .iter()
            .map(|e| hivemesh::protocol::encode_message(e).map(hex::encode))
            .collect::<Result<_, _>>()?;
        let answer = api.call(Method::POST, "/v1/byzantine", Some(&json!({ "ballots": ballots }))).await?;
        reported.push(answer);
    }
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&json!({ "reported": reported, "skipped": skipped }))?);
        return Ok(());
    }
    if reported.is_empty() {
        outln!("{}: no voter signed two different ballots", file.display());
    }
    for answer in reported {
        let held = if answer["new"] == true { "new here" } else { "already held" };
        outln!(
            "{}: equivocated in job {} ({held})",
            answer["peer"].as_str().unwrap_or("?"),
            answer["job"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// The proofs in a ballot file, and a line for each entry skipped.
fn proofs_in(file: &Path) -> anyhow::Result<(Vec<EquivocationProof>, Vec<String>)> {
    let text = crate::tally_cmd::read_input(file)?;
    let doc: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let ballots = doc["ballots"].as_array().ok_or_else(|| {
        anyhow!("{}: no \"ballots\" array (expected a ballot file, see `hivemesh tally`)", file.display())
    })?;
    let mut skipped = Vec::new();
    let mut by_voter: BTreeMap<NodeId, Vec<Envelope>> = BTreeMap::new();
    for (i, ballot) in ballots.iter().enumerate() {
        let decoded = ballot
            .as_str()
            .ok_or_else(|| "is not a string".to_string())
            .and_then(|text| hex::decode(text.trim()).map_err(|e| format!("is not hex: {e}")))
            .and_then(|bytes| {
                decode_message::<Envelope>(&bytes).map_err(|e| format!("is not a signed envelope: {e}"))
            });
        match decoded {
            Ok(envelope) => by_voter.entry(envelope.sender).or_default().push(envelope),
            Err(reason) => skipped.push(format!("ballot {i} {reason}")),
        }
    }
    let mut proofs = Vec::new();
    for envelopes in by_voter.into_values() {
        // Any two of a voter's first few envelopes: one of them may be a
        // forgery naming the voter, which verifies with nothing.
        let few = &envelopes[..envelopes.len().min(16)];
        let found = (0..few.len())
            .flat_map(|i| (i + 1..few.len()).map(move |j| (i, j)))
            .map(|(i, j)| EquivocationProof { ballots: [few[i].clone(), few[j].clone()] })
            .find(|proof| proof.verify().is_ok());
        proofs.extend(found);
    }
    Ok((proofs, skipped))
}
