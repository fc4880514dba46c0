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
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
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
    let label_of = |id: i64| train.labels.get(id as usize).copied();
    let mut prediction = vote_with_labels(found, &label_of, classes, vote);
    debug_assert_eq!(prediction.log_probs.len(), queries * classes);
    prediction.attention = None;
    prediction.attention_items = 0;
    prediction
}

/// The vote of each query's first `vote.k` neighbours in `found` (lists of
/// `found.k`, best first, -1 for an empty slot) over the labels
/// `label_of` gives them (`None`: the neighbour does not vote), each
/// weighted by `exp((s - 1) / T)`. The attention of the prediction is each
/// neighbour's share of its query's vote (`found.k` items per query).
pub fn vote_with_labels(
    found: &Neighbours,
    label_of: &dyn Fn(i64) -> Option<usize>,
    classes: usize,
    vote: KnnVote,
) -> Prediction {
    let k = vote.k.min(found.k);
    let queries = found.ids.len().checked_div(found.k).unwrap_or(0);
    let mut log_probs = vec![0f32; queries * classes];
    let mut attention = vec![0f32; queries * found.k];
    for (qi, (row, shares)) in log_probs
        .chunks_exact_mut(classes.max(1))
        .zip(attention.chunks_exact_mut(found.k.max(1)))
        .enumerate()
    {
        let mut votes = vec![1e-6f64; classes];
        let mut weights = vec![0f64; found.k];
        let ids = &found.ids[qi * found.k..][..k];
        let scores = &found.scores[qi * found.k..][..k];
        for ((&id, &score), weight) in ids.iter().zip(scores).zip(&mut weights) {
            if id < 0 {
                continue;
            }
            let Some(class) = label_of(id).filter(|&c| c < classes) else {
                continue;
            };
            let w = ((score as f64 - 1.0) / vote.temperature).exp();
            votes[class] += w;
            *weight = w;
        }
        let total: f64 = votes.iter().sum();
        for (slot, v) in row.iter_mut().zip(&votes) {
            *slot = (v / total).ln() as f32;
        }
        let voted: f64 = weights.iter().sum();
        if voted > 0.0 {
            for (share, w) in shares.iter_mut().zip(&weights) {
                *share = (w / voted) as f32;
            }
        }
    }
    Prediction {
        log_probs,
        classes,
        attention: Some(attention),
        attention_items: found.k,
    }
}

/// The (k, temperature) of the grid (k up to `found.k`) whose vote over
/// `found` (the validation queries' neighbours, their labels from
/// `label_of`) has the best top-1 on `val_labels` (first best wins).
pub fn select_vote(
    found: &Neighbours,
    label_of: &dyn Fn(i64) -> Option<usize>,
    val_labels: &[usize],
    classes: usize,
) -> (KnnVote, f64) {
    let mut best = (
        KnnVote {
            k: K_GRID[0].min(found.k.max(1)),
            temperature: TEMPERATURE_GRID[0],
        },
        f64::NEG_INFINITY,
    );
    for &k in K_GRID.iter().filter(|&&k| k <= found.k.max(1)) {
        for &temperature in &TEMPERATURE_GRID {
            let vote = KnnVote { k, temperature };
            let top1 = vote_with_labels(found, label_of, classes, vote).top1(val_labels);
            if top1 > best.1 {
                best = (vote, top1);
            }
        }
    }
    best
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vote_over_labels_skips_unlabelled_entries_and_shares_the_weight() {
        // One query, k = 3: entry 7 (class 1, s = 1), entry 8 (unlabelled),
        // entry 9 (class 0, s = 0.9); an empty slot would be -1.
        let found = Neighbours {
            k: 3,
            ids: vec![7, 8, 9],
            scores: vec![1.0, 0.95, 0.9],
        };
        let label_of = |id: i64| match id {
            7 => Some(1),
            9 => Some(0),
            _ => None,
        };
        let vote = KnnVote {
            k: 3,
            temperature: 0.1,
        };
        let p = vote_with_labels(&found, &label_of, 3, vote);
        let (w7, w9) = (1.0f64, (-1.0f64).exp()); // exp((s - 1) / T)
        let total = w7 + w9 + 3.0 * 1e-6;
        assert!((p.log_probs[1] as f64 - ((w7 + 1e-6) / total).ln()).abs() < 1e-5);
        assert!((p.log_probs[0] as f64 - ((w9 + 1e-6) / total).ln()).abs() < 1e-5);
        let shares = p.attention.unwrap();
        assert_eq!(p.attention_items, 3);
        assert!((shares[0] as f64 - w7 / (w7 + w9)).abs() < 1e-6);
        assert_eq!(shares[1], 0.0, "the unlabelled entry does not vote");
        assert!((shares.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // k = 1 votes with the first neighbour only.
        let one = vote_with_labels(&found, &label_of, 3, KnnVote { k: 1, ..vote });
        assert_eq!(one.argmax(), vec![1]);
        // The first best setting of the grid wins, k up to the lists' length.
        let (chosen, top1) = select_vote(&found, &label_of, &[1], 3);
        assert_eq!((chosen.k, chosen.temperature, top1), (1, 0.01, 100.0));
        let (_, top1) = select_vote(&found, &label_of, &[0], 3);
        assert_eq!(top1, 0.0, "class 0 never outvotes the closer class 1");
    }
}
