//! The trained baselines: a linear probe on the query embedding (no
//! retrieval) and a RAC-like uniform mean of the neighbour values
//! concatenated to the query. Both go through the same training loop, with
//! the same schedule and loss, as the memory attention module.

use candle_core::{Module, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::classifier::{log_softmax_biased, Classifier, Output};
use crate::error::Result;
use crate::samples::{Batch, NeighbourUse};

/// A linear classifier on the frozen query embedding.
pub struct LinearProbe {
    linear: Linear,
    config: HeadConfig,
}

/// Dimensions of a baseline head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    pub input_dim: usize,
    /// 0 for the linear probe.
    pub value_dim: usize,
    pub classes: usize,
}

impl LinearProbe {
    /// The probe over the variables of `vb` (fresh, or saved weights).
    pub fn new(input_dim: usize, classes: usize, vb: VarBuilder) -> Result<LinearProbe> {
        let linear = linear(input_dim, classes, vb.pp("classifier"))?;
        Ok(LinearProbe {
            linear,
            config: HeadConfig {
                input_dim,
                value_dim: 0,
                classes,
            },
        })
    }

    /// Raw logits (B, C) for a batch.
    pub fn logits(&self, queries: &Tensor) -> candle_core::Result<Tensor> {
        self.linear.forward(queries)
    }

    pub(crate) fn linear(&self) -> &Linear {
        &self.linear
    }
}

impl Classifier for LinearProbe {
    fn name(&self) -> &str {
        "linear_probe"
    }
    fn neighbour_use(&self) -> NeighbourUse {
        NeighbourUse::None
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
    fn native_step(&self) -> Option<&dyn crate::native::NativeStep> {
        self.linear.weight().device().is_cpu().then_some(self as _)
    }
    fn forward(
        &self,
        batch: &Batch,
        _train: bool,
        logit_bias: Option<&Tensor>,
    ) -> candle_core::Result<Output> {
        Ok(Output {
            log_probs: log_softmax_biased(&self.linear.forward(&batch.queries)?, logit_bias)?,
            attention: None,
            penalty: None,
        })
    }
}

/// Uniform aggregation (RAC-like): the mean of the neighbours' values is
/// concatenated to the query and classified linearly. Every neighbour counts
/// the same, relevant or not: the contrast the attention module is built for.
pub struct UniformMean {
    linear: Linear,
    config: HeadConfig,
}

impl UniformMean {
    /// The head over the variables of `vb` (fresh, or saved weights).
    pub fn new(
        input_dim: usize,
        value_dim: usize,
        classes: usize,
        vb: VarBuilder,
    ) -> Result<UniformMean> {
        let linear = linear(input_dim + value_dim, classes, vb.pp("classifier"))?;
        Ok(UniformMean {
            linear,
            config: HeadConfig {
                input_dim,
                value_dim,
                classes,
            },
        })
    }

    pub(crate) fn linear(&self) -> &Linear {
        &self.linear
    }
}

impl Classifier for UniformMean {
    fn name(&self) -> &str {
        "uniform_mean"
    }
    fn neighbour_use(&self) -> NeighbourUse {
        NeighbourUse::MeanValue
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
    fn native_step(&self) -> Option<&dyn crate::native::NativeStep> {
        self.linear.weight().device().is_cpu().then_some(self as _)
    }
    fn forward(
        &self,
        batch: &Batch,
        _train: bool,
        logit_bias: Option<&Tensor>,
    ) -> candle_core::Result<Output> {
        let n = batch
            .neighbours
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("uniform mean needs neighbours".into()))?;
        let count = n.valid.sum_keepdim(D::Minus1)?.clamp(1.0, f64::MAX)?; // (B, 1)
        let features = Tensor::cat(&[&batch.queries, &n.mean_values], 1)?;
        Ok(Output {
            log_probs: log_softmax_biased(&self.linear.forward(&features)?, logit_bias)?,
            attention: Some(n.valid.broadcast_div(&count)?),
            penalty: None,
        })
    }
}
