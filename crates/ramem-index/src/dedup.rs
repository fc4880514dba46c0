//! Removing memory entries that nearly duplicate a test set.
//!
//! Evaluating a retrieval-augmented model on a test set whose images (or
//! near copies of them) sit in the memory measures recall of the memory, not
//! recognition. [`find_near_duplicates`] finds every memory row whose key
//! has cosine similarity at or above a threshold with any test embedding;
//! [`copy_memory_without`] writes a new memory holding every other row.
//!
//! The search runs in the direction where `k` is known: the test set is the
//! key matrix and each block of a memory shard's keys is a batch of queries
//! with `k = 1`, so each memory row gets its single best match among the
//! test rows and is a duplicate when that score reaches the threshold. The
//! scores come from [`search_exact`] (a blocked matrix product for large
//! blocks), so every pair is scored exactly once.

use std::path::{Path, PathBuf};

use ramem_store::memory::{
    KeysData, Memory, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch, ValueKind,
};
use ramem_store::StoreError;

use crate::{search_exact, Keys, SearchError, SearchParams};

/// Memory rows scored per call of [`search_exact`]: bounds the widened f32
/// copy of a shard block (4096 x 1280 x 4 bytes = 20 MiB at most).
const MEMORY_BLOCK_ROWS: usize = 4096;

/// Why deduplication failed.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    /// The threshold is not a cosine similarity that can select anything
    /// sensible: it must lie in (-1, 1].
    #[error("threshold {0} is outside (-1, 1]")]
    Threshold(f32),
    /// The test embeddings' width differs from the memory's key dimension.
    #[error(
        "dimension mismatch: the memory's keys have dimension {memory}, the test embeddings {test}"
    )]
    DimMismatch { memory: usize, test: usize },
    /// The test data is not a whole number of rows.
    #[error("test data has {len} values, not a multiple of the dimension {dim}")]
    RaggedTest { len: usize, dim: usize },
    /// A test row holds NaN or infinity.
    #[error("test row {row} holds a non-finite value (NaN or infinity)")]
    NonFiniteTest { row: usize },
    /// A test row is all zeros, so it has no direction to compare with.
    #[error("test row {row} is all zeros (cosine similarity is undefined)")]
    ZeroTest { row: usize },
    /// A row id given to [`copy_memory_without`] is not in the memory.
    #[error("row id {id} is not in the memory (it holds {count} rows)")]
    UnknownRow { id: i64, count: u64 },
    /// Every row would be dropped; a memory cannot be empty of shards and
    /// still be useful, so nothing is written.
    #[error("every one of the memory's {0} rows would be dropped; nothing to write")]
    NothingKept(u64),
    /// The output directory cannot receive the copy.
    #[error("--out {}: {problem}", path.display())]
    BadOutput { path: PathBuf, problem: String },
    /// The test embeddings' width differs from the memory's key dimension.
    #[error("{}: test embeddings have {found} dimensions but the memory's keys have {want} ({encoder}, at {})", test.display(), memory.display())]
    TestDimension {
        test: PathBuf,
        found: usize,
        want: usize,
        encoder: String,
        memory: PathBuf,
    },
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Memory row ids (ascending) whose key has cosine similarity `>= threshold`
/// with at least one row of `test` (row-major, `dim` wide).
///
/// Test rows are L2-normalised first; memory keys are normalised as they are
/// scored (a no-op up to rounding for memories with unit-norm keys), so the
/// result is a cosine similarity whatever the memory's `key.normalized`.
/// A memory key that is all zeros has no direction and is never a
/// duplicate. An empty test set or memory gives no ids.
///
/// Keys stored as f16 are compared after widening: an exact copy of a test
/// row scores 1 up to f16 rounding (about 1e-3), so a threshold of exactly
/// 1 may miss it; use e.g. 0.999 for "identical".
pub fn find_near_duplicates(
    memory: &Memory,
    test: &[f32],
    dim: usize,
    threshold: f32,
) -> Result<Vec<i64>, DedupError> {
    if !(threshold > -1.0 && threshold <= 1.0) {
        return Err(DedupError::Threshold(threshold));
    }
    if dim == 0 || dim != memory.key_dim() {
        return Err(DedupError::DimMismatch {
            memory: memory.key_dim(),
            test: dim,
        });
    }
    if !test.len().is_multiple_of(dim) {
        return Err(DedupError::RaggedTest {
            len: test.len(),
            dim,
        });
    }
    let test = normalized_rows(test, dim)?;
    let mut found = Vec::new();
    if test.is_empty() || memory.count() == 0 {
        return Ok(found);
    }
    let keys = Keys::f32(&test, dim)?;
    let params = SearchParams::new(1);
    let mut block = Vec::with_capacity(MEMORY_BLOCK_ROWS * dim);
    let mut live = Vec::with_capacity(MEMORY_BLOCK_ROWS);
    for shard in 0..memory.shard_count() {
        let view = memory.shard_keys(shard);
        for start in (0..view.rows).step_by(MEMORY_BLOCK_ROWS) {
            let end = (start + MEMORY_BLOCK_ROWS).min(view.rows);
            let range = start * dim..end * dim;
            block.clear();
            match view.data {
                KeysData::F16(d) => block.extend(d[range].iter().map(|v| v.to_f32())),
                KeysData::F32(d) => block.extend_from_slice(&d[range]),
            }
            live.clear();
            for row in block.chunks_exact_mut(dim) {
                let norm = row
                    .iter()
                    .map(|&v| f64::from(v) * f64::from(v))
                    .sum::<f64>()
                    .sqrt();
                let ok = norm > 0.0 && norm.is_finite();
                if ok {
                    row.iter_mut()
                        .for_each(|v| *v = (f64::from(*v) / norm) as f32);
                } else {
                    // Scored as zeros (finite), then ignored below.
                    row.fill(0.0);
                }
                live.push(ok);
            }
            let best = search_exact(&keys, &block, dim, &params)?;
            for (r, (&score, &ok)) in best.scores.iter().zip(&live).enumerate() {
                if ok && score >= threshold {
                    found.push(view.first_id + (start + r) as i64);
                }
            }
        }
    }
    Ok(found)
}

/// L2-normalises each row (in f64), refusing non-finite and zero rows.
fn normalized_rows(test: &[f32], dim: usize) -> Result<Vec<f32>, DedupError> {
    let mut out = Vec::with_capacity(test.len());
    for (row, values) in test.chunks_exact(dim).enumerate() {
        if values.iter().any(|v| !v.is_finite()) {
            return Err(DedupError::NonFiniteTest { row });
        }
        let norm = values
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 {
            return Err(DedupError::ZeroTest { row });
        }
        out.extend(values.iter().map(|&v| (f64::from(v) / norm) as f32));
    }
    Ok(out)
}

/// What [`copy_memory_without`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Rows in the source memory.
    pub source_rows: u64,
    /// Rows written to the new memory.
    pub kept: u64,
    /// Rows left out.
    pub dropped: u64,
    /// Shards written (one per source shard that kept at least one row).
    pub shards: usize,
}

/// Writes a new memory at `out` holding every row of `memory` except the
/// ids in `drop` (any order, duplicates allowed), in the original order.
///
/// The new memory has the same spec (key encoder, dimension, dtype and
/// normalisation; value encoders, dimensions and dtypes). Rows get new,
/// contiguous ids; metadata keeps each row's `source` and `caption`. The
/// copy streams one source shard at a time and writes one shard per source
/// shard that keeps a row, so memory use is bounded by a shard. Labels
/// (relabels applied) are copied; deleted entries are left out like the
/// dropped ones. `out` must
/// be missing or an empty directory (see [`MemoryWriter::create`]).
///
/// Keys are re-normalised by the writer when the spec says so; for f16 keys
/// that may move a value by one unit in the last place.
pub fn copy_memory_without(
    memory: &Memory,
    drop: &[i64],
    out: &Path,
) -> Result<CopyReport, DedupError> {
    let count = memory.count();
    let mut dropped = vec![false; count as usize];
    for &id in drop {
        if id < 0 || id as u64 >= count {
            return Err(DedupError::UnknownRow { id, count });
        }
        dropped[id as usize] = true;
    }
    // Deleted entries are not copied either.
    for &id in &memory.edits().deleted {
        dropped[id as usize] = true;
    }
    let n_dropped = dropped.iter().filter(|&&d| d).count() as u64;
    if n_dropped == count {
        return Err(DedupError::NothingKept(count));
    }
    let m = memory.manifest();
    let spec = MemorySpec {
        key_encoder: m.key.encoder.clone(),
        key_dim: m.key.dim,
        key_dtype: m.key.dtype,
        normalize_keys: m.key.normalized,
        image: m.values.image.clone(),
        text: m.values.text.clone(),
    };
    let dim = m.key.dim;
    let mut writer = MemoryWriter::create(out, spec)?;
    // The same class indices as the source.
    writer.declare_classes(memory.label_names())?;
    let mut shards = 0;
    let (mut keys, mut meta) = (Vec::new(), Vec::new());
    for s in 0..memory.shard_count() {
        let view = memory.shard_keys(s);
        let kept: Vec<i64> = (0..view.rows as i64)
            .map(|r| view.first_id + r)
            .filter(|&id| !dropped[id as usize])
            .collect();
        if kept.is_empty() {
            continue;
        }
        keys.clear();
        for &id in &kept {
            let r = (id - view.first_id) as usize;
            match view.data {
                KeysData::F16(d) => {
                    keys.extend(d[r * dim..(r + 1) * dim].iter().map(|v| v.to_f32()))
                }
                KeysData::F32(d) => keys.extend_from_slice(&d[r * dim..(r + 1) * dim]),
            }
        }
        let image = match m.values.image {
            Some(_) => Some(memory.gather_values(ValueKind::Image, &kept)?),
            None => None,
        };
        let text = match m.values.text {
            Some(_) => Some(memory.gather_values(ValueKind::Text, &kept)?),
            None => None,
        };
        meta.clear();
        for &id in &kept {
            let row = memory.metadata(id)?;
            meta.push(MetadataEntry {
                source: row.source,
                caption: row.caption,
                label: memory.label_name(id)?.map(str::to_string),
            });
        }
        writer.append_shard(ShardBatch {
            keys: &keys,
            image_values: image.as_deref(),
            text_values: text.as_deref(),
            metadata: &meta,
        })?;
        shards += 1;
    }
    Ok(CopyReport {
        source_rows: count,
        kept: count - n_dropped,
        dropped: n_dropped,
        shards,
    })
}

/// The record of a deduplication, written inside the new memory: the
/// source memory, the test file, the threshold and the dropped ids.
pub const DEDUP_RECORD: &str = "dedup.json";

/// What [`dedup_memory`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupReport {
    pub copy: CopyReport,
    /// Rows of the test file.
    pub test_rows: usize,
}

/// `ramem memory dedup` as one call: copies the memory at `memory_dir` to
/// `out` (a missing or empty directory, not the memory itself) without the
/// entries whose key has cosine similarity `>= threshold` with a row of the
/// test embeddings in `test_file` (a T x D `.npy`), and records what was
/// dropped in `OUT/dedup.json`.
pub fn dedup_memory(
    memory_dir: &Path,
    test_file: &Path,
    threshold: f64,
    out: &Path,
) -> Result<DedupReport, DedupError> {
    if !(threshold > -1.0 && threshold <= 1.0) {
        return Err(DedupError::Threshold(threshold as f32));
    }
    check_output(memory_dir, out)?;
    let memory = Memory::open(memory_dir)?;
    let test = ramem_store::npy::read_f32_matrix(test_file)?;
    let dim = memory.key_dim();
    if test.cols != dim {
        return Err(DedupError::TestDimension {
            test: test_file.to_path_buf(),
            found: test.cols,
            want: dim,
            encoder: memory.manifest().key.encoder.clone(),
            memory: memory_dir.to_path_buf(),
        });
    }
    let dropped = find_near_duplicates(&memory, &test.data, dim, threshold as f32)?;
    let copy = copy_memory_without(&memory, &dropped, out)?;
    let record = serde_json::json!({
        "source": memory_dir.to_string_lossy(),
        "test": test_file.to_string_lossy(),
        "threshold": threshold,
        "dropped": dropped,
    });
    let mut text = serde_json::to_vec_pretty(&record).expect("the record serialises");
    text.push(b'\n');
    ramem_store::write_atomic(out.join(DEDUP_RECORD), &text)?;
    Ok(DedupReport {
        copy,
        test_rows: test.rows,
    })
}

/// Refuses an output that is the input memory or an existing non-empty
/// directory (or a file).
fn check_output(memory: &Path, out: &Path) -> Result<(), DedupError> {
    if !out.exists() {
        return Ok(());
    }
    let bad = |problem: &str| DedupError::BadOutput {
        path: out.to_path_buf(),
        problem: problem.to_string(),
    };
    let same = match (memory.canonicalize(), out.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => memory == out,
    };
    if same {
        return Err(bad(
            "is the memory being deduplicated; give a new directory",
        ));
    }
    if !out.is_dir() {
        return Err(bad("exists and is not a directory"));
    }
    let mut entries = std::fs::read_dir(out).map_err(|error| ramem_store::StoreError::Io {
        path: out.to_path_buf(),
        action: "list the output directory",
        error,
    })?;
    if entries.next().is_some() {
        return Err(bad(
            "exists and is not empty; give a new or empty directory",
        ));
    }
    Ok(())
}
