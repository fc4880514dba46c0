//! A trained recognizer kept and used.
//!
//! - [`bundle`]: the model bundle, a directory with the weights, a
//!   `model.json` describing everything needed to use them (method and
//!   options, classes, encoders, value kinds, k, the memory, the post-hoc
//!   tau, validation scores) and the training log; [`save_bundle`] writes
//!   one (the study's training code does), [`ModelBundle::open`] reads one.
//! - [`Recognizer`]: a bundle over a memory, predicting classes for query
//!   embeddings with the evidence behind each decision (the retrieved
//!   entries and the attention they got).
//! - [`evaluate()`]: a bundle's metrics on a data set's test split, as a
//!   report (`report.json`, `.md`, `.png`) like a study's.
//!
//! The memory a bundle retrieves from is searched through `ramem-index`'s
//! retrieval interface; a memory with another key encoder, dimension or
//! value kinds than the model's is refused, and one that changed since
//! training is used as it is now, with a warning.

pub mod bundle;
pub mod evaluate;
mod open;
mod recognizer;

pub use bundle::{
    save_bundle, BundleMeta, MemoryRecord, ModelBundle, TrainingRecord, ValueEncoders,
    WeightsRecord,
};
pub use evaluate::{evaluate, Evaluation};
pub use open::{exact_by_default, is_collection, open_memory, MILVUS_SCHEME};
pub use recognizer::{
    class_counts_over, ClassScore, ClassifyOptions, DecisionSink, Decisions, Evidence,
    ImageDecision, ImageRecognizer, ImageResult, Recognizer,
};
