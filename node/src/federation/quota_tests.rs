use super::*;

fn peer(seed: u8) -> String {
    hivemesh_protocol::NodeIdentity::from_seed([seed; 32]).peer_id().to_string()
}

fn quotas(default: &str, overrides: &[&str]) -> PeerQuotas {
    let overrides = overrides.iter().map(|o| o.parse::<PeerOverride>().expect("override"));
    PeerQuotas::new(QuotaConfig::new(default.parse().expect("limits"), overrides))
}

fn minutes(start: Instant, m: u64) -> Instant {
    start + Duration::from_secs(60 * m)
}

#[test]
fn limits_parse_from_the_flag_text_and_name_what_is_wrong() {
    let pa = peer(1);
    let a = pa.as_str();
    let limits: QuotaLimits = "calls=100, tokens=200000,usd=0.50".parse().expect("limits");
    assert_eq!(limits, QuotaLimits { calls: Some(100), tokens: Some(200_000), usd: Some(0.5) });
    assert_eq!(
        "calls=3".parse::<QuotaLimits>(),
        Ok(QuotaLimits { calls: Some(3), ..QuotaLimits::UNLIMITED })
    );
    assert_eq!("none".parse::<QuotaLimits>(), Ok(QuotaLimits::UNLIMITED));
    assert_eq!("calls=none,usd=1".parse::<QuotaLimits>().map(|l| l.calls), Ok(None));
    assert_eq!(
        "calls=100,tokens=200000,usd=0.5".parse::<QuotaLimits>().map(|l| l.to_string()).as_deref(),
        Ok("calls=100,tokens=200000,usd=0.5")
    );
    assert!(matches!("watts=3".parse::<QuotaLimits>(), Err(QuotaParseError::UnknownLimit(_))));
    assert!(matches!("calls".parse::<QuotaLimits>(), Err(QuotaParseError::NotAPair(_))));
    assert!(matches!(
        "calls=-1".parse::<QuotaLimits>(),
        Err(QuotaParseError::BadValue { name: "calls", .. })
    ));
    assert!(matches!("usd=-0.5".parse::<QuotaLimits>(), Err(QuotaParseError::BadValue { name: "usd", .. })));
    assert!(matches!("usd=NaN".parse::<QuotaLimits>(), Err(QuotaParseError::BadValue { name: "usd", .. })));
    let o: PeerOverride = format!("{a}:calls=7").parse().expect("override");
    assert_eq!((o.peer.as_str(), o.limits.calls), (a, Some(7)));
    assert!(matches!("calls=7".parse::<PeerOverride>(), Err(QuotaParseError::NoPeer(_))));
    assert!(matches!("notapeer:calls=7".parse::<PeerOverride>(), Err(QuotaParseError::BadPeer(_))));
}

#[test]
fn a_peer_over_its_call_limit_is_refused_naming_the_limit_and_counted() {
    let (pa, pb) = (peer(1), peer(2));
    let (a, b) = (pa.as_str(), pb.as_str());
    let q = quotas("calls=2", &[]);
    let now = Instant::now();
    assert_eq!(q.admit(a, now), Ok(()));
    assert_eq!(q.admit(a, now), Ok(()));
    let refusal = q.admit(a, now).expect_err("third call in the hour");
    assert_eq!((refusal.limit, refusal.used, refusal.allowed), (Limit::Calls, 2.0, 2.0));
    assert!(refusal.to_string().starts_with("quota: ") && refusal.to_string().contains("2 of its 2 calls"));
    // Another peer has its own account.
    assert_eq!(q.admit(b, now), Ok(()));
    let report = q.report(now);
    let a = report.peers.iter().find(|p| p.peer == a).expect("a reported");
    assert_eq!((a.hour.calls, a.refused.get(&Limit::Calls).copied()), (2, Some(1)));
}

#[test]
fn usage_leaves_the_window_an_hour_later() {
    let pa = peer(1);
    let a = pa.as_str();
    let q = quotas("calls=1", &[]);
    let start = Instant::now();
    q.admit(a, minutes(start, 0)).expect("first");
    assert!(q.admit(a, minutes(start, 59)).is_err(), "still inside the hour");
    assert_eq!(q.admit(a, minutes(start, 60)), Ok(()), "the first call has left the window");
    let report = q.report(minutes(start, 60));
    assert_eq!((report.peers[0].hour.calls, report.peers[0].total.calls), (1, 2));
}

#[test]
fn tokens_and_usd_are_charged_after_the_call_and_refuse_once_exhausted() {
    let (pa, pb) = (peer(1), peer(2));
    let (a, b) = (pa.as_str(), pb.as_str());
    let q = quotas("tokens=100,usd=0.01", &[]);
    let now = Instant::now();
    q.admit(a, now).expect("nothing spent yet");
    q.charge(a, 99, 0.0, now);
    q.admit(a, now).expect("one token left: the estimate before a call is only 'not exhausted'");
    q.charge(a, 50, 0.0, now);
    let refusal = q.admit(a, now).expect_err("over its tokens");
    assert_eq!((refusal.limit, refusal.used), (Limit::Tokens, 149.0));

    q.admit(b, now).expect("b's own account");
    q.charge(b, 1, 0.02, now);
    assert_eq!(q.admit(b, now).map_err(|r| r.limit), Err(Limit::Usd));
    // a cost that is not a real amount is not charged.
    q.charge(b, 0, f64::NAN, now);
    q.charge(b, 0, -3.0, now);
    let b = q.report(now).peers.into_iter().find(|p| p.peer == b).expect("b");
    assert!((b.hour.usd - 0.02).abs() < 1e-12, "{}", b.hour.usd);
}

#[test]
fn a_per_peer_override_replaces_the_default() {
    let (pa, pb) = (peer(1), peer(2));
    let (a, b) = (pa.as_str(), pb.as_str());
    let q = quotas("calls=0", &[&format!("{a}:calls=2")]);
    let now = Instant::now();
    assert_eq!(q.admit(b, now).map_err(|r| r.limit), Err(Limit::Calls), "default: no calls");
    assert_eq!(q.admit(a, now), Ok(()));
    assert_eq!(q.admit(a, now), Ok(()));
    assert!(q.admit(a, now).is_err());
    let report = q.report(now);
    let limit_of = |peer: &str| report.peers.iter().find(|p| p.peer == peer).and_then(|p| p.limits.calls);
    assert_eq!((limit_of(a), limit_of(b)), (Some(2), Some(0)));
}

#[test]
fn metrics_name_only_peers_that_called() {
    let (pa, pb) = (peer(1), peer(2));
    let (a, b) = (pa.as_str(), pb.as_str());
    let q = quotas("calls=1", &[]);
    let now = Instant::now();
    q.admit(a, now).expect("first");
    let _ = q.admit(a, now);
    let mut registry = prometheus_client::registry::Registry::with_prefix("hivemesh");
    q.report(now).register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains(&format!("hivemesh_peer_quota_refusals_total{{peer=\"{a}\",limit=\"calls\"}} 1")),
        "{text}"
    );
    assert!(
        text.contains(&format!("hivemesh_peer_quota_hour{{peer=\"{a}\",resource=\"calls\"}} 1")),
        "{text}"
    );
    assert!(
        text.contains(&format!("hivemesh_peer_quota_limit{{peer=\"{a}\",resource=\"calls\"}} 1")),
        "{text}"
    );
    let unlimited = format!("hivemesh_peer_quota_limit{{peer=\"{a}\",resource=\"tokens\"}}");
    assert!(!text.contains(&unlimited), "no limit series for an unlimited resource: {text}");
    assert!(!text.contains(b), "{text}");
}

#[test]
fn a_peer_refusing_two_stages_keeps_both_failures_in_the_document() {
    use crate::federation::spec::{CANDIDATE, Facts, Failure, failure_kind, is_failure};
    use hivemesh_crdt::job_doc::Verified;
    let author = hivemesh_protocol::NodeIdentity::from_seed([3; 32]).node_id();
    assert_eq!(failure_kind(CANDIDATE), "failure");
    assert!(is_failure("failure") && is_failure("failure.stage.curator"));
    assert!(!is_failure("failures") && !is_failure("stage.curator"));
    let contributions: Vec<Verified> = ["stage.generator", "stage.curator"]
        .into_iter()
        .map(|part| {
            let failure =
                Failure { part: part.into(), reason: "over quota".into(), code: Some(QUOTA_CODE.into()) };
            Verified { kind: failure_kind(part), author, body: serde_json::to_vec(&failure).expect("json") }
        })
        .collect();
    let facts = Facts::read(hivemesh_protocol::JobId([1; 16]), &contributions);
    assert!(facts.failed(&author, "stage.generator") && facts.failed(&author, "stage.curator"));
    assert_eq!(facts.failure(&author, "stage.curator").and_then(|f| f.code.as_deref()), Some("quota"));
}

#[test]
fn empty_limits_and_a_name_given_twice_are_errors_not_unlimited() {
    for text in ["", " ", ",", " , "] {
        assert_eq!(text.parse::<QuotaLimits>(), Err(QuotaParseError::Empty), "{text:?}");
    }
    assert_eq!("calls=1,calls=2".parse::<QuotaLimits>(), Err(QuotaParseError::Repeated("calls")));
    assert_eq!("none".parse::<QuotaLimits>(), Ok(QuotaLimits::UNLIMITED));
}

#[test]
fn a_provider_reporting_absurd_token_counts_saturates_instead_of_overflowing() {
    let mut total = Usage::default();
    for _ in 0..3 {
        total.add(&Usage { calls: 1, tokens: u64::MAX, usd: 0.0 });
    }
    assert_eq!((total.calls, total.tokens), (3, u64::MAX));
}
