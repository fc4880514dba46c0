//! Tip-Adapter (Zhang et al., ECCV 2022) on frozen image features: a
//! key-value cache of the labelled training features whose logits
//! `alpha * exp(-beta (1 - q . F)) @ onehot(labels)` are added to those of a
//! base classifier. The paper's base is CLIP's zero-shot text classifier;
//! with an image-only backbone the base here is the linear probe trained on
//! the same split. `alpha` and `beta` are chosen on the validation split.
//! Tip-Adapter-F makes the cache keys learnable (initialised from the
//! features) and trains them with the shared loop; a training sample never
//! sees its own cache entry (it would give its label away).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::classifier::{log_softmax_biased, Classifier, Output, Prediction};
use crate::error::Result;
use crate::ops::{matmul_frozen, Frozen};
use crate::samples::{Batch, NeighbourUse, SampleSet};
use crate::vars::set_var;

pub const ALPHA_GRID: [f64; 9] = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0];
pub const BETA_GRID: [f64; 9] = [0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 25.0];

/// The blend of cache and base logits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TipParams {
    pub alpha: f64,
    pub beta: f64,
}

/// One-hot (N, C) matrix of the training labels.
fn one_hot(labels: &[usize], classes: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mut data = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        data[i * classes + l] = 1.0;
    }
    Tensor::from_vec(data, (labels.len(), classes), device)
}

/// Cache logits `exp(-beta (1 - q . F^T)) @ L` for queries (B, d).
fn cache_logits(
    queries: &Tensor,
    cache_keys: &Tensor,
    cache_values: &Tensor,
    beta: f64,
    self_mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    // The queries are data: only the keys' gradient is computed.
    let affinity = matmul_frozen(&cache_keys.t()?, queries, Frozen::Lhs)?;
    let mut weights = ((affinity - 1.0)? * beta)?.exp()?;
    if let Some(mask) = self_mask {
        weights = (weights * mask)?;
    }
    weights.matmul(cache_values)
}

/// Training-free Tip-Adapter scores for `set`, given the base classifier's
/// logits for it (`n x C`).
pub fn tip_adapter(
    train: &SampleSet,
    set: &SampleSet,
    base_logits: &[f32],
    classes: usize,
    params: TipParams,
    device: &Device,
) -> Result<Prediction> {
    let [keys, values, queries, base] = cache_tensors(train, set, base_logits, classes, device)?;
    let logits =
        (base + (cache_logits(&queries, &keys, &values, params.beta, None)? * params.alpha)?)?;
    Ok(prediction_from_logits(&logits, classes)?)
}

/// The training features (cache keys), their one-hot labels (cache
/// values), the queries of `set` and their base logits, as tensors.
fn cache_tensors(
    train: &SampleSet,
    set: &SampleSet,
    base_logits: &[f32],
    classes: usize,
    device: &Device,
) -> candle_core::Result<[Tensor; 4]> {
    Ok([
        Tensor::from_slice(&train.queries, (train.len(), train.dim), device)?,
        one_hot(&train.labels, classes, device)?,
        Tensor::from_slice(&set.queries, (set.len(), set.dim), device)?,
        Tensor::from_slice(base_logits, (set.len(), classes), device)?,
    ])
}

/// Logits (n, C) as a prediction (log-probabilities, no attention).
fn prediction_from_logits(logits: &Tensor, classes: usize) -> candle_core::Result<Prediction> {
    let log_probs = log_softmax_biased(logits, None)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(Prediction::without_attention(log_probs, classes))
}

/// Grid search of (alpha, beta) for the training-free Tip-Adapter on a
/// validation split `set` (with its base classifier's logits): the best
/// setting and its top-1 (first best wins, alpha outer, beta inner). With
/// `require_cache`, alpha = 0 (the base classifier alone) is not a candidate.
pub fn select_params(
    train: &SampleSet,
    set: &SampleSet,
    base_logits: &[f32],
    classes: usize,
    require_cache: bool,
    device: &Device,
) -> Result<(TipParams, f64)> {
    let [keys, values, queries, base] = cache_tensors(train, set, base_logits, classes, device)?;
    grid_search(
        &queries.matmul(&keys.t()?)?,
        &values,
        &base,
        &set.labels,
        require_cache,
    )
}

/// The grid search over precomputed affinities (n, N) of the queries to the
/// cache keys: each beta's cache logits are computed once and shared by
/// every alpha, instead of recomputing the affinities for each setting.
fn grid_search(
    affinity: &Tensor,
    cache_values: &Tensor,
    base: &Tensor,
    labels: &[usize],
    require_cache: bool,
) -> Result<(TipParams, f64)> {
    let classes = cache_values.dim(1)?;
    let top1 = |logits: Tensor| -> Result<f64> {
        Ok(prediction_from_logits(&logits, classes)?.top1(labels))
    };
    let cache_by_beta = BETA_GRID
        .iter()
        .map(|&beta| ((affinity - 1.0)? * beta)?.exp()?.matmul(cache_values))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut best = (
        TipParams {
            alpha: 0.0,
            beta: 1.0,
        },
        f64::NEG_INFINITY,
    );
    for &alpha in &ALPHA_GRID {
        for (&beta, cache) in BETA_GRID.iter().zip(&cache_by_beta) {
            let params = TipParams { alpha, beta };
            let score = if alpha == 0.0 && require_cache {
                f64::NEG_INFINITY
            } else {
                top1((base + (cache * alpha)?)?)?
            };
            if score > best.1 {
                best = (params, score);
            }
            if alpha == 0.0 {
                break; // beta does not matter without the cache
            }
        }
    }
    Ok(best)
}

/// Tip-Adapter-F: learnable cache keys on top of a frozen base classifier.
/// The base logits of every sample a batch can name are given up front.
pub struct TipAdapterF {
    /// `(N, dim)`: the trainable cache keys (a variable of the builder's).
    cache_keys: Tensor,
    cache_values: Tensor,
    initial_keys: Tensor,
    /// Base logits of the training set (N, C) and of the set being predicted.
    train_base: Tensor,
    eval_base: Option<Tensor>,
    pub params: TipParams,
    classes: usize,
}

impl TipAdapterF {
    /// The adapter over the variables of `vb` (`cache_keys`; fresh, or
    /// saved weights), its cache built from `train` and the base
    /// classifier's logits of it. Training starts the keys at `train`'s
    /// embeddings.
    pub fn new(
        train: &SampleSet,
        train_base_logits: &[f32],
        classes: usize,
        params: TipParams,
        vb: VarBuilder,
    ) -> Result<TipAdapterF> {
        let device = vb.device().clone();
        let device = &device;
        let initial_keys = Tensor::from_slice(&train.queries, (train.len(), train.dim), device)?;
        let cache_keys = vb.get_with_hints(
            (train.len(), train.dim),
            "cache_keys",
            candle_nn::Init::Const(0.0),
        )?;
        Ok(TipAdapterF {
            cache_keys,
            cache_values: one_hot(&train.labels, classes, device)?,
            initial_keys,
            train_base: Tensor::from_slice(train_base_logits, (train.len(), classes), device)?,
            eval_base: None,
            params,
            classes,
        })
    }

    /// Grid search of (alpha, beta) for the trained keys on `set`, whose
    /// base logits must have been given with [`TipAdapterF::set_eval_base`]
    /// (see [`select_params`]).
    pub fn select_params(&self, set: &SampleSet, device: &Device) -> Result<(TipParams, f64)> {
        let base = self.eval_base.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("Tip-Adapter-F: no base logits set for selection".into())
        })?;
        let queries = Tensor::from_slice(&set.queries, (set.len(), set.dim), device)?;
        let keys = unit_rows(&self.cache_keys)?;
        grid_search(
            &queries.matmul(&keys.t()?)?,
            &self.cache_values,
            base,
            &set.labels,
            false,
        )
    }

    /// The base logits (n x C) of the set the next predictions are made for.
    pub fn set_eval_base(&mut self, logits: &[f32], rows: usize, device: &Device) -> Result<()> {
        self.eval_base = Some(Tensor::from_slice(logits, (rows, self.classes), device)?);
        Ok(())
    }
}

impl Classifier for TipAdapterF {
    fn name(&self) -> &str {
        "tip_adapter_f"
    }
    fn neighbour_use(&self) -> NeighbourUse {
        NeighbourUse::None
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({ "alpha": self.params.alpha, "beta": self.params.beta, "classes": self.classes })
    }
    fn initialise(&self, vars: &VarMap, _seed: u64) -> candle_core::Result<()> {
        set_var(vars, &self.cache_keys, &self.initial_keys)
    }
    fn forward(
        &self,
        batch: &Batch,
        train: bool,
        logit_bias: Option<&Tensor>,
    ) -> candle_core::Result<Output> {
        let device = batch.queries.device();
        let ids = Tensor::from_vec(
            batch.indices.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            batch.indices.len(),
            device,
        )?;
        let (base, mask) = if train {
            let n = self.cache_values.dim(0)?;
            let mut mask = vec![1f32; batch.indices.len() * n];
            for (row, &i) in batch.indices.iter().enumerate() {
                mask[row * n + i] = 0.0;
            }
            let mask = Tensor::from_vec(mask, (batch.indices.len(), n), device)?;
            (self.train_base.index_select(&ids, 0)?, Some(mask))
        } else {
            let base = self.eval_base.as_ref().ok_or_else(|| {
                candle_core::Error::Msg("Tip-Adapter-F: no base logits set for prediction".into())
            })?;
            (base.index_select(&ids, 0)?, None)
        };
        let keys = unit_rows(&self.cache_keys)?;
        let cache = cache_logits(
            &batch.queries,
            &keys,
            &self.cache_values,
            self.params.beta,
            mask.as_ref(),
        )?;
        let logits = (base + (cache * self.params.alpha)?)?;
        Ok(Output {
            log_probs: log_softmax_biased(&logits.to_dtype(DType::F32)?, logit_bias)?,
            attention: None,
            penalty: None,
        })
    }
}

/// The cache keys as unit vectors, as the features they start from.
fn unit_rows(keys: &Tensor) -> candle_core::Result<Tensor> {
    let norms = keys.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    keys.broadcast_div(&norms)
}
