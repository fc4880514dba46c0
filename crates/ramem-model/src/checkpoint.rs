//! Checkpoints: a directory holding `model.safetensors` (the variables by
//! name), `optimizer.safetensors` (AdamW moments) and `checkpoint.json` (the
//! method, its configuration, the training configuration and where training
//! stands). Every file is written to a temporary name and renamed, JSON last,
//! so a killed run leaves the previous checkpoint whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::vars::all_vars;

pub const MODEL_FILE: &str = "model.safetensors";
pub const BEST_MODEL_FILE: &str = "best.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "checkpoint.json";

/// `checkpoint.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    pub format_version: u32,
    pub method: String,
    pub model_config: serde_json::Value,
    pub train_config: serde_json::Value,
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    pub best_epoch: Option<usize>,
    pub best_val_top1: Option<f64>,
    pub history: Vec<crate::train::EpochStats>,
}

fn checkpoint_error(path: &Path, problem: impl ToString) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(tensors, &tmp).map_err(|e| checkpoint_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// The variables of a model by name.
pub fn model_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    all_vars(varmap)
        .into_iter()
        .map(|(name, var)| (name, var.as_tensor().clone()))
        .collect()
}

/// Writes model weights to `path` (temp + rename).
pub fn save_weights(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    save_tensors(path, tensors)
}

/// Writes a whole checkpoint into `dir`.
pub fn save(
    dir: &Path,
    varmap: &VarMap,
    optimizer: &HashMap<String, Tensor>,
    state: &CheckpointState,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|error| ModelError::Io {
        path: dir.to_path_buf(),
        error,
    })?;
    save_tensors(&dir.join(MODEL_FILE), &model_tensors(varmap))?;
    save_tensors(&dir.join(OPTIMIZER_FILE), optimizer)?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| checkpoint_error(dir, e))?;
    let path = dir.join(STATE_FILE);
    ramem_store::atomic::write_atomic(&path, &json)?;
    Ok(())
}

/// Reads `checkpoint.json` of a checkpoint directory, if there is one.
pub fn read_state(dir: &Path) -> Result<Option<CheckpointState>> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read(&path).map_err(|error| ModelError::Io {
        path: path.clone(),
        error,
    })?;
    let state: CheckpointState =
        serde_json::from_slice(&text).map_err(|e| checkpoint_error(&path, e))?;
    if state.format_version != 1 {
        return Err(checkpoint_error(
            &path,
            format!(
                "checkpoint format version {} is not supported (expected 1)",
                state.format_version
            ),
        ));
    }
    Ok(Some(state))
}

/// Loads a safetensors file.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(checkpoint_error(path, "file not found"));
    }
    candle_core::safetensors::load(path, device).map_err(|e| checkpoint_error(path, e))
}

/// A [`VarBuilder`] over the weights saved at `path` (a safetensors file of
/// tensors by name, as [`save_weights`] writes): handed to a model's
/// constructor, it builds the trained model without a [`VarMap`]. A
/// missing or unreadable file is an error naming it; a missing tensor or
/// one of another shape fails the constructor, naming the tensor.
pub fn load_var_builder(path: &Path, device: &Device) -> Result<VarBuilder<'static>> {
    if !path.exists() {
        return Err(checkpoint_error(path, "file not found"));
    }
    // SAFETY: the file is memory-mapped read-only; ramem writes weights to a
    // temporary name and renames them, so a mapped file is never rewritten
    // in place.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }
        .map_err(|e| checkpoint_error(path, e))
}

/// Copies saved weights into a model's variables, checking names and shapes.
pub fn load_weights(path: &Path, varmap: &VarMap, device: &Device) -> Result<()> {
    let tensors = load_tensors(path, device)?;
    assign(path, varmap, &tensors)
}

/// Sets every variable of `varmap` from `tensors` (names and shapes must match).
pub fn assign(path: &Path, varmap: &VarMap, tensors: &HashMap<String, Tensor>) -> Result<()> {
    for (name, var) in all_vars(varmap) {
        let saved = tensors
            .get(&name)
            .ok_or_else(|| checkpoint_error(path, format!("no tensor named {name}")))?;
        if saved.dims() != var.as_tensor().dims() {
            return Err(checkpoint_error(
                path,
                format!(
                    "tensor {name} has shape {:?}, the model expects {:?}",
                    saved.dims(),
                    var.as_tensor().dims()
                ),
            ));
        }
        var.set(saved)?;
    }
    Ok(())
}

/// Where the checkpoint files of `dir` are.
pub fn paths(dir: &Path) -> [PathBuf; 3] {
    [
        dir.join(MODEL_FILE),
        dir.join(OPTIMIZER_FILE),
        dir.join(STATE_FILE),
    ]
}
