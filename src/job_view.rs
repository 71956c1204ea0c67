//! `hivemesh jobs ID` for people: one job's question, participants, what
//! each wrote, the ballots and tally, who was left out and why, and the
//! answer (the JSON document is `--json`).

use serde_json::Value;

use crate::output::outln;

/// Prints the job document `job` (as `GET /v1/jobs/{id}` returns it).
pub fn print(job: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let spec = &job["spec"];
    let outcome = &job["outcome"];
    outln!("job       {}", text(&job["id"]));
    outln!("status    {}", text(&job["status"]));
    match spec["mode"].as_str() {
        Some("council") => outln!(
            "mode      council (profile {}, rule {}, quorum {})",
            text(&spec["profile"]),
            spec["rule"].as_str().unwrap_or("-").to_lowercase(),
            spec["quorum"]
        ),
        _ => outln!("mode      {} (profile {})", text(&spec["mode"]), text(&spec["profile"])),
    }
    if let Some(question) =
        spec["question"].as_array().and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
    {
        outln!("question  {}", one_line(&text(&question["content"])));
    }
    outln!("asker     {}", text(&job["asker"]));
    let participants = list(&spec["participants"]);
    outln!("members   {}", if participants.is_empty() { "-".into() } else { participants.join(", ") });
    let contributions = outcome["contributions"].as_array().cloned().unwrap_or_default();
    if !contributions.is_empty() {
        outln!("written");
        for c in &contributions {
            outln!(
                "  {:<12} {} ({}, {} tokens, {:.2} s): {}",
                text(&c["part"]),
                text(&c["peer"]),
                text(&c["model"]),
                c["tokens"],
                c["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1e3,
                one_line(&text(&c["text"]))
            );
        }
    }
    let ballots = job["ballots"].as_array().cloned().unwrap_or_default();
    if !ballots.is_empty() {
        let voters: Vec<String> = ballots
            .iter()
            .map(|b| match b["kind"].as_str() {
                Some("ballot") | None => text(&b["voter"]),
                Some(kind) => format!("{} ({kind})", text(&b["voter"])),
            })
            .collect();
        outln!("ballots   {}", voters.join(", "));
    }
    if let Some(result) = outcome["tally"]["result"].as_object() {
        let ranking = result.get("ranking").map(|r| r.to_string()).unwrap_or_default();
        outln!("tally     winner {} (ranking by candidate index {ranking})", text(&outcome["winner"]));
    }
    for missing in outcome["missing"].as_array().into_iter().flatten() {
        outln!("left out  {}: {}", text(&missing["peer"]), text(&missing["reason"]));
    }
    for excluded in outcome["excluded"].as_array().into_iter().flatten() {
        outln!("excluded  {}: {}", text(&excluded["voter"]), text(&excluded["reason"]));
    }
    for failure in job["failures"].as_array().into_iter().flatten() {
        outln!(
            "failed    {} {}: {}",
            text(&failure["peer"]),
            text(&failure["part"]),
            one_line(&text(&failure["reason"]))
        );
    }
    if let Some(error) = outcome["error"].as_str() {
        outln!("error     {error}");
    }
    if let Some(curation) = outcome["curation"].as_str() {
        outln!("curation  {curation}");
    }
    match outcome["answer"].as_str() {
        Some(answer) => outln!("answer\n{answer}"),
        None if outcome.is_null() => outln!("answer    (not yet: the job is {})", text(&job["status"])),
        None => outln!("answer    none"),
    }
}

fn list(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
}

/// At most 100 characters on one line.
fn one_line(text: &str) -> String {
    let flat = text.replace('\n', " ");
    match flat.char_indices().nth(100) {
        Some((cut, _)) => format!("{}...", &flat[..cut]),
        None => flat,
    }
}
