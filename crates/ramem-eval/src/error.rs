use std::io;
use std::path::PathBuf;

use ramem_store::StoreError;

/// Everything that can go wrong while scoring predictions or writing and
/// reading reports.
///
/// Input errors say which row, class or label is at fault; file errors name
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("no test images: there is nothing to evaluate")]
    Empty,

    #[error("num_classes is 0: there must be at least one class")]
    NoClasses,

    #[error("{what} has {actual} values, expected {expected} ({detail})")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        actual: usize,
        detail: String,
    },

    #[error("label {label} of test image {row} is out of range: there are {num_classes} classes (0..{num_classes})")]
    LabelOutOfRange {
        row: usize,
        label: usize,
        num_classes: usize,
    },

    #[error("prediction {prediction} for test image {row} is out of range: there are {num_classes} classes (0..{num_classes})")]
    PredictionOutOfRange {
        row: usize,
        prediction: usize,
        num_classes: usize,
    },

    #[error("score of test image {row}, class {class} is NaN")]
    NanScore { row: usize, class: usize },

    /// An input error raised while evaluating one method's predictions.
    #[error("{method}: {error}")]
    Method {
        method: String,
        error: Box<EvalError>,
    },

    #[error("{}: cannot {action}: {error}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("{}: not a valid report: {error}", path.display())]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },

    #[error("{}: {reason}", path.display())]
    InvalidReport { path: PathBuf, reason: String },

    #[error("{}: cannot draw the plot: {reason}", path.display())]
    Plot { path: PathBuf, reason: String },
}

impl EvalError {
    /// Tags an input error with the method whose predictions caused it, so
    /// that a message in a long benchmark log says which method failed.
    pub fn for_method(self, method: &str) -> EvalError {
        EvalError::Method {
            method: method.to_string(),
            error: Box::new(self),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
