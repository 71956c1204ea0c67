//! `hivemesh ask --node/--mode` (a federated job asked of a running node,
//! followed through its event stream) and `hivemesh jobs`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use hivemesh::node::api::client::json_body;
use hivemesh::node::api::{ApiClient, Method};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

pub struct Request<'a> {
    pub question: &'a str,
    pub mode: &'a str,
    pub profile: &'a str,
    pub peers: usize,
    pub json: bool,
}

/// Submits the job, follows it to its outcome and prints the answer (or the
/// whole job as JSON). Returns whether the job ended `done`.
pub async fn ask(api: &ApiClient, request: Request<'_>) -> anyhow::Result<bool> {
    let body = json!({
        "question": request.question,
        "mode": request.mode,
        "profile": request.profile,
        "peers": request.peers,
    });
    let submitted = api.call(Method::POST, "/v1/jobs", Some(&body)).await.map_err(|e| anyhow!(e))?;
    let id = submitted["id"].as_str().context("the node accepted the job but sent no id")?.to_string();
    let mut display = Display::new(std::io::stderr().is_terminal());
    display.line(&format!("job {id} asked at {} ({}, profile {})", api.base, request.mode, request.profile));

    let path = format!("/v1/jobs/{id}/events");
    let response = api.request(Method::GET, &path).send().await.context("cannot follow the job's events")?;
    if !response.status().is_success() {
        bail!(json_body(&path, response).await.err().unwrap_or_else(|| "unexpected answer".into()));
    }
    let mut events = response.bytes_stream().eventsource();
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
                Some(Err(e)) => bail!("the event stream broke: {e}"),
                None => bail!("the node closed the event stream before the job ended"),
            },
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                cancelled = true;
                display.line("cancelling the job on every participant (Ctrl-C again to stop waiting)");
                api.call(Method::DELETE, &format!("/v1/jobs/{id}"), None).await.map_err(|e| anyhow!(e))?;
            }
            _ = tokio::signal::ctrl_c(), if cancelled => bail!("stopped waiting for job {id}"),
        }
    }
    display.finish();
    let job = api.call(Method::GET, &format!("/v1/jobs/{id}"), None).await.map_err(|e| anyhow!(e))?;
    let outcome = &job["outcome"];
    if request.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else if let Some(answer) = outcome["answer"].as_str() {
        println!("{answer}");
    }
    if let Some(error) = outcome["error"].as_str() {
        eprintln!("hivemesh: {}: {error}", outcome["status"].as_str().unwrap_or("ended"));
    }
    Ok(outcome["status"] == "done")
}

/// Progress on stderr: a live spinner on a terminal, one line per event
/// (token frames included) otherwise.
struct Display {
    started: Instant,
    bar: Option<ProgressBar>,
    frames: u64,
    /// The final stage's text so far, shown live on a terminal.
    answer_so_far: String,
}

impl Display {
    fn new(terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Self { started: Instant::now(), bar, frames: 0, answer_so_far: String::new() }
    }

    fn line(&self, text: &str) {
        let line = format!("[{:6.2}s] {text}", self.started.elapsed().as_secs_f64());
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
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
            "cancelled" => "cancelled".to_string(),
            "outcome" => {
                format!("{} in {} ms", body["status"].as_str().unwrap_or("ended"), body["elapsed_ms"])
            }
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
        let part = data["part"].as_str().unwrap_or_default();
        let text = data["text"].as_str().unwrap_or_default();
        match &self.bar {
            Some(bar) => {
                if part == "curator" || part == "stage.curator" {
                    self.answer_so_far.push_str(text);
                }
                let tail: String = {
                    let flat = self.answer_so_far.replace('\n', " ");
                    let skip = flat.chars().count().saturating_sub(60);
                    flat.chars().skip(skip).collect()
                };
                bar.set_message(format!("{} token frames · {part}: {tail}", self.frames));
            }
            None => {
                let peer = short_peer(data["peer"].as_str().unwrap_or_default());
                self.line(&format!("tokens {part} @{peer}: {text:?}"));
            }
        }
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
        let job = api.call(Method::GET, &format!("/v1/jobs/{id}"), None).await.map_err(|e| anyhow!(e))?;
        println!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(());
    }
    let list =
        api.call(Method::GET, &format!("/v1/jobs?limit={limit}"), None).await.map_err(|e| anyhow!(e))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows = list["jobs"].as_array().cloned().unwrap_or_default();
    println!("{:<34} {:<10} {:<9} {:>9}  question / answer", "id", "status", "mode", "seconds");
    for row in &rows {
        let job = &row["job"];
        let seconds = match (row["created_ms"].as_u64(), row["finished_ms"].as_u64()) {
            (Some(created), Some(finished)) => {
                format!("{:.2}", finished.saturating_sub(created) as f64 / 1e3)
            }
            _ => "-".into(),
        };
        println!(
            "{:<34} {:<10} {:<9} {:>9}  {}",
            job["id"].as_str().unwrap_or("?"),
            job["status"].as_str().unwrap_or("?"),
            job["mode"].as_str().unwrap_or("-"),
            seconds,
            one_line(job["question"].as_str().unwrap_or_default(), 60),
        );
        if let Some(answer) = job["answer"].as_str() {
            println!("{:>66}-> {}", "", one_line(answer, 60));
        }
    }
    println!("{} jobs", rows.len());
    Ok(())
}

fn one_line(text: &str, width: usize) -> String {
    let flat = text.replace('\n', " ");
    if flat.chars().count() <= width {
        return flat;
    }
    format!("{}…", flat.chars().take(width - 1).collect::<String>())
}
