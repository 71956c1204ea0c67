//! The dashboard at `GET /`, in a real browser (headless chromium driven by
//! chromedriver over WebDriver): against a 2-node loopback swarm, each node
//! with its own loopback SSE provider, the page shows both peers, asks a
//! council from its form, and shows that job's candidates, ballots, tally
//! and answer as they arrive over the job's event stream. Behind a bearer
//! token the page loads, says it needs the token, and works once given one.
//!
//! Without chromium and chromedriver these tests print one line and pass,
//! unless `HIVEMESH_REQUIRE_BROWSER_TESTS=1` (as in CI). With
//! `HIVEMESH_DASHBOARD_SCREENSHOT=FILE` the swarm test also writes a PNG of
//! the page with its finished job there (how docs/dashboard.png is made).

#[path = "support/browser.rs"]
mod browser;
#[path = "support/mesh.rs"]
mod mesh;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::time::Duration;

use browser::Browser;
use hivemesh::node::{NodeConfig, spawn_node};
use mesh::{LIMIT, Mesh, provider};
use serde_json::{Value, json};

const QUESTION: &str = "What is the capital of France?";

/// The page's view of the members table: `peer -> state`.
const MEMBERS: &str = "return Object.fromEntries([...document.querySelectorAll('#members tbody tr[data-peer]')]\
                       .map(r => [r.dataset.peer, r.dataset.state]))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_both_peers_and_a_council_asked_from_it_with_its_ballots_and_answer() {
    if browser::skip("dashboard") {
        return;
    }
    let delay = Duration::from_millis(20);
    let servers = vec![
        provider("Paris is the capital of France.", delay).await,
        provider("The capital of France is Paris.", delay).await,
    ];
    let mesh = Mesh::with_servers(servers, 1).await;
    let peers: Vec<String> = mesh.nodes.iter().map(|n| n.peer_id.to_string()).collect();
    let browser = Browser::start(1280, 1100).await;
    browser.open(&format!("{}/", mesh.api(0))).await;

    // Both peers, alive, with the model each advertises.
    let both = "const rows = document.querySelectorAll('#members tbody tr[data-state=alive]'); return rows.length >= 2";
    browser.wait_for("both peers alive", both, json!([]), LIMIT).await;
    let members = browser.eval(MEMBERS, json!([])).await;
    for peer in &peers {
        assert_eq!(members[peer], "alive", "{peer} in {members:#}");
    }
    let models = browser
        .eval(
            "return [...document.querySelectorAll('#members tbody tr')].map(r => r.cells[5].innerText)",
            json!([]),
        )
        .await;
    assert_eq!(models, json!(["canned", "canned"]), "each peer's advertised model");
    // The path to the other peer: the address of the open connection.
    let paths = browser
        .eval(
            "return [...document.querySelectorAll('#members tbody tr')].map(r => r.cells[4].innerText)",
            json!([]),
        )
        .await;
    let other = paths[1].as_str().unwrap_or_default();
    assert!(other.starts_with("/ip4/127.0.0.1/") && other.ends_with(')'), "{paths:#}");
    assert_eq!(paths[0], "this node", "{paths:#}");

    // Ask a council from the page's form.
    browser.type_into("#question", QUESTION).await;
    browser.clear("#peers").await;
    browser.type_into("#peers", "2").await;
    browser.click("#ask-button").await;
    let done =
        "const job = document.querySelector('#job'); return job.dataset.status === 'done' && job.dataset.id";
    let id = browser.wait_for("the job done", done, json!([]), LIMIT).await;
    let id = id.as_str().expect("job id").to_string();

    // The API's view of the job, which the page must match.
    let job: Value = mesh.job(&id).await;
    let outcome = &job["outcome"];
    assert_eq!(outcome["status"], "done", "{job:#}");
    let question = &job["spec"]["question"][0]["content"];
    assert_eq!(question, QUESTION, "the page submitted the typed question: {job:#}");
    assert_eq!(job["spec"]["participants"].as_array().map(Vec::len), Some(2), "{job:#}");

    let page = browser
        .eval(
            "const cells = (css) => [...document.querySelectorAll(css)];
             return {
               answer: document.querySelector('#job-answer').innerText,
               question: document.querySelector('#job-question').innerText,
               candidates: cells('#candidates tbody tr[data-peer]').map(r => r.dataset.peer),
               texts: cells('#candidates tbody tr[data-peer]').map(r => r.cells[5].innerText),
               voters: cells('#ballots tbody tr[data-voter]').map(r => r.dataset.voter),
               choices: cells('#ballots tbody tr[data-voter]').map(r => r.cells[2].innerText),
               winner: document.querySelector('#tally [data-winner]').dataset.winner,
               ranking: cells('#tally ol li').length,
               events: cells('#events li').map(li => li.dataset.event),
             };",
            json!([]),
        )
        .await;
    assert_eq!(page["answer"], outcome["answer"], "{page:#}");
    assert_eq!(page["question"], QUESTION);
    assert_eq!(page["winner"], outcome["winner"], "{page:#}");
    assert_eq!(page["ranking"], 2, "both candidates ranked: {page:#}");
    for peer in &peers {
        for key in ["candidates", "voters"] {
            let listed = page[key].as_array().expect(key);
            assert!(listed.contains(&json!(peer)), "{key} lacks {peer}: {page:#}");
        }
    }
    let api_voters: Vec<&Value> =
        job["ballots"].as_array().expect("ballots").iter().map(|b| &b["voter"]).collect();
    assert_eq!(api_voters.len(), 2, "{job:#}");
    for voter in api_voters {
        assert!(page["voters"].as_array().expect("voters").contains(voter), "{page:#}");
    }
    // Each ballot's choice came over the event stream (the job JSON has none).
    for choice in page["choices"].as_array().expect("choices") {
        let text = choice.as_str().unwrap_or_default();
        assert!(text.contains('>') || text.contains(':'), "a ranked choice, not a placeholder: {page:#}");
    }
    let texts: Vec<&str> =
        page["texts"].as_array().expect("texts").iter().filter_map(Value::as_str).collect();
    assert!(texts.contains(&"Paris is the capital of France."), "{page:#} {job:#}");
    assert!(texts.contains(&"The capital of France is Paris."), "{page:#}");
    let events: Vec<&str> =
        page["events"].as_array().expect("events").iter().filter_map(Value::as_str).collect();
    for name in ["job", "candidate", "round", "ballot", "outcome"] {
        assert!(events.contains(&name), "the {name} event reached the page: {events:?}");
    }

    // The job list shows it, done (at the next poll).
    let listed = "const li = document.querySelector('#jobs li[data-job=\"' + arguments[0] + '\"]'); \
                  return !!li && li.innerText.includes('done') && li.innerText.includes(arguments[1])";
    browser.wait_for("the job listed as done", listed, json!([id, QUESTION]), LIMIT).await;

    // The other node's page: the same job (replicated), and the asker's
    // model calls in its quota table.
    browser.open(&format!("{}/", mesh.api(1))).await;
    let same = "const job = document.querySelector('#job'); return job.dataset.id === arguments[0] && job.dataset.status === 'done'";
    browser.wait_for("the job on the other node", same, json!([id]), LIMIT).await;
    let quota = "const row = document.querySelector('#quota tr[data-peer=\"' + arguments[0] + '\"]'); \
                 return row && row.cells[1].innerText";
    let calls = browser.wait_for("the asker's quota usage", quota, json!([peers[0]]), LIMIT).await;
    let used: u64 =
        calls.as_str().and_then(|t| t.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(used >= 1, "the asker called the other node's model at least once: {calls}");
    let replayed = "return document.querySelectorAll('#events li[data-event=ballot]').length === 2 \
                    && !!document.querySelector('#events li[data-event=outcome]') \
                    && [...document.querySelectorAll('#ballots tbody tr[data-voter]')].every(r => r.cells[2].innerText.startsWith('rank:'))";
    browser.wait_for("the finished job's events replayed", replayed, json!([]), LIMIT).await;

    if let Ok(path) = std::env::var("HIVEMESH_DASHBOARD_SCREENSHOT") {
        std::fs::write(&path, browser.screenshot().await).expect("write the screenshot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_token_the_page_loads_asks_for_the_token_and_then_shows_the_node() {
    if browser::skip("dashboard behind a token") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::loopback(dir.path().to_path_buf());
    config.api_token = Some("s3cret-token".into());
    let node = spawn_node(config).await.expect("node starts");
    let base = format!("http://{}", node.api.expect("api"));
    let peer = node.peer_id.to_string();

    // The page is served without the token, under a policy that allows only
    // its own script and origin; the data is not, nor any other method.
    let page = reqwest::get(format!("{base}/")).await.expect("get /");
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().expect("ascii").to_string();
    assert!(policy.contains("connect-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(page.headers()["content-type"].to_str().expect("ascii").starts_with("text/html"));
    let status = reqwest::get(format!("{base}/v1/status")).await.expect("get status");
    assert_eq!(status.status(), 401);
    let post = reqwest::Client::new().post(format!("{base}/")).send().await.expect("post /");
    assert_eq!(post.status(), 401, "only GET of the page passes without the token");

    let browser = Browser::start(1024, 700).await;
    browser.open(&format!("{base}/")).await;
    let asks = "const f = document.querySelector('#token-form'); return !f.hidden && document.querySelector('#conn').innerText";
    let said = browser.wait_for("the token prompt", asks, json!([]), LIMIT).await;
    assert_eq!(said, "needs token");
    let rows = browser.eval(MEMBERS, json!([])).await;
    assert_eq!(rows, json!({}), "nothing shown without the token");

    // A wrong token is refused and said so; the right one shows the node.
    browser.type_into("#token", "wrong").await;
    browser.click("#token-form button").await;
    let wrong = "return document.querySelector('#conn').innerText === 'wrong token'";
    browser.wait_for("the wrong token refused", wrong, json!([]), LIMIT).await;
    browser.clear("#token").await;
    browser.type_into("#token", "s3cret-token").await;
    browser.click("#token-form button").await;
    let shown = "return !!document.querySelector('#members tr[data-peer=\"' + arguments[0] + '\"]')";
    browser.wait_for("this node's row", shown, json!([peer]), LIMIT).await;
    let conn = browser.eval("return document.querySelector('#conn').innerText", json!([])).await;
    assert_eq!(conn, "live");

    // From the address's fragment, in a fresh tab state (a new document:
    // a fragment-only change would not reload); the token leaves the
    // address bar.
    browser.eval("sessionStorage.clear()", json!([])).await;
    browser.open("about:blank").await;
    browser.open(&format!("{base}/#token=s3cret-token")).await;
    browser.wait_for("this node's row from #token", shown, json!([peer]), LIMIT).await;
    let address = browser.eval("return location.href", json!([])).await;
    assert_eq!(address, json!(format!("{base}/")), "the token is gone from the address");
}
