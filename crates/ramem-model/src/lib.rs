//! The learning half of ramem: the Memory Attention Module (MAM) that decides
//! which retrieved memory entries to trust, the baselines it is measured
//! against, and the training loop they share.
//!
//! Everything here works on cached embeddings: a [`SampleSet`] holds the
//! (L2-normalised) query embeddings of a split, their labels, and for each
//! query the rows of a [`NeighbourBank`] it retrieved from the memory. The
//! bank is a compact copy of just the memory rows some query retrieved (keys
//! and values), so a study over a memory of millions trains from a few
//! hundred megabytes.
//!
//! Methods:
//! - [`mam::MemoryAttention`]: the query attends over its k neighbours (and
//!   optionally itself); attention-weighted values form a refined embedding,
//!   combined with the query and classified. Attention weights come back
//!   with every prediction.
//! - [`heads::LinearProbe`] (no retrieval) and [`heads::UniformMean`] (RAC-like
//!   mean of the neighbour values), trained by the same loop.
//!   With a vote fusion ([`vote`]) its distribution is mixed with a
//!   similarity-weighted vote of the neighbours' labels, the weight chosen
//!   on validation.
//! - [`knn::KnnVote`] and [`tip_adapter`] (training-free cache and its
//!   fine-tuned variant), with hyper-parameters chosen on a validation split.
//!
//! Training ([`train`]): AdamW, linear warmup then cosine decay, optional
//! logit adjustment for long-tailed data, best-validation model selection,
//! checkpoints as safetensors plus JSON, and resume. Programs that train
//! should install [`block_cache::BlockCache`] as their global allocator
//! (the `ramem` binary does): it keeps the per-step tensors of a training
//! loop from being mapped and unmapped every step.

pub mod bank;
pub mod block_cache;
pub mod checkpoint;
pub mod classifier;
pub mod error;
pub mod heads;
pub mod knn;
pub mod mam;
pub mod native;
mod ops;
pub mod optim;
pub mod posthoc;
pub mod predict;
pub mod rng;
pub mod samples;
pub mod spec;
pub mod tip_adapter;
pub mod train;
pub mod vars;
pub mod vote;

pub use bank::{build_bank, LabelSpace, MemoryLabels, NeighbourBank, RowMoments, ValueChoice};
pub use classifier::{Classifier, Output, PartRate, Prediction};
pub use error::ModelError;
pub use mam::{MamConfig, MemoryAttention};
pub use predict::predict;
pub use samples::{Batch, NeighbourUse, SampleSet};
pub use spec::{KnnVoteConfig, ModelSpec};
pub use train::{train, TrainConfig, TrainData, TrainReport};
pub use vars::new_vars;
pub use vote::{VoteFusion, VoteSetting};

/// The device models train and predict on: CUDA when built with the `cuda`
/// feature and a GPU opens, otherwise the CPU. One device for the whole
/// process: candle tells CUDA devices apart by the context each
/// `new_cuda` call opens, so a model and its batches must come from the
/// same call.
pub fn default_device() -> candle_core::Device {
    static DEVICE: std::sync::OnceLock<candle_core::Device> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            #[cfg(feature = "cuda")]
            match candle_core::Device::new_cuda(0) {
                Ok(device) => return device,
                Err(e) => tracing::info!("no CUDA device ({e}): models run on the CPU"),
            }
            candle_core::Device::Cpu
        })
        .clone()
}

/// Sets up the process's worker threads before any work: `threads` rayon
/// workers (default: one per core), and one worker for candle's
/// element-wise kernels unless `CANDLE_NUM_THREADS` says otherwise. Those
/// run on a pool of busy-waiting workers beside rayon's, and on a small
/// machine the two pools fight over the same cores (training measured 2.7x
/// slower); one element-wise worker leaves the cores to the matrix
/// products. Call it once, first (the command line, a Python session).
pub fn configure_threads(threads: Option<usize>) -> std::result::Result<(), String> {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let Some(threads) = threads else {
        return Ok(());
    };
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| format!("cannot start {threads} worker threads: {e}"))
}
