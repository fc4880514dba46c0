//! ramem's ingest pipeline: images and captions in, embeddings out, every
//! long run resumable.
//!
//! - [`embed`]: `ramem embed` (images to an N x D `.npy` plus its row
//!   names) and `ramem embed-text` (captions to an N x D `.npy`).
//! - [`build`]: `ramem memory build` (an image directory, webdataset shards,
//!   a parquet table of paths and captions, or a labelled data set spec,
//!   straight into a memory) and `ramem memory add` (more entries for one,
//!   its HNSW index brought up to date).
//! - [`cache`]: the study's embedding cache, named by content so that every
//!   study over the same images shares one encoding pass.
//!
//! Inputs come through the `ramem-data` readers ([`ramem_data::list_images`],
//! [`ramem_data::read_webdataset_items`], the labelled data sets), images
//! are embedded by the one batch embedder
//! ([`ramem_encode::ImageModel::embed_images`]), and runs that write files
//! commit their work in chunks through one resumable writer
//! ([`chunks::ChunkDir`]; the memory build commits shards of the memory
//! itself). Unreadable images are skipped with a reason (or stop the run
//! when strict), and progress shows through `ramem-progress`.

pub mod build;
pub mod cache;
pub mod chunks;
pub mod embed;

pub use build::{
    add_to_memory, build_memory, collect_inputs, merge_shards, AddOptions, AddReport, BuildOptions,
    BuildReport, Inputs, MergeShardsReport, ShardOf, StoredValues,
};
pub use cache::{drop_missing, EmbeddingCache};
pub use embed::{embed_captions, embed_images, ids_path, EmbedJob, EmbedReport};

/// How many skipped inputs are named one by one in the log.
const SKIPS_NAMED: usize = 20;

/// Logs `count` skipped inputs of `total` (id, reason), the first
/// [`SKIPS_NAMED`] by name.
pub fn log_skipped<'a>(
    skipped: impl Iterator<Item = (&'a str, &'a str)>,
    count: usize,
    total: usize,
) {
    if count == 0 {
        return;
    }
    tracing::warn!("skipped {count} of {total} images:");
    for (id, reason) in skipped.take(SKIPS_NAMED) {
        tracing::warn!("  {id}: {reason}");
    }
    if count > SKIPS_NAMED {
        tracing::warn!("  ... and {} more", count - SKIPS_NAMED);
    }
}
