//! Ensembles: several models of one method trained from different
//! initialisations and batch orders, their predicted probabilities (and
//! attention weights) averaged.

use anyhow::{bail, Result};
use ramem_model::Prediction;
use serde_json::{json, Value};

/// One trained model's (or an ensemble's) predictions, one per set asked
/// for, with its training and test-prediction times.
pub(crate) struct Trained {
    pub predictions: Vec<Prediction>,
    /// The best validation top-1 seen in training (one model), or the
    /// ensemble's validation top-1.
    pub val_top1: Option<f64>,
    pub train_seconds: f64,
    pub eval_seconds: f64,
}

/// The training seed of each of an ensemble's `members` for run seed
/// `seed`. The first is the run seed itself, so an ensemble of one is the
/// single model the run would train anyway.
fn member_seeds(seed: u64, members: usize) -> Vec<u64> {
    (0..members as u64)
        .map(|m| seed ^ m.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect()
}

/// Trains `members` models with `train_member(member_seed, label)` and
/// averages their predictions set by set (see [`average_predictions`]);
/// `val_set` names the position of the validation predictions and their
/// labels, whose top-1 becomes the ensemble's `val_top1`. The times add up.
pub(crate) fn ensemble(
    members: usize,
    seed: u64,
    label: &str,
    val_set: (usize, &[usize]),
    mut train_member: impl FnMut(u64, &str) -> Result<Trained>,
) -> Result<Trained> {
    if members <= 1 {
        return train_member(seed, label);
    }
    let mut trained = Vec::with_capacity(members);
    for (m, member_seed) in member_seeds(seed, members).into_iter().enumerate() {
        let label = format!("{label} (member {} of {members})", m + 1);
        trained.push(train_member(member_seed, &label)?);
    }
    let train_seconds = trained.iter().map(|t| t.train_seconds).sum();
    let eval_seconds = trained.iter().map(|t| t.eval_seconds).sum();
    let sets = trained[0].predictions.len();
    let mut by_set: Vec<Vec<Prediction>> = (0..sets).map(|_| Vec::new()).collect();
    for member in trained {
        for (set, prediction) in member.predictions.into_iter().enumerate() {
            by_set[set].push(prediction);
        }
    }
    let predictions = by_set
        .into_iter()
        .map(average_predictions)
        .collect::<Result<Vec<_>>>()?;
    let (at, labels) = val_set;
    let val_top1 = Some(predictions[at].top1(labels));
    Ok(Trained {
        predictions,
        val_top1,
        train_seconds,
        eval_seconds,
    })
}

/// The report's record of the ensemble size (none for one model, so that
/// single-model reports read as before).
pub(crate) fn ensemble_param(members: usize) -> Option<(String, Value)> {
    (members > 1).then(|| ("ensemble".to_string(), json!(members)))
}

/// The ensemble's prediction: the log of the members' mean probability
/// for every class, and the mean of their attention weights.
fn average_predictions(members: Vec<Prediction>) -> Result<Prediction> {
    let first = members
        .first()
        .ok_or_else(|| anyhow::anyhow!("an ensemble needs at least one member"))?;
    let (len, classes, items) = (first.log_probs.len(), first.classes, first.attention_items);
    if members
        .iter()
        .any(|m| m.log_probs.len() != len || m.classes != classes)
    {
        bail!("ensemble members predicted different shapes");
    }
    let count = members.len() as f32;
    let log_probs = (0..len)
        .map(|i| {
            let top = members
                .iter()
                .map(|m| m.log_probs[i])
                .fold(f32::NEG_INFINITY, f32::max);
            if top == f32::NEG_INFINITY {
                return top;
            }
            let sum: f32 = members.iter().map(|m| (m.log_probs[i] - top).exp()).sum();
            top + (sum / count).ln()
        })
        .collect();
    let attention = match members
        .iter()
        .map(|m| m.attention.as_deref())
        .collect::<Option<Vec<&[f32]>>>()
    {
        Some(all) if all.iter().all(|a| a.len() == all[0].len()) => Some(
            (0..all[0].len())
                .map(|i| all.iter().map(|a| a[i]).sum::<f32>() / count)
                .collect(),
        ),
        _ => None,
    };
    Ok(Prediction {
        log_probs,
        classes,
        attention,
        attention_items: items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ensemble_averages_its_members_probabilities_and_attention() {
        let ln = |p: &[f32]| p.iter().map(|v| v.ln()).collect::<Vec<_>>();
        let member = |p: &[f32], attention: Vec<f32>| Prediction {
            attention: Some(attention),
            attention_items: 2,
            ..Prediction::without_attention(ln(p), 2)
        };
        // Two rows of two classes; the members disagree on the first row.
        let average = average_predictions(vec![
            member(&[0.2, 0.8, 0.5, 0.5], vec![1.0, 0.0, 0.5, 0.5]),
            member(&[0.6, 0.4, 0.5, 0.5], vec![0.0, 1.0, 0.5, 0.5]),
        ])
        .unwrap();
        let probs: Vec<f32> = average.log_probs.iter().map(|v| v.exp()).collect();
        for (got, want) in probs.iter().zip([0.4, 0.6, 0.5, 0.5]) {
            assert!((got - want).abs() < 1e-6, "{probs:?}");
        }
        assert_eq!(average.attention.unwrap(), vec![0.5, 0.5, 0.5, 0.5]);
        // A class no member thinks possible stays impossible.
        let none = Prediction::without_attention(vec![0.0, f32::NEG_INFINITY], 2);
        let average = average_predictions(vec![none.clone(), none]).unwrap();
        assert_eq!(average.log_probs, vec![0.0, f32::NEG_INFINITY]);
        // Members that predicted different sets are refused.
        let short = Prediction::without_attention(vec![0.0, f32::NEG_INFINITY], 2);
        let long = Prediction::without_attention(vec![0.0; 4], 2);
        assert!(average_predictions(vec![short, long]).is_err());
    }

    #[test]
    fn an_ensemble_of_one_is_the_run_seed_and_members_differ() {
        assert_eq!(member_seeds(7, 1), vec![7]);
        let seeds = member_seeds(7, 5);
        assert_eq!(seeds[0], 7);
        let distinct: std::collections::HashSet<u64> = seeds.iter().copied().collect();
        assert_eq!(distinct.len(), 5, "{seeds:?}");
    }
}
