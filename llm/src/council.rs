//! Council mode's voting logic, pure: how a voter ranks anonymous candidate
//! answers by agreement, and the order candidates are shown in.
//!
//! The agreement score of a candidate is its mean cosine similarity to the
//! other candidates: over the voter's provider's embeddings when it has an
//! embedding model, otherwise over word-count vectors (a lexical embedding
//! that needs no model call, so even a tiny model's voter ranks sensibly).
//! The answer most of the council agrees with ranks first, an outlier last.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// Candidate indices, best first, for the texts in the order given. Ties go
/// to the lower index, so the ranking is deterministic.
pub fn rank_by_agreement(candidates: &[&str]) -> Vec<u32> {
    let vectors: Vec<HashMap<String, f64>> = candidates.iter().map(|text| word_counts(text)).collect();
    rank_by(vectors.len(), |i, j| cosine(&vectors[i], &vectors[j]))
}

/// The same ranking over embeddings (one per candidate, in order): what a
/// voter whose provider has an embedding model uses, so paraphrases agree.
pub fn rank_by_similarity(embeddings: &[Vec<f32>]) -> Vec<u32> {
    rank_by(embeddings.len(), |i, j| dense_cosine(&embeddings[i], &embeddings[j]))
}

/// Ranks by mean similarity to the other candidates, best first.
fn rank_by(count: usize, similarity: impl Fn(usize, usize) -> f64) -> Vec<u32> {
    let scores: Vec<f64> = (0..count)
        .map(|i| {
            let total: f64 = (0..count).filter(|&j| j != i).map(|j| similarity(i, j)).sum();
            total / (count.saturating_sub(1).max(1)) as f64
        })
        .collect();
    let mut order: Vec<u32> = (0..count as u32).collect();
    order.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
    order
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
    fn anonymous_order_depends_on_content_not_on_input_position() {
        let a = anonymous_order(b"job", &["x", "y", "z"]);
        let b = anonymous_order(b"job", &["z", "x", "y"]);
        let names =
            |order: &[usize], texts: &[&str]| order.iter().map(|&i| texts[i].to_string()).collect::<Vec<_>>();
        assert_eq!(names(&a, &["x", "y", "z"]), names(&b, &["z", "x", "y"]));
    }
}
