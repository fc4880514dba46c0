//! The post-hoc logit adjustment (Menon et al. 2021): log-probabilities
//! minus `tau * ln(prior)`, the prior from the training class counts, with
//! tau chosen on a validation split. Every method is scored with it in a
//! study, and a kept model predicts with the tau chosen for it.

use crate::classifier::Prediction;

/// Candidate post-hoc adjustment strengths, in order of preference on ties.
/// The negative side reaches -1 and beyond so that a model trained with the
/// balancing loss can take it back in full where the validation (and test)
/// split is long-tailed like the training split.
pub const TAU_GRID: [f64; 13] = [
    0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, -0.25, -0.5, -0.75, -1.0, -1.5, -2.0,
];

/// `log_probs - tau * ln(prior)` row by row, the prior from the training
/// class counts.
pub fn adjust(log_probs: &[f32], classes: usize, counts: &[usize], tau: f64) -> Vec<f32> {
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
pub fn choose_tau(val: &Prediction, labels: &[usize], counts: &[usize]) -> f64 {
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
}
