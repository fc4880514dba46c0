//! Scoring, the same for every method: the post-hoc logit adjustment chosen
//! on the validation split, the test metrics, and the selection record a
//! report keeps for each run.

use anyhow::Result;
use ramem_eval::Metrics;
use ramem_model::Prediction;
use serde_json::{json, Value};

/// Candidate post-hoc adjustment strengths, in order of preference on ties.
/// The negative side reaches -1 and beyond so that a model trained with the
/// balancing loss can take it back in full where the validation (and test)
/// split is long-tailed like the training split.
const TAU_GRID: [f64; 13] = [
    0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, -0.25, -0.5, -0.75, -1.0, -1.5, -2.0,
];

/// `log_probs - tau * ln(prior)` row by row, the prior from the training
/// class counts.
pub(crate) fn adjust(log_probs: &[f32], classes: usize, counts: &[usize], tau: f64) -> Vec<f32> {
    if tau == 0.0 {
        return log_probs.to_vec();
    }
    let total: usize = counts.iter().sum();
    let shift: Vec<f32> = counts
        .iter()
        .map(|&c| (tau * (c.max(1) as f64 / total.max(1) as f64).ln()) as f32)
        .collect();
    log_probs
        .chunks_exact(classes)
        .flat_map(|row| row.iter().zip(&shift).map(|(v, s)| v - s))
        .collect()
}

/// The tau of [`TAU_GRID`] with the best validation top-1 (the first on ties).
pub(crate) fn choose_tau(val: &Prediction, labels: &[usize], counts: &[usize]) -> f64 {
    let mut best = (0.0, f64::NEG_INFINITY);
    for tau in TAU_GRID {
        let adjusted = Prediction {
            log_probs: adjust(&val.log_probs, val.classes, counts, tau),
            ..val.clone()
        };
        let top1 = adjusted.top1(labels);
        if top1 > best.1 {
            best = (tau, top1);
        }
    }
    best.0
}

/// A method's test metrics, the settings validation chose for it, and its
/// test log-probabilities as scored (after the post-hoc adjustment).
pub(crate) struct Scored {
    pub metrics: Metrics,
    pub selection: Vec<(String, Value)>,
    pub log_probs: Vec<f32>,
}

/// What scoring needs besides the predictions.
pub(crate) struct Scoring<'a> {
    pub classes: usize,
    pub test_labels: &'a [usize],
    pub val_labels: &'a [usize],
    /// Training images per class (the prior, and the shot groups).
    pub train_counts: &'a [usize],
    pub posthoc_adjustment: bool,
}

impl Scoring<'_> {
    /// Test metrics of a method. With `posthoc_adjustment`, the test
    /// log-probabilities first get `-tau * ln(prior)` with tau chosen on the
    /// validation split (Menon et al.'s post-hoc logit adjustment; every
    /// method alike). Also returns the selection record for the report: the
    /// chosen `posthoc_tau`, the validation top-1 under it
    /// (`val_top1_posthoc`) and per shot group (`val_many`, `val_medium`,
    /// `val_few`), so that configurations can be compared on the few-shot
    /// classes without looking at the test split.
    pub fn score(&self, method: &str, test: &Prediction, val: &Prediction) -> Result<Scored> {
        let tau = if self.posthoc_adjustment {
            choose_tau(val, self.val_labels, self.train_counts)
        } else {
            0.0
        };
        let adjusted = adjust(&test.log_probs, self.classes, self.train_counts, tau);
        let metrics = ramem_eval::evaluate_method(
            method,
            &adjusted,
            self.classes,
            self.test_labels,
            self.train_counts,
        )?;
        let mut selection = vec![("posthoc_tau".to_string(), json!(tau))];
        let val_adjusted = adjust(&val.log_probs, self.classes, self.train_counts, tau);
        // An empty validation split has no shot groups to record.
        if let Ok(val_metrics) = ramem_eval::evaluate_method(
            method,
            &val_adjusted,
            self.classes,
            self.val_labels,
            self.train_counts,
        ) {
            for (name, value) in [
                ("val_top1_posthoc", Some(val_metrics.top1)),
                ("val_many", val_metrics.many),
                ("val_medium", val_metrics.medium),
                ("val_few", val_metrics.few),
            ] {
                if let Some(value) = value {
                    selection.push((name.to_string(), json!(value)));
                }
            }
        }
        Ok(Scored {
            metrics,
            selection,
            log_probs: adjusted,
        })
    }
}

/// The softmax probability of class `c` under (possibly post-hoc
/// adjusted, hence unnormalised) log-probabilities `row`.
pub(crate) fn probability(row: &[f32], c: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    (row[c] - max).exp() / sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posthoc_adjustment_moves_mass_to_rare_classes() {
        // Class 0 has 90 training images, class 1 has 10: tau = 1 subtracts ln(0.9) and ln(0.1).
        let adjusted = adjust(&[-0.5, -0.9], 2, &[90, 10], 1.0);
        assert!((adjusted[0] - (-0.5 - 0.9f32.ln())).abs() < 1e-6);
        assert!((adjusted[1] - (-0.9 - 0.1f32.ln())).abs() < 1e-6);
        assert_eq!(adjust(&[-0.5, -0.9], 2, &[90, 10], 0.0), vec![-0.5, -0.9]);
    }

    #[test]
    fn tau_is_chosen_on_validation_and_prefers_zero_on_ties() {
        // Both validation images belong to the rare class 1 but lean to class 0:
        // only an adjustment gets them right.
        let val = Prediction::without_attention(vec![-0.6, -0.8, -0.6, -0.8], 2);
        let tau = choose_tau(&val, &[1, 1], &[90, 10]);
        assert!(tau > 0.0, "{tau}");
        // Already right without adjustment: tau stays 0.
        let val = Prediction::without_attention(vec![-0.1, -3.0, -3.0, -0.1], 2);
        assert_eq!(choose_tau(&val, &[0, 1], &[90, 10]), 0.0);
    }

    #[test]
    fn tau_can_take_a_balancing_loss_back_in_full() {
        // A long-tailed validation split: the frequent class 0's image leans
        // to class 1 by 1.9 nats, which only tau <= -0.87 undoes
        // (ln 0.9 - ln 0.1 = 2.2 nats per unit of tau); the class-1 image
        // leads by 2.95 nats, which tau <= -1.35 would overturn.
        let val = Prediction::without_attention(vec![-2.0, -0.1, -3.0, -0.05], 2);
        assert_eq!(choose_tau(&val, &[0, 1], &[90, 10]), -1.0);
    }

    #[test]
    fn scoring_records_the_chosen_tau_and_the_validation_figures() {
        let scoring = Scoring {
            classes: 2,
            test_labels: &[1, 0],
            val_labels: &[1, 1],
            train_counts: &[90, 10],
            posthoc_adjustment: true,
        };
        let leaning = Prediction::without_attention(vec![-0.6, -0.8, -0.6, -0.8], 2);
        let scored = scoring.score("m", &leaning, &leaning).unwrap();
        let names: Vec<&str> = scored.selection.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["posthoc_tau", "val_top1_posthoc", "val_few"]);
        assert_eq!(scored.selection[1].1, json!(100.0));
        // The adjusted test prediction is what is scored: both rows now say class 1.
        assert_eq!(scored.metrics.top1, 50.0);
        let p = probability(&scored.log_probs[..2], 1);
        assert!(p > 0.5 && p < 1.0, "{p}");
    }
}
