//! What every method's model is to the training loop and to prediction:
//! the [`Classifier`] trait, its forward [`Output`], the [`Prediction`] of
//! a whole set, and the softmax helpers the models share.

use candle_core::{Tensor, D};
use candle_nn::VarMap;

use crate::samples::{Batch, NeighbourUse};
use crate::vars::seeded_init;

/// What a model's forward pass returns.
pub struct Output {
    /// `(B, C)` log-probabilities.
    pub log_probs: Tensor,
    /// `(B, items)` attention weight per attended item (mean over heads), if any.
    pub attention: Option<Tensor>,
    /// A scalar regularisation term added to the training loss, if any.
    pub penalty: Option<Tensor>,
}

/// A trainable classifier over (query, neighbours).
/// Send + Sync: a model is shared by the threads that predict with it.
pub trait Classifier: Send + Sync {
    /// The method's name in reports (`mam`, `linear_probe`, ...).
    fn name(&self) -> &str;
    /// What of the retrieved neighbours batches must carry.
    fn neighbour_use(&self) -> NeighbourUse;
    /// Whether the model reads retrieved neighbours at all.
    fn uses_neighbours(&self) -> bool {
        self.neighbour_use() != NeighbourUse::None
    }
    /// The configuration that rebuilds this model (saved with checkpoints).
    fn config_json(&self) -> serde_json::Value;
    /// Sets the starting weights in `vars` (the variables the model was
    /// built over) from `seed` (default: [`seeded_init`]).
    fn initialise(&self, vars: &VarMap, seed: u64) -> candle_core::Result<()> {
        seeded_init(vars, seed)
    }
    /// Parts of the model that train at their own learning rate: the
    /// variables whose names start with [`PartRate::prefix`] follow the
    /// schedule at [`PartRate::rate`] instead of the base rate.
    fn part_learning_rates(&self) -> Vec<PartRate> {
        Vec::new()
    }
    /// The model's hand-written training step, when it has one for its
    /// options and device ([`crate::native`]); `None`: it trains through
    /// autograd.
    fn native_step(&self) -> Option<&dyn crate::native::NativeStep> {
        None
    }
    /// `logit_bias` (C,) is added to the logits of every branch before the
    /// softmax (logit adjustment; training only).
    fn forward(
        &self,
        batch: &Batch,
        train: bool,
        logit_bias: Option<&Tensor>,
    ) -> candle_core::Result<Output>;
}

/// A part of a model with a learning rate of its own (see
/// [`Classifier::part_learning_rates`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartRate {
    /// The option that set it, for messages (`classifier_learning_rate`).
    pub option: &'static str,
    /// Variables whose names start with this (`classifier`).
    pub prefix: &'static str,
    pub rate: f64,
}

/// Predictions for a whole set.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// `n x classes` log-probabilities, row-major.
    pub log_probs: Vec<f32>,
    pub classes: usize,
    /// `n x items` attention weights (items = k, or k + 1 with the query
    /// first), when the method attends.
    pub attention: Option<Vec<f32>>,
    pub attention_items: usize,
}

impl Prediction {
    /// The predictions of a method that does not attend.
    pub fn without_attention(log_probs: Vec<f32>, classes: usize) -> Prediction {
        Prediction {
            log_probs,
            classes,
            attention: None,
            attention_items: 0,
        }
    }

    /// Arg-max class of each row (ties to the lower class).
    pub fn argmax(&self) -> Vec<usize> {
        self.log_probs
            .chunks_exact(self.classes.max(1))
            .map(|row| {
                let mut best = 0;
                for (c, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = c;
                    }
                }
                best
            })
            .collect()
    }

    /// Top-1 accuracy in percent.
    pub fn top1(&self, labels: &[usize]) -> f64 {
        if labels.is_empty() {
            return 0.0;
        }
        let hits = self
            .argmax()
            .iter()
            .zip(labels)
            .filter(|(p, l)| p == l)
            .count();
        100.0 * hits as f64 / labels.len() as f64
    }
}

/// `logits + bias` (the logit adjustment), or `logits` without one.
pub(crate) fn add_bias(logits: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match bias {
        Some(bias) => logits.broadcast_add(bias),
        None => Ok(logits.clone()),
    }
}

/// Log-softmax of `logits + bias`.
pub(crate) fn log_softmax_biased(
    logits: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    candle_nn::ops::log_softmax(&add_bias(logits, bias)?, D::Minus1)
}
