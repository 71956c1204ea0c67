//! `hivemesh ask --node/--mode` (a federated job asked of a running node,
//! followed through its event stream) and `hivemesh jobs`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use hivemesh::node::api::client::json_body;
use hivemesh::node::api::{ApiClient, Method};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::output::{self, errln, outln};

pub struct Request<'a> {
    pub question: &'a str,
    pub mode: &'a str,
    pub profile: &'a str,
    pub peers: usize,
    /// The job's deadline; `None` for the mode's default.
    pub deadline: Option<Duration>,
    pub json: bool,
}

/// A council's deadline unless `--deadline` says otherwise: every member
/// answers in parallel, then one vote and the curator.
pub const COUNCIL_DEADLINE: Duration = Duration::from_secs(300);

/// A pipeline's deadline unless `--deadline` says otherwise: four model
/// calls, three of them one after another, each possibly queued behind
/// other jobs' calls on a busy two-core node (the node's own 120 s default
/// was missed there).
pub const PIPELINE_DEADLINE: Duration = Duration::from_secs(600);

/// Submits the job, follows it to its outcome and prints the answer (or the
/// whole job as one JSON document). Returns whether the job ended `done`.
pub async fn ask(api: &ApiClient, request: Request<'_>) -> anyhow::Result<bool> {
    let deadline = request.deadline.or(match request.mode {
        "council" => Some(COUNCIL_DEADLINE),
        "pipeline" => Some(PIPELINE_DEADLINE),
        _ => None, // the node names the bad mode
    });
    let mut body = json!({
        "question": request.question,
        "mode": request.mode,
        "profile": request.profile,
        "peers": request.peers,
    });
    if let Some(deadline) = deadline {
        body["deadline_ms"] = json!(deadline.as_millis() as u64);
    }
    let asked = Instant::now();
    let submitted = api.call(Method::POST, "/v1/jobs", Some(&body)).await?;
    let id = submitted["id"].as_str().context("the node accepted the job but sent no id")?.to_string();
    let mut display = Display::new(asked, output::stderr_is_terminal());
    display.line(&format!("job {id} asked at {} ({}, profile {})", api.base, request.mode, request.profile));

    // A client killed outright (not Ctrl-C) still cancels its job: the node
    // cancels it when this stream hangs up.
    let path = format!("/v1/jobs/{id}/events?cancel_on_disconnect=true");
    let response = api.request(Method::GET, &path).send().await.context("cannot follow the job's events")?;
    if !response.status().is_success() {
        return Err(match json_body(&path, response).await {
            Err(e) => e.into(),
            Ok(_) => anyhow!("unexpected answer"),
        });
    }
    // Our own SSE parser: one invalid byte costs one U+FFFD, never the stream.
    let mut events = Box::pin(hivemesh::llm::provider::sse::events(response.bytes_stream()));
    let mut cancelled = false;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => {
                    if event.event == "done" {
                        break;
                    }
                    display.event(&event.event, &event.data);
                }
                Some(Err(e)) => return Err(lost_stream(api, &id, &e.to_string()).await),
                None => return Err(lost_stream(api, &id, "the stream ended before the job did").await),
            },
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                cancelled = true;
                display.line("cancelling the job on every participant (Ctrl-C again to stop waiting)");
                api.call(Method::DELETE, &format!("/v1/jobs/{id}"), None).await?;
            }
            _ = tokio::signal::ctrl_c(), if cancelled => bail!("stopped waiting for job {id}"),
        }
    }
    display.finish();
    let job = api.call(Method::GET, &format!("/v1/jobs/{id}"), None).await?;
    let outcome = &job["outcome"];
    if request.json {
        outln!("{}", serde_json::to_string_pretty(&job)?);
    } else if let Some(answer) = outcome["answer"].as_str() {
        outln!("{answer}");
    }
    if let Some(error) = outcome["error"].as_str() {
        errln!("hivemesh: {}: {error}", outcome["status"].as_str().unwrap_or("ended"));
    }
    Ok(outcome["status"] == "done")
}

/// Why following job `id` stopped, once its event stream broke: whether
/// the node still answers (asked once, 3 s at most), and where to look for
/// the job's end, which the other participants may still reach.
async fn lost_stream(api: &ApiClient, id: &str, cause: &str) -> anyhow::Error {
    let probe = api.request(Method::GET, "/v1/status").timeout(Duration::from_secs(3)).send().await;
    let node = &api.base;
    match probe {
        Ok(response) if response.status().is_success() => anyhow!(
            "lost job {id}'s event stream from the node at {node}, which still answers ({cause}); \
             `hivemesh jobs {id} --node {node}` shows how the job ends"
        ),
        _ => anyhow!(
            "the node at {node} stopped answering while job {id} was running ({cause}); \
             the job may still end on its other participants: once the node is back, \
             `hivemesh jobs {id} --node {node}` shows it"
        ),
    }
}

/// Text one part of the job streamed in its latest attempt.
#[derive(Default)]
struct Streamed {
    peer: String,
    attempt: u64,
    text: String,
}

/// Progress on stderr, never on stdout: on a terminal a live line with the
/// newest part's tokens; otherwise one line per step and no token frames.
struct Display {
    /// When the job was asked: its wall time runs from here.
    asked: Instant,
    bar: Option<ProgressBar>,
    frames: u64,
    /// Each part's latest attempt; an attempt that failed or was retracted
    /// is dropped, so the live line never shows text that will not stand.
    parts: HashMap<String, Streamed>,
}

impl Display {
    fn new(asked: Instant, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Self { asked, bar, frames: 0, parts: HashMap::new() }
    }

    fn line(&self, text: &str) {
        let line = format!("[{:6.2}s] {text}", self.asked.elapsed().as_secs_f64());
        match &self.bar {
            Some(bar) => bar.println(line),
            None => errln!("{line}"),
        }
    }

    fn event(&mut self, name: &str, data: &str) {
        let Ok(data) = serde_json::from_str::<Value>(data) else {
            self.line(&format!("{name}: {data}"));
            return;
        };
        if name == "tokens" {
            self.tokens(&data);
            return;
        }
        let peer = short_peer(data["peer"].as_str().unwrap_or_default());
        let body = &data["body"];
        let text = |value: &Value| value.as_str().map_or_else(|| value.to_string(), str::to_string);
        // A part that failed, was handed to another peer or was taken back
        // streams again from nothing.
        if matches!(name, "failure" | "reassigned" | "retracted") {
            for key in [&body["part"], &data["part"], &data["kind"]] {
                if let Some(part) = key.as_str() {
                    self.parts.remove(part.trim_start_matches("assign."));
                }
            }
        }
        let detail = match name {
            "candidate" | "stage" => format!(
                "{} from {peer}: {} tokens in {} ms",
                data["kind"].as_str().unwrap_or(name),
                body["tokens"],
                body["elapsed_ms"]
            ),
            "round" => format!("voting on {} candidates", body["candidates"].as_array().map_or(0, Vec::len)),
            "ballot" => format!("ballot from {peer}"),
            "reassigned" => format!(
                "{} reassigned to {}: {}",
                text(&data["kind"]),
                short_peer(body["peer"].as_str().unwrap_or_default()),
                text(&body["reason"])
            ),
            "failure" => format!("{} failed on {peer}: {}", text(&body["part"]), text(&body["reason"])),
            "retracted" => format!("{} from {peer} taken back", text(&data["part"])),
            "cancelled" => "cancelled".to_string(),
            // The job's wall time as the asker saw it, curator included.
            "outcome" => format!(
                "{} in {:.1} s",
                body["status"].as_str().unwrap_or("ended"),
                self.asked.elapsed().as_secs_f64()
            ),
            "job" => format!("job placed by {peer}"),
            other => format!("{other} from {peer}"),
        };
        self.line(&detail);
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{name} · {} token frames", self.frames));
        }
    }

    fn tokens(&mut self, data: &Value) {
        self.frames += 1;
        let Some(bar) = &self.bar else { return };
        let part = data["part"].as_str().unwrap_or_default().to_string();
        let peer = data["peer"].as_str().unwrap_or_default();
        let attempt = data["attempt"].as_u64().unwrap_or(0);
        let streamed = self.parts.entry(part.clone()).or_default();
        if streamed.peer != peer || streamed.attempt != attempt {
            // Another attempt (or another peer) starts this part over.
            *streamed = Streamed { peer: peer.to_string(), attempt, text: String::new() };
        }
        streamed.text.push_str(data["text"].as_str().unwrap_or_default());
        let flat = streamed.text.replace('\n', " ");
        let skip = flat.chars().count().saturating_sub(60);
        let tail: String = flat.chars().skip(skip).collect();
        bar.set_message(format!("{} token frames · {part}: {tail}", self.frames));
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The last six characters of a peer id: enough to tell a few nodes apart.
fn short_peer(peer: &str) -> String {
    let skip = peer.chars().count().saturating_sub(6);
    format!("…{}", peer.chars().skip(skip).collect::<String>())
}

/// `hivemesh jobs [ID]`.
pub async fn jobs(api: &ApiClient, id: Option<&str>, limit: usize, json: bool) -> anyhow::Result<()> {
    if let Some(id) = id {
        let job = api.call(Method::GET, &format!("/v1/jobs/{id}"), None).await?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&job)?);
        } else {
            crate::job_view::print(&job);
        }
        return Ok(());
    }
    let list = api.call(Method::GET, &format!("/v1/jobs?limit={limit}"), None).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows = list["jobs"].as_array().cloned().unwrap_or_default();
    outln!("{:<34} {:<10} {:<9} {:>9}  question / answer", "id", "status", "mode", "seconds");
    for row in &rows {
        let job = &row["job"];
        let seconds = match (row["created_ms"].as_u64(), row["finished_ms"].as_u64()) {
            (Some(created), Some(finished)) => {
                format!("{:.2}", finished.saturating_sub(created) as f64 / 1e3)
            }
            _ => "-".into(),
        };
        outln!(
            "{:<34} {:<10} {:<9} {:>9}  {}",
            job["id"].as_str().unwrap_or("?"),
            job["status"].as_str().unwrap_or("?"),
            job["mode"].as_str().unwrap_or("-"),
            seconds,
            one_line(job["question"].as_str().unwrap_or_default(), 60),
        );
        if let Some(answer) = job["answer"].as_str() {
            outln!("{:>66}-> {}", "", one_line(answer, 60));
        }
    }
    outln!("{} jobs", rows.len());
    Ok(())
}

fn one_line(text: &str, width: usize) -> String {
    let flat = text.replace('\n', " ");
    if flat.chars().count() <= width {
        return flat;
    }
    format!("{}…", flat.chars().take(width - 1).collect::<String>())
}
