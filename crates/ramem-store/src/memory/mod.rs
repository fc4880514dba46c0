//! The on-disk memory: image-text embeddings, their values and metadata.
//!
//! A memory is a directory holding a `manifest.json` and one subdirectory per
//! shard (`shard-000000`, `shard-000001`, ...). Each shard holds the keys
//! (`keys.npy`, the embeddings searched by nearest neighbour), optionally the
//! image and text values returned for a neighbour (`image_values.npy`,
//! `text_values.npy`), and one JSON line of metadata per row
//! (`metadata.jsonl`). Rows have global ids `0..count`, numbered across
//! shards in manifest order. The exact layout, the manifest fields and the
//! write protocol are written down in `docs/FORMAT.md`.
//!
//! The memory grows only by whole shards. [`MemoryWriter::append_shard`]
//! writes a shard completely in a temporary directory, syncs it, renames it
//! into place, and only then rewrites the manifest (atomically). The manifest
//! is the commit point: a reader sees exactly the shards it lists, and a
//! writer killed at any moment loses at most the shard it was writing.
//!
//! [`Memory::open`] memory-maps every shard's matrices (f16 or f32) and
//! checks them against the manifest; [`import_npy`] builds or resumes a
//! memory from precomputed `.npy` embedding files.
//!
//! ```
//! use ramem_store::memory::{FloatDtype, Memory, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch};
//! # let tmp = tempfile::tempdir()?;
//! let dir = tmp.path().join("mem");
//! let spec = MemorySpec::new("efficientnet-lite0", 2, FloatDtype::F16, true);
//! let mut writer = MemoryWriter::create(&dir, spec)?;
//! writer.append_shard(ShardBatch {
//!     keys: &[3.0, 4.0, 0.0, 2.0],
//!     image_values: None,
//!     text_values: None,
//!     metadata: &[MetadataEntry::source("a.jpg"), MetadataEntry::source("b.jpg")],
//! })?;
//!
//! let memory = Memory::open(&dir)?;
//! assert_eq!(memory.count(), 2);
//! // Keys were L2-normalised, then stored as f16.
//! let key = memory.key(0)?;
//! assert!((key[0] - 0.6).abs() < 1e-3 && (key[1] - 0.8).abs() < 1e-3);
//! assert_eq!(memory.metadata(1)?.source.as_deref(), Some("b.jpg"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod clip_retrieval;
mod compact;
mod edits;
mod import;
mod ledger;
mod lock;
mod manifest;
mod merge;
mod parquet_metadata;
mod reader;
mod summary;
mod view;
mod writer;

pub use clip_retrieval::{
    clip_retrieval_sets, import_clip_retrieval, ClipRetrievalSet, CLIP_IMG_EMB_DIR,
    CLIP_METADATA_DIR, CLIP_TEXT_EMB_DIR,
};
pub use compact::{compact, CompactReport, COMPACTION_MAP_FILE};
pub use edits::{edits_file_name, read_id_list, read_label_list, Edits, RowSet, EDITS_FORMAT};
pub use import::{
    import_npy, import_npy_with_progress, ImportOptions, ImportProgress, ImportReport,
    ImportSources,
};
pub use ledger::{ImportPart, ImportRecord, IMPORT_STATE_FILE};
pub use lock::LOCK_FILE;
pub use manifest::{
    EditsEntry, KeySpec, LabelSpec, Manifest, ShardEntry, ValueSpec, ValuesSpec, FORMAT_NAME,
    VERSION,
};
pub use merge::{merge, MergeReport, MERGE_STATE_FILE};
pub use parquet_metadata::read_parquet_metadata;
pub use reader::{KeysData, KeysView, Memory};
pub use view::MemoryView;
pub use writer::{EditReport, MemorySpec, MemoryWriter, ShardBatch, ShardInfo};

use serde::{Deserialize, Serialize};

use crate::npy::Dtype;

/// File name of the manifest inside a memory directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of a shard's keys.
pub const KEYS_FILE: &str = "keys.npy";
/// File name of a shard's image values.
pub const IMAGE_VALUES_FILE: &str = "image_values.npy";
/// File name of a shard's text values.
pub const TEXT_VALUES_FILE: &str = "text_values.npy";
/// File name of a shard's metadata.
pub const METADATA_FILE: &str = "metadata.jsonl";
/// File name of a shard's labels (`<i8`, one per row, -1 for none), where
/// any of its entries has one.
pub const LABELS_FILE: &str = "labels.npy";
/// Prefix of a shard being written; never read, removed by the next writer.
pub const TEMP_SHARD_PREFIX: &str = ".tmp-shard-";

/// Element type of a stored matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatDtype {
    /// IEEE half precision (`<f2`), the default for keys: half the size.
    F16,
    /// IEEE single precision (`<f4`).
    F32,
}

impl FloatDtype {
    /// The `.npy` element type that stores it.
    pub fn npy(self) -> Dtype {
        match self {
            FloatDtype::F16 => Dtype::F16,
            FloatDtype::F32 => Dtype::F32,
        }
    }

    /// Bytes per element.
    pub fn item_size(self) -> usize {
        self.npy().item_size()
    }

    /// The name used in the manifest (`"f16"` or `"f32"`).
    pub fn name(self) -> &'static str {
        match self {
            FloatDtype::F16 => "f16",
            FloatDtype::F32 => "f32",
        }
    }
}

/// Which of a row's values to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// The image embedding (`image_values.npy`).
    Image,
    /// The text (caption) embedding (`text_values.npy`).
    Text,
}

impl ValueKind {
    /// File name of this kind's matrix inside a shard.
    pub fn file_name(self) -> &'static str {
        match self {
            ValueKind::Image => IMAGE_VALUES_FILE,
            ValueKind::Text => TEXT_VALUES_FILE,
        }
    }

    /// `"image"` or `"text"`, as in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            ValueKind::Image => "image",
            ValueKind::Text => "text",
        }
    }
}

/// Metadata given for a row when it is written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataEntry {
    /// Where the row came from (a path or URL), if known.
    pub source: Option<String>,
    /// The caption paired with the image, if any.
    pub caption: Option<String>,
    /// The entry's class name, if it has one (stored as an index into the
    /// manifest's `labels.names`, in the shard's `labels.npy`).
    pub label: Option<String>,
}

impl MetadataEntry {
    /// An entry with a source and no caption.
    pub fn source(source: impl Into<String>) -> Self {
        MetadataEntry {
            source: Some(source.into()),
            ..MetadataEntry::default()
        }
    }
}

/// One stored metadata line: a row's global id, source and caption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataRow {
    /// Global row id (`0..count`).
    pub id: i64,
    /// Where the row came from (a path or URL), or `null`.
    pub source: Option<String>,
    /// The caption, or `null`.
    pub caption: Option<String>,
}

/// The directory name of shard `index`.
pub fn shard_name(index: usize) -> String {
    format!("shard-{index:06}")
}
