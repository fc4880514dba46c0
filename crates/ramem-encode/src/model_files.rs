//! Loading the files of a Hugging Face style model directory: the tokenizer
//! and the safetensors weights, with errors that name the file at fault.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

/// Loads `tokenizer.json`, truncating to `max_len` tokens and padding nothing:
/// a tokenizer file may carry its own fixed padding and truncation (MiniLM's
/// pads every input to 128), but the model's own limit governs, and batches are
/// padded only to their longest input by the caller. `config` is the file that
/// gave `vocab_size`, named if the two disagree.
pub(crate) fn load_tokenizer(
    tokenizer_path: &Path,
    max_len: usize,
    vocab_size: usize,
    config_path: &Path,
) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_file(tokenizer_path)
        .map_err(|e| anyhow!("loading tokenizer {}: {e}", tokenizer_path.display()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            ..Default::default()
        }))
        .map_err(|e| anyhow!("{}: setting truncation: {e}", tokenizer_path.display()))?;
    let tokens = tokenizer.get_vocab_size(true);
    if tokens > vocab_size {
        bail!(
            "{} has {tokens} tokens but {} says vocab_size {vocab_size}: they belong to different models",
            tokenizer_path.display(),
            config_path.display(),
        );
    }
    Ok(tokenizer)
}

/// Reads a safetensors file as f32 weights on `device`. The file is read into
/// memory rather than memory-mapped: no `unsafe`, and a file changed on disk
/// while in use cannot corrupt the model.
pub(crate) fn load_weights(weights_path: &Path, device: &Device) -> Result<VarBuilder<'static>> {
    let bytes = std::fs::read(weights_path)
        .with_context(|| format!("reading {}", weights_path.display()))?;
    VarBuilder::from_buffered_safetensors(bytes, DType::F32, device).with_context(|| {
        format!(
            "parsing safetensors file {} (truncated or corrupt?)",
            weights_path.display()
        )
    })
}
