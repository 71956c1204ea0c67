//! `GET /metrics` in the Prometheus text format: members by state, messages
//! and bytes in and out by kind, rejected input by reason, jobs by outcome,
//! model-call latency by part, tally sizes by backend, CRDT sync bytes.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{AppState, error};

type Labels = Vec<(String, String)>;

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_string(), value.to_string())]
}

/// A counter family filled from values read now.
fn counters(values: impl IntoIterator<Item = (Labels, u64)>) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).inc_by(value);
    }
    family
}

/// Counters labelled `{what}` and `direction` from (what, direction, value) rows.
fn by_direction(what: &str, rows: &[(&str, &str, u64)]) -> Family<Labels, Counter> {
    counters(rows.iter().map(|(name, direction, n)| {
        (vec![(what.to_string(), name.to_string()), ("direction".into(), direction.to_string())], *n)
    }))
}

pub async fn render(State(state): State<AppState>) -> Response {
    let (status, members, evidence) =
        match (state.client.status().await, state.client.members().await, state.client.evidence().await) {
            (Ok(status), Ok(members), Ok(evidence)) => (status, members, evidence),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            }
        };
    let mut registry = Registry::with_prefix("hivemesh");

    let by_state = Family::<Labels, Gauge>::default();
    for state_name in ["alive", "suspect", "down", "left"] {
        by_state.get_or_create(&label("state", state_name)).set(members.count(state_name) as i64);
    }
    registry.register("members", "Members by SWIM state", by_state);

    let (m, r) = (&status.membership, &status.replication);
    let messages = [
        ("membership", "in", m.frames_in),
        ("membership", "out", m.frames_out),
        ("registry_push", "out", r.pushes_sent),
        ("anti_entropy", "out", r.anti_entropy_rounds),
        ("job_change", "out", r.jobs.changes_pushed),
        ("job_change", "in", r.jobs.changes_applied),
        ("job_sync_round", "out", r.jobs.sync_rounds),
    ];
    registry.register("messages", "Messages by kind and direction", by_direction("kind", &messages));
    let bytes = [
        ("membership", "in", m.bytes_in),
        ("membership", "out", m.bytes_out),
        ("state", "in", r.bytes_in),
        ("state", "out", r.bytes_out),
        ("crdt_sync", "in", r.jobs.sync_bytes_in),
        ("crdt_sync", "out", r.jobs.sync_bytes_out),
    ];
    registry.register(
        "bytes",
        "Bytes by protocol and direction (crdt_sync: automerge sync messages)",
        by_direction("protocol", &bytes),
    );
    let rejected = m
        .rejected
        .iter()
        .map(|(reason, n)| {
            (vec![("layer".into(), "membership".into()), ("reason".into(), reason.to_string())], *n)
        })
        .chain(r.rejected.iter().map(|(reason, n)| {
            (vec![("layer".into(), "registry".into()), ("reason".into(), reason.clone())], *n)
        }))
        .chain(r.jobs.rejected.iter().map(|(reason, n)| {
            (vec![("layer".into(), "jobs".into()), ("reason".into(), reason.clone())], *n)
        }))
        .chain(r.trust_rejected.iter().map(|(reason, n)| {
            (vec![("layer".into(), "trust".into()), ("reason".into(), reason.clone())], *n)
        }));
    registry.register("rejected", "Refused input by layer and reason", counters(rejected));
    let active = Gauge::<i64>::default();
    active.set(r.jobs.active as i64);
    registry.register("jobs_held", "Job documents held in memory", active);

    // Private swarms (ADR 0016): both reasons always present, 0 when none.
    let refused = ["swarm_key", "not_allowed"]
        .map(|reason| (label("reason", reason), status.refused.get(reason).copied().unwrap_or(0)));
    registry.register(
        "connections_refused",
        "Connections refused, by reason (swarm_key: a failed swarm-key handshake; not_allowed: a peer not on \
         the allowlist)",
        counters(refused),
    );

    // Byzantine peers (docs/adr/0019): proofs verified here, and who they
    // exclude now.
    let detections = Counter::<u64>::default();
    detections.inc_by(evidence.detections);
    registry.register(
        "byzantine_detections",
        "Equivocation proofs verified and accepted by this node since it started",
        detections,
    );
    let excluded = Gauge::<i64>::default();
    excluded.set(evidence.excluded.len() as i64);
    registry.register(
        "byzantine_excluded_peers",
        "Peers left out of placement and voting for an uncleared equivocation proof",
        excluded,
    );

    if let Some(jobs) = &state.jobs {
        let stats = &jobs.stats;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let outcomes = [
            ("submitted", get(&stats.submitted)),
            ("done", get(&stats.finished)),
            ("failed", get(&stats.failed)),
            ("cancelled", get(&stats.cancelled)),
        ];
        registry.register(
            "jobs",
            "Jobs asked here, by outcome",
            counters(outcomes.iter().map(|(o, n)| (label("outcome", o), *n))),
        );
        let calls = [
            ("started", get(&stats.model_calls)),
            ("failed", get(&stats.model_call_failures)),
            ("stopped", get(&stats.stopped_calls)),
            ("ballots_cast", get(&stats.ballots_cast)),
        ];
        registry.register(
            "model_calls",
            "Model calls and ballots by what became of them",
            counters(calls.iter().map(|(o, n)| (label("event", o), *n))),
        );
        let running = Family::<Labels, Gauge>::default();
        running.get_or_create(&label("state", "running")).set(get(&stats.running_calls) as i64);
        running.get_or_create(&label("state", "queued")).set(get(&stats.queued_calls) as i64);
        registry.register("model_calls_now", "Model calls running or waiting now", running);
        registry.register("model_call_seconds", "Model call latency by part", stats.call_seconds.clone());
        registry.register("tally_ballots", "Ballots per tally, by backend", stats.tally_ballots.clone());
        registry.register(
            "votes",
            "Ballots cast here, by how candidates were ranked",
            stats.votes_by_method.clone(),
        );
        // Remote peers' use of this node's provider (ADR 0017).
        jobs.quotas.report(std::time::Instant::now()).register_metrics(&mut registry);
    }

    let mut text = String::new();
    if let Err(e) = encode(&mut text, &registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}"));
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}
