//! [`MemoryView`]: what reading a memory needs, wherever its rows live: in
//! a directory here ([`Memory`]) or in a vector database over the network
//! (`ramem-milvus`). Models, recognizers, studies and the server read a
//! memory through it, so a memory moved off this machine is used the same
//! way.

use std::sync::Arc;

use super::{Manifest, Memory, MetadataRow, ValueKind};
use crate::error::Result;
use crate::fingerprint::Fnv1a;

/// A memory's settings and rows, read by global row id.
pub trait MemoryView: Send + Sync {
    /// Where the memory is, for messages: a directory or a URL.
    fn location(&self) -> String;
    /// Where its settings are, for messages about them: `DIR/manifest.json`,
    /// or the URL of a remote memory.
    fn settings_location(&self) -> String {
        self.location()
    }
    /// Its settings and size as a manifest: key and value encoders,
    /// dimensions, label names, entries (a remote memory describes itself
    /// in the same terms; it has no shards).
    fn manifest(&self) -> &Manifest;
    /// Entries that are not deleted.
    fn live_count(&self) -> u64;
    /// Whether entry `row` was deleted.
    fn is_deleted(&self, row: i64) -> bool;
    /// The keys of `rows`, widened to `f32` (`rows.len() * key_dim`).
    fn gather_keys(&self, rows: &[i64]) -> Result<Vec<f32>>;
    /// The `kind` values of `rows` (`rows.len() * dim`).
    fn gather_values(&self, kind: ValueKind, rows: &[i64]) -> Result<Vec<f32>>;
    /// The class index (into [`MemoryView::label_names`]) of each of `rows`.
    fn labels(&self, rows: &[i64]) -> Result<Vec<Option<u32>>>;
    /// Entry `row`'s metadata.
    fn metadata(&self, row: i64) -> Result<MetadataRow>;
    /// The metadata of `rows`, in order (one request to a remote memory).
    fn metadata_of(&self, rows: &[i64]) -> Result<Vec<MetadataRow>> {
        rows.iter().map(|&row| self.metadata(row)).collect()
    }
    /// A fingerprint of the memory as it is now: it changes with every
    /// commit (entries added, relabelled, deleted).
    fn fingerprint(&self) -> Result<String>;
    /// The memory as a directory here, where it is one (its HNSW index,
    /// neighbour cache and files live beside it).
    fn local(self: Arc<Self>) -> Option<Arc<Memory>> {
        None
    }
    /// Whether the `kind` values of `rows` are stored as their keys bit
    /// for bit (then a reader need not gather them twice); `false` when
    /// it cannot tell cheaply.
    fn values_equal_keys(&self, kind: ValueKind, rows: &[i64]) -> Result<bool> {
        let _ = (kind, rows);
        Ok(false)
    }

    /// Committed entries (deleted ones included: ids run `0..count`).
    fn count(&self) -> u64 {
        self.manifest().count
    }
    /// Values per key.
    fn key_dim(&self) -> usize {
        self.manifest().key.dim
    }
    /// Values per `kind` value, if the memory holds them.
    fn value_dim(&self, kind: ValueKind) -> Option<usize> {
        let values = &self.manifest().values;
        match kind {
            ValueKind::Image => values.image.as_ref().map(|v| v.dim),
            ValueKind::Text => values.text.as_ref().map(|v| v.dim),
        }
    }
    /// The memory's class names; a label is an index into them.
    fn label_names(&self) -> &[String] {
        self.manifest()
            .labels
            .as_ref()
            .map_or(&[], |l| l.names.as_slice())
    }
    /// Entry `row`'s class name, where it has a label.
    fn label_name(&self, row: i64) -> Result<Option<&str>> {
        let label = self.labels(&[row])?.pop().flatten();
        Ok(label.and_then(|l| self.label_names().get(l as usize).map(String::as_str)))
    }
}

impl MemoryView for Memory {
    fn location(&self) -> String {
        self.dir().display().to_string()
    }
    fn settings_location(&self) -> String {
        self.dir().join(super::MANIFEST_FILE).display().to_string()
    }
    fn manifest(&self) -> &Manifest {
        Memory::manifest(self)
    }
    fn live_count(&self) -> u64 {
        Memory::live_count(self)
    }
    fn is_deleted(&self, row: i64) -> bool {
        Memory::is_deleted(self, row)
    }
    fn gather_keys(&self, rows: &[i64]) -> Result<Vec<f32>> {
        Memory::gather_keys(self, rows)
    }
    fn gather_values(&self, kind: ValueKind, rows: &[i64]) -> Result<Vec<f32>> {
        Memory::gather_values(self, kind, rows)
    }
    fn labels(&self, rows: &[i64]) -> Result<Vec<Option<u32>>> {
        Memory::labels(self, rows)
    }
    fn metadata(&self, row: i64) -> Result<MetadataRow> {
        Memory::metadata(self, row)
    }
    /// FNV-1a 64 of its `manifest.json`, which every commit rewrites.
    fn fingerprint(&self) -> Result<String> {
        let path = self.dir().join(super::MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|error| crate::StoreError::Io {
            path: path.clone(),
            action: "read",
            error,
        })?;
        Ok(Fnv1a::new().write(&bytes).hex())
    }
    fn local(self: Arc<Self>) -> Option<Arc<Memory>> {
        Some(self)
    }
    fn values_equal_keys(&self, kind: ValueKind, rows: &[i64]) -> Result<bool> {
        Memory::values_equal_keys(self, kind, rows)
    }
    fn label_name(&self, row: i64) -> Result<Option<&str>> {
        Memory::label_name(self, row)
    }
}
