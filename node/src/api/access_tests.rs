//! Parsing and the rules on their own; node/tests/api_origin.rs checks them
//! over HTTP on every route.

use super::*;

fn policy(bound: &str, hosts: &[&str], origins: &[&str]) -> Arc<AccessPolicy> {
    let hosts: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
    let origins: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
    AccessPolicy::new(bound.parse().expect("ip"), AccessRules::new(&hosts, &origins).expect("rules"))
}

fn host_ok(policy: &AccessPolicy, host: &str) -> bool {
    parse_host(host).is_some_and(|(name, _)| policy.host_allowed(&name))
}

#[test]
fn a_loopback_api_answers_to_its_address_and_localhost_only() {
    let p = policy("127.0.0.1", &[], &[]);
    for good in ["127.0.0.1", "127.0.0.1:7480", "localhost", "LOCALHOST:7480", "localhost:1"] {
        assert!(host_ok(&p, good), "{good}");
    }
    for bad in [
        "attacker.example",
        "attacker.example:7480",
        "127.0.0.1.attacker.example",
        "localhost.attacker.example",
        "localhost.",
        "127.0.0.2",
        "[::1]:7480",
        "0x7f.0.0.1",
        "user@127.0.0.1",
        "",
        "127.0.0.1:7480/x",
    ] {
        assert!(!host_ok(&p, bad), "{bad}");
    }
}

#[test]
fn an_ipv6_api_takes_its_address_in_brackets() {
    let p = policy("::1", &[], &[]);
    assert!(host_ok(&p, "[::1]:7480"));
    assert!(host_ok(&p, "[0:0:0:0:0:0:0:1]"));
    assert!(!host_ok(&p, "::1"), "an IPv6 Host needs brackets");
    assert!(!host_ok(&p, "127.0.0.1"));
}

#[test]
fn an_api_on_every_interface_answers_to_any_ip_literal_but_names_only_when_allowed() {
    let p = policy("0.0.0.0", &["Node.Example"], &[]);
    for good in ["192.0.2.7:7480", "10.1.2.3", "[2001:db8::1]:7480", "localhost", "node.example:443"] {
        assert!(host_ok(&p, good), "{good}");
    }
    for bad in ["attacker.example", "other.example:7480"] {
        assert!(!host_ok(&p, bad), "{bad}");
    }
    let v6 = policy("::", &[], &[]);
    assert!(host_ok(&v6, "192.0.2.7") && host_ok(&v6, "[2001:db8::1]") && !host_ok(&v6, "attacker.example"));
}

#[test]
fn a_specific_address_answers_to_itself_and_allowed_ips() {
    let p = policy("192.0.2.7", &["198.51.100.1"], &[]);
    assert!(host_ok(&p, "192.0.2.7:7480") && host_ok(&p, "198.51.100.1") && host_ok(&p, "localhost"));
    assert!(!host_ok(&p, "192.0.2.8"));
}

#[test]
fn origins_normalize_as_browsers_send_them() {
    assert_eq!(allowed_origin("HTTP://UI.Example:80/").as_deref(), Ok("http://ui.example"));
    assert_eq!(allowed_origin("https://ui.example:443").as_deref(), Ok("https://ui.example"));
    assert_eq!(allowed_origin("http://localhost:3000").as_deref(), Ok("http://localhost:3000"));
    assert_eq!(allowed_origin("http://[::1]:3000").as_deref(), Ok("http://[::1]:3000"));
    assert_eq!(allowed_origin("chrome-extension://abcdef").as_deref(), Ok("chrome-extension://abcdef"));
    for bad in [
        "*",
        "null",
        "ui.example",
        "http://ui.example/app",
        "http://ui.example?x=1",
        "http://a@ui.example",
        "",
    ] {
        assert!(matches!(allowed_origin(bad), Err(AccessConfigError::BadOrigin { .. })), "{bad}");
    }
}

#[test]
fn allowed_hosts_are_names_or_addresses_without_ports() {
    assert_eq!(allowed_host("Node.Example").as_deref(), Ok("node.example"));
    assert_eq!(allowed_host("::1").as_deref(), Ok("[::1]"));
    assert_eq!(allowed_host("192.0.2.1").as_deref(), Ok("192.0.2.1"));
    for bad in ["*", "node.example:80", "http://node.example", "a/b", "", "*.example"] {
        assert!(matches!(allowed_host(bad), Err(AccessConfigError::BadHost(_))), "{bad}");
    }
}

fn origin_check(
    p: &AccessPolicy,
    method: Method,
    host: &str,
    pairs: &[(&str, &str)],
) -> Result<(), ApiError> {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    p.check_origin(&method, &headers, parse_host(host).as_ref())
}

#[test]
fn same_origin_allowed_origins_and_no_origin_pass_and_others_do_not() {
    let p = policy("127.0.0.1", &[], &["http://ui.example:8080"]);
    let host = "127.0.0.1:7480";
    let pass = |pairs: &[(&str, &str)]| origin_check(&p, Method::POST, host, pairs).is_ok();
    assert!(pass(&[]));
    assert!(pass(&[("origin", "http://127.0.0.1:7480")]));
    assert!(pass(&[("origin", "https://127.0.0.1:7480")]));
    assert!(pass(&[("origin", "http://ui.example:8080")]));
    assert!(pass(&[("sec-fetch-site", "same-origin")]));
    assert!(!pass(&[("origin", "http://evil.example")]));
    assert!(!pass(&[("origin", "http://ui.example:8081")]), "another port is another origin");
    assert!(!pass(&[("origin", "https://ui.example:8080")]), "another scheme is another origin");
    assert!(!pass(&[("origin", "http://127.0.0.1:7481")]));
    assert!(!pass(&[("origin", "http://localhost:7480")]), "localhost is not the Host the page used");
    assert!(!pass(&[("origin", "null")]));
    assert!(!pass(&[("origin", "http://ui.example:8080"), ("origin", "http://evil.example")]));
    assert!(!pass(&[("sec-fetch-site", "cross-site")]));
    let error =
        origin_check(&p, Method::POST, host, &[("origin", "http://evil.example")]).expect_err("refused");
    assert_eq!((error.status, error.param.as_deref()), (StatusCode::FORBIDDEN, Some("Origin")));
    assert!(error.message.contains("http://evil.example"), "{}", error.message);
}

#[test]
fn a_cross_site_navigation_may_read_but_not_post() {
    let p = policy("127.0.0.1", &[], &[]);
    let nav = [("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "navigate")];
    assert!(origin_check(&p, Method::GET, "127.0.0.1:7480", &nav).is_ok());
    assert!(origin_check(&p, Method::POST, "127.0.0.1:7480", &nav).is_err());
    let fetch = [("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "no-cors")];
    assert!(origin_check(&p, Method::GET, "127.0.0.1:7480", &fetch).is_err());
}

#[test]
fn without_a_host_only_listed_origins_pass() {
    let p = policy("127.0.0.1", &[], &["http://ui.example:8080"]);
    let check = |origin: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, origin.parse().expect("value"));
        p.check_origin(&Method::POST, &headers, None)
    };
    assert!(check("http://ui.example:8080").is_ok());
    assert!(check("http://127.0.0.1:7480").is_err());
}

#[test]
fn a_malformed_port_is_never_read_as_the_default_one() {
    // `http://evil.example:abc` once became `http://evil.example` (port 80).
    for bad in
        ["http://evil.example:abc", "http://ui.example:30OO", "http://ui.example:99999", "http://ui.example:"]
    {
        assert!(allowed_origin(bad).is_err(), "{bad} must be refused");
    }
    assert_eq!(allowed_origin("http://ui.example:3000").as_deref(), Ok("http://ui.example:3000"));
    let p = policy("127.0.0.1", &[], &[]);
    for bad in ["localhost:99999", "localhost:abc", "localhost:"] {
        assert!(!host_ok(&p, bad), "Host {bad} must be refused");
    }
}
