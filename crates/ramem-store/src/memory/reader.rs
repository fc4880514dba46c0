//! Opening a memory for reading: memory-mapped matrices, lazy metadata.
//!
//! [`Memory::open`] reads the manifest, then for every committed shard
//! checks each `.npy` header against it (dtype, shape, exact file length)
//! and maps the file. The element data is used in place: `.npy` data starts
//! at the header's data offset, which ramem's writer places at byte 128 and
//! NumPy pads to a multiple of 64, so it is aligned for `f16` and `f32`.
//!
//! Metadata is read only when asked for: the first [`Memory::metadata`] call
//! on a shard scans its `metadata.jsonl` once to index the line offsets.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use half::f16;
use half::slice::HalfFloatSliceExt;
use memmap2::Mmap;
use rayon::prelude::*;

use super::edits::{Edits, RowSet};
use super::manifest::{Manifest, ShardEntry};
use super::{FloatDtype, MetadataRow, ValueKind, KEYS_FILE, LABELS_FILE, METADATA_FILE};
use crate::error::{IoContext, Result, StoreError};
use crate::npy::{read_header, NpyHeader};

/// Gathers of at least this many rows are split over the cores.
const PARALLEL_GATHER_ROWS: usize = 256;

/// Borrowed key data of one shard, in its stored type.
#[derive(Debug, Clone, Copy)]
pub enum KeysData<'a> {
    /// Half-precision keys.
    F16(&'a [f16]),
    /// Single-precision keys.
    F32(&'a [f32]),
}

/// The keys of one shard: `rows x dim` values, row after row, borrowed from
/// the memory map.
#[derive(Debug, Clone, Copy)]
pub struct KeysView<'a> {
    /// The values.
    pub data: KeysData<'a>,
    /// Values per key.
    pub dim: usize,
    /// Rows in the shard.
    pub rows: usize,
    /// Global id of the shard's first row.
    pub first_id: i64,
}

impl KeysView<'_> {
    /// Row `i` of the shard widened to `f32`; `None` past the end.
    pub fn row_f32(&self, i: usize) -> Option<Vec<f32>> {
        if i >= self.rows {
            return None;
        }
        let range = i * self.dim..(i + 1) * self.dim;
        Some(match self.data {
            KeysData::F16(d) => d[range].iter().map(|v| v.to_f32()).collect(),
            KeysData::F32(d) => d[range].to_vec(),
        })
    }
}

/// A memory-mapped `.npy` matrix checked against the manifest.
#[derive(Debug)]
struct Mapped {
    map: Mmap,
    offset: usize,
    dtype: FloatDtype,
    rows: usize,
    cols: usize,
}

impl Mapped {
    fn open(path: PathBuf, dtype: FloatDtype, rows: usize, cols: usize) -> Result<Mapped> {
        let header = check_header(&path, dtype, rows, cols)?;
        let file = File::open(&path).at(&path, "open")?;
        // SAFETY: a committed shard file is never modified or truncated by
        // ramem (the format is append-only by whole shards), and its length
        // was just checked against the header. Changing it behind ramem's
        // back is outside the format's contract.
        let map = unsafe { Mmap::map(&file) }.at(&path, "memory-map")?;
        let offset = header.data_offset as usize;
        let needed = offset + rows * cols * dtype.item_size();
        if map.len() < needed {
            // The file shrank between the header check and the map.
            return Err(StoreError::Truncated {
                path,
                what: "the array data",
                expected: needed as u64,
                actual: map.len() as u64,
            });
        }
        if !(map.as_ptr() as usize + offset).is_multiple_of(dtype.item_size()) {
            return Err(StoreError::Invalid {
                path,
                reason: format!(
                    "array data starts at byte {offset}, not aligned for {}",
                    dtype.name()
                ),
            });
        }
        Ok(Mapped {
            map,
            offset,
            dtype,
            rows,
            cols,
        })
    }

    fn bytes(&self) -> &[u8] {
        &self.map[self.offset..self.offset + self.rows * self.cols * self.dtype.item_size()]
    }

    fn f16s(&self) -> &[f16] {
        debug_assert_eq!(self.dtype, FloatDtype::F16);
        let b = self.bytes();
        // SAFETY: alignment was checked in `open`; f16 is a plain 2-byte
        // value for which every bit pattern is valid; the length is exact.
        unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f16>(), b.len() / 2) }
    }

    fn f32s(&self) -> &[f32] {
        debug_assert_eq!(self.dtype, FloatDtype::F32);
        let b = self.bytes();
        // SAFETY: as for `f16s`, with 4-byte floats.
        unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len() / 4) }
    }

    /// The stored bytes of row `i`.
    fn row_bytes(&self, i: usize) -> &[u8] {
        let width = self.cols * self.dtype.item_size();
        &self.bytes()[i * width..(i + 1) * width]
    }

    /// Row `i` widened into `out` (`cols` long).
    fn row_to(&self, i: usize, out: &mut [f32]) {
        let range = i * self.cols..(i + 1) * self.cols;
        match self.dtype {
            FloatDtype::F16 => self.f16s()[range].convert_to_f32_slice(out),
            FloatDtype::F32 => out.copy_from_slice(&self.f32s()[range]),
        }
    }
}

#[derive(Debug)]
struct Shard {
    first_id: u64,
    rows: usize,
    keys: Mapped,
    image: Option<Mapped>,
    text: Option<Mapped>,
    metadata_path: PathBuf,
    /// Byte offset of each line, plus the file length at the end.
    metadata_index: OnceLock<Vec<u64>>,
    /// The shard's `labels.npy`, where it has one (read on first use).
    labels_path: Option<PathBuf>,
    labels: OnceLock<Vec<i64>>,
}

/// An open, read-only memory. Cheap to share between threads.
#[derive(Debug)]
pub struct Memory {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<Shard>,
    /// Relabels and deletions in force (see `edits.rs`).
    edits: Edits,
    /// The deleted entries, as searches test them; `None` when there are none.
    deleted: Option<RowSet>,
}

impl Memory {
    /// Opens the memory at `dir`: reads the manifest (refusing a newer format
    /// version), checks every committed shard's files against it and maps
    /// them. Shard directories not listed in the manifest are ignored.
    pub fn open(dir: impl AsRef<Path>) -> Result<Memory> {
        if cfg!(target_endian = "big") {
            return Err(StoreError::Invalid {
                path: dir.as_ref().to_path_buf(),
                reason: "memories store little-endian data; this platform is big-endian".into(),
            });
        }
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::read(&dir)?;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        for entry in &manifest.shards {
            let sdir = dir.join(&entry.name);
            if !sdir.is_dir() {
                return Err(missing_shard(&sdir, &entry.name));
            }
            let rows = entry.count as usize;
            let keys = Mapped::open(
                sdir.join(KEYS_FILE),
                manifest.key.dtype,
                rows,
                manifest.key.dim,
            )?;
            let map_values = |kind: ValueKind| -> Result<Option<Mapped>> {
                let spec = match kind {
                    ValueKind::Image => &manifest.values.image,
                    ValueKind::Text => &manifest.values.text,
                };
                spec.as_ref()
                    .map(|s| Mapped::open(sdir.join(kind.file_name()), s.dtype, rows, s.dim))
                    .transpose()
            };
            let image = map_values(ValueKind::Image)?;
            let text = map_values(ValueKind::Text)?;
            let metadata_path = sdir.join(METADATA_FILE);
            if !metadata_path.is_file() {
                return Err(StoreError::Invalid {
                    path: metadata_path,
                    reason: format!("missing; shard {} is committed in the manifest", entry.name),
                });
            }
            let labels_path = match entry.labels {
                true => Some(check_labels_header(&sdir, entry)?),
                false => None,
            };
            shards.push(Shard {
                first_id: entry.first_id,
                rows,
                keys,
                image,
                text,
                metadata_path,
                metadata_index: OnceLock::new(),
                labels_path,
                labels: OnceLock::new(),
            });
        }
        let edits = match &manifest.edits {
            Some(entry) => Edits::read(&dir, entry, manifest.count)?,
            None => Edits::default(),
        };
        let deleted = (!edits.deleted.is_empty())
            .then(|| RowSet::new(manifest.count, edits.deleted.iter().copied()));
        Ok(Memory {
            dir,
            manifest,
            shards,
            edits,
            deleted,
        })
    }

    /// The class names labels index (empty when no entry has a label).
    pub fn label_names(&self) -> &[String] {
        self.manifest
            .labels
            .as_ref()
            .map_or(&[][..], |l| &l.names[..])
    }

    /// The label of entry `row` (an index into [`Memory::label_names`]),
    /// with relabels applied; `None` when it has none.
    pub fn label(&self, row: i64) -> Result<Option<u32>> {
        if let Some(label) = self.edits.relabel.get(&row) {
            return Ok(*label);
        }
        let (s, i) = self.locate(row)?;
        let shard = &self.shards[s];
        let Some(path) = &shard.labels_path else {
            return Ok(None);
        };
        let labels = match shard.labels.get() {
            Some(labels) => labels,
            None => {
                let read = read_labels(path, shard.rows, self.label_names().len())?;
                let _ = shard.labels.set(read);
                shard.labels.get().expect("just set")
            }
        };
        Ok(u32::try_from(labels[i]).ok())
    }

    /// The class name of entry `row`, if it has a label.
    pub fn label_name(&self, row: i64) -> Result<Option<&str>> {
        Ok(self
            .label(row)?
            .and_then(|l| self.label_names().get(l as usize))
            .map(String::as_str))
    }

    /// The labels of `rows` (see [`Memory::label`]).
    pub fn labels(&self, rows: &[i64]) -> Result<Vec<Option<u32>>> {
        rows.iter().map(|&r| self.label(r)).collect()
    }

    /// Whether entry `row` is deleted (a tombstone: searches skip it).
    pub fn is_deleted(&self, row: i64) -> bool {
        self.deleted.as_ref().is_some_and(|d| d.contains(row))
    }

    /// The deleted entries, `None` when there are none: what a search skips.
    pub fn deleted(&self) -> Option<&RowSet> {
        self.deleted.as_ref()
    }

    /// Entries not deleted.
    pub fn live_count(&self) -> u64 {
        self.manifest.count - self.edits.deleted.len() as u64
    }

    /// The relabels and deletions in force.
    pub fn edits(&self) -> &Edits {
        &self.edits
    }

    /// The memory directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest read at open.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Rows (entries) in the memory.
    pub fn count(&self) -> u64 {
        self.manifest.count
    }

    /// Values per key.
    pub fn key_dim(&self) -> usize {
        self.manifest.key.dim
    }

    /// How keys are stored.
    pub fn key_dtype(&self) -> FloatDtype {
        self.manifest.key.dtype
    }

    /// Values per row of `kind`, or `None` when the memory has none.
    pub fn value_dim(&self, kind: ValueKind) -> Option<usize> {
        match kind {
            ValueKind::Image => self.manifest.values.image.as_ref().map(|s| s.dim),
            ValueKind::Text => self.manifest.values.text.as_ref().map(|s| s.dim),
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The keys of shard `i`, borrowed from the memory map. Panics if
    /// `i >= shard_count()`, like slice indexing.
    pub fn shard_keys(&self, i: usize) -> KeysView<'_> {
        let s = &self.shards[i];
        let data = match s.keys.dtype {
            FloatDtype::F16 => KeysData::F16(s.keys.f16s()),
            FloatDtype::F32 => KeysData::F32(s.keys.f32s()),
        };
        KeysView {
            data,
            dim: s.keys.cols,
            rows: s.rows,
            first_id: s.first_id as i64,
        }
    }

    /// The `kind` values of shard `i`, borrowed from the memory map, as a
    /// matrix to search like keys; `None` when the memory has no `kind`
    /// values. Panics if `i >= shard_count()`, like slice indexing.
    pub fn shard_values(&self, i: usize, kind: ValueKind) -> Option<KeysView<'_>> {
        let s = &self.shards[i];
        let mapped = match kind {
            ValueKind::Image => s.image.as_ref(),
            ValueKind::Text => s.text.as_ref(),
        }?;
        let data = match mapped.dtype {
            FloatDtype::F16 => KeysData::F16(mapped.f16s()),
            FloatDtype::F32 => KeysData::F32(mapped.f32s()),
        };
        Some(KeysView {
            data,
            dim: mapped.cols,
            rows: s.rows,
            first_id: s.first_id as i64,
        })
    }

    /// The key of global row `row`, widened to `f32`.
    pub fn key(&self, row: i64) -> Result<Vec<f32>> {
        self.gather_keys(&[row])
    }

    /// The keys of `rows`, widened to `f32` and concatenated
    /// (`rows.len() * key_dim` values).
    pub fn gather_keys(&self, rows: &[i64]) -> Result<Vec<f32>> {
        self.gather(rows, self.key_dim(), |shard| &shard.keys)
    }

    /// The `kind` value of global row `row`, widened to `f32`.
    pub fn values(&self, kind: ValueKind, row: i64) -> Result<Vec<f32>> {
        self.gather_values(kind, &[row])
    }

    /// The `kind` values of `rows`, concatenated (`rows.len() * dim` values).
    pub fn gather_values(&self, kind: ValueKind, rows: &[i64]) -> Result<Vec<f32>> {
        let dim = self.value_dim(kind).ok_or_else(|| StoreError::Invalid {
            path: self.dir.join(super::MANIFEST_FILE),
            reason: format!("the memory has no {} values", kind.name()),
        })?;
        self.gather(rows, dim, |shard| {
            match kind {
                ValueKind::Image => shard.image.as_ref(),
                ValueKind::Text => shard.text.as_ref(),
            }
            .expect("every shard maps the values the manifest declares")
        })
    }

    /// Whether the `kind` values of `rows` are stored bit for bit as their
    /// keys (a memory that keeps the normalised image embedding as both
    /// key and value): then a reader need not gather them twice.
    pub fn values_equal_keys(&self, kind: ValueKind, rows: &[i64]) -> Result<bool> {
        let Some(dim) = self.value_dim(kind) else {
            return Ok(false);
        };
        if dim != self.key_dim() {
            return Ok(false);
        }
        for &row in rows {
            let (s, i) = self.locate(row)?;
            let shard = &self.shards[s];
            let values = match kind {
                ValueKind::Image => shard.image.as_ref(),
                ValueKind::Text => shard.text.as_ref(),
            };
            let Some(values) = values else {
                return Ok(false);
            };
            if values.dtype != shard.keys.dtype || values.row_bytes(i) != shard.keys.row_bytes(i) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Rows of the matrix `matrix` picks from each shard, `dim` wide,
    /// widened into one buffer; large gathers (a neighbour bank) run on all
    /// cores.
    fn gather(
        &self,
        rows: &[i64],
        dim: usize,
        matrix: impl Fn(&Shard) -> &Mapped + Sync,
    ) -> Result<Vec<f32>> {
        let located = rows
            .iter()
            .map(|&row| self.locate(row))
            .collect::<Result<Vec<_>>>()?;
        let mut out = vec![0.0f32; rows.len() * dim];
        if dim == 0 {
            return Ok(out);
        }
        let copy = |(&(s, i), row): (&(usize, usize), &mut [f32])| {
            matrix(&self.shards[s]).row_to(i, row);
        };
        if rows.len() >= PARALLEL_GATHER_ROWS {
            located
                .par_iter()
                .zip(out.par_chunks_mut(dim))
                .for_each(copy);
        } else {
            located.iter().zip(out.chunks_mut(dim)).for_each(copy);
        }
        Ok(out)
    }

    /// The metadata of global row `row`, read from its shard's
    /// `metadata.jsonl` (indexed on first use).
    pub fn metadata(&self, row: i64) -> Result<MetadataRow> {
        let (s, i) = self.locate(row)?;
        let shard = &self.shards[s];
        let path = &shard.metadata_path;
        let index = match shard.metadata_index.get() {
            Some(index) => index,
            None => {
                let built = index_lines(path, shard.rows)?;
                // Another thread may have won the race; either index is the same.
                let _ = shard.metadata_index.set(built);
                shard.metadata_index.get().expect("just set")
            }
        };
        let (start, end) = (index[i], index[i + 1]);
        let mut file = File::open(path).at(path, "open")?;
        file.seek(SeekFrom::Start(start)).at(path, "seek in")?;
        let mut line = vec![0u8; (end - start) as usize];
        file.read_exact(&mut line).at(path, "read")?;
        let parsed: MetadataRow =
            serde_json::from_slice(&line).map_err(|e| StoreError::Invalid {
                path: path.clone(),
                reason: format!("line {} (row {row}) is not a metadata object: {e}", i + 1),
            })?;
        if parsed.id != row {
            return Err(StoreError::Invalid {
                path: path.clone(),
                reason: format!("line {} has id {}, expected {row}", i + 1, parsed.id),
            });
        }
        Ok(parsed)
    }

    /// Finds the shard and local row of a global id.
    fn locate(&self, row: i64) -> Result<(usize, usize)> {
        if row < 0 || row as u64 >= self.manifest.count {
            return Err(StoreError::Invalid {
                path: self.dir.clone(),
                reason: format!(
                    "row {row} is out of range (the memory has {} rows)",
                    self.manifest.count
                ),
            });
        }
        let row = row as u64;
        let s = self.shards.partition_point(|s| s.first_id <= row) - 1;
        Ok((s, (row - self.shards[s].first_id) as usize))
    }
}

/// Checks the header of one shard file against what the manifest says.
fn check_header(path: &Path, dtype: FloatDtype, rows: usize, cols: usize) -> Result<NpyHeader> {
    if !path.exists() {
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: "missing; the manifest commits this shard".into(),
        });
    }
    let header = read_header(path)?;
    if header.dtype != dtype.npy() {
        return Err(StoreError::DtypeMismatch {
            path: path.to_path_buf(),
            expected: dtype.npy().descr(),
            found: header.dtype.descr(),
        });
    }
    if header.shape != [rows, cols] {
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "shape {:?}, but the manifest says {rows} rows x dim {cols}",
                header.shape
            ),
        });
    }
    Ok(header)
}

/// Checks a shard's `labels.npy` header (`<i8`, one per row); returns its path.
fn check_labels_header(sdir: &Path, entry: &ShardEntry) -> Result<PathBuf> {
    let path = sdir.join(LABELS_FILE);
    if !path.is_file() {
        return Err(StoreError::Invalid {
            path,
            reason: format!("missing; the manifest says shard {} has labels", entry.name),
        });
    }
    let header = read_header(&path)?;
    let rows = entry.count as usize;
    if header.dtype != crate::npy::Dtype::I64 || header.matrix_shape() != Some((rows, 1)) {
        return Err(StoreError::Invalid {
            path,
            reason: format!(
                "expected {rows} int64 labels (<i8, shape ({rows},)), found {} of shape {:?}",
                header.dtype.descr(),
                header.shape
            ),
        });
    }
    Ok(path)
}

/// A shard's labels, checked against the class count.
fn read_labels(path: &Path, rows: usize, classes: usize) -> Result<Vec<i64>> {
    let labels = crate::npy::read_i64_matrix(path)?.data;
    if labels.len() != rows {
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!("{} labels for {rows} entries", labels.len()),
        });
    }
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l < -1 || l >= classes as i64)
    {
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "row {i} has label {l}; the memory has {classes} classes (-1 for none)"
            ),
        });
    }
    Ok(labels)
}

/// Checks the files of shard `index` without mapping them (used by writers).
pub(crate) fn check_shard_headers(dir: &Path, manifest: &Manifest, index: usize) -> Result<()> {
    let entry = &manifest.shards[index];
    let sdir = dir.join(&entry.name);
    if !sdir.is_dir() {
        return Err(missing_shard(&sdir, &entry.name));
    }
    let rows = entry.count as usize;
    check_header(
        &sdir.join(KEYS_FILE),
        manifest.key.dtype,
        rows,
        manifest.key.dim,
    )?;
    for (kind, spec) in [
        (ValueKind::Image, &manifest.values.image),
        (ValueKind::Text, &manifest.values.text),
    ] {
        if let Some(spec) = spec {
            check_header(&sdir.join(kind.file_name()), spec.dtype, rows, spec.dim)?;
        }
    }
    let meta = sdir.join(METADATA_FILE);
    if !meta.is_file() {
        return Err(StoreError::Invalid {
            path: meta,
            reason: format!("missing; shard {} is committed in the manifest", entry.name),
        });
    }
    if entry.labels {
        check_labels_header(&sdir, entry)?;
    }
    Ok(())
}

fn missing_shard(sdir: &Path, name: &str) -> StoreError {
    StoreError::Invalid {
        path: sdir.to_path_buf(),
        reason: format!("shard {name} is listed in the manifest but its directory is missing"),
    }
}

/// Offsets of the start of each line, and the end of the last, checking
/// that there are exactly `rows` lines.
fn index_lines(path: &Path, rows: usize) -> Result<Vec<u64>> {
    let file = File::open(path).at(path, "open")?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut offsets = Vec::with_capacity(rows + 1);
    let mut pos = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).at(path, "read")?;
        if n == 0 {
            break;
        }
        offsets.push(pos);
        pos += n as u64;
    }
    offsets.push(pos);
    let lines = offsets.len() - 1;
    if lines != rows {
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!("{lines} metadata lines, but the shard has {rows} rows"),
        });
    }
    Ok(offsets)
}
