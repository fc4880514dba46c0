//! Weight files: reading PyTorch's legacy checkpoints and converting them to safetensors.

pub mod pickle;
pub mod torch_legacy;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

pub use torch_legacy::{read_legacy_checkpoint, LegacyError, LegacyTensor, StorageType};

/// Converts a legacy PyTorch checkpoint to a safetensors file, written to a
/// temporary file and renamed into place. Integer tensors (e.g. batch-norm's
/// `num_batches_tracked`) are kept as i64; floating tensors become f32.
/// Returns the number of tensors written.
pub fn convert_legacy_to_safetensors(input: &Path, output: &Path) -> Result<usize> {
    let tensors = read_legacy_checkpoint(input)?;
    let mut map: HashMap<String, Tensor> = HashMap::with_capacity(tensors.len());
    for (name, t) in &tensors {
        let tensor = match t.dtype {
            StorageType::I64 | StorageType::I32 | StorageType::U8 | StorageType::Bool => {
                let values: Vec<i64> = t.to_f32().iter().map(|&v| v as i64).collect();
                Tensor::from_vec(values, t.shape.clone(), &Device::Cpu)?
            }
            _ => {
                Tensor::from_vec(t.to_f32(), t.shape.clone(), &Device::Cpu)?.to_dtype(DType::F32)?
            }
        };
        map.insert(name.clone(), tensor);
    }
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        output
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("weights"),
        std::process::id()
    ));
    candle_core::safetensors::save(&map, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, output)
        .with_context(|| format!("renaming {} to {}", tmp.display(), output.display()))?;
    Ok(tensors.len())
}
