//! [`MilvusMemory`]: a memory on a Milvus collection, read and searched
//! through the same interfaces as a memory directory
//! ([`MemoryView`], [`SearchableMemory`], [`Retriever`]).

use std::collections::HashMap;
use std::sync::Arc;

use milvus::v2::prelude::*;
use ramem_index::{Engine, Neighbours, Retriever, SearchError, SearchParams, SearchableMemory};
use ramem_store::memory::{LabelSpec, Manifest, MemoryView, MetadataRow, ValueKind};
use ramem_store::{Fnv1a, StoreError};
use std::result::Result;

use crate::client::{Milvus, MilvusError, MilvusUrl};
use crate::collection::{
    value_field, MemoryRecord, CAPTION, ID, KEY, LABEL, READ_BYTES, READ_CHUNK, SOURCE,
};

/// Entries read from a collection, row-major, in id order.
pub(crate) struct Entries {
    pub ids: Vec<i64>,
    pub keys: Vec<f32>,
    /// Each value kind the memory has, with its rows.
    pub values: Vec<(ValueKind, Vec<f32>)>,
    pub labels: Vec<Option<u32>>,
    pub metadata: Vec<MetadataRow>,
}

impl Entries {
    /// The rows of `kind` values, where the memory has them.
    pub fn values_of(&self, kind: ValueKind) -> Option<&[f32]> {
        self.values
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, rows)| rows.as_slice())
    }
}

/// A memory on a Milvus collection (`milvus://HOST:PORT/COLLECTION`).
pub struct MilvusMemory {
    milvus: Arc<Milvus>,
    record: MemoryRecord,
    /// The record in a memory directory's terms.
    manifest: Manifest,
    /// Rows in the collection (entries not deleted).
    live: u64,
    /// The index of the keys, in words.
    index: String,
}

impl MilvusMemory {
    /// Connects to the collection at `url` and reads what memory it holds;
    /// a collection whose last push has not finished is refused.
    pub fn open(url: &str) -> Result<MilvusMemory, MilvusError> {
        let memory = MilvusMemory::open_unfinished(url)?;
        if !memory.record.complete {
            return Err(MilvusError::Refused {
                url: memory.location(),
                reason: "a push into it has not finished: run `ramem memory push` again to \
                         complete it"
                    .into(),
            });
        }
        Ok(memory)
    }

    /// [`MilvusMemory::open`], taking a collection mid-push as it is (to
    /// describe it).
    pub fn open_unfinished(url: &str) -> Result<MilvusMemory, MilvusError> {
        let url = MilvusUrl::parse(url)?;
        let milvus = Milvus::connect(&url)?;
        let record = milvus.record()?;
        milvus.load()?;
        let live = milvus.count_rows("")?;
        let index = milvus.index()?;
        let manifest = Manifest {
            format: record.format.clone(),
            version: record.version,
            count: record.count,
            key: record.key.clone(),
            values: record.values.clone(),
            shards: Vec::new(),
            created_by: format!("{url}"),
            labels: (!record.labels.is_empty()).then(|| LabelSpec {
                names: record.labels.clone(),
            }),
            edits: None,
        };
        Ok(MilvusMemory {
            milvus: Arc::new(milvus),
            record,
            manifest,
            live,
            index,
        })
    }

    /// The collection's address.
    pub fn url(&self) -> &MilvusUrl {
        &self.milvus.url
    }

    /// The index of the keys (`HNSW M=16 efConstruction=200`).
    pub fn index(&self) -> &str {
        &self.index
    }

    /// What the collection holds, in the words of `ramem memory info`.
    pub fn summary(&self) -> String {
        let r = &self.record;
        let mut lines = vec![
            format!("memory:   {}", self.location()),
            format!(
                "format:   {} v{}{}",
                r.format,
                r.version,
                if r.complete {
                    ""
                } else {
                    " (a push into it has not finished)"
                }
            ),
            format!(
                "entries:  {} (ids 0..{}; {} deleted)",
                self.live,
                r.count,
                r.count.saturating_sub(self.live)
            ),
            format!(
                "keys:     {}-d{} from {}, index {}",
                r.key.dim,
                if r.key.normalized { " (unit norm)" } else { "" },
                r.key.encoder,
                self.index
            ),
        ];
        for (kind, spec) in [("image", &r.values.image), ("text", &r.values.text)] {
            lines.push(match spec {
                Some(v) => format!("{:<9} {}-d from {}", format!("{kind}:"), v.dim, v.encoder),
                None => format!("{:<9} none", format!("{kind}:")),
            });
        }
        lines.push(match r.labels.len() {
            0 => "labels:   none".to_string(),
            n => format!(
                "labels:   {n} classes ({})",
                r.labels
                    .iter()
                    .take(8)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        lines.join("\n") + "\n"
    }

    /// The connection to the collection.
    pub fn client(&self) -> &Milvus {
        &self.milvus
    }

    /// The memory the collection records.
    pub fn record(&self) -> &MemoryRecord {
        &self.record
    }

    /// How many rows of `fields` one read asks for: as many as fit
    /// [`READ_BYTES`], at most [`READ_CHUNK`].
    fn rows_per_read(&self, fields: &[&str]) -> usize {
        let r = &self.record;
        let bytes: usize = fields
            .iter()
            .map(|&field| match field {
                KEY => 4 * r.key.dim,
                f if f == value_field(ValueKind::Image) => {
                    r.values.image.as_ref().map_or(0, |v| 4 * v.dim)
                }
                f if f == value_field(ValueKind::Text) => {
                    r.values.text.as_ref().map_or(0, |v| 4 * v.dim)
                }
                // Sources and captions: a generous guess.
                _ => 256,
            })
            .sum();
        (READ_BYTES / bytes.max(1)).clamp(1, READ_CHUNK)
    }

    /// Every entry among `ids` that has a row (deleted entries have none),
    /// in id order, with all it holds: one read per chunk of ids.
    pub(crate) fn present_entries(&self, ids: &[i64]) -> Result<Entries, StoreError> {
        let mut fields = vec![KEY, LABEL, SOURCE, CAPTION];
        let kinds: Vec<ValueKind> = [ValueKind::Image, ValueKind::Text]
            .into_iter()
            .filter(|&kind| self.value_dim(kind).is_some())
            .collect();
        fields.extend(kinds.iter().map(|&kind| value_field(kind)));
        let bad = |reason: String| StoreError::Remote {
            location: self.location(),
            reason: format!("reading rows: {reason}"),
        };
        let mut rows = Vec::new();
        for chunk in ids.chunks(self.rows_per_read(&fields)) {
            let results = self.milvus.get(chunk, &fields)?;
            for row in results.rows().map_err(|e| bad(e.to_string()))? {
                let id = row.get_i64(ID).map_err(|e| bad(e.to_string()))?;
                let label = row.get_i64(LABEL).map_err(|e| bad(e.to_string()))?;
                let values = kinds
                    .iter()
                    .map(|&kind| floats(&row, value_field(kind)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                let metadata = MetadataRow {
                    id,
                    source: text(&row, SOURCE).map_err(bad)?,
                    caption: text(&row, CAPTION).map_err(bad)?,
                };
                let key = floats(&row, KEY).map_err(bad)?;
                rows.push((
                    id,
                    key,
                    values,
                    (label >= 0).then_some(label as u32),
                    metadata,
                ));
            }
        }
        rows.sort_unstable_by_key(|row| row.0);
        let mut entries = Entries {
            ids: Vec::with_capacity(rows.len()),
            keys: Vec::new(),
            values: kinds.iter().map(|&kind| (kind, Vec::new())).collect(),
            labels: Vec::with_capacity(rows.len()),
            metadata: Vec::with_capacity(rows.len()),
        };
        for (id, key, values, label, metadata) in rows {
            entries.ids.push(id);
            entries.keys.extend(key);
            for ((_, all), value) in entries.values.iter_mut().zip(values) {
                all.extend(value);
            }
            entries.labels.push(label);
            entries.metadata.push(metadata);
        }
        Ok(entries)
    }

    /// `fields` of `rows`, in their order; an id with no row (deleted,
    /// or never pushed) is an error naming it.
    fn rows_of<T>(
        &self,
        rows: &[i64],
        fields: &[&str],
        read: impl Fn(&ResultRow<'_>) -> Result<T, String>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out: Vec<Option<T>> = (0..rows.len()).map(|_| None).collect();
        let mut at: HashMap<i64, Vec<usize>> = HashMap::new();
        for (i, &id) in rows.iter().enumerate() {
            at.entry(id).or_default().push(i);
        }
        let unique: Vec<i64> = at.keys().copied().collect();
        let bad = |reason: String| StoreError::Remote {
            location: self.milvus.url.to_string(),
            reason,
        };
        for chunk in unique.chunks(self.rows_per_read(fields)) {
            let results = self.milvus.get(chunk, fields)?;
            let iter = results
                .rows()
                .map_err(|e| bad(format!("reading rows: {e}")))?;
            for row in iter {
                let id = row
                    .get_i64(ID)
                    .map_err(|e| bad(format!("reading rows: {e}")))?;
                let value = read(&row).map_err(bad)?;
                if let Some(places) = at.get(&id) {
                    for &i in places.iter().skip(1) {
                        out[i] = Some(read(&row).map_err(bad)?);
                    }
                    out[places[0]] = Some(value);
                }
            }
        }
        out.into_iter()
            .zip(rows)
            .map(|(value, id)| {
                value.ok_or_else(|| bad(format!("no entry {id} (deleted, or never pushed)")))
            })
            .collect()
    }
}

fn floats(row: &ResultRow<'_>, field: &str) -> Result<Vec<f32>, String> {
    match row.get(field).map_err(|e| format!("{field}: {e}"))? {
        ResultValue::FloatVector(v) | ResultValue::ArrayFloat(v) => Ok(v.to_vec()),
        other => Err(format!("{field}: not floats ({other:?})")),
    }
}

fn text(row: &ResultRow<'_>, field: &str) -> Result<Option<String>, String> {
    match row.get(field).map_err(|e| format!("{field}: {e}"))? {
        ResultValue::String("") => Ok(None),
        ResultValue::String(s) => Ok(Some(s.to_string())),
        ResultValue::Null => Ok(None),
        other => Err(format!("{field}: not text ({other:?})")),
    }
}

impl MemoryView for MilvusMemory {
    fn location(&self) -> String {
        self.milvus.url.to_string()
    }

    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn live_count(&self) -> u64 {
        self.live
    }

    /// An entry without a row is not searched; nothing here says more.
    fn is_deleted(&self, _row: i64) -> bool {
        false
    }

    fn gather_keys(&self, rows: &[i64]) -> ramem_store::Result<Vec<f32>> {
        Ok(self.rows_of(rows, &[KEY], |row| floats(row, KEY))?.concat())
    }

    fn gather_values(&self, kind: ValueKind, rows: &[i64]) -> ramem_store::Result<Vec<f32>> {
        if self.value_dim(kind).is_none() {
            return Err(StoreError::Remote {
                location: self.location(),
                reason: format!("the memory has no {} values", kind.name()),
            });
        }
        let field = value_field(kind);
        Ok(self
            .rows_of(rows, &[field], |row| floats(row, field))?
            .concat())
    }

    fn labels(&self, rows: &[i64]) -> ramem_store::Result<Vec<Option<u32>>> {
        self.rows_of(rows, &[LABEL], |row| {
            let label = row.get_i64(LABEL).map_err(|e| format!("{LABEL}: {e}"))?;
            Ok((label >= 0).then_some(label as u32))
        })
    }

    fn metadata(&self, row: i64) -> ramem_store::Result<MetadataRow> {
        Ok(self.metadata_of(&[row])?.remove(0))
    }

    fn metadata_of(&self, rows: &[i64]) -> ramem_store::Result<Vec<MetadataRow>> {
        self.rows_of(rows, &[SOURCE, CAPTION], |row| {
            Ok(MetadataRow {
                id: row.get_i64(ID).map_err(|e| format!("{ID}: {e}"))?,
                source: text(row, SOURCE)?,
                caption: text(row, CAPTION)?,
            })
        })
    }

    /// The record (ids in use, class names) and the rows in the collection:
    /// a push changes one or the other.
    fn fingerprint(&self) -> ramem_store::Result<String> {
        let record = serde_json::to_string(&self.record).unwrap_or_default();
        Ok(Fnv1a::new()
            .write(record.as_bytes())
            .write(&self.live.to_le_bytes())
            .hex())
    }
}

impl SearchableMemory for MilvusMemory {
    /// The collection's own index; `exact` and `hnsw` name a memory
    /// directory's engines and are refused.
    fn retriever(
        self: Arc<Self>,
        engine: Option<Engine>,
    ) -> Result<Box<dyn Retriever>, SearchError> {
        match engine {
            None | Some(Engine::Remote) => Ok(Box::new(MilvusSearch { memory: self })),
            Some(other) => Err(SearchError::Unsupported(format!(
                "{}: a memory on Milvus is searched with its collection's index, not `{other}` \
                 (leave --engine out)",
                self.location()
            ))),
        }
    }
}

/// Search of a memory on Milvus by its collection's index.
pub struct MilvusSearch {
    memory: Arc<MilvusMemory>,
}

impl Retriever for MilvusSearch {
    fn engine(&self) -> Engine {
        Engine::Remote
    }

    fn describe(&self) -> String {
        format!(
            "the Milvus collection {} ({})",
            self.memory.location(),
            self.memory.index
        )
    }

    fn len(&self) -> u64 {
        self.memory.count()
    }

    fn dim(&self) -> usize {
        self.memory.key_dim()
    }

    fn search(
        &self,
        queries: &[f32],
        dim: usize,
        params: &SearchParams,
    ) -> Result<Neighbours, SearchError> {
        let exclude = params.check(queries, dim)?;
        let n = exclude.len();
        if dim != self.memory.key_dim() {
            return Err(SearchError::DimMismatch {
                keys: self.memory.key_dim(),
                queries: dim,
            });
        }
        let k = params.k;
        let mut ids = vec![-1i64; n * k];
        let mut scores = vec![f32::NEG_INFINITY; n * k];
        if n == 0 {
            return Ok(Neighbours { k, ids, scores });
        }
        // One more than k where a query excludes its own entry.
        let limit = k + usize::from(params.exclude.is_some());
        let mut extra = HashMap::new();
        if let Some(ef) = params.ef {
            extra.insert("ef".to_string(), ef.max(limit).to_string());
        }
        let bad = |e: String| {
            SearchError::Store(StoreError::Remote {
                location: self.memory.location(),
                reason: format!("reading search results: {e}"),
            })
        };
        for (start, chunk) in queries.chunks(READ_CHUNK * dim).enumerate() {
            let first = start * READ_CHUNK;
            let vectors: Vec<Vec<f32>> = chunk.chunks(dim).map(|q| q.to_vec()).collect();
            let results = self.memory.milvus.search(vectors, limit, extra.clone())?;
            for (i, result) in results.iter().enumerate() {
                let q = first + i;
                let excluded = exclude[q];
                let mut slot = 0;
                for row in result.rows().map_err(|e| bad(e.to_string()))? {
                    let id = row.get_i64(ID).map_err(|e| bad(e.to_string()))?;
                    if id == excluded || slot == k {
                        continue;
                    }
                    let score = match row.get("score").map_err(|e| bad(e.to_string()))? {
                        ResultValue::Float(s) => s,
                        other => return Err(bad(format!("score: {other:?}"))),
                    };
                    ids[q * k + slot] = id;
                    scores[q * k + slot] = score;
                    slot += 1;
                }
            }
        }
        Ok(Neighbours { k, ids, scores })
    }

    /// The collection's version: cached lists are searched again after a
    /// push.
    fn cache_tag(&self, params: &SearchParams) -> Option<String> {
        let version = self.memory.fingerprint().unwrap_or_default();
        Some(format!(
            "milvus {} {version} ef {:?}",
            self.memory.location(),
            params.ef
        ))
    }
}
