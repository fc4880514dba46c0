//! The kNN vote baseline: each query's k nearest labelled training examples
//! vote for their labels, weighted by `exp(similarity / temperature)`; k and
//! the temperature are chosen on the validation split.

use ramem_index::{search_exact, Keys, SearchParams};

use crate::error::{ModelError, Result};
use crate::samples::SampleSet;
use crate::train::Prediction;

/// Candidate k values tried on the validation split.
pub const K_GRID: [usize; 7] = [1, 3, 5, 10, 20, 50, 100];
/// Candidate temperatures (large = plain majority vote).
pub const TEMPERATURE_GRID: [f64; 5] = [0.01, 0.03, 0.1, 0.3, 100.0];

/// A chosen kNN vote setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnnVote {
    pub k: usize,
    pub temperature: f64,
}

/// Class scores of `queries` from a vote over `train`'s labels.
/// `exclude_self`: the queries are `train` itself (leave-one-out).
pub fn knn_vote(
    train: &SampleSet,
    queries: &SampleSet,
    classes: usize,
    vote: KnnVote,
    exclude_self: bool,
) -> Result<Prediction> {
    train.check_labels("kNN vote training set", classes)?;
    let keys = Keys::F32 {
        data: &train.queries,
        dim: train.dim,
    };
    let params = SearchParams {
        k: vote.k.min(train.len()).max(1),
        exclude: exclude_self.then(|| (0..queries.len() as i64).collect()),
    };
    let found = search_exact(&keys, &queries.queries, queries.dim, &params).map_err(|e| {
        ModelError::Shape {
            what: "kNN vote".into(),
            problem: e.to_string(),
        }
    })?;
    let k = params.k;
    let mut log_probs = vec![0f32; queries.len() * classes];
    for (qi, row) in log_probs.chunks_exact_mut(classes).enumerate() {
        let mut votes = vec![1e-6f64; classes];
        for j in 0..k {
            let id = found.ids[qi * k + j];
            if id >= 0 {
                let w = ((found.scores[qi * k + j] as f64 - 1.0) / vote.temperature).exp();
                votes[train.labels[id as usize]] += w;
            }
        }
        let total: f64 = votes.iter().sum();
        for (slot, v) in row.iter_mut().zip(&votes) {
            *slot = (v / total).ln() as f32;
        }
    }
    Ok(Prediction {
        log_probs,
        classes,
        attention: None,
        attention_items: 0,
    })
}

/// The (k, temperature) with the best top-1 on `val` (first best wins).
pub fn select_on_validation(
    train: &SampleSet,
    val: &SampleSet,
    classes: usize,
) -> Result<(KnnVote, f64)> {
    let mut best = (
        KnnVote {
            k: K_GRID[0],
            temperature: TEMPERATURE_GRID[0],
        },
        f64::NEG_INFINITY,
    );
    for &k in &K_GRID {
        for &temperature in &TEMPERATURE_GRID {
            let vote = KnnVote { k, temperature };
            let top1 = knn_vote(train, val, classes, vote, false)?.top1(&val.labels);
            if top1 > best.1 {
                best = (vote, top1);
            }
        }
    }
    Ok(best)
}
