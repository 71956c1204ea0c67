//! Every rule of ../shared/spec/majority-rule.md, plus a randomised comparison
//! against a literal, sort-based reading of the spec.

use hivemesh_crdt::majority::{Entry, Metrics, ResolveError, ViewsError, parse_views, resolve};
use proptest::prelude::*;
use serde_json::{Value, json};

fn entry(id: &str, time: &str, address: &str) -> Entry {
    Entry::from_json(json!({"id": id, "last_updated": time, "address": address})).unwrap()
}

const T1: &str = "2024-05-01T10:00:00Z";
const T2: &str = "2024-05-01T10:00:01Z";
const T3: &str = "2024-05-01T10:00:02Z";

fn addresses(views: &[Vec<Entry>]) -> Vec<(String, String)> {
    resolve(views)
        .unwrap()
        .entries
        .iter()
        .map(|e| (e.id().to_owned(), e.fields()["address"].as_str().unwrap().to_owned()))
        .collect()
}

fn metrics(views: &[Vec<Entry>]) -> Metrics {
    let mut metrics = resolve(views).unwrap().metrics;
    metrics.duration_micros = 0;
    metrics
}

#[test]
fn rule1_no_views_is_an_error_and_empty_views_give_nothing() {
    let none: Vec<Vec<Entry>> = vec![];
    assert_eq!(resolve(&none).unwrap_err(), ResolveError::NoViews);
    assert_eq!(ResolveError::NoViews.to_string(), "no peer views to resolve");
    let empty: Vec<Vec<Entry>> = vec![vec![], vec![], vec![]];
    let resolution = resolve(&empty).unwrap();
    assert!(resolution.entries.is_empty());
    assert_eq!(resolution.metrics.peer_count, 3);
    assert_eq!(resolution.metrics.total_entries, 0);
}

#[test]
fn rule2_a_view_votes_once_per_id_with_its_newest_entry() {
    // View 0 lists "b" three times; counted three times it would beat "a".
    let views = vec![
        vec![entry("x", T1, "b"), entry("x", T2, "b"), entry("x", T1, "b")],
        vec![entry("x", T1, "a")],
        vec![entry("x", T1, "a")],
    ];
    assert_eq!(addresses(&views), [("x".into(), "a".into())]);
    let m = metrics(&views);
    assert_eq!((m.total_entries, m.majority_resolved, m.conflicts), (3, 1, 1));
}

#[test]
fn rule2_duplicate_at_the_same_instant_keeps_the_greatest_version() {
    for order in [["m", "z"], ["z", "m"]] {
        let views = vec![vec![entry("x", T1, order[0]), entry("x", T1, order[1])]];
        assert_eq!(addresses(&views), [("x".into(), "z".into())]);
        assert_eq!(metrics(&views).single_reports, 1);
    }
}

#[test]
fn rule3_single_report_is_taken_as_reported() {
    let lone =
        Entry::from_json(json!({"id": "solo", "last_updated": T1, "extra": [1, 2], "node_type": "gpu"}))
            .unwrap();
    let views = vec![vec![lone.clone()], vec![], vec![entry("other", T1, "o")]];
    let resolution = resolve(&views).unwrap();
    assert_eq!(resolution.entries[1], &lone);
    assert_eq!(resolution.entries[1].to_json()["extra"], json!([1, 2]));
    assert_eq!(resolution.metrics.single_reports, 2);
}

#[test]
fn rule4_majority_beats_a_newer_minority_and_returns_its_newest_report() {
    let views = vec![vec![entry("x", T1, "old")], vec![entry("x", T2, "old")], vec![entry("x", T3, "new")]];
    let resolution = resolve(&views).unwrap();
    assert_eq!(resolution.entries[0].fields()["address"], "old");
    assert_eq!(resolution.entries[0].fields()["last_updated"], T2);
    assert_eq!(metrics(&views).majority_resolved, 1);
}

#[test]
fn rule4_threshold_counts_views_that_do_not_mention_the_id() {
    // N = 5, threshold 3: two identical reports are not a majority.
    let mut views = vec![vec![entry("x", T1, "a")], vec![entry("x", T1, "a")]];
    views.extend([vec![], vec![], vec![]]);
    let m = metrics(&views);
    assert_eq!((m.tie_breaks, m.conflicts, m.majority_resolved), (1, 0, 0));
    assert_eq!(addresses(&views), [("x".into(), "a".into())]);
}

#[test]
fn rule5_without_majority_the_newest_report_wins() {
    let views = vec![vec![entry("x", T1, "a")], vec![entry("x", T1, "a")], vec![entry("x", T3, "b")], vec![]];
    assert_eq!(addresses(&views), [("x".into(), "b".into())]);
    let m = metrics(&views);
    assert_eq!((m.tie_breaks, m.conflicts), (1, 1));
}

#[test]
fn rule5_same_newest_instant_more_reports_then_greatest_version() {
    // "a" and "b" both newest at T2; "a" has more reports.
    let views = vec![
        vec![entry("x", T2, "a")],
        vec![entry("x", T2, "a")],
        vec![entry("x", T2, "b")],
        vec![entry("x", T1, "c")],
        vec![entry("x", T1, "c")],
        vec![],
    ];
    assert_eq!(addresses(&views), [("x".into(), "a".into())]);
    // Equal counts at the same instant: the greatest canonical version.
    let views = vec![vec![entry("x", T2, "a")], vec![entry("x", T2, "b")], vec![], vec![]];
    assert_eq!(addresses(&views), [("x".into(), "b".into())]);
}

#[test]
fn same_winner_whatever_the_order_of_views_and_entries() {
    let base = vec![
        vec![entry("n1", T2, "a"), entry("n2", T1, "p"), entry("n3", T3, "k")],
        vec![entry("n2", T1, "q"), entry("n1", T2, "b")],
        vec![entry("n3", T3, "j"), entry("n1", T1, "c")],
        vec![entry("n2", T1, "r")],
    ];
    let expected = addresses(&base);
    let mut views = base.clone();
    for rotation in 0..views.len() {
        views.rotate_left(1);
        for view in &mut views {
            view.reverse();
        }
        assert_eq!(addresses(&views), expected, "rotation {rotation}");
    }
}

#[test]
fn output_is_sorted_by_id_with_all_fields() {
    let views = vec![vec![entry("b", T1, "1"), entry("a", T1, "2"), entry("C", T1, "3")]];
    let ids: Vec<_> = resolve(&views).unwrap().entries.iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(ids, ["C", "a", "b"]);
}

#[test]
fn parse_errors_name_the_view_and_entry() {
    let err = parse_views(r#"[[{"id":"a","last_updated":"2024-01-01T00:00:00Z"}],[{"id":"b","last_updated":"2024-01-01T00:00:00Z"},{"last_updated":"2024-01-01T00:00:00Z"}]]"#).unwrap_err();
    assert_eq!(err.to_string(), "view 1, entry 1: entry has no \"id\"");
    let err = parse_views(r#"{"views":[[{"id":"a","last_updated":"soon"}]]}"#).unwrap_err();
    assert!(
        err.to_string().starts_with("view 0, entry 0: \"last_updated\" is not an RFC 3339 timestamp"),
        "{err}"
    );
    assert!(matches!(parse_views("[[1,"), Err(ViewsError::NotJson(_))));
    assert!(matches!(parse_views("[3]"), Err(ViewsError::ViewNotArray { view: 0, .. })));
    assert!(matches!(parse_views(r#"{"peers": []}"#), Err(ViewsError::WrongShape(_))));
    assert_eq!(parse_views(r#"{"views": [[], []]}"#).unwrap().len(), 2);
}

fn newest_of<'a>(reports: &[&'a Entry]) -> &'a Entry {
    reports.iter().max_by_key(|e| e.last_updated_nanos()).unwrap()
}

/// The spec read literally: per id, per view's newest report, sort and count.
fn reference(views: &[Vec<Entry>]) -> Vec<Value> {
    use std::collections::BTreeMap;
    let threshold = views.len() / 2 + 1;
    let mut by_id: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for view in views {
        let mut newest: BTreeMap<&str, &Entry> = BTreeMap::new();
        for e in view {
            let keep = newest.get(e.id()).is_none_or(|k| {
                (e.last_updated_nanos(), e.version()) > (k.last_updated_nanos(), k.version())
            });
            if keep {
                newest.insert(e.id(), e);
            }
        }
        for (id, e) in newest {
            by_id.entry(id).or_default().push(e);
        }
    }
    by_id
        .into_values()
        .map(|reports| {
            let mut versions: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
            for e in &reports {
                versions.entry(e.version()).or_default().push(e);
            }
            if reports.len() > 1
                && let Some(v) = versions.values().find(|v| v.len() >= threshold)
            {
                return newest_of(v).to_json();
            }
            let newest = reports.iter().map(|e| e.last_updated_nanos()).max().unwrap();
            let winner = versions
                .iter()
                .filter(|(_, v)| newest_of(v).last_updated_nanos() == newest)
                .max_by(|(va, a), (vb, b)| (a.len(), va).cmp(&(b.len(), vb)))
                .unwrap();
            newest_of(winner.1).to_json()
        })
        .collect()
}

proptest! {
    #[test]
    fn agrees_with_the_literal_reading(
        views in prop::collection::vec(
            prop::collection::vec((0u8..6, 0u8..3, 0u8..3), 0..8), 1..7)
    ) {
        let views: Vec<Vec<Entry>> = views.into_iter().map(|view| view.into_iter().map(|(id, t, v)| {
            entry(&format!("n{id}"), [T1, T2, T3][t as usize], &format!("v{v}"))
        }).collect()).collect();
        let ours: Vec<Value> = resolve(&views).unwrap().entries.iter().map(|e| e.to_json()).collect();
        prop_assert_eq!(ours, reference(&views));
    }

    /// Many views and up to 12 versions per id: ids past 8 versions are
    /// found through the group index instead of their list.
    #[test]
    fn agrees_with_the_literal_reading_with_many_versions(
        views in prop::collection::vec(
            prop::collection::vec((0u8..3, 0u8..3, 0u8..12), 0..6), 1..30)
    ) {
        let views: Vec<Vec<Entry>> = views.into_iter().map(|view| view.into_iter().map(|(id, t, v)| {
            entry(&format!("n{id}"), [T1, T2, T3][t as usize], &format!("v{v}"))
        }).collect()).collect();
        let ours: Vec<Value> = resolve(&views).unwrap().entries.iter().map(|e| e.to_json()).collect();
        prop_assert_eq!(ours, reference(&views));
    }

    /// More ids than a linear search covers, in orders that differ between
    /// views (and repeats inside a view), so they go through the id index.
    #[test]
    fn agrees_with_the_literal_reading_with_many_ids(
        views in prop::collection::vec(
            prop::collection::vec((0u8..40, 0u8..3, 0u8..3), 0..60), 1..8)
    ) {
        let views: Vec<Vec<Entry>> = views.into_iter().map(|view| view.into_iter().map(|(id, t, v)| {
            entry(&format!("n{id}"), [T1, T2, T3][t as usize], &format!("v{v}"))
        }).collect()).collect();
        let ours: Vec<Value> = resolve(&views).unwrap().entries.iter().map(|e| e.to_json()).collect();
        prop_assert_eq!(ours, reference(&views));
    }
}
