//! `hivemesh eval`: how often one model call, a council and the Hive
//! pipeline answer right, on a public question set, through the real paths
//! (a 3-node loopback mesh running federated jobs, the same code as
//! `mesh --ask`).
//!
//! The questions are "What is the capital of X?" for the UN member states of
//! `data/un-capitals.tsv` (world-countries 5.1.0, ODbL-1.0; see
//! data/README.md). An answer is right when it names one of the country's
//! capitals and no other country's capital. Seeded: the same `--seed` picks
//! the same questions and gives every model call the same sampling seed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hivemesh::llm::council::{judge_messages, lexical_agreement, likelihood_scores, rank_by_scores};
use hivemesh::llm::pipeline::{Stage, stage_messages};
use hivemesh::llm::{Budget, ChatMessage, ChatRequest};
use hivemesh::node::NodeHandle;
use hivemesh::node::federation::spec::{Facts, Mode, Outcome, Sampling};
use hivemesh::node::federation::{FederationConfig, Submission};
use hivemesh::protocol::TallyRule;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::cli::LlmArgs;
use crate::output::{errln, outln};

/// The question set, shipped with the binary.
const QUESTIONS: &str = include_str!("../data/un-capitals.tsv");

pub struct EvalArgs {
    pub questions: usize,
    pub seed: u64,
    pub profile: String,
    /// Overrides the profile's curation (`auto`, `select`, `rewrite`).
    pub curation: Option<String>,
    pub json: bool,
    pub llm: LlmArgs,
}

/// One question of the set.
#[derive(Clone, Debug)]
pub struct Question {
    pub country: String,
    pub capitals: Vec<String>,
    /// `g20` (the G20's member states, the well known) or `other`.
    pub group: String,
}

/// Parses `data/un-capitals.tsv` (`cca3 country capitals group`, capitals
/// separated by `|`, `#` comments).
pub fn question_set(text: &str) -> Vec<Question> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with("cca3\t"))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let [_, country, capitals, group] = fields[..] else { return None };
            Some(Question {
                country: country.to_string(),
                capitals: capitals.split('|').map(str::to_string).collect(),
                group: group.to_string(),
            })
        })
        .collect()
}

/// `n` questions, about half from the G20 (at most its 19 states) and the
/// rest from the other states, each half shuffled by `seed`.
pub fn pick(set: &[Question], n: usize, seed: u64) -> Vec<Question> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut g20: Vec<&Question> = set.iter().filter(|q| q.group == "g20").collect();
    let mut other: Vec<&Question> = set.iter().filter(|q| q.group != "g20").collect();
    g20.shuffle(&mut rng);
    other.shuffle(&mut rng);
    let from_g20 = n.div_ceil(2).min(g20.len());
    g20.into_iter().take(from_g20).chain(other.into_iter().take(n - from_g20)).cloned().collect()
}

/// Lower case ASCII words separated by single spaces, padded with a space
/// on each side so that `contains(" word ")` matches whole words.
fn normalise(text: &str) -> String {
    let ascii = deunicode::deunicode(text).to_lowercase();
    let words: Vec<&str> =
        ascii.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
    format!(" {} ", words.join(" "))
}

/// Whether normalised `text` names `capital` ("Washington D.C." also as
/// "Washington").
fn names(text: &str, capital: &str) -> bool {
    let name = normalise(capital);
    text.contains(&name)
        || name.strip_suffix(" d c ").is_some_and(|short| text.contains(&format!("{short} ")))
}

/// Capitals that are also common words ("male", "Lake Victoria"): naming
/// them is no sign of a hedged answer.
const COMMON_WORDS: [&str; 2] = ["Malé", "Victoria"];

/// Right: names one of the question's capitals and no other state's capital
/// (a hedge such as "Paris or Madrid" is wrong), common words aside.
pub fn is_right(answer: &str, question: &Question, set: &[Question]) -> bool {
    let text = normalise(answer);
    let own = |capital: &String| question.capitals.iter().any(|c| normalise(c) == normalise(capital));
    let other = |capital: &&String| !own(capital) && !COMMON_WORDS.contains(&capital.as_str());
    question.capitals.iter().any(|c| names(&text, c))
        && !set.iter().flat_map(|q| &q.capitals).filter(other).any(|c| names(&text, c))
}

/// What happened to one question.
#[derive(Debug, Default, Serialize)]
struct Record {
    country: String,
    group: String,
    single: bool,
    candidates: Vec<bool>,
    winner: Option<bool>,
    council: Option<bool>,
    council_curation: Option<String>,
    /// The vote winner's rightness under each judgement, on the same candidates.
    judged: BTreeMap<String, bool>,
    draft: Option<bool>,
    pipeline: Option<bool>,
    pipeline_curation: Option<String>,
    council_ms: Option<u64>,
    pipeline_ms: Option<u64>,
    /// Why a job ended without an answer (it then counts as wrong).
    council_error: Option<String>,
    pipeline_error: Option<String>,
    answers: BTreeMap<String, String>,
}

pub async fn run(data_dir: &Path, args: EvalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.questions > 0, "--questions must be at least 1");
    let set = question_set(QUESTIONS);
    anyhow::ensure!(
        args.questions <= set.len(),
        "--questions must be at most {} (the size of the question set)",
        set.len()
    );
    let questions = pick(&set, args.questions, args.seed);
    let (mut federation, offered) = crate::llm_cmd::federation(&args.llm, data_dir).await?;
    let profile = match &args.curation {
        None => args.profile.clone(),
        Some(curation) => {
            let name = format!("{}-{curation}", args.profile);
            let toml = format!("[profiles.{name:?}]\nbase = {:?}\ncuration = {curation:?}\n", args.profile);
            federation.profiles = federation.profiles.clone().with_toml(&toml)?;
            name
        }
    };
    let setup = (federation, offered);
    let dir = tempfile_dir(data_dir)?;
    let (nodes, _events) = crate::mesh_cmd::start_nodes(dir.path(), 3, false, 1, Some(&setup)).await?;
    let outcome = async {
        converge(&nodes, Duration::from_secs(60)).await?;
        crate::mesh_ask::wait_for_registry(&nodes[0], nodes.len() - 1).await?;
        let mut records = Vec::new();
        for (index, question) in questions.iter().enumerate() {
            let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(index as u64);
            let record = evaluate(&setup.0, &nodes[0], &profile, question, &set, seed).await?;
            // Progress on stderr: stdout holds only the report (or one JSON document).
            errln!(
                "[{}/{}] {}: one call {}, council {}, pipeline {}",
                index + 1,
                questions.len(),
                question.country,
                mark(Some(record.single)),
                mark(record.council),
                mark(record.pipeline)
            );
            records.push(record);
        }
        anyhow::Ok(records)
    }
    .await;
    crate::mesh_cmd::leave_all(nodes).await;
    let records = outcome?;
    let report = Report::new(&records);
    if args.json {
        let json = serde_json::json!({
            "seed": args.seed, "profile": profile, "questions": records.len(),
            "accuracy": report.rows, "records": records,
        });
        outln!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        report.print(&records, &profile, args.seed);
    }
    Ok(())
}

/// Waits until every node sees the others alive (quietly: stdout may be JSON).
async fn converge(nodes: &[NodeHandle], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let mut full = 0;
        for node in nodes {
            if node.members().await?.count("alive") == nodes.len() - 1 {
                full += 1;
            }
        }
        if full == nodes.len() {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the mesh did not converge within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mark(right: Option<bool>) -> &'static str {
    match right {
        Some(true) => "right",
        Some(false) => "wrong",
        None => "failed",
    }
}

/// The nodes' stores go in a fresh folder under the data dir, removed after.
fn tempfile_dir(data_dir: &Path) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    tempfile::Builder::new()
        .prefix("eval-")
        .tempdir_in(data_dir)
        .context("cannot create the eval's node folder")
}

async fn evaluate(
    federation: &FederationConfig,
    asker: &NodeHandle,
    profile_name: &str,
    question: &Question,
    set: &[Question],
    seed: u64,
) -> anyhow::Result<Record> {
    let asked = vec![ChatMessage::user(format!("What is the capital of {}?", question.country))];
    let right = |text: &str| is_right(text, question, set);
    let mut record =
        Record { country: question.country.clone(), group: question.group.clone(), ..Record::default() };

    // One model call: the generator's prompt and settings, as one candidate gets them.
    let profile = federation.profiles.get(profile_name)?;
    let settings = profile.stage(Stage::Generator);
    let mut request = ChatRequest::new(
        settings.model.clone(),
        stage_messages(Stage::Generator, profile, &asked, "", "", ""),
    );
    request.temperature = settings.temperature;
    request.max_tokens = settings.max_tokens;
    request.seed = Some(seed);
    let single = federation.client.complete(request, &Budget::unlimited(), |_| {}).await?;
    record.single = right(&single.text);
    record.answers.insert("single".into(), single.text.trim().to_string());

    let sampling = Sampling { seed: Some(seed), ..Sampling::default() };
    let council = job(asker, &asked, Mode::Council, profile_name, sampling.clone()).await?;
    record.council_error = failure(&council);
    if council.status == "done" {
        let outcome = council;
        let candidates: Vec<(String, String)> = outcome
            .contributions
            .iter()
            .filter(|c| c.part.starts_with("candidate"))
            .map(|c| (c.peer.clone(), c.text.clone()))
            .collect();
        record.candidates = candidates.iter().map(|(_, text)| right(text)).collect();
        if let Some(winner) = &outcome.winner {
            record.winner = candidates.iter().find(|(peer, _)| peer == winner).map(|(_, text)| right(text));
        }
        record.council = outcome.answer.as_deref().map(right);
        record.council_curation = outcome.curation.clone();
        record.council_ms = Some(outcome.elapsed_ms);
        record.answers.insert("council".into(), outcome.answer.clone().unwrap_or_default());
        let texts: Vec<&str> = candidates.iter().map(|(_, text)| text.as_str()).collect();
        record.judged = judgements(federation, &asked, &texts, &right).await;
    }
    let pipeline = job(asker, &asked, Mode::Pipeline, profile_name, sampling).await?;
    record.pipeline_error = failure(&pipeline);
    if pipeline.status == "done" {
        let outcome = pipeline;
        let draft = outcome.contributions.iter().find(|c| c.part == Stage::Generator.as_str());
        record.draft = draft.map(|c| right(&c.text));
        record.pipeline = outcome.answer.as_deref().map(right);
        record.pipeline_curation = outcome.curation.clone();
        record.pipeline_ms = Some(outcome.elapsed_ms);
        record.answers.insert("pipeline".into(), outcome.answer.clone().unwrap_or_default());
    }
    Ok(record)
}

/// The first-ranked candidate's rightness under each way a voter can judge,
/// on the same candidates: what the ADR's choice of judgement rests on.
async fn judgements(
    federation: &FederationConfig,
    asked: &[ChatMessage],
    texts: &[&str],
    right: &dyn Fn(&str) -> bool,
) -> BTreeMap<String, bool> {
    let mut judged = BTreeMap::new();
    if texts.is_empty() {
        return judged;
    }
    let lexical = lexical_agreement(texts);
    let first = |scores: &[f64]| right(texts[rank_by_scores(scores)[0] as usize]);
    judged.insert("lexical agreement".into(), first(&lexical));
    let owned = texts.iter().map(|t| t.to_string()).collect();
    if let Ok(Some(likelihood)) = federation.client.score(judge_messages(asked), owned).await {
        judged.insert("likelihood".into(), first(&likelihood));
        for weight in [0.5, 1.0, 2.0] {
            let scores = likelihood_scores(&likelihood, &lexical, weight);
            judged.insert(format!("likelihood + {weight} x agreement"), first(&scores));
        }
    }
    judged
}

/// Why a job did not answer: its error and each missing member's reason.
fn failure(outcome: &Outcome) -> Option<String> {
    if outcome.status == "done" {
        return None;
    }
    let mut reason = format!("{}: {}", outcome.status, outcome.error.clone().unwrap_or_default());
    for missing in &outcome.missing {
        reason.push_str(&format!("; {}: {}", missing.peer, missing.reason));
    }
    Some(reason)
}

/// Asks one job at `asker` and waits for its outcome, whatever its status.
async fn job(
    asker: &NodeHandle,
    question: &[ChatMessage],
    mode: Mode,
    profile: &str,
    sampling: Sampling,
) -> anyhow::Result<Outcome> {
    let federation = asker.federation().context("node-0 takes no part in jobs")?;
    let client = asker.client();
    let mut changes = client.job_changes();
    let submission = Submission {
        question: question.to_vec(),
        mode,
        profile: profile.to_string(),
        peers: 3,
        quorum: None,
        rule: TallyRule::Schulze,
        deadline: Some(Duration::from_secs(300)),
        max_tokens: None,
    };
    let job = federation.submit_sampled(submission, sampling).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    loop {
        let view = client.job(job).await?;
        if let Some(outcome) = Facts::read(job, &view.contributions).outcome {
            return Ok(outcome);
        }
        match tokio::time::timeout(Duration::from_secs(330), changes.recv()).await {
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            _ => anyhow::bail!("job {job} did not finish"),
        }
    }
}

/// Accuracies by group: (`g20`, `other`, `all`) per measure.
struct Report {
    rows: Vec<(String, [Option<f64>; 3])>,
}

impl Report {
    fn new(records: &[Record]) -> Self {
        let share = |values: Vec<bool>| {
            (!values.is_empty()).then(|| values.iter().filter(|v| **v).count() as f64 / values.len() as f64)
        };
        let by_group = |pick: &dyn Fn(&Record) -> Vec<bool>| {
            let group = |name: Option<&str>| {
                share(records.iter().filter(|r| name.is_none_or(|n| r.group == n)).flat_map(pick).collect())
            };
            [group(Some("g20")), group(Some("other")), group(None)]
        };
        let mut rows = vec![
            ("one model call".to_string(), by_group(&|r| vec![r.single])),
            ("a council candidate (mean)".into(), by_group(&|r| r.candidates.clone())),
            ("best of the candidates (oracle)".into(), by_group(&|r| vec![r.candidates.iter().any(|c| *c)])),
            ("the vote's winner".into(), by_group(&|r| vec![r.winner.unwrap_or(false)])),
            ("the council's final answer".into(), by_group(&|r| vec![r.council.unwrap_or(false)])),
            ("pipeline: the generator's draft".into(), by_group(&|r| vec![r.draft.unwrap_or(false)])),
            ("pipeline: the final answer".into(), by_group(&|r| vec![r.pipeline.unwrap_or(false)])),
        ];
        let methods: Vec<String> = records.iter().flat_map(|r| r.judged.keys().cloned()).collect();
        let mut methods: Vec<String> =
            methods.into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        methods.sort();
        for method in methods {
            let row = by_group(&|r| r.judged.get(&method).copied().into_iter().collect());
            rows.push((format!("vote winner if judged by {method}"), row));
        }
        Self { rows }
    }

    fn print(&self, records: &[Record], profile: &str, seed: u64) {
        let count = |group: &str| records.iter().filter(|r| r.group == group).count();
        outln!(
            "\naccuracy on {} capital questions ({} G20, {} other), profile {profile}, seed {seed}:\n",
            records.len(),
            count("g20"),
            count("other")
        );
        outln!("| | G20 | other | all |\n|---|---|---|---|");
        let cell = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{v:.2}"));
        for (name, [g20, other, all]) in &self.rows {
            outln!("| {name} | {} | {} | {} |", cell(*g20), cell(*other), cell(*all));
        }
        let median = |pick: &dyn Fn(&Record) -> Option<u64>| {
            let mut times: Vec<u64> = records.iter().filter_map(pick).collect();
            times.sort_unstable();
            times.get(times.len() / 2).map_or("-".to_string(), |ms| format!("{:.1} s", *ms as f64 / 1e3))
        };
        outln!(
            "\nmedian job: council {}, pipeline {}",
            median(&|r| r.council_ms),
            median(&|r| r.pipeline_ms)
        );
        let failed = |pick: &dyn Fn(&Record) -> bool| records.iter().filter(|r| pick(r)).count();
        outln!(
            "jobs that ended without an answer (counted wrong in every row; reasons in --json): council {}, pipeline {}",
            failed(&|r| r.council_error.is_some()),
            failed(&|r| r.pipeline_error.is_some())
        );
        let curations = |pick: &dyn Fn(&Record) -> Option<String>| {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for curation in records.iter().filter_map(pick) {
                *counts.entry(curation).or_default() += 1;
            }
            counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        };
        outln!(
            "curation: council {}; pipeline {}",
            curations(&|r| r.council_curation.clone()),
            curations(&|r| r.pipeline_curation.clone())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> Vec<Question> {
        question_set(QUESTIONS)
    }

    fn question(country: &str) -> Question {
        set().into_iter().find(|q| q.country == country).expect("in the set")
    }

    #[test]
    fn the_set_holds_every_un_member_with_the_g20_marked() {
        let set = set();
        assert!(set.len() >= 190, "{}", set.len());
        assert_eq!(set.iter().filter(|q| q.group == "g20").count(), 19);
        assert_eq!(question("South Africa").capitals.len(), 3);
    }

    #[test]
    fn answers_are_right_only_when_they_name_the_capital_and_no_other() {
        let set = set();
        let france = question("France");
        assert!(is_right("The capital of France is Paris.", &france, &set));
        assert!(is_right("PARIS", &france, &set));
        assert!(!is_right("The capital of France is Lyon.", &france, &set));
        assert!(!is_right("Paris or Madrid, I think.", &france, &set));
        assert!(!is_right("Parisian culture is rich.", &france, &set), "whole words only");
        assert!(is_right("Washington, DC", &question("United States"), &set));
        assert!(is_right("Washington D.C. is the capital.", &question("United States"), &set));
        assert!(is_right("It is Brasilia.", &question("Brazil"), &set), "accents folded");
        assert!(is_right("Cape Town is one of them.", &question("South Africa"), &set));
        assert!(is_right("La Paz, the seat of government.", &question("Bolivia"), &set));
        assert!(is_right("Nairobi, near Lake Victoria.", &question("Kenya"), &set), "a common word");
    }

    #[test]
    fn picks_are_seeded_and_half_from_the_g20() {
        let set = set();
        let a = pick(&set, 40, 1);
        let b = pick(&set, 40, 1);
        assert_eq!(
            a.iter().map(|q| &q.country).collect::<Vec<_>>(),
            b.iter().map(|q| &q.country).collect::<Vec<_>>()
        );
        assert_eq!(a.iter().filter(|q| q.group == "g20").count(), 19);
        assert_eq!(pick(&set, 10, 1).iter().filter(|q| q.group == "g20").count(), 5);
        let c = pick(&set, 40, 2);
        assert_ne!(
            a.iter().map(|q| &q.country).collect::<Vec<_>>(),
            c.iter().map(|q| &q.country).collect::<Vec<_>>()
        );
    }
}
