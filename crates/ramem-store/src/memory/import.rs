//! Building a memory from precomputed `.npy` embeddings.
//!
//! [`import_npy`] streams the input files shard by shard, so memory use is
//! bounded by one shard's rows whatever the input size. Before anything is
//! written it checks that all inputs agree (row counts, the metadata line
//! count) and, when the memory exists, that it was built with the same
//! settings. It is resumable: every import is recorded in the memory's
//! `import-state.json` (see `ledger.rs`) before its first shard, so a rerun
//! with the same files after a kill skips the rows already committed and
//! continues, while other files are appended only when asked
//! ([`ImportOptions::append`]) and otherwise refused. A memory left empty by
//! a failed first import takes the next import's settings.
//!
//! NaN and infinite values are checked shard by shard as rows are read; the
//! first one found stops the import with an error naming the input file and
//! row, after the shards before it were committed.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::ledger;
use super::manifest::{Manifest, ValueSpec};
use super::parquet_metadata::{parquet_rows, ParquetMetadata};
use super::writer::check_finite;
use super::{FloatDtype, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch, MANIFEST_FILE};
use crate::error::{IoContext, Result, StoreError};
use crate::npy::NpyRowReader;

/// Settings of an import; the dimensions come from the input files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Name of the encoder that produced the keys.
    pub key_encoder: String,
    /// How keys are stored (default f16).
    pub key_dtype: FloatDtype,
    /// Scale keys to unit L2 norm while importing.
    pub normalize_keys: bool,
    /// Name of the encoder of the image values.
    pub image_encoder: String,
    /// Name of the encoder of the text values.
    pub text_encoder: String,
    /// How values are stored (default f32).
    pub value_dtype: FloatDtype,
    /// Add the rows after those of a memory that holds rows from other
    /// files; without it such an import is refused (it would mix two
    /// inputs silently).
    pub append: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            key_encoder: "unknown".into(),
            key_dtype: FloatDtype::F16,
            normalize_keys: true,
            image_encoder: "unknown".into(),
            text_encoder: "unknown".into(),
            value_dtype: FloatDtype::F32,
            append: false,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    /// Rows in the input files.
    pub rows: u64,
    /// The memory row the input's first row went to (0 unless appended).
    pub first_row: u64,
    /// Rows that were already committed before this run (resumed imports).
    pub skipped: u64,
    /// Rows written by this run.
    pub imported: u64,
    /// Shards written by this run.
    pub shards_written: usize,
    /// Wall time of this run.
    pub elapsed: Duration,
}

/// The input files of an import.
#[derive(Debug, Clone, Copy)]
pub struct ImportSources<'a> {
    /// `N x dim` float `.npy` (`<f4` or `<f2`): the keys.
    pub keys: &'a Path,
    /// `N x d` float `.npy`: image values, one row per key.
    pub image_values: Option<&'a Path>,
    /// `N x d` float `.npy`: text values, one row per key.
    pub text_values: Option<&'a Path>,
    /// `N` lines: a `.jsonl` file of objects with optional `"source"`,
    /// `"caption"` and `"label"` strings, or any other file read as one
    /// source per line.
    pub metadata: Option<&'a Path>,
    /// `N` integer labels (`.npy`, `<i8` or `<i4`; -1 for none), indices
    /// into `label_names`; they override the metadata's labels.
    pub labels: Option<&'a Path>,
    /// The class names labels index (default: `"0"`, `"1"`, ... up to the
    /// largest label).
    pub label_names: Option<&'a [String]>,
}

/// Where an import stands, passed to the progress callback of
/// [`import_npy_with_progress`]: once before the first shard is written,
/// then after each committed shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportProgress {
    /// Rows committed in the memory so far.
    pub committed: u64,
    /// Rows in the input.
    pub total: u64,
    /// Rows that were already committed when this run started.
    pub skipped: u64,
}

/// Imports `keys` (and optionally image/text values and metadata) into the
/// memory at `dir`, creating it if needed, `shard_rows` rows per shard.
///
/// `metadata` is a `.jsonl` file of objects with optional `"source"` and
/// `"caption"` strings, a `.parquet` file (source from the first non-null of
/// the columns `url`, `image_path`, `source`, `path`; caption from
/// `caption`), or any other file read as one source per line; it must have
/// one line (row) per key row. Without it, rows have no source.
pub fn import_npy(
    dir: &Path,
    keys: &Path,
    image_values: Option<&Path>,
    text_values: Option<&Path>,
    metadata: Option<&Path>,
    options: &ImportOptions,
    shard_rows: usize,
) -> Result<ImportReport> {
    let sources = ImportSources {
        keys,
        image_values,
        text_values,
        metadata,
        labels: None,
        label_names: None,
    };
    import_npy_with_progress(dir, &sources, options, shard_rows, &mut |_| {})
}

/// [`import_npy`], calling `progress` as shards are committed (to drive a
/// progress bar).
pub fn import_npy_with_progress(
    dir: &Path,
    sources: &ImportSources<'_>,
    options: &ImportOptions,
    shard_rows: usize,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<ImportReport> {
    let ImportSources {
        keys,
        image_values,
        text_values,
        metadata,
        labels,
        label_names,
    } = *sources;
    let start_time = Instant::now();
    if shard_rows == 0 {
        return Err(StoreError::Invalid {
            path: dir.to_path_buf(),
            reason: "shard_rows must be at least 1".into(),
        });
    }
    let mut key_reader = NpyRowReader::open(keys)?;
    let rows = key_reader.rows();
    if rows == 0 || key_reader.cols() == 0 {
        return Err(StoreError::Invalid {
            path: keys.to_path_buf(),
            reason: format!(
                "nothing to import: the keys file holds {} rows x {} columns",
                rows,
                key_reader.cols()
            ),
        });
    }
    let open_values = |path: Option<&Path>| -> Result<Option<NpyRowReader>> {
        let Some(path) = path else { return Ok(None) };
        let r = NpyRowReader::open(path)?;
        if r.rows() != rows {
            return Err(StoreError::Invalid {
                path: path.to_path_buf(),
                reason: format!(
                    "{} rows, but the keys file {} has {rows}; values need one row per key",
                    r.rows(),
                    keys.display()
                ),
            });
        }
        if r.cols() == 0 {
            return Err(StoreError::Invalid {
                path: path.to_path_buf(),
                reason: "rows have 0 columns".into(),
            });
        }
        Ok(Some(r))
    };
    let mut image_reader = open_values(image_values)?;
    let mut text_reader = open_values(text_values)?;
    let mut meta_reader = match metadata {
        Some(path) => Some(MetadataSource::open(path, rows)?),
        None => None,
    };
    let labels = match labels {
        Some(path) => Some(read_import_labels(path, rows, label_names)?),
        None => None,
    };

    let value_spec = |r: &Option<NpyRowReader>, encoder: &str| {
        r.as_ref().map(|r| ValueSpec {
            encoder: encoder.to_string(),
            dim: r.cols(),
            dtype: options.value_dtype,
        })
    };
    let spec = MemorySpec {
        key_encoder: options.key_encoder.clone(),
        key_dim: key_reader.cols(),
        key_dtype: options.key_dtype,
        normalize_keys: options.normalize_keys,
        image: value_spec(&image_reader, &options.image_encoder),
        text: value_spec(&text_reader, &options.text_encoder),
    };

    let mut writer = open_for_import(dir, spec)?;
    if let Some((_, names)) = &labels {
        writer.declare_classes(names)?;
    }
    let mut inputs = vec![("keys", keys)];
    for (role, path) in [
        ("image values", image_values),
        ("text values", text_values),
        ("metadata", metadata),
        ("labels", sources.labels),
    ] {
        if let Some(path) = path {
            inputs.push((role, path));
        }
    }
    let record = ledger::describe(&[(inputs, rows as u64)])?;
    let start = ledger::start_import(&writer, record, options.append)?;
    let skipped = start.done;
    if let Some(m) = meta_reader.as_mut() {
        m.skip(skipped as usize)?;
    }

    let report_progress = |progress: &mut dyn FnMut(ImportProgress), committed: u64| {
        progress(ImportProgress {
            committed,
            total: rows as u64,
            skipped,
        })
    };
    report_progress(progress, skipped);
    let (mut key_buf, mut image_buf, mut text_buf) = (Vec::new(), Vec::new(), Vec::new());
    let mut meta_buf = Vec::new();
    let mut next = skipped as usize;
    let mut shards_written = 0;
    while next < rows {
        let n = shard_rows.min(rows - next);
        read_checked(&mut key_reader, next, n, &mut key_buf)?;
        if options.normalize_keys {
            check_nonzero(&key_reader, next, &key_buf)?;
        }
        if let Some(r) = image_reader.as_mut() {
            read_checked(r, next, n, &mut image_buf)?;
        }
        if let Some(r) = text_reader.as_mut() {
            read_checked(r, next, n, &mut text_buf)?;
        }
        meta_buf.clear();
        match meta_reader.as_mut() {
            Some(m) => m.read(n, &mut meta_buf)?,
            None => meta_buf.resize(n, MetadataEntry::default()),
        }
        if let Some((labels, names)) = &labels {
            for (entry, &label) in meta_buf.iter_mut().zip(&labels[next..next + n]) {
                entry.label = usize::try_from(label).ok().map(|l| names[l].clone());
            }
        }
        writer.append_shard(ShardBatch {
            keys: &key_buf,
            image_values: image_reader.as_ref().map(|_| &image_buf[..]),
            text_values: text_reader.as_ref().map(|_| &text_buf[..]),
            metadata: &meta_buf,
        })?;
        next += n;
        shards_written += 1;
        report_progress(progress, next as u64);
    }
    Ok(ImportReport {
        rows: rows as u64,
        first_row: start.first_row,
        skipped,
        imported: rows as u64 - skipped,
        shards_written,
        elapsed: start_time.elapsed(),
    })
}

/// Reads `rows` import labels, checked against the class names (or names
/// `"0"`, `"1"`, ... up to the largest label): -1 is none, anything else
/// outside the classes is an error naming the file and the row.
fn read_import_labels(
    path: &Path,
    rows: usize,
    names: Option<&[String]>,
) -> Result<(Vec<i64>, Vec<String>)> {
    let m = crate::npy::read_i64_matrix(path)?;
    if m.cols != 1 || m.rows != rows {
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "{} x {} labels; expected {rows} (one per key), as a 1-D integer array",
                m.rows, m.cols
            ),
        });
    }
    let names: Vec<String> = match names {
        Some(names) => names.to_vec(),
        None => {
            let top = m.data.iter().copied().max().unwrap_or(-1);
            (0..=top.max(-1)).map(|c| c.to_string()).collect()
        }
    };
    if let Some((row, &label)) = m
        .data
        .iter()
        .enumerate()
        .find(|(_, &l)| l < -1 || l >= names.len() as i64)
    {
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "row {row} has label {label}, out of range: there are {} classes (labels 0..{}, \
                 -1 for none)",
                names.len(),
                names.len()
            ),
        });
    }
    Ok((m.data, names))
}

/// Reads rows and rejects non-finite values, naming the input file.
pub(super) fn read_checked(
    r: &mut NpyRowReader,
    start: usize,
    n: usize,
    buf: &mut Vec<f32>,
) -> Result<()> {
    r.read_rows(start, n, buf)?;
    let path = r.path().to_path_buf();
    check_finite(&path, "input", buf, r.cols(), start as u64)
}

/// Refuses all-zero key rows, which cannot be normalised.
pub(super) fn check_nonzero(r: &NpyRowReader, start: usize, buf: &[f32]) -> Result<()> {
    match buf
        .chunks_exact(r.cols())
        .position(|row| row.iter().all(|&v| v == 0.0))
    {
        Some(i) => Err(StoreError::Invalid {
            path: r.path().to_path_buf(),
            reason: format!("row {} is all zeros and cannot be L2-normalised", start + i),
        }),
        None => Ok(()),
    }
}

/// The memory at `dir` opened for an import writing `spec`: created if
/// missing; an existing empty memory takes `spec`; one with rows must have
/// been built with it.
pub(super) fn open_for_import(dir: &Path, spec: MemorySpec) -> Result<MemoryWriter> {
    if !dir.join(MANIFEST_FILE).exists() {
        return MemoryWriter::create(dir, spec);
    }
    let mut writer = MemoryWriter::open_append(dir)?;
    if writer.count() == 0 {
        if !spec.differences(writer.manifest()).is_empty() {
            writer.respec_empty(spec)?;
        }
    } else {
        check_same_spec(dir, writer.manifest(), &spec)?;
    }
    Ok(writer)
}

/// Refuses to resume into a memory built with other settings, saying which
/// differ.
pub(super) fn check_same_spec(dir: &Path, m: &Manifest, spec: &MemorySpec) -> Result<()> {
    let diffs = spec.differences(m);
    if diffs.is_empty() {
        return Ok(());
    }
    Err(StoreError::Invalid {
        path: dir.join(MANIFEST_FILE),
        reason: format!(
            "cannot add to this memory: it was built with other settings ({}); use the \
             memory's settings, or import into a new directory",
            diffs.join("; ")
        ),
    })
}

/// Where an import's metadata comes from.
enum MetadataSource {
    Lines(MetadataReader),
    Parquet(ParquetMetadata),
}

impl MetadataSource {
    /// Opens `path` (by extension: `.parquet`, else lines) and checks it has `rows` rows.
    fn open(path: &Path, rows: usize) -> Result<Self> {
        if path.extension().is_none_or(|e| e != "parquet") {
            return Ok(MetadataSource::Lines(MetadataReader::open(path, rows)?));
        }
        let found = parquet_rows(path)?;
        if found != rows as u64 {
            return Err(StoreError::Invalid {
                path: path.to_path_buf(),
                reason: format!("{found} metadata rows, but the keys have {rows} rows; one row per key is needed"),
            });
        }
        Ok(MetadataSource::Parquet(ParquetMetadata::open(path, 0)?))
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        match self {
            MetadataSource::Lines(r) => r.skip(n),
            MetadataSource::Parquet(p) => p.read(n, &mut Vec::with_capacity(n)),
        }
    }

    fn read(&mut self, n: usize, out: &mut Vec<MetadataEntry>) -> Result<()> {
        match self {
            MetadataSource::Lines(r) => r.read(n, out),
            MetadataSource::Parquet(p) => p.read(n, out),
        }
    }
}

/// One line of an input `.jsonl` metadata file.
#[derive(Deserialize)]
struct MetadataLine {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    caption: Option<String>,
    /// The entry's class name.
    #[serde(default)]
    label: Option<String>,
}

/// Streams metadata lines: JSON objects (`.jsonl`) or plain sources.
struct MetadataReader {
    path: PathBuf,
    reader: BufReader<File>,
    json: bool,
    line_no: usize,
    line: String,
}

impl MetadataReader {
    /// Opens `path` and checks it has exactly `rows` lines.
    fn open(path: &Path, rows: usize) -> Result<Self> {
        let file = File::open(path).at(path, "open")?;
        let mut counter = BufReader::with_capacity(1 << 16, file);
        let mut lines = 0usize;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if counter.read_until(b'\n', &mut buf).at(path, "read")? == 0 {
                break;
            }
            lines += 1;
        }
        if lines != rows {
            return Err(StoreError::Invalid {
                path: path.to_path_buf(),
                reason: format!("{lines} metadata lines, but the keys have {rows} rows; one line per row is needed"),
            });
        }
        let file = File::open(path).at(path, "open")?;
        Ok(MetadataReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 16, file),
            json: path.extension().is_some_and(|e| e == "jsonl"),
            line_no: 0,
            line: String::new(),
        })
    }

    fn next_line(&mut self) -> Result<()> {
        self.line.clear();
        let n = self
            .reader
            .read_line(&mut self.line)
            .at(&self.path, "read")?;
        self.line_no += 1;
        if n == 0 {
            return Err(StoreError::Invalid {
                path: self.path.clone(),
                reason: format!("ends before line {}", self.line_no),
            });
        }
        let trimmed = self.line.trim_end_matches(['\n', '\r']).len();
        self.line.truncate(trimmed);
        Ok(())
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            self.next_line()?;
        }
        Ok(())
    }

    fn read(&mut self, n: usize, out: &mut Vec<MetadataEntry>) -> Result<()> {
        for _ in 0..n {
            self.next_line()?;
            let entry = if self.json {
                let parsed: MetadataLine =
                    serde_json::from_str(&self.line).map_err(|e| StoreError::Invalid {
                        path: self.path.clone(),
                        reason: format!(
                            "line {} is not a JSON object with \"source\"/\"caption\" strings: {e}",
                            self.line_no
                        ),
                    })?;
                MetadataEntry {
                    source: parsed.source,
                    caption: parsed.caption,
                    label: parsed.label,
                }
            } else {
                MetadataEntry::source(self.line.clone())
            };
            out.push(entry);
        }
        Ok(())
    }
}
