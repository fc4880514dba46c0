//! Compaction: a memory rewritten without its deleted entries, with its
//! relabels folded into the labels.
//!
//! The compacted memory is a new directory (the source is only read, so a
//! crash never harms it). Entries keep their order; their ids close up over
//! the deleted ones, and `compacted-from.npy` in the new memory gives, per
//! new id, the id it had in the source. Each source shard becomes at most
//! one shard; an interrupted compaction resumes: the entries already
//! committed say which source shards are done, and `compaction.json`
//! records which source (and which version of it) was being compacted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::writer::{MemorySpec, MemoryWriter, ShardBatch};
use super::{Memory, MetadataEntry, ValueKind, MANIFEST_FILE};
use crate::error::{IoContext, Result, StoreError};
use crate::fingerprint::Fnv1a;

/// Per new entry, its id in the compacted source (`<i8`, one per entry).
pub const COMPACTION_MAP_FILE: &str = "compacted-from.npy";
/// What a compaction in progress compacts.
const COMPACTION_STATE_FILE: &str = "compaction.json";

/// What [`compact`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactReport {
    /// Entries in the compacted memory.
    pub rows: u64,
    /// Deleted entries left out.
    pub dropped: u64,
    /// Source shards done by an earlier, interrupted run.
    pub resumed_shards: usize,
    /// The id map (`OUT/compacted-from.npy`).
    pub map: PathBuf,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct CompactionState {
    source: PathBuf,
    /// FNV-1a 64 of the source's `manifest.json`: its edits generation included.
    source_manifest: String,
}

/// Writes `source` without its deleted entries into the new memory `out`;
/// `progress(done, total)` is called after each source shard.
pub fn compact(
    source: &Path,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CompactReport> {
    let memory = Memory::open(source)?;
    let manifest_path = source.join(MANIFEST_FILE);
    let manifest_bytes = std::fs::read(&manifest_path).at(&manifest_path, "read")?;
    let state = CompactionState {
        source: source.to_path_buf(),
        source_manifest: Fnv1a::new().write(&manifest_bytes).hex(),
    };
    let state_path = out.join(COMPACTION_STATE_FILE);
    let mut writer = if out.join(MANIFEST_FILE).exists() {
        let found: Option<CompactionState> = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if found.as_ref() != Some(&state) {
            return Err(StoreError::Invalid {
                path: out.to_path_buf(),
                reason: format!(
                    "a memory already exists here that is not an interrupted compaction of {} \
                     as it is now; compact into a new directory",
                    source.display()
                ),
            });
        }
        MemoryWriter::open_append(out)?
    } else {
        let spec = MemorySpec::from_manifest(memory.manifest());
        let mut writer = MemoryWriter::create(out, spec)?;
        // The same class indices as the source.
        writer.declare_classes(memory.label_names())?;
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::Invalid {
            path: state_path.clone(),
            reason: format!("cannot encode: {e}"),
        })?;
        crate::atomic::write_atomic(&state_path, &bytes)?;
        writer
    };

    let shards = &memory.manifest().shards;
    let live_ids = |first: u64, count: u64| -> Vec<i64> {
        (first as i64..(first + count) as i64)
            .filter(|&id| !memory.is_deleted(id))
            .collect()
    };
    // The source shards already done: their live entries are what is committed.
    let committed = writer.count();
    let (mut start, mut done_rows) = (0usize, 0u64);
    while start < shards.len() && done_rows < committed {
        done_rows += live_ids(shards[start].first_id, shards[start].count).len() as u64;
        start += 1;
    }
    if done_rows != committed {
        return Err(StoreError::Invalid {
            path: out.to_path_buf(),
            reason: format!(
                "holds {committed} entries, which is no whole number of {}'s shards",
                source.display()
            ),
        });
    }
    let resumed_shards = start;
    let total = shards.len() as u64;
    progress(start as u64, total);
    for (i, shard) in shards.iter().enumerate().skip(start) {
        let ids = live_ids(shard.first_id, shard.count);
        if !ids.is_empty() {
            let keys = memory.gather_keys(&ids)?;
            let image = gather(&memory, ValueKind::Image, &ids)?;
            let text = gather(&memory, ValueKind::Text, &ids)?;
            let mut metadata = Vec::with_capacity(ids.len());
            for &id in &ids {
                let row = memory.metadata(id)?;
                metadata.push(MetadataEntry {
                    source: row.source,
                    caption: row.caption,
                    label: memory.label_name(id)?.map(str::to_string),
                });
            }
            writer.append_shard(ShardBatch {
                keys: &keys,
                image_values: image.as_deref(),
                text_values: text.as_deref(),
                metadata: &metadata,
            })?;
        }
        progress(i as u64 + 1, total);
    }
    let map: Vec<i64> = shards
        .iter()
        .flat_map(|s| live_ids(s.first_id, s.count))
        .collect();
    let map_path = out.join(COMPACTION_MAP_FILE);
    crate::npy::write_i64_matrix(&map_path, map.len(), 1, &map)?;
    let rows = writer.count();
    drop(writer);
    std::fs::remove_file(&state_path).at(&state_path, "remove")?;
    Ok(CompactReport {
        rows,
        dropped: memory.count() - rows,
        resumed_shards,
        map: map_path,
    })
}

fn gather(memory: &Memory, kind: ValueKind, ids: &[i64]) -> Result<Option<Vec<f32>>> {
    match memory.value_dim(kind) {
        Some(_) => memory.gather_values(kind, ids).map(Some),
        None => Ok(None),
    }
}
