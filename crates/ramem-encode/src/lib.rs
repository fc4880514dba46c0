//! Frozen encoders for ramem.
//!
//! Everything ramem learns sits on top of embeddings from pretrained, frozen
//! networks. This crate loads those networks from local files and runs them:
//! - [`efficientnet`]: EfficientNet-Lite0/1/2 image encoder (1280-d pooled
//!   embedding and the 1000-class ImageNet head),
//! - [`text`]: sentence encoders (all-MiniLM-L6-v2, BERT with mean pooling),
//! - [`clip`]: CLIP image and text towers from the Hugging Face layout,
//! - [`preprocess`]: decoding and resizing images exactly as each model expects,
//! - [`weights`]: reading PyTorch's legacy checkpoints and writing safetensors,
//! - [`registry`]: every encoder by name (`efficientnet-lite0`, `clip:PATH`,
//!   `minilm-l6`...), loaded from the asset cache or a directory,
//! - [`embed`]: the one batch embedder every command and the study use.
//!
//! No Python runs here: weights are read from safetensors (converted once from
//! PyTorch checkpoints by [`weights::convert_legacy_to_safetensors`]).

pub mod clip;
mod cpu_convnet;
mod cpu_kernels;
pub mod efficientnet;
pub mod embed;
mod model_files;
pub mod preprocess;
pub mod registry;
pub mod text;
pub mod weights;

pub use embed::{EmbedOptions, EmbeddedImages, ForwardTiming};
pub use registry::{
    load_image_model, load_text_model, ImageModel, TextModel, IMAGE_MODELS, TEXT_MODELS,
};
pub use text::l2_normalize;
