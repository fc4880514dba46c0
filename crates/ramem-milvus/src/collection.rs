//! How a ramem memory is laid out in a Milvus collection, and the calls
//! that read and write it.
//!
//! One collection holds a memory: `id` (Int64, the primary key: the
//! memory's row id, stable), `key` (FloatVector of the key dimension,
//! searched by inner product), the values as float arrays (`image_value`,
//! `text_value`, where the memory has them: a collection has one vector
//! field wherever Milvus runs), `source` and `caption` (VarChar, empty for
//! none) and `label` (Int64 index into the memory's class names, -1 for
//! none). The collection property `ramem.memory` records what the memory
//! is, in the terms of a memory directory's manifest: the key and value
//! encoders, dimensions and storage, the class names, and the row ids in
//! use (`count`: ids run `0..count`; a deleted entry has no row).

use std::collections::HashMap;

use milvus::v2::prelude::*;
use milvus::v2::request::collection::{
    AlterCollectionPropertiesRequest, CreateCollectionRequest, DescribeCollectionRequest,
    HasCollectionRequest, LoadCollectionRequest,
};
use milvus::v2::request::index::{CreateIndexRequest, DescribeIndexRequest};
use ramem_store::memory::{KeySpec, ValueKind, ValuesSpec};
use serde::{Deserialize, Serialize};
use std::result::Result;

use crate::client::{Milvus, MilvusError, LOADING};

pub const ID: &str = "id";
pub const KEY: &str = "key";
pub const SOURCE: &str = "source";
pub const CAPTION: &str = "caption";
pub const LABEL: &str = "label";
/// The collection property that records the memory.
pub const PROPERTY: &str = "ramem.memory";
/// Longest `source` or `caption` kept (Milvus's VarChar limit, in bytes).
pub const MAX_TEXT: usize = 65_535;
/// Ids per read of rows, at most.
pub const READ_CHUNK: usize = 1000;
/// Bytes of vectors per read of rows, at most: an answer over gRPC's usual
/// 4 MiB message limit is never read by the client.
pub const READ_BYTES: usize = 2 << 20;

/// The field of `kind` values.
pub fn value_field(kind: ValueKind) -> &'static str {
    match kind {
        ValueKind::Image => "image_value",
        ValueKind::Text => "text_value",
    }
}

/// What the `ramem.memory` property records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecord {
    pub format: String,
    pub version: u32,
    pub key: KeySpec,
    pub values: ValuesSpec,
    pub labels: Vec<String>,
    /// Row ids in use: `0..count`.
    pub count: u64,
    /// Whether the last push finished (a collection being pushed into is
    /// not read as a memory).
    #[serde(default = "finished")]
    pub complete: bool,
}

fn finished() -> bool {
    true
}

pub const FORMAT: &str = "ramem-milvus";
pub const VERSION: u32 = 1;

/// How the collection's keys are indexed (`ramem memory push --index`).
#[derive(Debug, Clone, PartialEq)]
pub enum IndexKind {
    Flat,
    Hnsw { m: u32, ef_construction: u32 },
    IvfFlat { nlist: u32 },
    IvfPq { nlist: u32, m: u32, nbits: u32 },
    DiskAnn,
}

impl IndexKind {
    /// The index from its name (`flat`, `hnsw`, `ivf_flat`, `ivf_pq`,
    /// `diskann`) and parameters as `NAME=VALUE,...` (Milvus's names:
    /// `M`, `efConstruction` for HNSW; `nlist` for IVF; `m`, `nbits` for
    /// IVF_PQ); a parameter left out keeps its default.
    pub fn parse(name: &str, params: &str) -> Result<IndexKind, String> {
        let mut given: Vec<(String, u32)> = Vec::new();
        for pair in params.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("index parameter {pair:?} is not NAME=VALUE"))?;
            let value: u32 = value
                .trim()
                .parse()
                .map_err(|_| format!("index parameter {key}: {value:?} is not a whole number"))?;
            given.push((key.trim().to_string(), value));
        }
        let mut take = |key: &str, default: u32| -> u32 {
            match given.iter().position(|(k, _)| k == key) {
                Some(i) => given.remove(i).1,
                None => default,
            }
        };
        let kind = match name.to_ascii_lowercase().as_str() {
            "flat" => IndexKind::Flat,
            "hnsw" => IndexKind::Hnsw {
                m: take("M", 16),
                ef_construction: take("efConstruction", 200),
            },
            "ivf_flat" => IndexKind::IvfFlat {
                nlist: take("nlist", 1024),
            },
            "ivf_pq" => IndexKind::IvfPq {
                nlist: take("nlist", 1024),
                m: take("m", 16),
                nbits: take("nbits", 8),
            },
            "diskann" => IndexKind::DiskAnn,
            other => {
                return Err(format!(
                    "unknown index {other:?}: flat, hnsw, ivf_flat, ivf_pq or diskann"
                ))
            }
        };
        if let Some((key, _)) = given.first() {
            return Err(format!("{name} takes no index parameter {key:?}"));
        }
        Ok(kind)
    }

    /// The index's name as Milvus spells it.
    pub fn name(&self) -> &'static str {
        match self {
            IndexKind::Flat => "FLAT",
            IndexKind::Hnsw { .. } => "HNSW",
            IndexKind::IvfFlat { .. } => "IVF_FLAT",
            IndexKind::IvfPq { .. } => "IVF_PQ",
            IndexKind::DiskAnn => "DISKANN",
        }
    }

    fn param(&self) -> IndexParam {
        let (kind, params): (IndexType, Vec<(&str, String)>) = match self {
            IndexKind::Flat => (IndexType::Flat, vec![]),
            IndexKind::Hnsw { m, ef_construction } => (
                IndexType::Hnsw,
                vec![
                    ("M", m.to_string()),
                    ("efConstruction", ef_construction.to_string()),
                ],
            ),
            IndexKind::IvfFlat { nlist } => {
                (IndexType::IvfFlat, vec![("nlist", nlist.to_string())])
            }
            IndexKind::IvfPq { nlist, m, nbits } => (
                IndexType::IvfPq,
                vec![
                    ("nlist", nlist.to_string()),
                    ("m", m.to_string()),
                    ("nbits", nbits.to_string()),
                ],
            ),
            IndexKind::DiskAnn => (IndexType::DiskAnn, vec![]),
        };
        IndexParam::new()
            .field_name(KEY)
            .index_type(kind)
            .metric_type(MetricType::Ip)
            .extra_params(
                params
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )
    }
}

/// The collection's schema for a memory with `record`'s settings.
fn schema(record: &MemoryRecord) -> CollectionSchema {
    let mut schema = CollectionSchema::new()
        .enable_dynamic_field(false)
        .add_field(
            FieldSchema::new()
                .name(ID)
                .data_type(DataType::Int64)
                .primary_key(true),
        )
        .add_field(
            FieldSchema::new()
                .name(KEY)
                .data_type(DataType::FloatVector)
                .dimension(record.key.dim as u32),
        );
    for kind in [ValueKind::Image, ValueKind::Text] {
        let spec = match kind {
            ValueKind::Image => &record.values.image,
            ValueKind::Text => &record.values.text,
        };
        if let Some(spec) = spec {
            schema = schema.add_field(
                FieldSchema::new()
                    .name(value_field(kind))
                    .data_type(DataType::Array)
                    .element_type(DataType::Float)
                    .max_capacity(spec.dim as u32),
            );
        }
    }
    for name in [SOURCE, CAPTION] {
        schema = schema.add_field(
            FieldSchema::new()
                .name(name)
                .data_type(DataType::VarChar)
                .max_length(MAX_TEXT as u32),
        );
    }
    schema.add_field(FieldSchema::new().name(LABEL).data_type(DataType::Int64))
}

impl Milvus {
    /// Whether the collection exists.
    pub fn exists(&self) -> Result<bool, MilvusError> {
        let name = self.url.collection.clone();
        let found = self.call("checking the collection", move |c| {
            let name = name.clone();
            async move {
                c.has_collection(
                    HasCollectionRequest::builder()
                        .collection_name(name)
                        .build()?,
                )
                .await
            }
        })?;
        Ok(found.exists())
    }

    /// The memory the collection records; an error for a collection that
    /// is missing or holds no ramem memory.
    pub fn record(&self) -> Result<MemoryRecord, MilvusError> {
        let refused = |reason: String| MilvusError::Refused {
            url: self.url.to_string(),
            reason,
        };
        if !self.exists()? {
            return Err(refused(
                "no such collection; push a memory into it first (`ramem memory push`)".into(),
            ));
        }
        let name = self.url.collection.clone();
        let described = self.call("describing the collection", move |c| {
            let name = name.clone();
            async move {
                c.describe_collection(
                    DescribeCollectionRequest::builder()
                        .collection_name(name)
                        .build()?,
                )
                .await
            }
        })?;
        let text = described
            .description()
            .get_properties()
            .get(PROPERTY)
            .ok_or_else(|| {
                refused(format!(
                    "the collection holds no ramem memory (no {PROPERTY} property)"
                ))
            })?;
        let record: MemoryRecord = serde_json::from_str(text)
            .map_err(|e| refused(format!("its {PROPERTY} property is not readable: {e}")))?;
        if record.format != FORMAT || record.version > VERSION {
            return Err(refused(format!(
                "its memory is {} version {}; this ramem reads {FORMAT} up to version {VERSION}",
                record.format, record.version
            )));
        }
        Ok(record)
    }

    /// Creates the collection for `record`'s memory with `index` on its
    /// keys, and loads it.
    pub fn create(&self, record: &MemoryRecord, index: &IndexKind) -> Result<(), MilvusError> {
        let name = self.url.collection.clone();
        let schema = schema(record);
        let properties = HashMap::from([(PROPERTY.to_string(), to_json(record))]);
        self.call("creating the collection", move |c| {
            let request = CreateCollectionRequest::builder()
                .collection_name(name.clone())
                .schema(schema.clone())
                .properties(properties.clone())
                .consistency_level(ConsistencyLevel::Strong)
                .build();
            async move { c.create_collection(request?).await }
        })?;
        let name = self.url.collection.clone();
        let param = index.param();
        self.call("indexing the keys", move |c| {
            let request = CreateIndexRequest::builder()
                .collection_name(name.clone())
                .index_param(param.clone())
                // Waiting here needs calls a single-node server may not
                // have; loading the collection waits for the index anyway.
                .sync(false)
                .build();
            async move { c.create_index(request?).await }
        })?;
        self.load()
    }

    /// The index of the keys, as `TYPE` followed by its parameters
    /// (`HNSW M=16 efConstruction=200`).
    pub fn index(&self) -> Result<String, MilvusError> {
        let name = self.url.collection.clone();
        let described = self.call("describing the index", move |c| {
            let request = DescribeIndexRequest::builder()
                .collection_name(name.clone())
                .field_name(KEY)
                .build();
            async move { c.describe_index(request?).await }
        })?;
        let Some(index) = described.indexes().first() else {
            return Ok("no index".into());
        };
        let mut params: Vec<String> = index
            .get_extra_params()
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "index_type" | "metric_type" | "params"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        params.sort();
        params.insert(0, format!("{:?}", index.get_index_type()).to_uppercase());
        Ok(params.join(" "))
    }

    /// Loads the collection for search (idempotent).
    pub fn load(&self) -> Result<(), MilvusError> {
        let name = self.url.collection.clone();
        self.call(LOADING, move |c| {
            let request = LoadCollectionRequest::builder()
                .collection_name(name.clone())
                .sync(true)
                .build();
            async move { c.load_collection(request?).await }
        })?;
        Ok(())
    }

    /// Records `record` as the collection's memory.
    pub fn set_record(&self, record: &MemoryRecord) -> Result<(), MilvusError> {
        let name = self.url.collection.clone();
        let properties = HashMap::from([(PROPERTY.to_string(), to_json(record))]);
        self.call("recording the memory", move |c| {
            let request = AlterCollectionPropertiesRequest::builder()
                .collection_name(name.clone())
                .properties(properties.clone())
                .build();
            async move { c.alter_collection_properties(request?).await }
        })?;
        Ok(())
    }

    /// Rows in the collection whose id passes `filter` (all: "").
    pub fn count_rows(&self, filter: &str) -> Result<u64, MilvusError> {
        let name = self.url.collection.clone();
        let filter = filter.to_string();
        let found = self.call("counting rows", move |c| {
            let request = QueryRequest::builder()
                .collection_name(name.clone())
                .filter(filter.clone())
                .output_fields(["count(*)"])
                .consistency_level(ConsistencyLevel::Strong)
                .build();
            async move { c.query(request?).await }
        })?;
        let refused = |reason: String| MilvusError::Refused {
            url: self.url.to_string(),
            reason,
        };
        let mut rows = found
            .results()
            .rows()
            .map_err(|e| refused(format!("counting rows: {e}")))?;
        let row = rows
            .next()
            .ok_or_else(|| refused("counting rows: no answer".into()))?;
        let count = row
            .get_i64("count(*)")
            .map_err(|e| refused(format!("counting rows: {e}")))?;
        Ok(count.max(0) as u64)
    }

    /// Writes `columns` (one row per id), replacing rows with the same ids.
    // The SDK's own error type is large; it is only passed through here.
    #[allow(clippy::result_large_err)]
    pub fn upsert(&self, columns: Vec<FieldData>) -> Result<(), MilvusError> {
        let name = self.url.collection.clone();
        self.call("writing rows", move |c| {
            let request = InsertRequest::builder()
                .collection_name(name.clone())
                .columns(columns.clone())
                .build()
                .map(|insert| UpsertRequest::builder().insert(insert).build());
            async move { c.upsert(request??).await }
        })?;
        Ok(())
    }

    /// The label of each of `ids` that has a row.
    pub fn labels_of(&self, ids: &[i64]) -> Result<HashMap<i64, i64>, MilvusError> {
        let results = self.get(ids, &[LABEL])?;
        let bad = |e: String| MilvusError::Refused {
            url: self.url.to_string(),
            reason: format!("reading labels: {e}"),
        };
        let mut labels = HashMap::with_capacity(ids.len());
        for row in results.rows().map_err(|e| bad(e.to_string()))? {
            let id = row.get_i64(ID).map_err(|e| bad(e.to_string()))?;
            let label = row.get_i64(LABEL).map_err(|e| bad(e.to_string()))?;
            labels.insert(id, label);
        }
        Ok(labels)
    }

    /// Makes what was written durable and visible.
    pub fn flush(&self) -> Result<(), MilvusError> {
        let name = self.url.collection.clone();
        self.call("flushing", move |c| {
            let request = FlushRequest::builder()
                .collection_names([name.clone()])
                .build();
            async move { c.flush(request?).await }
        })?;
        Ok(())
    }

    /// The rows of `ids` with `fields` (and `id`), in any order; an id
    /// without a row is left out.
    pub fn get(&self, ids: &[i64], fields: &[&str]) -> Result<QueryResults, MilvusError> {
        let name = self.url.collection.clone();
        // A filter with the ids written out: an expression template (what
        // the SDK's `get` sends) is not understood by every server.
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        let filter = format!("{ID} in [{}]", list.join(","));
        let mut output: Vec<String> = vec![ID.to_string()];
        output.extend(fields.iter().map(|f| f.to_string()));
        let limit = ids.len() as i64;
        let response = self.call("reading rows", move |c| {
            let request = QueryRequest::builder()
                .collection_name(name.clone())
                .filter(filter.clone())
                .output_fields(output.clone())
                .limit(limit)
                .consistency_level(ConsistencyLevel::Strong)
                .build();
            async move { c.query(request?).await }
        })?;
        Ok(response.results().clone())
    }

    /// The `limit` rows nearest each of `queries` by inner product, with
    /// `params` for the index (`ef` for HNSW).
    pub fn search(
        &self,
        queries: Vec<Vec<f32>>,
        limit: usize,
        params: HashMap<String, String>,
    ) -> Result<SearchResults, MilvusError> {
        let name = self.url.collection.clone();
        let response = self.call("searching", move |c| {
            let request = SearchRequest::builder()
                .collection_name(name.clone())
                .vector_field(KEY)
                .vectors(SearchVectors::Float(queries.clone()))
                .metric_type(MetricType::Ip)
                .limit(limit as i64)
                .output_fields([ID])
                .extra_params(params.clone())
                .consistency_level(ConsistencyLevel::Strong)
                .build();
            async move { c.search(request?).await }
        })?;
        Ok(response.results().clone())
    }
}

fn to_json(record: &MemoryRecord) -> String {
    serde_json::to_string(record).expect("the memory record serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_parameters_are_parsed_and_checked() {
        assert_eq!(IndexKind::parse("FLAT", "").unwrap(), IndexKind::Flat);
        assert_eq!(
            IndexKind::parse("hnsw", "M=32, efConstruction=400").unwrap(),
            IndexKind::Hnsw {
                m: 32,
                ef_construction: 400
            }
        );
        assert_eq!(
            IndexKind::parse("ivf_pq", "nbits=4").unwrap(),
            IndexKind::IvfPq {
                nlist: 1024,
                m: 16,
                nbits: 4
            }
        );
        let wrong = IndexKind::parse("flat", "M=8").unwrap_err();
        assert!(wrong.contains("\"M\""), "{wrong}");
        assert!(IndexKind::parse("hnsw", "M")
            .unwrap_err()
            .contains("NAME=VALUE"));
        assert!(IndexKind::parse("hnsw", "M=x")
            .unwrap_err()
            .contains("whole number"));
        assert!(IndexKind::parse("annoy", "")
            .unwrap_err()
            .contains("unknown index"));
    }
}
