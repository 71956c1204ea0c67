//! Council mode's voting logic, pure: how a voter ranks anonymous candidate
//! answers, and the order candidates are shown in.
//!
//! A voter judges candidates in one of three ways, best available first
//! (docs/adr/0012-council-judgement.md says why and what the accuracy
//! benchmark measured):
//! - **likelihood**: its own model's mean token log-probability of each
//!   candidate as the reply to the question (one prefill, then a decode step
//!   per token; the embedded model can do this), plus a bonus for agreement
//!   with the other candidates weighted by [`LIKELIHOOD_AGREEMENT_WEIGHT`]
//!   (0: the benchmark found agreement no help);
//! - **embeddings**: mean cosine similarity to the other candidates over the
//!   provider's embeddings, so paraphrases agree;
//! - **lexical**: the same over word-count vectors, which needs no model.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::ChatMessage;
use crate::pipeline::GENERATOR_ROLE_PROMPT;

/// How much agreement (a mean cosine, 0..=1) adds to a candidate's mean
/// log-probability (natural log per token, usually -3..=0) in a likelihood
/// judgement. `hivemesh eval --questions 40 --seed 1` picked the right
/// candidate most often with none (0.675, against 0.65, 0.625 and 0.65 at
/// weights 0.5, 1 and 2: docs/adr/0012), so a likelihood ballot is the
/// model's judgement alone; the knob stays for other models.
pub const LIKELIHOOD_AGREEMENT_WEIGHT: f64 = 0.0;

/// The prompt a candidate's likelihood is scored under: the conversation as
/// the asker wrote it, after the generator's role prompt (no panel role;
/// [`GENERATOR_ROLE_PROMPT`]) followed by the asker's own system messages,
/// so that the score says how plausible the candidate is as the reply the
/// asker wanted. It is the prompt the candidates were written under (with
/// the built-in profiles), as self-consistency's probability weighting
/// scores a sample under its own prompt (Wang et al., 2022), and so a model
/// that wrote a candidate has this prompt's state in its prefix cache.
pub fn judge_messages(question: &[ChatMessage]) -> Vec<ChatMessage> {
    let mut instructions = String::from(GENERATOR_ROLE_PROMPT);
    for message in question.iter().filter(|m| m.role == "system") {
        instructions.push_str("\n\n");
        instructions.push_str(&message.content);
    }
    let mut messages = vec![ChatMessage::system(instructions)];
    messages.extend(question.iter().filter(|m| m.role != "system").cloned());
    messages
}

/// Scores for a likelihood judgement: `likelihood[i] + weight × agreement[i]`.
pub fn likelihood_scores(likelihood: &[f64], agreement: &[f64], weight: f64) -> Vec<f64> {
    likelihood.iter().zip(agreement).map(|(l, a)| l + weight * a).collect()
}

/// Candidate indices, best (highest score) first; ties and NaN go to the
/// lower index / last, so the ranking is deterministic.
pub fn rank_by_scores(scores: &[f64]) -> Vec<u32> {
    let key = |i: u32| {
        let score = scores[i as usize];
        if score.is_nan() { f64::NEG_INFINITY } else { score }
    };
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    order
}

/// Each candidate's mean word-count cosine similarity to the others (0..=1).
pub fn lexical_agreement(candidates: &[&str]) -> Vec<f64> {
    let vectors: Vec<HashMap<String, f64>> = candidates.iter().map(|text| word_counts(text)).collect();
    mean_similarity(vectors.len(), |i, j| cosine(&vectors[i], &vectors[j]))
}

/// Each candidate's mean embedding cosine similarity to the others.
pub fn embedding_agreement(embeddings: &[Vec<f32>]) -> Vec<f64> {
    mean_similarity(embeddings.len(), |i, j| dense_cosine(&embeddings[i], &embeddings[j]))
}

/// Candidate indices, best first, by lexical agreement.
pub fn rank_by_agreement(candidates: &[&str]) -> Vec<u32> {
    rank_by_scores(&lexical_agreement(candidates))
}

/// Candidate indices, best first, by embedding agreement: what a voter whose
/// provider has an embedding model uses, so paraphrases agree.
pub fn rank_by_similarity(embeddings: &[Vec<f32>]) -> Vec<u32> {
    rank_by_scores(&embedding_agreement(embeddings))
}

/// Mean similarity of each item to the other items.
fn mean_similarity(count: usize, similarity: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    (0..count)
        .map(|i| {
            let total: f64 = (0..count).filter(|&j| j != i).map(|j| similarity(i, j)).sum();
            total / (count.saturating_sub(1).max(1)) as f64
        })
        .collect()
}

fn dense_cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 || a.len() != b.len() { 0.0 } else { dot / denominator }
}

/// The order candidates are presented in: by a hash of the job and the
/// text, so a candidate's position says nothing about who wrote it, and
/// every node derives the same order from the same texts.
pub fn anonymous_order(job: &[u8], candidates: &[&str]) -> Vec<usize> {
    let mut keyed: Vec<([u8; 32], usize)> = candidates
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let mut hasher = Sha256::new();
            hasher.update(job);
            hasher.update(text.as_bytes());
            (hasher.finalize().into(), index)
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, index)| index).collect()
}

fn word_counts(text: &str) -> HashMap<String, f64> {
    let mut counts = HashMap::new();
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        *counts.entry(word.to_lowercase()).or_insert(0.0) += 1.0;
    }
    counts
}

fn cosine(a: &HashMap<String, f64>, b: &HashMap<String, f64>) -> f64 {
    let dot: f64 = a.iter().filter_map(|(word, x)| b.get(word).map(|y| x * y)).sum();
    let norm = |v: &HashMap<String, f64>| v.values().map(|x| x * x).sum::<f64>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 { 0.0 } else { dot / denominator }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_most_agree_with_ranks_first_and_the_outlier_last() {
        let texts = [
            "Bananas are yellow.",
            "Paris is the capital of France.",
            "The capital of France is Paris.",
            "France's capital city is Paris.",
        ];
        let ranking = rank_by_agreement(&texts);
        assert_eq!(ranking.last(), Some(&0), "{ranking:?}");
        assert!([1, 2].contains(&ranking[0]), "{ranking:?}");
        assert_eq!(ranking.len(), 4);
    }

    #[test]
    fn embeddings_rank_paraphrases_together_where_words_differ() {
        // Words say 0 and 1 agree; the embeddings say 1 and 2 do.
        let texts = ["Paris is it.", "Paris is the capital.", "France's seat of government: Paris"];
        assert_eq!(rank_by_agreement(&texts).last(), Some(&2));
        let embeddings = [vec![0.0, 1.0, 0.1], vec![1.0, 0.1, 0.0], vec![0.9, 0.2, 0.0]];
        let ranking = rank_by_similarity(&embeddings);
        assert_eq!(ranking.last(), Some(&0), "{ranking:?}");
        assert_eq!(rank_by_similarity(&[vec![1.0], vec![1.0, 0.0]]), vec![0, 1], "mismatched sizes score 0");
    }

    #[test]
    fn identical_scores_keep_index_order_and_empty_texts_are_fine() {
        assert_eq!(rank_by_agreement(&["", "", ""]), vec![0, 1, 2]);
        assert_eq!(rank_by_agreement(&["only one"]), vec![0]);
        assert!(rank_by_agreement(&[]).is_empty());
    }

    #[test]
    fn likelihood_ranks_the_plausible_answer_first_and_agreement_breaks_near_ties() {
        // Likelihood alone prefers 1; a strong agreement bonus can overturn a small gap only.
        let likelihood = [-2.5, -0.4, -0.5];
        let agreement = [0.0, 0.1, 0.9];
        assert_eq!(rank_by_scores(&likelihood_scores(&likelihood, &agreement, 0.0)), vec![1, 2, 0]);
        assert_eq!(rank_by_scores(&likelihood_scores(&likelihood, &agreement, 0.5)), vec![2, 1, 0]);
        assert_eq!(rank_by_scores(&[f64::NAN, f64::NEG_INFINITY, -1.0]), vec![2, 0, 1]);
        assert_eq!(rank_by_scores(&[-1.0, -1.0]), vec![0, 1]);
    }

    #[test]
    fn judge_messages_keep_the_conversation_and_the_askers_instructions() {
        let question = [ChatMessage::system("be a pirate"), ChatMessage::user("Capital of Peru?")];
        let messages = judge_messages(&question);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1], ChatMessage::user("Capital of Peru?"));
        assert!(messages[0].content.starts_with(GENERATOR_ROLE_PROMPT), "{:?}", messages[0]);
        assert!(messages[0].content.ends_with("be a pirate"), "{:?}", messages[0]);
        // The very messages a built-in profile's candidate is written under,
        // so the voter's model finds the prompt's state in its prefix cache.
        for name in crate::pipeline::BUILTIN_PROFILES {
            let profiles = crate::pipeline::Profiles::default();
            let profile = profiles.get(name).expect("built in");
            let written_under = crate::pipeline::stage_messages(
                crate::pipeline::Stage::Generator,
                profile,
                &question,
                "",
                "",
                "",
            );
            assert_eq!(messages, written_under, "{name}");
        }
    }

    #[test]
    fn anonymous_order_depends_on_content_not_on_input_position() {
        let a = anonymous_order(b"job", &["x", "y", "z"]);
        let b = anonymous_order(b"job", &["z", "x", "y"]);
        let names =
            |order: &[usize], texts: &[&str]| order.iter().map(|&i| texts[i].to_string()).collect::<Vec<_>>();
        assert_eq!(names(&a, &["x", "y", "z"]), names(&b, &["z", "x", "y"]));
    }
}
