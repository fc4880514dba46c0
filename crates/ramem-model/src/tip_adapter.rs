//! Tip-Adapter (Zhang et al., ECCV 2022) on frozen image features: a
//! key-value cache of the labelled training features whose logits
//! `alpha * exp(-beta (1 - q . F)) @ onehot(labels)` are added to those of a
//! base classifier. The paper's base is CLIP's zero-shot text classifier;
//! with an image-only backbone the base here is the linear probe trained on
//! the same split. `alpha` and `beta` are chosen on the validation split.
//! Tip-Adapter-F makes the cache keys learnable (initialised from the
//! features) and trains them with the shared loop; a training sample never
//! sees its own cache entry (it would give its label away).

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::mam::log_softmax_biased;
use crate::samples::{Batch, SampleSet};
use crate::train::{Classifier, Output, Prediction};

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
    let affinity = queries.matmul(&cache_keys.t()?)?;
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
    let keys = Tensor::from_slice(&train.queries, (train.len(), train.dim), device)?;
    let values = one_hot(&train.labels, classes, device)?;
    let queries = Tensor::from_slice(&set.queries, (set.len(), set.dim), device)?;
    let base = Tensor::from_slice(base_logits, (set.len(), classes), device)?;
    let logits =
        (base + (cache_logits(&queries, &keys, &values, params.beta, None)? * params.alpha)?)?;
    let log_probs = log_softmax_biased(&logits, None)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(Prediction {
        log_probs,
        classes,
        attention: None,
        attention_items: 0,
    })
}

/// Grid search of (alpha, beta) on the validation split; `score` evaluates a
/// setting and returns its validation top-1.
pub fn select_params(mut score: impl FnMut(TipParams) -> Result<f64>) -> Result<(TipParams, f64)> {
    let mut best = (
        TipParams {
            alpha: 0.0,
            beta: 1.0,
        },
        f64::NEG_INFINITY,
    );
    for &alpha in &ALPHA_GRID {
        for &beta in &BETA_GRID {
            let params = TipParams { alpha, beta };
            let top1 = score(params)?;
            if top1 > best.1 {
                best = (params, top1);
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
    varmap: VarMap,
    cache_keys: Var,
    cache_values: Tensor,
    initial_keys: Tensor,
    /// Base logits of the training set (N, C) and of the set being predicted.
    train_base: Tensor,
    eval_base: Option<Tensor>,
    pub params: TipParams,
    classes: usize,
}

impl TipAdapterF {
    pub fn new(
        train: &SampleSet,
        train_base_logits: &[f32],
        classes: usize,
        params: TipParams,
        device: &Device,
    ) -> Result<TipAdapterF> {
        let initial_keys = Tensor::from_slice(&train.queries, (train.len(), train.dim), device)?;
        let varmap = VarMap::new();
        let cache_keys = Var::from_tensor(&initial_keys)?;
        varmap
            .data()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert("cache_keys".to_string(), cache_keys.clone());
        Ok(TipAdapterF {
            varmap,
            cache_keys,
            cache_values: one_hot(&train.labels, classes, device)?,
            initial_keys,
            train_base: Tensor::from_slice(train_base_logits, (train.len(), classes), device)?,
            eval_base: None,
            params,
            classes,
        })
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
    fn uses_neighbours(&self) -> bool {
        false
    }
    fn varmap(&self) -> &VarMap {
        &self.varmap
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({ "alpha": self.params.alpha, "beta": self.params.beta, "classes": self.classes })
    }
    fn initialise(&self, _seed: u64) -> candle_core::Result<()> {
        self.cache_keys.set(&self.initial_keys)
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
        // Keys stay unit vectors, as the features they start from.
        let keys = self.cache_keys.as_tensor();
        let norms = keys.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let keys = keys.broadcast_div(&norms)?;
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
