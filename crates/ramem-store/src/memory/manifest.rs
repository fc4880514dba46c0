//! The manifest: what a memory holds, and which shards are committed.
//!
//! Reading is two-step so that a manifest from a newer ramem gets a clear
//! "newer version" error rather than a confusing parse error: `format` and
//! `version` are read first from the raw JSON, and only a version this code
//! understands is parsed into [`Manifest`]. Unknown extra fields are ignored
//! (additive changes do not bump the version; see `docs/FORMAT.md`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{shard_name, FloatDtype, MANIFEST_FILE};
use crate::atomic::write_atomic;
use crate::error::{IoContext, Result, StoreError};

/// The value of the manifest's `format` field.
pub const FORMAT_NAME: &str = "ramem-memory";
/// The newest format version this code reads. A memory is written as
/// version 1 until it has edits (relabelled or deleted entries), then as
/// version 2: a reader that does not know edits would otherwise return
/// deleted entries.
pub const VERSION: u32 = 2;

/// The version of a memory without edits.
const VERSION_WITHOUT_EDITS: u32 = 1;

/// The parsed `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Format version; readers refuse versions above [`VERSION`].
    pub version: u32,
    /// Committed rows, the sum of the shards' counts.
    pub count: u64,
    /// What the keys are.
    pub key: KeySpec,
    /// Which values each row carries.
    pub values: ValuesSpec,
    /// Committed shards in id order.
    pub shards: Vec<ShardEntry>,
    /// The software that created the memory (`"ramem-store <version>"`).
    pub created_by: String,
    /// The class names its entries' labels index, where any entry has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<LabelSpec>,
    /// The relabelled and deleted entries since the last compaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edits: Option<EditsEntry>,
}

/// The label vocabulary: a label is an index into `names`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LabelSpec {
    /// Class names, in the order labels were first written.
    pub names: Vec<String>,
}

/// Where the memory's edits are: a file in the memory directory holding
/// every relabel and deletion since the memory was written or compacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditsEntry {
    /// `edits-NNNNNN.json`, NNNNNN the generation.
    pub file: String,
    /// Bumped by every edit: the manifest, and so its fingerprint, changes with it.
    pub generation: u64,
    /// Entries whose label was changed.
    pub relabeled: u64,
    /// Entries deleted (tombstoned: searches skip them; compaction drops them).
    pub deleted: u64,
}

/// Description of the key matrices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpec {
    /// Name of the encoder that produced the keys (free text, compared on append).
    pub encoder: String,
    /// Values per key.
    pub dim: usize,
    /// Stored element type.
    pub dtype: FloatDtype,
    /// True when every key has unit L2 norm (the writer normalised it).
    pub normalized: bool,
}

/// Description of one kind of value matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueSpec {
    /// Name of the encoder that produced the values.
    pub encoder: String,
    /// Values per row.
    pub dim: usize,
    /// Stored element type.
    pub dtype: FloatDtype,
}

/// The value kinds a memory carries; `null` for an absent kind.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ValuesSpec {
    /// Image embeddings (`image_values.npy` in each shard), or `null`.
    pub image: Option<ValueSpec>,
    /// Text embeddings (`text_values.npy` in each shard), or `null`.
    pub text: Option<ValueSpec>,
}

/// One committed shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Directory name, `shard-NNNNNN` with NNNNNN its position in the list.
    pub name: String,
    /// Global id of its first row (the sum of the counts before it).
    pub first_id: u64,
    /// Rows in the shard (at least one).
    pub count: u64,
    /// Whether the shard has a `labels.npy` (a shard without one has no labelled entry).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub labels: bool,
}

impl Manifest {
    /// Reads and validates `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        if !path.exists() {
            let reason = if dir.is_dir() {
                format!("it has no {MANIFEST_FILE}")
            } else if dir.exists() {
                "it is not a directory".to_string()
            } else {
                "it does not exist".to_string()
            };
            return Err(StoreError::NotAMemory {
                path: dir.to_path_buf(),
                reason,
            });
        }
        let text = std::fs::read_to_string(&path).at(&path, "read")?;
        let invalid = |reason: String| StoreError::Invalid {
            path: path.clone(),
            reason,
        };
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let format = raw.get("format").and_then(|f| f.as_str());
        if format != Some(FORMAT_NAME) {
            return Err(StoreError::NotAMemory {
                path,
                reason: format!(
                    "its \"format\" field is {}, not \"{FORMAT_NAME}\"",
                    raw.get("format")
                        .map_or_else(|| "missing".to_string(), |f| f.to_string())
                ),
            });
        }
        let version = raw
            .get("version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| invalid("\"version\" is missing or not a positive integer".into()))?;
        if version > u64::from(VERSION) {
            return Err(StoreError::NewerVersion {
                path,
                found: version,
                supported: VERSION,
            });
        }
        if version == 0 {
            return Err(invalid(
                "\"version\" 0 does not exist (versions start at 1)".into(),
            ));
        }
        let manifest: Manifest =
            serde_json::from_value(raw).map_err(|e| invalid(format!("bad manifest: {e}")))?;
        manifest.validate().map_err(invalid)?;
        Ok(manifest)
    }

    /// Writes `dir/manifest.json` atomically (temporary file, sync, rename).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut manifest = self.clone();
        manifest.version = match manifest.edits {
            Some(_) => VERSION,
            None => VERSION_WITHOUT_EDITS,
        };
        let mut text =
            serde_json::to_string_pretty(&manifest).map_err(|e| StoreError::Invalid {
                path: dir.join(MANIFEST_FILE),
                reason: format!("cannot encode the manifest: {e}"),
            })?;
        text.push('\n');
        write_atomic(dir.join(MANIFEST_FILE), text.as_bytes())
    }

    /// Checks the internal consistency of the fields.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.key.dim == 0 {
            return Err("key.dim is 0".into());
        }
        for (kind, spec) in [("image", &self.values.image), ("text", &self.values.text)] {
            if spec.as_ref().is_some_and(|s| s.dim == 0) {
                return Err(format!("values.{kind}.dim is 0"));
            }
        }
        let mut next_id = 0u64;
        for (i, shard) in self.shards.iter().enumerate() {
            if shard.name != shard_name(i) {
                return Err(format!(
                    "shard {i} is named \"{}\", expected \"{}\"",
                    shard.name,
                    shard_name(i)
                ));
            }
            if shard.count == 0 {
                return Err(format!("shard {} has count 0", shard.name));
            }
            if shard.first_id != next_id {
                return Err(format!(
                    "shard {} starts at id {}, but the shards before it end at {next_id}",
                    shard.name, shard.first_id
                ));
            }
            next_id = next_id
                .checked_add(shard.count)
                .ok_or_else(|| "shard counts overflow".to_string())?;
        }
        if let Some(edits) = &self.edits {
            if edits.file != super::edits::edits_file_name(edits.generation) {
                return Err(format!(
                    "edits.file is \"{}\", expected \"{}\" for generation {}",
                    edits.file,
                    super::edits::edits_file_name(edits.generation),
                    edits.generation
                ));
            }
        }
        if self.shards.iter().any(|s| s.labels) && self.labels.is_none() {
            return Err("shards have labels but the manifest names no classes (\"labels\")".into());
        }
        if next_id != self.count {
            return Err(format!(
                "\"count\" is {}, but the shards hold {next_id} rows",
                self.count
            ));
        }
        Ok(())
    }
}
