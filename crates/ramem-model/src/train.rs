//! The training loop shared by every trained method: AdamW, linear warmup
//! then cosine decay, optional logit adjustment, best-validation model
//! selection, checkpoints and resume.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::bank::NeighbourBank;
use crate::checkpoint::{self, CheckpointState};
use crate::classifier::Classifier;
use crate::error::{ModelError, Result};
use crate::native::NeighbourRows;
use crate::optim::AdamW;
use crate::predict::{batches, predict, predict_batches};
use crate::rng::SplitMix64;
use crate::samples::{Batch, NeighbourUse, SampleSet};

/// Training options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Linear warmup length in epochs (may be fractional).
    pub warmup_epochs: f64,
    pub seed: u64,
    /// Logit adjustment strength tau (0 = plain cross-entropy): training
    /// logits get `tau * ln(prior_c)` added (Menon et al. 2021).
    pub logit_adjustment: f64,
    /// Where to write checkpoints after each epoch (none if unset).
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from the checkpoint in `checkpoint_dir` when there is one.
    pub resume: bool,
    /// Exponential moving average of the weights (decay; 0 = off): the
    /// averaged weights are the ones validated and kept. The decay ramps up
    /// as min(ema, (1 + t) / (10 + t)) over steps t. After a resume the
    /// average restarts from the restored weights.
    pub ema: f64,
    /// Label smoothing epsilon (0 = off): the loss is `(1 - eps)` times the
    /// labels' negative log-likelihood plus `eps` times the mean over
    /// classes of `-log p` (Szegedy et al. 2016), which keeps a small
    /// module from growing overconfident on a small training set.
    pub label_smoothing: f64,
    /// How gradients are computed: the model's hand-written step where it
    /// has one (`native`, the default), or candle's autograd for every
    /// model (`autograd`, the reference the native steps are tested
    /// against). Left out of the serialised form at its default.
    #[serde(skip_serializing_if = "TrainStep::is_native")]
    pub step: TrainStep,
}

/// Which training step [`train`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainStep {
    /// The model's [`crate::native::NativeStep`] when it has one for its
    /// options, autograd otherwise.
    #[default]
    Native,
    /// candle's autograd, for every model.
    Autograd,
}

impl TrainStep {
    fn is_native(&self) -> bool {
        *self == TrainStep::Native
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 30,
            batch_size: 256,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            warmup_epochs: 1.0,
            seed: 0,
            logit_adjustment: 0.0,
            checkpoint_dir: None,
            resume: false,
            ema: 0.0,
            label_smoothing: 0.0,
            step: TrainStep::Native,
        }
    }
}

/// Learning rate at `step` of `total`: linear warmup over `warmup` steps,
/// then cosine decay to zero.
pub fn learning_rate_at(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// One epoch's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub loss: f64,
    pub val_top1: Option<f64>,
    pub seconds: f64,
}

/// How training went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub epochs: usize,
    pub steps: usize,
    pub best_epoch: Option<usize>,
    pub best_val_top1: Option<f64>,
    pub history: Vec<EpochStats>,
    pub seconds: f64,
    /// Epochs skipped because they were restored from a checkpoint.
    pub resumed_epochs: usize,
}

/// Progress reported after every step, and once more after each epoch
/// (validated and checkpointed) with `epoch_done` set.
#[derive(Debug, Clone, Copy)]
pub struct TrainProgress {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// The step's loss (after an epoch: the epoch's mean loss).
    pub loss: f64,
    /// The epoch just finished, after its checkpoint was written: stopping
    /// here loses nothing.
    pub epoch_done: Option<EpochStats>,
}

/// `tau * ln(n_c / n)` per class, as a (C,) tensor. Fails naming the empty
/// class: its prior would be zero.
pub fn logit_adjustment_bias(counts: &[usize], tau: f64, device: &Device) -> Result<Tensor> {
    let total: usize = counts.iter().sum();
    if let Some(class) = counts.iter().position(|&c| c == 0) {
        return Err(ModelError::EmptyClass {
            what: "training set (logit adjustment)".into(),
            class,
        });
    }
    let bias: Vec<f32> = counts
        .iter()
        .map(|&c| (tau * (c as f64 / total as f64).ln()) as f32)
        .collect();
    Ok(Tensor::from_vec(bias, counts.len(), device)?)
}

/// The splits a model trains on.
#[derive(Debug, Clone, Copy)]
pub struct TrainData<'a> {
    pub train: &'a SampleSet,
    /// Chooses the epoch kept (best top-1); never the test split.
    pub val: Option<&'a SampleSet>,
    /// Neighbour keys and values, for models that use them.
    pub bank: Option<&'a NeighbourBank>,
    pub classes: usize,
}

/// Trains `model`, whose variables are `vars` (the set its [`VarBuilder`]
/// filled; see [`crate::vars::new_vars`]), on `train`, choosing the epoch
/// with the best top-1 on `val` (when given; otherwise the last), and leaves
/// those weights in the model. `bank` supplies neighbour keys and values for
/// models that use them. Parts of the model with a learning rate of their
/// own ([`Classifier::part_learning_rates`]) follow the same schedule at
/// that rate. `on_progress` is called after every step; returning `Break`
/// stops at once (the last epoch checkpoint stays, and a run with `resume`
/// continues it).
///
/// [`VarBuilder`]: candle_nn::VarBuilder
pub fn train(
    model: &dyn Classifier,
    vars: &VarMap,
    data: &TrainData,
    config: &TrainConfig,
    device: &Device,
    on_progress: &mut dyn FnMut(TrainProgress) -> ControlFlow<()>,
) -> Result<TrainReport> {
    let started = Instant::now();
    let TrainData {
        train,
        val,
        bank,
        classes,
    } = *data;
    if train.is_empty() {
        return Err(ModelError::Config("the training set is empty".into()));
    }
    if config.batch_size == 0 || config.epochs == 0 {
        return Err(ModelError::Config(
            "batch_size and epochs must be at least 1".into(),
        ));
    }
    let part_rates = model.part_learning_rates();
    for (name, rate) in std::iter::once(("learning_rate", config.learning_rate))
        .chain(part_rates.iter().map(|p| (p.option, p.rate)))
    {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ModelError::Config(format!(
                "{name} {rate} must be a finite number > 0"
            )));
        }
    }
    if !(0.0..1.0).contains(&config.label_smoothing) {
        return Err(ModelError::Config(format!(
            "label_smoothing {} must be in [0, 1)",
            config.label_smoothing
        )));
    }
    train.check_labels("training set", classes)?;
    if let Some(val) = val {
        val.check_labels("validation set", classes)?;
    }
    if model.uses_neighbours() && (bank.is_none() || train.k == 0) {
        return Err(ModelError::Config(format!(
            "{} needs retrieved neighbours (k > 0 and a neighbour bank)",
            model.name()
        )));
    }
    let bias = if config.logit_adjustment > 0.0 {
        Some(logit_adjustment_bias(
            &train.class_counts(classes),
            config.logit_adjustment,
            device,
        )?)
    } else {
        None
    };

    model.initialise(vars, config.seed)?;
    let mut optimizer = AdamW::new(vars, config.learning_rate, config.weight_decay)?;
    for part in &part_rates {
        if optimizer.scale_learning_rate(part.prefix, part.rate / config.learning_rate) == 0 {
            return Err(ModelError::Config(format!(
                "{} is set, but this {} has no `{}` variables",
                part.option,
                model.name(),
                part.prefix
            )));
        }
    }
    let steps_per_epoch = train.len().div_ceil(config.batch_size);
    let total_steps = steps_per_epoch * config.epochs;
    let warmup = (config.warmup_epochs * steps_per_epoch as f64).round() as usize;

    let mut history = Vec::new();
    let mut best: Option<(usize, f64, std::collections::HashMap<String, Tensor>)> = None;
    let mut start_epoch = 0;
    if let (Some(dir), true) = (&config.checkpoint_dir, config.resume) {
        if let Some(state) = checkpoint::read_state(dir)? {
            if state.method != model.name() || state.model_config != model.config_json() {
                return Err(ModelError::Checkpoint {
                    path: dir.join(checkpoint::STATE_FILE),
                    problem: format!(
                        "it holds a {} with another configuration; cannot resume this {}",
                        state.method,
                        model.name()
                    ),
                });
            }
            let [model_path, optimizer_path, _] = checkpoint::paths(dir);
            checkpoint::load_weights(&model_path, vars, device)?;
            let moments = checkpoint::load_tensors(&optimizer_path, device)?;
            optimizer
                .load_state(&moments, state.step)
                .map_err(|problem| ModelError::Checkpoint {
                    path: optimizer_path.clone(),
                    problem,
                })?;
            if let (Some(epoch), Some(top1)) = (state.best_epoch, state.best_val_top1) {
                let best_path = dir.join(checkpoint::BEST_MODEL_FILE);
                let weights = checkpoint::load_tensors(&best_path, device)?;
                best = Some((epoch, top1, weights));
            }
            start_epoch = state.epoch.min(config.epochs);
            history = state.history;
            tracing::info!(epoch = start_epoch, "resumed from {}", dir.display());
        }
    }

    let val_batch_size = config.batch_size.max(256);
    let val_batches = match val {
        Some(val) if !val.is_empty() && start_epoch < config.epochs => {
            cached_validation(model, val, bank, device, val_batch_size)?
        }
        _ => None,
    };
    let native = match config.step {
        TrainStep::Native => model.native_step(),
        TrainStep::Autograd => None,
    };
    let bias_values: Option<Vec<f32>> = match (&native, &bias) {
        (Some(_), Some(bias)) => Some(bias.to_vec1()?),
        _ => None,
    };
    let objective = crate::native::Objective {
        logit_bias: bias_values.as_deref(),
        label_smoothing: config.label_smoothing as f32,
    };
    let mut shadow = (config.ema > 0.0).then(|| snapshot(vars));
    let mut order: Vec<usize> = (0..train.len()).collect();
    for epoch in start_epoch..config.epochs {
        let epoch_started = Instant::now();
        // Each epoch's order depends only on (seed, epoch): a resumed run sees
        // the same batches as an uninterrupted one.
        order.sort_unstable();
        SplitMix64::new(
            config
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(epoch as u64),
        )
        .shuffle(&mut order);
        let mut loss_sum = 0.0;
        for (i, chunk) in order.chunks(config.batch_size).enumerate() {
            let step = epoch * steps_per_epoch + i;
            optimizer.learning_rate =
                learning_rate_at(config.learning_rate, step, warmup, total_steps);
            let loss = match native {
                Some(native) => {
                    // The native step reads the neighbours' rows in place
                    // from the bank: the batch carries no copy of them.
                    let (batch, ids) = match (model.neighbour_use(), bank) {
                        (NeighbourUse::Rows, Some(bank)) => (
                            train.batch_without_rows(
                                chunk,
                                bank,
                                native.reads_mean_values(),
                                device,
                            )?,
                            train.neighbour_ids(chunk),
                        ),
                        (other, _) => (train.batch(chunk, bank, other, device)?, Vec::new()),
                    };
                    let rows = match bank {
                        Some(bank) if !ids.is_empty() => NeighbourRows::Bank { bank, ids: &ids },
                        _ => NeighbourRows::Gathered,
                    };
                    let step = native.loss_and_gradients(&batch, rows, &objective)?;
                    optimizer.step_native(&step.gradients)?;
                    let loss = step.loss as f64;
                    native.recycle(step);
                    loss
                }
                None => {
                    let batch = train.batch(chunk, bank, model.neighbour_use(), device)?;
                    autograd_step(model, &batch, bias.as_ref(), config, &mut optimizer)?
                }
            };
            if let Some(shadow) = shadow.as_mut() {
                let t = optimizer.steps() as f64;
                update_average(shadow, vars, config.ema.min((1.0 + t) / (10.0 + t)))?;
            }
            if !loss.is_finite() {
                return Err(ModelError::Config(format!(
                    "{}: the training loss became {loss} at step {step}; lower the learning rate",
                    model.name()
                )));
            }
            loss_sum += loss * chunk.len() as f64;
            if on_progress(TrainProgress {
                step: step + 1,
                total_steps,
                epoch,
                loss,
                epoch_done: None,
            })
            .is_break()
            {
                return Err(ModelError::Interrupted {
                    epoch,
                    step: step + 1,
                });
            }
        }
        // Validate (and keep) the averaged weights when averaging.
        let current = match &shadow {
            Some(avg) => {
                let current = snapshot(vars);
                checkpoint::assign(std::path::Path::new("weight average"), vars, avg)?;
                Some(current)
            }
            None => None,
        };
        let val_top1 = match val {
            Some(val) if !val.is_empty() => {
                let prediction = match &val_batches {
                    Some(batches) => predict_batches(model, batches.iter().map(Ok))?,
                    None => predict(model, val, bank, device, val_batch_size)?,
                };
                Some(prediction.top1(&val.labels))
            }
            _ => None,
        };
        if let Some(top1) = val_top1 {
            if best.as_ref().is_none_or(|(_, b, _)| top1 > *b) {
                best = Some((epoch, top1, snapshot(vars)));
                if let Some(dir) = &config.checkpoint_dir {
                    if let Some((_, _, weights)) = &best {
                        std::fs::create_dir_all(dir).map_err(|error| ModelError::Io {
                            path: dir.clone(),
                            error,
                        })?;
                        checkpoint::save_weights(&dir.join(checkpoint::BEST_MODEL_FILE), weights)?;
                    }
                }
            }
        }
        let averaged_last = current.is_some().then(|| snapshot(vars));
        if let Some(current) = &current {
            checkpoint::assign(std::path::Path::new("weights"), vars, current)?;
        }
        if epoch + 1 == config.epochs && best.is_none() {
            if let Some(avg) = averaged_last {
                // No validation split: keep the final average.
                best = Some((epoch, f64::NAN, avg));
            }
        }
        history.push(EpochStats {
            epoch,
            loss: loss_sum / train.len() as f64,
            val_top1,
            seconds: epoch_started.elapsed().as_secs_f64(),
        });
        if let Some(dir) = &config.checkpoint_dir {
            let state = CheckpointState {
                format_version: 1,
                method: model.name().to_string(),
                model_config: model.config_json(),
                train_config: serde_json::to_value(config).unwrap_or_default(),
                epoch: epoch + 1,
                step: optimizer.steps(),
                best_epoch: best.as_ref().map(|(e, _, _)| *e),
                best_val_top1: best.as_ref().map(|(_, t, _)| *t).filter(|t| t.is_finite()),
                history: history.clone(),
            };
            checkpoint::save(dir, vars, &optimizer.state(), &state)?;
        }
        let done = history[history.len() - 1];
        if on_progress(TrainProgress {
            step: (epoch + 1) * steps_per_epoch,
            total_steps,
            epoch,
            loss: done.loss,
            epoch_done: Some(done),
        })
        .is_break()
        {
            return Err(ModelError::Interrupted {
                epoch,
                step: (epoch + 1) * steps_per_epoch,
            });
        }
    }
    let resumed_epochs = start_epoch;
    if let Some((_, _, weights)) = &best {
        checkpoint::assign(
            config
                .checkpoint_dir
                .as_deref()
                .unwrap_or(std::path::Path::new("best weights")),
            vars,
            weights,
        )?;
    }
    Ok(TrainReport {
        epochs: config.epochs,
        steps: optimizer.steps(),
        best_epoch: best.as_ref().map(|(e, _, _)| *e),
        best_val_top1: best.as_ref().map(|(_, t, _)| *t).filter(|t| t.is_finite()),
        history,
        seconds: started.elapsed().as_secs_f64(),
        resumed_epochs,
    })
}

/// One step through candle's autograd: forward, loss, backward, update.
/// Returns the loss.
fn autograd_step(
    model: &dyn Classifier,
    batch: &Batch,
    bias: Option<&Tensor>,
    config: &TrainConfig,
    optimizer: &mut AdamW,
) -> Result<f64> {
    let loss = autograd_loss(model, batch, bias, config.label_smoothing)?;
    let grads = loss.backward()?;
    optimizer.step(&grads)?;
    Ok(loss.to_scalar::<f32>()? as f64)
}

/// The training loss of `batch` through candle's forward pass (dropout on):
/// the labels' negative log-likelihood, mixed with the mean of `-log p`
/// over the classes by `label_smoothing`, plus the model's penalty. The
/// native steps compute the same loss by hand; their tests compare with it.
pub(crate) fn autograd_loss(
    model: &dyn Classifier,
    batch: &Batch,
    bias: Option<&Tensor>,
    label_smoothing: f64,
) -> candle_core::Result<Tensor> {
    let out = model.forward(batch, true, bias)?;
    let mut loss = candle_nn::loss::nll(&out.log_probs, &batch.labels)?;
    if label_smoothing > 0.0 {
        // The mean of -log p over the batch and the classes.
        let uniform = out.log_probs.mean_all()?.neg()?;
        loss = ((loss * (1.0 - label_smoothing))? + (uniform * label_smoothing)?)?;
    }
    if let Some(penalty) = &out.penalty {
        loss = (loss + penalty)?;
    }
    Ok(loss)
}

/// A copy of every weight, cut from the autograd graph: a copy of a
/// variable would otherwise record the variable as its input, and the weight
/// average built from it would chain every step's tensors together.
fn snapshot(varmap: &VarMap) -> std::collections::HashMap<String, Tensor> {
    checkpoint::model_tensors(varmap)
        .into_iter()
        .map(|(k, t)| {
            let t = t.detach();
            (k, t.copy().unwrap_or(t))
        })
        .collect()
}

/// One step of the exponential weight average: `average = decay * average
/// + (1 - decay) * weight` for every weight, outside the autograd graph.
fn update_average(
    average: &mut std::collections::HashMap<String, Tensor>,
    varmap: &VarMap,
    decay: f64,
) -> candle_core::Result<()> {
    for (name, var) in crate::vars::all_vars(varmap) {
        if let Some(avg) = average.get_mut(&name) {
            *avg = ((&*avg * decay)? + (var.as_tensor().detach() * (1.0 - decay))?)?;
        }
    }
    Ok(())
}

/// Validation batches are gathered once for the whole run when their
/// neighbour tensors take at most this many bytes (re-gathered every epoch
/// otherwise).
const VALIDATION_CACHE_BYTES: usize = 512 << 20;

/// The validation split's batches, gathered once, when they fit in
/// [`VALIDATION_CACHE_BYTES`].
fn cached_validation(
    model: &dyn Classifier,
    val: &SampleSet,
    bank: Option<&NeighbourBank>,
    device: &Device,
    batch_size: usize,
) -> Result<Option<Vec<Batch>>> {
    let floats = match (bank, model.neighbour_use()) {
        (Some(bank), NeighbourUse::Rows) => {
            let values = if bank.values_are_keys {
                0
            } else {
                bank.value_dim
            };
            // Per neighbour: key row, value row, presence, and the mean
            // and inverse standard deviation of its key and of its value.
            val.k * (bank.key_dim + values + 1 + 4) + bank.value_dim
        }
        (Some(bank), NeighbourUse::MeanValue) => val.k + bank.value_dim,
        _ => 0,
    };
    let per_sample = floats * std::mem::size_of::<f32>();
    if val.len() * per_sample > VALIDATION_CACHE_BYTES {
        return Ok(None);
    }
    batches(model, val, bank, device, batch_size)
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn snapshots_and_their_averages_stay_out_of_the_autograd_graph() {
        let varmap = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        vb.get_with_hints((4, 3), "w", candle_nn::Init::Const(1.0))
            .unwrap();
        let mut average = snapshot(&varmap);
        for _ in 0..3 {
            update_average(&mut average, &varmap, 0.9).unwrap();
        }
        // A tracked tensor would keep every earlier step's tensors alive.
        assert!(average.values().all(|t| !t.track_op()));
        assert!(snapshot(&varmap).values().all(|t| !t.track_op()));
    }
}
