//! Errors of the model crate.

use std::path::PathBuf;

/// Why building, training or loading a model failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{what}: label {label} is out of range for {classes} classes (sample {index})")]
    LabelOutOfRange {
        what: String,
        label: usize,
        classes: usize,
        index: usize,
    },
    #[error("{what}: class {class} has no training samples")]
    EmptyClass { what: String, class: usize },
    #[error("{what}: {problem}")]
    Shape { what: String, problem: String },
    #[error("{}: {problem}", path.display())]
    Checkpoint { path: PathBuf, problem: String },
    #[error("training stopped at step {step} (epoch {epoch}) on request")]
    Interrupted { epoch: usize, step: usize },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Search(#[from] ramem_index::SearchError),
    #[error(transparent)]
    Store(#[from] ramem_store::StoreError),
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, ModelError>;
