//! `ramem memory push` and `ramem memory pull`: a memory directory copied
//! into a Milvus collection, and back.
//!
//! A push writes the memory's entries in batches of ids, in order. Before
//! each batch it reads the labels of those ids in the collection: rows
//! that are missing or carry another label are written with upsert (a row
//! with the same id is replaced, never doubled), the rest are skipped. So
//! a push that stopped (the server went away, the process was killed)
//! resumes when rerun, and a push of a memory that grew or was relabelled
//! writes what changed. Entries deleted from the memory are deleted from
//! the collection. The collection records the memory's settings and class
//! names (a memory with other settings is refused, naming both) and
//! whether the last push finished: readers refuse a collection mid-push.
//! A compacted memory has new ids: push it into a new collection.
//!
//! A pull writes the collection's rows, in id order, into a new memory
//! directory; ids without a row (entries deleted) are closed up, and
//! `pulled-from.npy` gives each new id the id it had. It resumes like a
//! build: `pull-state.json` records, before each shard commits, the ids it
//! covers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use milvus::v2::prelude::*;
use milvus::v2::request::dml::DeleteRequest;
use ramem_store::memory::{
    Memory, MemorySpec, MemoryView, MemoryWriter, MetadataEntry, ShardBatch, ValueKind,
    MANIFEST_FILE,
};
use ramem_store::{Fnv1a, StoreError};
use serde::{Deserialize, Serialize};
use std::result::Result;

use crate::client::{Milvus, MilvusError, MilvusUrl};
use crate::collection::{
    value_field, IndexKind, MemoryRecord, CAPTION, FORMAT, ID, KEY, LABEL, MAX_TEXT, SOURCE,
    VERSION,
};
use crate::memory::MilvusMemory;

/// How a memory is pushed.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// The index of a collection created by this push (FLAT where
    /// `None`). An existing collection keeps its own, and one with
    /// another index than a given one is refused.
    pub index: Option<IndexKind>,
    /// Entries per request.
    pub batch: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            index: None,
            batch: 1000,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, PartialEq)]
pub struct PushReport {
    /// Entries written by this run (missing, or relabelled since).
    pub written: u64,
    /// Entries found already there as they are (an earlier run's).
    pub already: u64,
    /// Entries deleted from the collection (deleted from the memory).
    pub deleted: u64,
    /// Rows in the collection afterwards.
    pub rows: u64,
    pub seconds: f64,
}

/// Everything that can stop a push or a pull.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Milvus(#[from] MilvusError),
    #[error("{cause}\nThe push to {url} stopped after {done} of {total} entries: run the same command again to resume.")]
    Interrupted {
        url: String,
        done: u64,
        total: u64,
        cause: MilvusError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The record of `memory` as a collection keeps it.
fn record_of(memory: &Memory) -> MemoryRecord {
    let m = memory.manifest();
    MemoryRecord {
        format: FORMAT.into(),
        version: VERSION,
        key: m.key.clone(),
        values: m.values.clone(),
        labels: memory.label_names().to_vec(),
        count: memory.count(),
        complete: false,
    }
}

/// `text` cut to what a VarChar field holds (at a character boundary).
fn fit(text: Option<String>) -> String {
    let mut text = text.unwrap_or_default();
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Copies the memory directory `dir` into the collection at `url`;
/// `progress(done, total)` counts entries.
pub fn push(
    dir: &Path,
    url: &str,
    options: &PushOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PushReport, TransferError> {
    let started = Instant::now();
    let memory = Memory::open(dir)?;
    let url = MilvusUrl::parse(url)?;
    let milvus = Milvus::connect(&url)?;
    let mut record = record_of(&memory);
    if milvus.exists()? {
        let there = milvus.record()?;
        let refuse = |what: &str, theirs: String, ours: String| -> Result<(), TransferError> {
            if theirs != ours {
                return Err(MilvusError::Refused {
                    url: url.to_string(),
                    reason: format!(
                        "it holds a memory with {what} {theirs}, and {} has {ours}; push into \
                         another collection",
                        dir.display()
                    ),
                }
                .into());
            }
            Ok(())
        };
        let key = |k: &ramem_store::memory::KeySpec| {
            format!("{:?} ({}-d, {})", k.encoder, k.dim, k.dtype.name())
        };
        refuse("keys", key(&there.key), key(&record.key))?;
        let values = |v: &ramem_store::memory::ValuesSpec| {
            [("image", &v.image), ("text", &v.text)]
                .iter()
                .map(|(kind, spec)| match spec {
                    Some(s) => format!("{kind} values {:?} ({}-d)", s.encoder, s.dim),
                    None => format!("no {kind} values"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        refuse("values", values(&there.values), values(&record.values))?;
        if !record.labels.starts_with(&there.labels) {
            refuse(
                "class names",
                format!("{:?}", there.labels),
                format!("{:?}", record.labels),
            )?;
        }
        if let Some(wanted) = &options.index {
            let index = milvus.index()?;
            let kind = index.split(' ').next().unwrap_or_default();
            if kind != wanted.name() {
                return Err(MilvusError::Refused {
                    url: url.to_string(),
                    reason: format!(
                        "its keys have a {kind} index, and the push asks for {}; leave --index \
                         out to push into it, or push into another collection",
                        wanted.name()
                    ),
                }
                .into());
            }
        }
        record.count = record.count.max(there.count);
        milvus.load()?;
        // Until this push ends, readers are told it has not finished.
        milvus.set_record(&record)?;
    } else {
        milvus.create(&record, options.index.as_ref().unwrap_or(&IndexKind::Flat))?;
    }

    let (live, deleted): (Vec<i64>, Vec<i64>) =
        (0..memory.count() as i64).partition(|&id| !memory.is_deleted(id));
    let total = live.len() as u64;
    let (mut written, mut already) = (0u64, 0u64);
    progress(0, total);
    for batch in live.chunks(options.batch.max(1)) {
        let interrupted = |cause: MilvusError| TransferError::Interrupted {
            url: url.to_string(),
            done: written + already,
            total,
            cause,
        };
        // Rows missing, or with a label the memory has since changed, are
        // (re)written; an id's key and values never change.
        let there = milvus.labels_of(batch).map_err(interrupted)?;
        let (stale, labels): (Vec<i64>, Vec<i64>) = batch
            .iter()
            .zip(memory.labels(batch)?)
            .map(|(&id, label)| (id, label.map_or(-1, i64::from)))
            .filter(|(id, label)| there.get(id) != Some(label))
            .unzip();
        if !stale.is_empty() {
            milvus
                .upsert(columns(&memory, &stale, labels)?)
                .map_err(interrupted)?;
        }
        written += stale.len() as u64;
        already += (batch.len() - stale.len()) as u64;
        progress(written + already, total);
    }
    let mut finish = || -> Result<(), MilvusError> {
        if !deleted.is_empty() {
            let name = url.collection.clone();
            let deleted = deleted.clone();
            milvus.call("deleting the memory's deleted entries", move |c| {
                let request = DeleteRequest::builder()
                    .collection_name(name.clone())
                    .ids(Ids::Int64(deleted.clone()))
                    .build();
                async move { c.delete(request?).await }
            })?;
        }
        milvus.flush()?;
        record.complete = true;
        milvus.set_record(&record)?;
        milvus.load()
    };
    finish().map_err(|cause| TransferError::Interrupted {
        url: url.to_string(),
        done: written + already,
        total,
        cause,
    })?;
    let rows = milvus.count_rows("")?;
    Ok(PushReport {
        written,
        already,
        deleted: deleted.len() as u64,
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The columns of entries `ids` of `memory`, whose labels are `labels`
/// (-1 for none).
fn columns(memory: &Memory, ids: &[i64], labels: Vec<i64>) -> Result<Vec<FieldData>, StoreError> {
    let rows = |flat: Vec<f32>, dim: usize| -> Vec<Vec<f32>> {
        flat.chunks(dim.max(1)).map(<[f32]>::to_vec).collect()
    };
    let mut columns = vec![
        FieldData::int64(ID, ids.to_vec()),
        FieldData::float_vector(KEY, rows(memory.gather_keys(ids)?, memory.key_dim())),
    ];
    for kind in [ValueKind::Image, ValueKind::Text] {
        if let Some(dim) = memory.value_dim(kind) {
            columns.push(FieldData::array_float(
                value_field(kind),
                rows(memory.gather_values(kind, ids)?, dim),
            ));
        }
    }
    let (sources, captions) = memory
        .metadata_of(ids)?
        .into_iter()
        .map(|m| (fit(m.source), fit(m.caption)))
        .unzip();
    columns.push(FieldData::varchar(SOURCE, sources));
    columns.push(FieldData::varchar(CAPTION, captions));
    columns.push(FieldData::int64(LABEL, labels));
    Ok(columns)
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq)]
pub struct PullReport {
    /// Entries in the memory written.
    pub rows: u64,
    /// Ids the collection's memory uses without a row (deleted entries).
    pub missing: u64,
    /// The map of new ids to the collection's (`pulled-from.npy`).
    pub map: PathBuf,
}

/// Per new entry, its id in the collection (`<i8`).
pub const PULL_MAP_FILE: &str = "pulled-from.npy";
const PULL_STATE_FILE: &str = "pull-state.json";

/// One committed (or about to be committed) shard of a pull: the
/// collection ids it covers end before `next_id`, and the memory holds
/// `rows` entries after it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct PullStep {
    next_id: i64,
    rows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PullState {
    url: String,
    /// FNV-1a 64 of the collection's record when the pull began.
    record: String,
    steps: Vec<PullStep>,
    /// The collection id of every entry written, in order.
    ids: Vec<i64>,
}

/// Writes the collection at `url` into the memory directory `dir` (new,
/// or an interrupted pull of the same collection); `progress(done, total)`
/// counts ids.
pub fn pull(
    url: &str,
    dir: &Path,
    shard_rows: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PullReport, TransferError> {
    let remote = MilvusMemory::open(url)?;
    let record = remote.record().clone();
    let fingerprint = Fnv1a::new()
        .write(
            serde_json::to_string(&record)
                .unwrap_or_default()
                .as_bytes(),
        )
        .hex();
    let state_path = dir.join(PULL_STATE_FILE);
    let refuse = |reason: String| StoreError::Invalid {
        path: dir.to_path_buf(),
        reason,
    };
    let (mut writer, mut state) = if dir.join(MANIFEST_FILE).exists() {
        let state: PullState = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                refuse("a memory already exists here that is not a pull in progress; pull into a new directory".into())
            })?;
        if state.url != remote.location() || state.record != fingerprint {
            return Err(refuse(format!(
                "holds an interrupted pull of {} as it was then; pull into a new directory",
                state.url
            ))
            .into());
        }
        (MemoryWriter::open_append(dir)?, state)
    } else {
        let spec = MemorySpec {
            key_encoder: record.key.encoder.clone(),
            key_dim: record.key.dim,
            key_dtype: record.key.dtype,
            normalize_keys: record.key.normalized,
            image: record.values.image.clone(),
            text: record.values.text.clone(),
        };
        let mut writer = MemoryWriter::create(dir, spec)?;
        writer.declare_classes(&record.labels)?;
        let state = PullState {
            url: remote.location(),
            record: fingerprint,
            steps: Vec::new(),
            ids: Vec::new(),
        };
        (writer, state)
    };
    // Keep the steps the memory committed.
    let committed = writer.count();
    let keep = state
        .steps
        .iter()
        .rposition(|s| s.rows == committed)
        .map_or(0, |i| i + 1);
    if keep == 0 && committed > 0 {
        return Err(refuse(format!(
            "holds {committed} entries its pull record does not account for"
        ))
        .into());
    }
    state.steps.truncate(keep);
    state.ids.truncate(committed as usize);
    let mut next = state.steps.last().map_or(0, |s| s.next_id);
    let total = record.count as i64;
    progress(next as u64, total as u64);
    let write_state = |state: &PullState| -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(state).map_err(|e| StoreError::Invalid {
            path: state_path.clone(),
            reason: format!("cannot encode: {e}"),
        })?;
        ramem_store::write_atomic(&state_path, &bytes)
    };
    let chunk = shard_rows.max(1) as i64;
    while next < total {
        let end = (next + chunk).min(total);
        let ask: Vec<i64> = (next..end).collect();
        let entries = remote.present_entries(&ask)?;
        let rows = writer.count() + entries.ids.len() as u64;
        state.steps.push(PullStep { next_id: end, rows });
        state.ids.extend(&entries.ids);
        write_state(&state)?;
        if !entries.ids.is_empty() {
            let metadata = entries
                .metadata
                .iter()
                .zip(&entries.labels)
                .map(|(m, label)| MetadataEntry {
                    source: m.source.clone(),
                    caption: m.caption.clone(),
                    label: label.and_then(|l| record.labels.get(l as usize).cloned()),
                })
                .collect::<Vec<_>>();
            writer.append_stored_shard(ShardBatch {
                keys: &entries.keys,
                image_values: entries.values_of(ValueKind::Image),
                text_values: entries.values_of(ValueKind::Text),
                metadata: &metadata,
            })?;
        }
        next = end;
        progress(next as u64, total as u64);
    }
    let map = dir.join(PULL_MAP_FILE);
    ramem_store::npy::write_i64_matrix(&map, state.ids.len(), 1, &state.ids)?;
    Ok(PullReport {
        rows: writer.count(),
        missing: total as u64 - writer.count(),
        map,
    })
}
