//! Merging: the rows of several memories with the same settings, one
//! memory after the other, in a new memory (the parts of a memory built in
//! shards by several processes or machines, say).
//!
//! The merged memory holds every input's rows in input order, bit for bit:
//! keys are copied as stored, not scaled again. Labels are matched by class
//! name (the merged vocabulary is the first input's names, then the others'
//! new ones, in order). Inputs must not hold edits (relabels, deletions):
//! compact them first. Each input shard becomes one shard; an interrupted
//! merge resumes: the rows already committed say which input shards are
//! done, and `merge.json` records which inputs (and which version of them)
//! are merged. It stays in the merged memory: a rerun over the same inputs
//! finds the merge done and changes nothing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::writer::{MemorySpec, MemoryWriter, ShardBatch};
use super::{Memory, MetadataEntry, ValueKind, MANIFEST_FILE};
use crate::error::{IoContext, Result, StoreError};
use crate::fingerprint::Fnv1a;

/// The inputs a merged memory was (or is being) merged from.
pub const MERGE_STATE_FILE: &str = "merge.json";

/// What [`merge`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    /// Entries in the merged memory.
    pub rows: u64,
    /// The id in the merged memory of each input's first entry.
    pub first_ids: Vec<u64>,
    /// Input shards done by an earlier, interrupted run.
    pub resumed_shards: usize,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct MergeInput {
    path: PathBuf,
    /// FNV-1a 64 of the input's `manifest.json`.
    manifest: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct MergeState {
    inputs: Vec<MergeInput>,
}

fn manifest_fingerprint(dir: &Path) -> Result<String> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).at(&path, "read")?;
    Ok(Fnv1a::new().write(&bytes).hex())
}

/// Writes the rows of `inputs`, in order, into the new memory `out`;
/// `progress(done, total)` is called after each input shard. Inputs with
/// other settings than the first (encoders, dimensions, value kinds, key
/// storage) are refused, naming both and what differs.
pub fn merge(
    inputs: &[PathBuf],
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MergeReport> {
    let bad = |path: &Path, reason: String| StoreError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let Some(first) = inputs.first() else {
        return Err(bad(out, "nothing to merge: no input memories".into()));
    };
    let memories = inputs
        .iter()
        .map(Memory::open)
        .collect::<Result<Vec<Memory>>>()?;
    let spec = MemorySpec::from_manifest(memories[0].manifest());
    let mut names: Vec<String> = Vec::new();
    for (path, memory) in inputs.iter().zip(&memories) {
        let differences = spec.differences(memory.manifest());
        if !differences.is_empty() {
            return Err(bad(
                path,
                format!(
                    "cannot be merged with {}: {}",
                    first.display(),
                    differences
                        .join("; ")
                        .replace("this would write", &format!("{} has", first.display()))
                ),
            ));
        }
        if memory.manifest().edits.is_some() {
            return Err(bad(
                path,
                "holds edits (relabels or deletions); compact it first (`ramem memory compact`)"
                    .into(),
            ));
        }
        for name in memory.label_names() {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    let state = MergeState {
        inputs: inputs
            .iter()
            .map(|path| {
                Ok(MergeInput {
                    path: path.clone(),
                    manifest: manifest_fingerprint(path)?,
                })
            })
            .collect::<Result<_>>()?,
    };
    let state_path = out.join(MERGE_STATE_FILE);
    let mut writer = if out.join(MANIFEST_FILE).exists() {
        let found: Option<MergeState> = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if found.as_ref() != Some(&state) {
            return Err(bad(
                out,
                "a memory already exists here that is not an interrupted merge of these inputs \
                 as they are now; merge into a new directory"
                    .into(),
            ));
        }
        MemoryWriter::open_append(out)?
    } else {
        let mut writer = MemoryWriter::create(out, spec)?;
        writer.declare_classes(&names)?;
        let bytes = serde_json::to_vec_pretty(&state)
            .map_err(|e| bad(&state_path, format!("cannot encode: {e}")))?;
        crate::atomic::write_atomic(&state_path, &bytes)?;
        writer
    };

    // Every input shard in order, with the merged id of its first row.
    let mut shards = Vec::new();
    let mut first_ids = Vec::with_capacity(memories.len());
    let mut next_id = 0u64;
    for (m, memory) in memories.iter().enumerate() {
        first_ids.push(next_id);
        for shard in &memory.manifest().shards {
            shards.push((m, shard.first_id, shard.count));
            next_id += shard.count;
        }
    }
    // The input shards already done: what is committed.
    let committed = writer.count();
    let (mut start, mut done_rows) = (0usize, 0u64);
    while start < shards.len() && done_rows < committed {
        done_rows += shards[start].2;
        start += 1;
    }
    if done_rows != committed {
        return Err(bad(
            out,
            format!("holds {committed} entries, which is no whole number of the inputs' shards"),
        ));
    }
    let total = shards.len() as u64;
    progress(start as u64, total);
    for (i, &(m, first, count)) in shards.iter().enumerate().skip(start) {
        let memory = &memories[m];
        let ids: Vec<i64> = (first as i64..(first + count) as i64).collect();
        let keys = memory.gather_keys(&ids)?;
        let values = |kind| match memory.value_dim(kind) {
            Some(_) => memory.gather_values(kind, &ids).map(Some),
            None => Ok(None),
        };
        let image = values(ValueKind::Image)?;
        let text = values(ValueKind::Text)?;
        let metadata = ids
            .iter()
            .map(|&id| {
                let row = memory.metadata(id)?;
                Ok(MetadataEntry {
                    source: row.source,
                    caption: row.caption,
                    label: memory.label_name(id)?.map(str::to_string),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        writer.append_stored_shard(ShardBatch {
            keys: &keys,
            image_values: image.as_deref(),
            text_values: text.as_deref(),
            metadata: &metadata,
        })?;
        progress(i as u64 + 1, total);
    }
    let rows = writer.count();
    Ok(MergeReport {
        rows,
        first_ids,
        resumed_shards: start,
    })
}
