//! The encoder registry: turns a model name (what `--model` and a study
//! file's `encoder` say) into a loaded encoder.
//!
//! Image models: `efficientnet-lite0|1|2` (from the asset cache; the PyTorch
//! checkpoint is converted to safetensors on first use) or `clip:PATH` (a
//! CLIP in the Hugging Face layout). Text models: `minilm-l6` (from the asset
//! cache), `sbert:PATH` (any sentence-transformers BERT directory) or `clip:PATH`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use ramem_assets::Cache;

use crate::clip::ClipModel;
use crate::efficientnet::{EfficientNetLite, LiteVariant};
use crate::preprocess::PreprocessSpec;
use crate::text::SentenceEncoder;

/// The image encoders a name can select, for help texts and errors.
pub const IMAGE_MODELS: &str =
    "efficientnet-lite0, efficientnet-lite1, efficientnet-lite2, clip:PATH";
/// The text encoders a name can select.
pub const TEXT_MODELS: &str = "minilm-l6, sbert:PATH, clip:PATH";

/// The device encoders run on: CUDA when built with the `cuda` feature and a GPU is present.
pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    Device::Cpu
}

/// A frozen image encoder.
pub enum ImageModel {
    EfficientNet(Box<EfficientNetLite>),
    Clip(Box<ClipModel>),
}

/// What an image encoder returns for a batch.
pub struct ImageBatchOutput {
    pub embedding: Tensor,
    /// ImageNet logits, where the model has that head.
    pub logits: Option<Tensor>,
}

impl ImageModel {
    /// How images are prepared for it.
    pub fn spec(&self) -> PreprocessSpec {
        match self {
            Self::EfficientNet(m) => PreprocessSpec::efficientnet_lite(m.resolution() as u32),
            Self::Clip(m) => {
                let (mean, std) = m.pixel_mean_std();
                PreprocessSpec::clip(m.image_size() as u32, mean, std)
            }
        }
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        match self {
            Self::EfficientNet(m) => m.embedding_dim(),
            Self::Clip(m) => m.dim(),
        }
    }

    /// Embeds `(N, 3, S, S)` preprocessed pixels.
    pub fn forward(&self, pixels: &Tensor) -> Result<ImageBatchOutput> {
        Ok(match self {
            Self::EfficientNet(m) => {
                let out = m.forward(pixels)?;
                ImageBatchOutput {
                    embedding: out.embedding,
                    logits: Some(out.logits),
                }
            }
            Self::Clip(m) => ImageBatchOutput {
                embedding: m.embed_images(pixels)?,
                logits: None,
            },
        })
    }
}

/// Loads an image encoder by name.
pub fn load_image_model(name: &str, device: &Device) -> Result<ImageModel> {
    if let Some(path) = name.strip_prefix("clip:") {
        return Ok(ImageModel::Clip(Box::new(ClipModel::load(
            Path::new(path),
            device,
        )?)));
    }
    let Some(variant) = LiteVariant::from_name(name) else {
        bail!("unknown image model {name:?}; known: {IMAGE_MODELS}");
    };
    let weights = efficientnet_weights(variant)?;
    Ok(ImageModel::EfficientNet(Box::new(EfficientNetLite::load(
        &weights, variant, device,
    )?)))
}

/// The safetensors weights of an EfficientNet-Lite, converting the installed
/// PyTorch checkpoint on first use.
pub fn efficientnet_weights(variant: LiteVariant) -> Result<PathBuf> {
    let cache = Cache::from_env()?;
    let converted = cache
        .models_dir()
        .join(format!("{}.safetensors", variant.name()));
    if converted.is_file() {
        return Ok(converted);
    }
    let pth = cache.efficientnet_lite_pth(variant.index())?;
    tracing::info!("converting {} to {}", pth.display(), converted.display());
    crate::weights::convert_legacy_to_safetensors(&pth, &converted)
        .with_context(|| format!("converting {}", pth.display()))?;
    Ok(converted)
}

/// A frozen text encoder.
pub enum TextModel {
    Sentence(Box<SentenceEncoder>),
    Clip(Box<ClipModel>),
}

impl TextModel {
    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        match self {
            Self::Sentence(m) => m.dim(),
            Self::Clip(m) => m.dim(),
        }
    }

    /// L2-normalised `(N, dim)` embeddings.
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor> {
        match self {
            Self::Sentence(m) => m.embed(texts),
            Self::Clip(m) => m.embed_texts(texts),
        }
    }
}

/// Loads a text encoder by name.
pub fn load_text_model(name: &str, device: &Device) -> Result<TextModel> {
    if let Some(path) = name.strip_prefix("clip:") {
        return Ok(TextModel::Clip(Box::new(ClipModel::load(
            Path::new(path),
            device,
        )?)));
    }
    if let Some(path) = name.strip_prefix("sbert:") {
        return Ok(TextModel::Sentence(Box::new(SentenceEncoder::load(
            Path::new(path),
            device,
        )?)));
    }
    match name {
        "minilm-l6" | "all-minilm-l6-v2" => {
            let dir = Cache::from_env()?.minilm_dir()?;
            Ok(TextModel::Sentence(Box::new(SentenceEncoder::load(
                &dir, device,
            )?)))
        }
        _ => bail!("unknown text model {name:?}; known: {TEXT_MODELS}"),
    }
}
