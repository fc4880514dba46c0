//! The kNN vote baseline: each query's k nearest labelled training examples
//! vote for their labels, weighted by `exp(similarity / temperature)`; k and
//! the temperature are chosen on the validation split.

use ramem_index::{search_exact, Keys, Neighbours, SearchParams};

use crate::classifier::Prediction;
use crate::error::{ModelError, Result};
use crate::samples::SampleSet;

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
    let found = nearest(train, queries, classes, vote.k, exclude_self)?;
    Ok(vote_over(&found, train, queries.len(), classes, vote))
}

/// The `k` nearest training examples of each query, best first.
fn nearest(
    train: &SampleSet,
    queries: &SampleSet,
    classes: usize,
    k: usize,
    exclude_self: bool,
) -> Result<Neighbours> {
    train.check_labels("kNN vote training set", classes)?;
    let shape_error = |e: ramem_index::SearchError| ModelError::Shape {
        what: "kNN vote".into(),
        problem: e.to_string(),
    };
    let keys = Keys::f32(&train.queries, train.dim).map_err(shape_error)?;
    let mut params = SearchParams::new(k.min(train.len()).max(1));
    if exclude_self {
        params = params.excluding((0..queries.len() as i64).collect());
    }
    search_exact(&keys, &queries.queries, queries.dim, &params).map_err(shape_error)
}

/// The vote of each query's first `vote.k` neighbours in `found` (lists
/// of `found.k`, best first).
fn vote_over(
    found: &Neighbours,
    train: &SampleSet,
    queries: usize,
    classes: usize,
    vote: KnnVote,
) -> Prediction {
    let k = vote.k.min(found.k);
    let mut log_probs = vec![0f32; queries * classes];
    for (qi, row) in log_probs.chunks_exact_mut(classes).enumerate() {
        let mut votes = vec![1e-6f64; classes];
        for j in 0..k {
            let id = found.ids[qi * found.k + j];
            if id >= 0 {
                let w = ((found.scores[qi * found.k + j] as f64 - 1.0) / vote.temperature).exp();
                votes[train.labels[id as usize]] += w;
            }
        }
        let total: f64 = votes.iter().sum();
        for (slot, v) in row.iter_mut().zip(&votes) {
            *slot = (v / total).ln() as f32;
        }
    }
    Prediction::without_attention(log_probs, classes)
}

/// The (k, temperature) with the best top-1 on `val` (first best wins).
/// One search for the largest k serves every setting: each smaller k votes
/// over the first k of those lists.
pub fn select_on_validation(
    train: &SampleSet,
    val: &SampleSet,
    classes: usize,
) -> Result<(KnnVote, f64)> {
    let k_max = K_GRID.iter().copied().max().unwrap_or(1);
    let found = nearest(train, val, classes, k_max, false)?;
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
            let top1 = vote_over(&found, train, val.len(), classes, vote).top1(&val.labels);
            if top1 > best.1 {
                best = (vote, top1);
            }
        }
    }
    Ok(best)
}
