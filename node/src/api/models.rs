//! `GET /v1/models` and `GET /v1/models/{id}`, OpenAI-compatible: the
//! mesh's own modes (`hivemesh`, `council`, `pipeline` and each with
//! `:PROFILE`, owned by `hivemesh`) and every model a live peer offers.
//!
//! A peer's models come from its signed registry entry (its advertised
//! profile, replicated to every node); only peers SWIM holds alive count,
//! never suspect or down ones, plus this node's own advertisement. Model ids
//! are the names the peers advertise, unchanged: they may hold `/` and `:`
//! (`meta-llama/llama-3.2-3b-instruct:free`), so the single-model route is
//! a wildcard, and a percent-encoded `/` (`%2F`) is decoded too.
//!
//! Shape of each entry (OpenAI's model object, one field added):
//! `{"id", "object": "model", "created", "owned_by", "peers"}` where
//! `created` is when this node's API started (seconds since the epoch; the
//! swarm keeps no creation time), `owned_by` the offering peers' ids joined
//! by commas (OpenAI clients expect one string) and `peers` the same ids as
//! an array, sorted. The mesh's modes carry `owned_by: "hivemesh"` and no
//! `peers`.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde::Serialize;

use super::{ApiError, AppState, stopped};
use crate::replica::{ViewKind, ViewMember, ViewReport};

/// The SWIM state a peer must be in for its models to be listed.
const LIVE: &str = "alive";

/// One entry of the list, as OpenAI's model object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Model {
    pub id: String,
    /// Always `"model"`.
    pub object: &'static str,
    /// Seconds since the epoch: when this node's API started.
    pub created: u64,
    /// `hivemesh` for a mode, else the offering peers' ids joined by `,`.
    pub owned_by: String,
    /// The offering peers' ids, sorted; absent for a mode.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
}

/// The mesh's own model ids: `hivemesh`, `council`, `pipeline`, then
/// `council:PROFILE` and `pipeline:PROFILE` for each profile, in order.
pub fn mode_ids(profiles: &[String]) -> Vec<String> {
    let mut ids = vec!["hivemesh".to_string(), "council".into(), "pipeline".into()];
    for profile in profiles {
        ids.push(format!("council:{profile}"));
        ids.push(format!("pipeline:{profile}"));
    }
    ids
}

/// Every model offered by a live member of `report` (and by `report.me`),
/// with the peer ids offering it, both sorted. A member in any state but
/// `alive` is left out, as is an empty model name.
pub fn offered(report: &ViewReport) -> BTreeMap<String, BTreeSet<String>> {
    let mut models: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let live = report.members.iter().filter(|m| m.member.state == LIVE);
    for member in std::iter::once(&report.me).chain(live) {
        add(&mut models, member);
    }
    models
}

fn add(models: &mut BTreeMap<String, BTreeSet<String>>, member: &ViewMember) {
    for model in member.models.iter().filter(|m| !m.is_empty()) {
        models.entry(model.clone()).or_default().insert(member.member.peer_id.clone());
    }
}

/// The whole list: the modes first (a peer model named like a mode is not
/// listed apart: the name means the mode here), then the swarm's models by id.
pub fn catalogue(profiles: &[String], report: &ViewReport, created: u64) -> Vec<Model> {
    let modes = mode_ids(profiles);
    let mut list: Vec<Model> = modes
        .iter()
        .map(|id| Model {
            id: id.clone(),
            object: "model",
            created,
            owned_by: "hivemesh".into(),
            peers: Vec::new(),
        })
        .collect();
    for (id, peers) in offered(report) {
        if modes.contains(&id) {
            continue;
        }
        let peers: Vec<String> = peers.into_iter().collect();
        list.push(Model { id, object: "model", created, owned_by: peers.join(","), peers });
    }
    list
}

/// The catalogue as this node sees it now; a stopped node is a 503.
async fn current(state: &AppState) -> Result<Vec<Model>, Response> {
    let profiles = state.jobs.as_ref().map(|j| j.profiles.clone()).unwrap_or_default();
    let report = state.client.view(Some(ViewKind::Registry)).await.map_err(stopped)?;
    Ok(catalogue(&profiles, &report, state.started_s))
}

/// `GET /v1/models`: `{"object": "list", "data": [Model, ...]}`.
pub async fn list(State(state): State<AppState>) -> Response {
    match current(&state).await {
        Ok(data) => Json(serde_json::json!({ "object": "list", "data": data })).into_response(),
        Err(response) => response,
    }
}

/// `GET /v1/models/{*id}`: one [`Model`]; an id nobody live offers is a 404
/// `model_not_found` naming `model`, as OpenAI answers.
pub async fn show(State(state): State<AppState>, id: Result<Path<String>, PathRejection>) -> Response {
    let id = match id {
        Ok(Path(id)) => id,
        Err(rejection) => return ApiError::invalid("model", rejection.body_text()).into_response(),
    };
    let list = match current(&state).await {
        Ok(list) => list,
        Err(response) => return response,
    };
    match list.into_iter().find(|m| m.id == id) {
        Some(model) => Json(model).into_response(),
        None => not_found(&id).into_response(),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError {
        param: Some("model".into()),
        code: Some("model_not_found"),
        ..ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "The model {id:?} does not exist: no live peer offers it and it is not a mode of this mesh"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::MemberInfo;

    fn member(peer: &str, state: &str, models: &[&str]) -> ViewMember {
        let info = MemberInfo {
            peer_id: peer.into(),
            state: state.into(),
            addresses: Vec::new(),
            incarnation: 0,
            generation: 0,
            last_change_ms: 0,
            path: None,
        };
        let mut member = ViewMember::new(info, None);
        member.models = models.iter().map(|m| m.to_string()).collect();
        member
    }

    fn report(me: ViewMember, members: Vec<ViewMember>) -> ViewReport {
        ViewReport { view: ViewKind::Registry, active_view: ViewKind::Registry, me, members, majority: None }
    }

    #[test]
    fn lists_modes_then_live_peers_models_with_their_owners() {
        let report = report(
            member("me", "alive", &["llama3.2", "meta-llama/x:free"]),
            vec![
                member("b", "alive", &["llama3.2", "qwen"]),
                member("c", "suspect", &["only-suspect"]),
                member("d", "down", &["qwen", "only-down"]),
                member("e", "alive", &["council", ""]),
            ],
        );
        let list = catalogue(&["fast".into()], &report, 7);
        let ids: Vec<&str> = list.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "hivemesh",
                "council",
                "pipeline",
                "council:fast",
                "pipeline:fast",
                "llama3.2",
                "meta-llama/x:free",
                "qwen"
            ]
        );
        let llama = &list[5];
        assert_eq!((llama.owned_by.as_str(), llama.peers.clone()), ("b,me", vec!["b".into(), "me".into()]));
        assert_eq!(list[7].peers, ["b"]);
        assert!(list.iter().all(|m| m.created == 7 && m.object == "model"));
        assert!(list[..5].iter().all(|m| m.owned_by == "hivemesh" && m.peers.is_empty()));
    }

    #[test]
    fn a_mode_has_no_peers_field_and_a_swarm_model_has_both_owner_forms() {
        let report = report(member("me", "alive", &["m"]), vec![member("p", "alive", &["m"])]);
        let list = catalogue(&[], &report, 1);
        let mode = serde_json::to_value(&list[0]).expect("json");
        assert!(mode.get("peers").is_none(), "{mode}");
        let model = serde_json::to_value(&list[3]).expect("json");
        assert_eq!(model["owned_by"], "me,p");
        assert_eq!(model["peers"], serde_json::json!(["me", "p"]));
    }

    #[test]
    fn an_unknown_model_is_openais_404() {
        let body = not_found("nope/x:y").body();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["type"], "not_found_error");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("nope/x:y")));
    }
}
