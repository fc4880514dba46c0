//! Appending shards to a memory.
//!
//! One writer at a time per memory directory: a writer holds the memory's
//! writer lock (`writer.lock`, see `lock.rs`) while it lives, and a second
//! one is refused. Every append follows the same protocol:
//!
//! 1. write the shard's files into `.tmp-shard-NNNNNN-PID/` and sync them;
//! 2. sync that directory and rename it to `shard-NNNNNN`, then sync the
//!    memory directory;
//! 3. rewrite `manifest.json` atomically with the shard added (the commit).
//!
//! A shard directory that exists but is not in the manifest is therefore
//! uncommitted; [`MemoryWriter::open_append`] removes such leftovers, and
//! readers never look at them. Edits ([`MemoryWriter::edit`]) commit the
//! same way: a new edits file, then the manifest (see `edits.rs`).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::edits::Edits;
use super::lock::WriterLock;
use super::manifest::{
    KeySpec, LabelSpec, Manifest, ShardEntry, ValueSpec, ValuesSpec, FORMAT_NAME, VERSION,
};
use super::{
    shard_name, FloatDtype, MetadataEntry, MetadataRow, ValueKind, KEYS_FILE, LABELS_FILE,
    MANIFEST_FILE, METADATA_FILE, TEMP_SHARD_PREFIX,
};
use crate::atomic::AtomicFile;
use crate::error::{IoContext, Result, StoreError};
use crate::npy::NpyWriter;

/// Rows normalised and converted per write call, bounding scratch memory.
const ROWS_PER_WRITE: usize = 1024;

/// What a new memory holds, given to [`MemoryWriter::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySpec {
    /// Name of the key encoder (recorded in the manifest).
    pub key_encoder: String,
    /// Values per key.
    pub key_dim: usize,
    /// How keys are stored; [`FloatDtype::F16`] is the usual choice.
    pub key_dtype: FloatDtype,
    /// Whether the writer scales every key to unit L2 norm (recorded as
    /// `key.normalized`). A zero key is then an error.
    pub normalize_keys: bool,
    /// Image values, if rows carry them.
    pub image: Option<ValueSpec>,
    /// Text values, if rows carry them.
    pub text: Option<ValueSpec>,
}

impl MemorySpec {
    /// Keys only, no values.
    pub fn new(
        key_encoder: impl Into<String>,
        key_dim: usize,
        key_dtype: FloatDtype,
        normalize_keys: bool,
    ) -> Self {
        MemorySpec {
            key_encoder: key_encoder.into(),
            key_dim,
            key_dtype,
            normalize_keys,
            image: None,
            text: None,
        }
    }

    /// The manifest's `key` field for this spec.
    pub fn key_spec(&self) -> KeySpec {
        KeySpec {
            encoder: self.key_encoder.clone(),
            dim: self.key_dim,
            dtype: self.key_dtype,
            normalized: self.normalize_keys,
        }
    }

    /// The manifest's `values` field for this spec.
    pub fn values_spec(&self) -> ValuesSpec {
        ValuesSpec {
            image: self.image.clone(),
            text: self.text.clone(),
        }
    }

    /// The settings in which `manifest` (an existing memory) differs from
    /// this spec, in words: `key encoder: the memory has "a", this would
    /// write "b"`. Empty when they agree.
    pub fn differences(&self, manifest: &Manifest) -> Vec<String> {
        let mut out = Vec::new();
        let mut differ = |what: &str, theirs: String, ours: String| {
            if theirs != ours {
                out.push(format!(
                    "{what}: the memory has {theirs}, this would write {ours}"
                ));
            }
        };
        let key = &manifest.key;
        differ(
            "key encoder",
            format!("{:?}", key.encoder),
            format!("{:?}", self.key_encoder),
        );
        differ(
            "key dimension",
            key.dim.to_string(),
            self.key_dim.to_string(),
        );
        differ(
            "key dtype",
            key.dtype.name().into(),
            self.key_dtype.name().into(),
        );
        let unit = |normalized: bool| {
            if normalized {
                "unit-length keys"
            } else {
                "keys as given"
            }
        };
        differ(
            "key scaling",
            unit(key.normalized).into(),
            unit(self.normalize_keys).into(),
        );
        let value = |v: &Option<ValueSpec>| match v {
            None => "none".to_string(),
            Some(v) => format!("{}-d {} from {:?}", v.dim, v.dtype.name(), v.encoder),
        };
        differ(
            "image values",
            value(&manifest.values.image),
            value(&self.image),
        );
        differ(
            "text values",
            value(&manifest.values.text),
            value(&self.text),
        );
        out
    }

    pub(crate) fn from_manifest(m: &Manifest) -> Self {
        MemorySpec {
            key_encoder: m.key.encoder.clone(),
            key_dim: m.key.dim,
            key_dtype: m.key.dtype,
            normalize_keys: m.key.normalized,
            image: m.values.image.clone(),
            text: m.values.text.clone(),
        }
    }
}

/// The rows of one shard, as `f32`, row after row.
#[derive(Debug, Clone, Copy)]
pub struct ShardBatch<'a> {
    /// `rows * key_dim` values.
    pub keys: &'a [f32],
    /// `rows * image.dim` values; required exactly when the spec has image values.
    pub image_values: Option<&'a [f32]>,
    /// `rows * text.dim` values; required exactly when the spec has text values.
    pub text_values: Option<&'a [f32]>,
    /// One entry per row.
    pub metadata: &'a [MetadataEntry],
}

/// A committed shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// Position in the manifest's shard list.
    pub index: usize,
    /// Directory name.
    pub name: String,
    /// Global id of the first row.
    pub first_id: u64,
    /// Rows in the shard.
    pub count: u64,
}

/// Appends shards to a memory directory. See the module documentation for
/// the protocol that makes every append all-or-nothing.
#[derive(Debug)]
pub struct MemoryWriter {
    dir: PathBuf,
    manifest: Manifest,
    spec: MemorySpec,
    scratch: Vec<f32>,
    _lock: WriterLock,
}

impl MemoryWriter {
    /// Creates a new, empty memory at `dir` (created if missing; an existing
    /// directory must be empty) and commits its manifest with no shards.
    pub fn create(dir: impl AsRef<Path>, spec: MemorySpec) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        check_spec(&dir, &spec)?;
        if dir.join(MANIFEST_FILE).exists() {
            return Err(StoreError::Invalid {
                path: dir,
                reason: format!(
                    "a memory already exists here ({MANIFEST_FILE} is present); open it for appending instead"
                ),
            });
        }
        fs::create_dir_all(&dir).at(&dir, "create directory")?;
        if let Some(entry) = fs::read_dir(&dir).at(&dir, "list")?.next() {
            let entry = entry.at(&dir, "list")?;
            return Err(StoreError::Invalid {
                path: dir,
                reason: format!(
                    "the directory is not empty (it holds {:?}) and is not a memory; \
                     a new memory needs an empty or missing directory",
                    entry.file_name()
                ),
            });
        }
        let lock = WriterLock::acquire(&dir)?;
        let manifest = Manifest {
            format: FORMAT_NAME.to_string(),
            version: VERSION,
            count: 0,
            key: spec.key_spec(),
            values: spec.values_spec(),
            shards: Vec::new(),
            created_by: format!("ramem-store {}", env!("CARGO_PKG_VERSION")),
            labels: None,
            edits: None,
        };
        manifest.write(&dir)?;
        Ok(MemoryWriter {
            dir,
            manifest,
            spec,
            scratch: Vec::new(),
            _lock: lock,
        })
    }

    /// Opens an existing memory for appending. Checks that every committed
    /// shard's files are present with the shapes the manifest records, and
    /// removes what a killed writer left behind (temporary and uncommitted
    /// shard directories, temporary manifest files).
    pub fn open_append(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        // Read first: a directory that is no memory gets that error, not a lock file.
        Manifest::read(&dir)?;
        let lock = WriterLock::acquire(&dir)?;
        // Read again under the lock: another writer may have committed meanwhile.
        let manifest = Manifest::read(&dir)?;
        for (i, _) in manifest.shards.iter().enumerate() {
            super::reader::check_shard_headers(&dir, &manifest, i)?;
        }
        remove_leftovers(&dir, &manifest)?;
        let spec = MemorySpec::from_manifest(&manifest);
        Ok(MemoryWriter {
            dir,
            manifest,
            spec,
            scratch: Vec::new(),
            _lock: lock,
        })
    }

    /// Gives a memory that holds no rows yet another spec (for a first
    /// import that failed before its first shard and is retried with other
    /// input). A memory with rows keeps its spec: that is an error.
    pub fn respec_empty(&mut self, spec: MemorySpec) -> Result<()> {
        if self.manifest.count > 0 {
            return Err(StoreError::Invalid {
                path: self.dir.join(MANIFEST_FILE),
                reason: format!(
                    "the memory holds {} rows; its settings cannot change",
                    self.manifest.count
                ),
            });
        }
        check_spec(&self.dir, &spec)?;
        let mut next = self.manifest.clone();
        next.key = spec.key_spec();
        next.values = spec.values_spec();
        next.write(&self.dir)?;
        self.manifest = next;
        self.spec = spec;
        Ok(())
    }

    /// The memory directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest as last committed.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// What the memory holds.
    pub fn spec(&self) -> &MemorySpec {
        &self.spec
    }

    /// Committed rows.
    pub fn count(&self) -> u64 {
        self.manifest.count
    }

    /// Validates `batch`, writes it as the next shard and commits it.
    /// Errors about a row give its global id (the id it would have had).
    /// Nothing is written if validation fails; if writing fails or the
    /// process dies, the memory is left as it was before the call.
    pub fn append_shard(&mut self, batch: ShardBatch<'_>) -> Result<ShardInfo> {
        self.append(batch, true)
    }

    /// [`MemoryWriter::append_shard`] of keys read back from a memory with
    /// this spec: they are stored as given, not scaled to unit length again
    /// (rescaling keys rounded to f16 would change their last bits), so a
    /// copy of a memory's rows holds the same bits.
    pub fn append_stored_shard(&mut self, batch: ShardBatch<'_>) -> Result<ShardInfo> {
        self.append(batch, false)
    }

    fn append(&mut self, batch: ShardBatch<'_>, scale_keys: bool) -> Result<ShardInfo> {
        let rows = self.validate(&batch)?;
        let mut next = self.manifest.clone();
        let labels = label_column(&mut next, batch.metadata);
        let index = self.manifest.shards.len();
        let name = shard_name(index);
        let first_id = self.manifest.count;
        let temp = self.dir.join(format!(
            "{TEMP_SHARD_PREFIX}{index:06}-{}",
            std::process::id()
        ));
        if temp.exists() {
            fs::remove_dir_all(&temp).at(&temp, "remove stale temporary shard")?;
        }
        fs::create_dir(&temp).at(&temp, "create directory")?;
        let written = self
            .write_shard_files(&temp, &batch, rows, first_id, scale_keys)
            .and_then(|()| match &labels {
                Some(labels) => {
                    crate::npy::write_i64_matrix(temp.join(LABELS_FILE), labels.len(), 1, labels)
                }
                None => Ok(()),
            });
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&temp);
            return Err(e);
        }
        sync_dir(&temp)?;
        let final_dir = self.dir.join(&name);
        if final_dir.exists() {
            // Not in the manifest, so left by a writer that died between the
            // rename and the manifest commit.
            fs::remove_dir_all(&final_dir).at(&final_dir, "remove uncommitted shard")?;
        }
        fs::rename(&temp, &final_dir).at(&final_dir, "rename temporary shard to")?;
        sync_dir(&self.dir)?;

        next.shards.push(ShardEntry {
            name: name.clone(),
            first_id,
            count: rows as u64,
            labels: labels.is_some(),
        });
        next.count += rows as u64;
        next.write(&self.dir)?;
        self.manifest = next;
        Ok(ShardInfo {
            index,
            name,
            first_id,
            count: rows as u64,
        })
    }

    /// Adds the class names the memory does not know yet to its classes, in
    /// order, and commits them: labels written later index the names as
    /// given here (a data set's class order, say) rather than in order of
    /// first appearance.
    pub fn declare_classes(&mut self, names: &[String]) -> Result<()> {
        let mut next = self.manifest.clone();
        for name in names {
            class_index(&mut next, name);
        }
        if next != self.manifest {
            next.write(&self.dir)?;
            self.manifest = next;
        }
        Ok(())
    }

    /// Relabels entries (`None`: no label; a class name not seen before
    /// joins the memory's classes) and deletes entries, in one commit: a new
    /// edits file, then the manifest. Ids must be entries of the memory; a
    /// deleted entry cannot be relabelled. Deleting an entry twice is no
    /// error. Nothing changes if any id is refused.
    pub fn edit(
        &mut self,
        relabel: &[(i64, Option<String>)],
        delete: &[i64],
    ) -> Result<EditReport> {
        let count = self.manifest.count;
        let mut edits = match &self.manifest.edits {
            Some(entry) => Edits::read(&self.dir, entry, count)?,
            None => Edits::default(),
        };
        let out_of_range = |id: i64| StoreError::Invalid {
            path: self.dir.clone(),
            reason: format!("entry {id} does not exist (the memory has entries 0..{count})"),
        };
        for &id in delete {
            if id < 0 || id as u64 >= count {
                return Err(out_of_range(id));
            }
        }
        let mut next = self.manifest.clone();
        let mut report = EditReport::default();
        for id in delete {
            if edits.deleted.insert(*id) {
                report.deleted += 1;
            }
        }
        for (id, name) in relabel {
            if *id < 0 || *id as u64 >= count {
                return Err(out_of_range(*id));
            }
            if edits.deleted.contains(id) {
                return Err(StoreError::Invalid {
                    path: self.dir.clone(),
                    reason: format!("entry {id} is deleted and cannot be relabelled"),
                });
            }
            let label = name.as_deref().map(|n| class_index(&mut next, n));
            edits.relabel.insert(*id, label);
            report.relabeled += 1;
        }
        // A deleted entry's earlier relabel no longer matters.
        edits.relabel.retain(|id, _| !edits.deleted.contains(id));
        let generation = self.manifest.edits.as_ref().map_or(0, |e| e.generation) + 1;
        let old = self.manifest.edits.as_ref().map(|e| self.dir.join(&e.file));
        next.edits = Some(edits.write(&self.dir, generation)?);
        next.write(&self.dir)?;
        self.manifest = next;
        if let Some(old) = old {
            // Committed already: a file left here by a crash is removed by the next writer.
            let _ = fs::remove_file(old);
        }
        report.total_relabeled = edits.relabel.len() as u64;
        report.total_deleted = edits.deleted.len() as u64;
        Ok(report)
    }

    /// Checks dimensions, counts and finiteness; returns the row count.
    fn validate(&self, batch: &ShardBatch<'_>) -> Result<usize> {
        let bad = |reason: String| StoreError::Invalid {
            path: self.dir.clone(),
            reason,
        };
        let dim = self.spec.key_dim;
        if batch.keys.is_empty() {
            return Err(bad(
                "cannot append an empty shard (the batch has no keys)".into()
            ));
        }
        if !batch.keys.len().is_multiple_of(dim) {
            return Err(bad(format!(
                "batch keys: {} values are not whole rows of key dim {dim}",
                batch.keys.len()
            )));
        }
        let rows = batch.keys.len() / dim;
        let first_id = self.manifest.count;
        for (kind, spec, values) in [
            (ValueKind::Image, &self.spec.image, batch.image_values),
            (ValueKind::Text, &self.spec.text, batch.text_values),
        ] {
            match (spec, values) {
                (None, None) => {}
                (Some(_), None) => {
                    return Err(bad(format!(
                        "the memory has {} values but the batch has none",
                        kind.name()
                    )))
                }
                (None, Some(_)) => {
                    return Err(bad(format!(
                    "the batch has {} values but the memory holds none (its spec has no {} values)",
                    kind.name(),
                    kind.name()
                )))
                }
                (Some(spec), Some(values)) => {
                    if values.len() != rows * spec.dim {
                        return Err(bad(format!(
                            "batch {} values: {} values, expected {rows} rows x dim {} = {} (one row per key)",
                            kind.name(),
                            values.len(),
                            spec.dim,
                            rows * spec.dim
                        )));
                    }
                    let what = format!("batch {} values", kind.name());
                    check_finite(&self.dir, &what, values, spec.dim, first_id)?;
                    if spec.dtype == FloatDtype::F16 {
                        check_f16_range(&self.dir, &what, values, spec.dim, first_id)?;
                    }
                }
            }
        }
        check_finite(&self.dir, "batch keys", batch.keys, dim, first_id)?;
        if self.spec.key_dtype == FloatDtype::F16 && !self.spec.normalize_keys {
            check_f16_range(&self.dir, "batch keys", batch.keys, dim, first_id)?;
        }
        if batch.metadata.len() != rows {
            return Err(bad(format!(
                "batch has {rows} key rows but {} metadata entries",
                batch.metadata.len()
            )));
        }
        if self.spec.normalize_keys {
            for (r, row) in batch.keys.chunks_exact(dim).enumerate() {
                if row.iter().all(|&v| v == 0.0) {
                    return Err(bad(format!(
                        "batch keys row {r} (id {}) is all zeros and cannot be L2-normalised",
                        first_id + r as u64
                    )));
                }
            }
        }
        Ok(rows)
    }

    fn write_shard_files(
        &mut self,
        temp: &Path,
        batch: &ShardBatch<'_>,
        rows: usize,
        first_id: u64,
        scale_keys: bool,
    ) -> Result<()> {
        // Keys, normalised in bounded chunks when asked.
        let dim = self.spec.key_dim;
        let mut keys = NpyWriter::create(temp.join(KEYS_FILE), self.spec.key_dtype.npy(), dim)?;
        for chunk in batch.keys.chunks(ROWS_PER_WRITE * dim) {
            if self.spec.normalize_keys && scale_keys {
                self.scratch.clear();
                self.scratch.extend_from_slice(chunk);
                for row in self.scratch.chunks_exact_mut(dim) {
                    normalize(row);
                }
                keys.append_rows(&self.scratch)?;
            } else {
                keys.append_rows(chunk)?;
            }
        }
        keys.finish()?;

        for (kind, spec, values) in [
            (ValueKind::Image, &self.spec.image, batch.image_values),
            (ValueKind::Text, &self.spec.text, batch.text_values),
        ] {
            if let (Some(spec), Some(values)) = (spec, values) {
                let mut w =
                    NpyWriter::create(temp.join(kind.file_name()), spec.dtype.npy(), spec.dim)?;
                w.append_rows(values)?;
                w.finish()?;
            }
        }

        let path = temp.join(METADATA_FILE);
        let mut meta = AtomicFile::create(&path)?;
        for (r, entry) in batch.metadata.iter().enumerate().take(rows) {
            let row = MetadataRow {
                id: (first_id + r as u64) as i64,
                source: entry.source.clone(),
                caption: entry.caption.clone(),
            };
            serde_json::to_writer(&mut meta, &row).map_err(|e| StoreError::Invalid {
                path: path.clone(),
                reason: format!("cannot write metadata row {r}: {e}"),
            })?;
            meta.write_all(b"\n").at(&path, "write")?;
        }
        meta.commit()
    }
}

/// What [`MemoryWriter::edit`] changed, and the memory's edits since its
/// last compaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EditReport {
    pub relabeled: u64,
    /// Entries newly deleted (not counting ones deleted before).
    pub deleted: u64,
    pub total_relabeled: u64,
    pub total_deleted: u64,
}

/// The index of class `name` in `manifest`'s vocabulary, added there if new.
fn class_index(manifest: &mut Manifest, name: &str) -> u32 {
    let names = &mut manifest.labels.get_or_insert_with(LabelSpec::default).names;
    match names.iter().position(|n| n == name) {
        Some(i) => i as u32,
        None => {
            names.push(name.to_string());
            (names.len() - 1) as u32
        }
    }
}

/// The label column of a shard (-1 where an entry has none), or `None`
/// when no entry has a label; new class names join `manifest`'s vocabulary.
fn label_column(manifest: &mut Manifest, metadata: &[MetadataEntry]) -> Option<Vec<i64>> {
    if metadata.iter().all(|m| m.label.is_none()) {
        return None;
    }
    let mut known: std::collections::HashMap<String, i64> = manifest
        .labels
        .iter()
        .flat_map(|l| l.names.iter().enumerate())
        .map(|(i, n)| (n.clone(), i as i64))
        .collect();
    Some(
        metadata
            .iter()
            .map(|m| match m.label.as_deref() {
                None => -1,
                Some(name) => match known.get(name) {
                    Some(&i) => i,
                    None => {
                        let i = i64::from(class_index(manifest, name));
                        known.insert(name.to_string(), i);
                        i
                    }
                },
            })
            .collect(),
    )
}

/// Checks that a spec describes something storable.
fn check_spec(dir: &Path, spec: &MemorySpec) -> Result<()> {
    let bad = |reason: String| StoreError::Invalid {
        path: dir.to_path_buf(),
        reason,
    };
    if spec.key_dim == 0 {
        return Err(bad("the key dimension is 0".into()));
    }
    for (kind, v) in [("image", &spec.image), ("text", &spec.text)] {
        if v.as_ref().is_some_and(|v| v.dim == 0) {
            return Err(bad(format!("the {kind} value dimension is 0")));
        }
    }
    Ok(())
}

/// Errors on the first NaN or infinite value, naming `what` and the row.
pub(crate) fn check_finite(
    path: &Path,
    what: &str,
    values: &[f32],
    dim: usize,
    first_row: u64,
) -> Result<()> {
    if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
        return Err(StoreError::NonFinite {
            path: path.to_path_buf(),
            what: what.to_string(),
            row: first_row + (pos / dim) as u64,
            col: pos % dim,
            value: values[pos],
        });
    }
    Ok(())
}

/// Errors on the first value too large for f16 (it would be stored as
/// infinity), naming `what` and the row.
fn check_f16_range(
    path: &Path,
    what: &str,
    values: &[f32],
    dim: usize,
    first_row: u64,
) -> Result<()> {
    let max = half::f16::MAX.to_f32();
    if let Some(pos) = values.iter().position(|v| v.abs() > max) {
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "{what} row {} holds {} at column {}, beyond the f16 range (largest {max}); \
                 store this matrix as f32",
                first_row + (pos / dim) as u64,
                values[pos],
                pos % dim
            ),
        });
    }
    Ok(())
}

/// Scales `row` to unit L2 norm (accumulating in f64 for accuracy).
fn normalize(row: &mut [f32]) {
    let norm = row
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for v in row {
            *v = (f64::from(*v) / norm) as f32;
        }
    }
}

/// Syncs a directory so that renames inside it are durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at(dir, "sync directory")
}

/// Removes temporary shards, uncommitted shard directories and temporary
/// manifest files.
fn remove_leftovers(dir: &Path, manifest: &Manifest) -> Result<()> {
    for entry in fs::read_dir(dir).at(dir, "list")? {
        let entry = entry.at(dir, "list")?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        let committed = manifest.shards.iter().any(|s| s.name == name);
        let ours =
            name.starts_with(TEMP_SHARD_PREFIX) || (name.starts_with("shard-") && !committed);
        if ours && path.is_dir() {
            fs::remove_dir_all(&path).at(&path, "remove uncommitted shard")?;
        } else if name.starts_with(&format!(".{MANIFEST_FILE}.")) && name.ends_with(".tmp") {
            fs::remove_file(&path).at(&path, "remove temporary manifest")?;
        } else if is_edits_file(name)
            && manifest.edits.as_ref().is_none_or(|e| e.file != name)
            && path.is_file()
        {
            // An edits file a crash left uncommitted, or one already replaced.
            fs::remove_file(&path).at(&path, "remove stale edits file")?;
        }
    }
    Ok(())
}

/// An edits file or its temporary (`edits-NNNNNN.json`, `.edits-NNNNNN.json.*.tmp`).
fn is_edits_file(name: &str) -> bool {
    (name.starts_with("edits-") && name.ends_with(".json"))
        || (name.starts_with(".edits-") && name.ends_with(".tmp"))
}
