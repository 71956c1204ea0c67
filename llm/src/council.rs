//! Council mode's voting logic, pure: how a voter ranks anonymous candidate
//! answers by agreement, and the order candidates are shown in.
//!
//! The agreement score of a candidate is its mean cosine similarity to the
//! other candidates over word-count vectors (a lexical embedding): the answer
//! most of the council agrees with ranks first, an outlier last. It needs no
//! model call, so every voter, however small its model, ranks the same texts
//! the same way; a model-based judge can replace it without changing ballots.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// Candidate indices, best first, for the texts in the order given. Ties go
/// to the lower index, so the ranking is deterministic.
pub fn rank_by_agreement(candidates: &[&str]) -> Vec<u32> {
    let vectors: Vec<HashMap<String, f64>> = candidates.iter().map(|text| word_counts(text)).collect();
    let scores: Vec<f64> = (0..vectors.len())
        .map(|i| {
            let others = (0..vectors.len()).filter(|&j| j != i);
            let total: f64 = others.map(|j| cosine(&vectors[i], &vectors[j])).sum();
            total / (vectors.len().saturating_sub(1).max(1)) as f64
        })
        .collect();
    let mut order: Vec<u32> = (0..candidates.len() as u32).collect();
    order.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
    order
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
    fn identical_scores_keep_index_order_and_empty_texts_are_fine() {
        assert_eq!(rank_by_agreement(&["", "", ""]), vec![0, 1, 2]);
        assert_eq!(rank_by_agreement(&["only one"]), vec![0]);
        assert!(rank_by_agreement(&[]).is_empty());
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
