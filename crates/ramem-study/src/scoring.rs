//! Scoring, the same for every method: the post-hoc logit adjustment chosen
//! on the validation split, the test metrics, and the selection record a
//! report keeps for each run.

use anyhow::Result;
use ramem_eval::Metrics;
use ramem_model::posthoc::{adjust, choose_tau};
use ramem_model::Prediction;
use serde_json::{json, Value};

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
