//! Importing the output folder of clip-retrieval's embedding step.
//!
//! That folder holds numbered file sets:
//!
//! ```text
//! DIR/img_emb/img_emb_0.npy     N0 x D image embeddings   (required)
//! DIR/img_emb/img_emb_1.npy     ...
//! DIR/text_emb/text_emb_0.npy   N0 x E caption embeddings (optional folder)
//! DIR/metadata/metadata_0.parquet  N0 rows: url or image_path, caption (optional folder)
//! ```
//!
//! Files are matched by the number after the last `_` and imported in
//! numeric order (so `img_emb_10` comes after `img_emb_9`). The image
//! embeddings become the keys *and* the image values, the text embeddings
//! the text values; each metadata row gives the source (its `url`, or its
//! `image_path` where the url is missing or null) and the `caption`. When the `text_emb` or `metadata`
//! folder exists it must hold a file for every image embedding file, with
//! the same number of rows; everything is checked before anything is
//! written.
//!
//! The import is resumable like [`import_npy`](super::import_npy): the file
//! sets are concatenated in order, the memory's committed `count` says how
//! many of those rows are already in, and a rerun continues from there.
//! Shards never span two file sets (each set is cut into shards of
//! `shard_rows` from its first row), so a rerun with the same inputs and
//! shard size writes the same shards as an uninterrupted import.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::import::{check_nonzero, read_checked};
use super::manifest::ValueSpec;
use super::parquet_metadata::{parquet_rows, ParquetMetadata};
use super::{ImportOptions, ImportProgress, ImportReport, MemorySpec, MetadataEntry, ShardBatch};
use crate::error::{IoContext, Result, StoreError};
use crate::npy::NpyRowReader;

/// Folder of the image embeddings inside a clip-retrieval output.
pub const CLIP_IMG_EMB_DIR: &str = "img_emb";
/// Folder of the text embeddings inside a clip-retrieval output.
pub const CLIP_TEXT_EMB_DIR: &str = "text_emb";
/// Folder of the metadata inside a clip-retrieval output.
pub const CLIP_METADATA_DIR: &str = "metadata";

/// The files of one numbered set of a clip-retrieval output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipRetrievalSet {
    /// The number in the file names (`img_emb_<index>.npy`).
    pub index: u64,
    /// `img_emb/img_emb_<index>.npy`.
    pub img_emb: PathBuf,
    /// `text_emb/text_emb_<index>.npy`, when the output has text embeddings.
    pub text_emb: Option<PathBuf>,
    /// `metadata/metadata_<index>.parquet`, when the output has metadata.
    pub metadata: Option<PathBuf>,
}

/// Lists the file sets of the clip-retrieval output at `dir`, in numeric
/// order, checking that the optional `text_emb` and `metadata` folders have
/// exactly one file per image embedding file.
pub fn clip_retrieval_sets(dir: &Path) -> Result<Vec<ClipRetrievalSet>> {
    let img_dir = dir.join(CLIP_IMG_EMB_DIR);
    if !img_dir.is_dir() {
        return Err(StoreError::Invalid {
            path: img_dir,
            reason: "missing: a clip-retrieval output has its image embeddings in img_emb/".into(),
        });
    }
    let images = numbered_files(&img_dir, "img_emb_", "npy")?;
    if images.is_empty() {
        return Err(StoreError::Invalid {
            path: img_dir,
            reason: "no img_emb_<N>.npy files".into(),
        });
    }
    let companion =
        |sub: &str, prefix: &str, ext: &str| -> Result<Option<BTreeMap<u64, PathBuf>>> {
            let folder = dir.join(sub);
            if !folder.is_dir() {
                return Ok(None);
            }
            let files = numbered_files(&folder, prefix, ext)?;
            for (index, path) in &files {
                if !images.contains_key(index) {
                    return Err(StoreError::Invalid {
                        path: path.clone(),
                        reason: format!(
                            "has no image embeddings to go with it ({} is missing)",
                            img_dir.join(format!("img_emb_{index}.npy")).display()
                        ),
                    });
                }
            }
            for index in images.keys() {
                if !files.contains_key(index) {
                    return Err(StoreError::Invalid {
                        path: folder.join(format!("{prefix}{index}.{ext}")),
                        reason: format!(
                        "missing, but {} exists; {sub}/ needs one file per image embedding file",
                        images[index].display()
                    ),
                    });
                }
            }
            Ok(Some(files))
        };
    let mut texts = companion(CLIP_TEXT_EMB_DIR, "text_emb_", "npy")?;
    let mut metas = companion(CLIP_METADATA_DIR, "metadata_", "parquet")?;
    Ok(images
        .into_iter()
        .map(|(index, img_emb)| ClipRetrievalSet {
            index,
            img_emb,
            text_emb: texts.as_mut().and_then(|t| t.remove(&index)),
            metadata: metas.as_mut().and_then(|m| m.remove(&index)),
        })
        .collect())
}

/// Files `<prefix><digits>.<ext>` in `folder`, by number. Other names are
/// ignored; two names with the same number (`x_1`, `x_01`) are an error.
fn numbered_files(folder: &Path, prefix: &str, ext: &str) -> Result<BTreeMap<u64, PathBuf>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(folder).at(folder, "list")? {
        let entry = entry.at(folder, "list")?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(number) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(ext))
            .and_then(|rest| rest.strip_suffix('.'))
        else {
            continue;
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path();
        let index: u64 = number.parse().map_err(|_| StoreError::Invalid {
            path: path.clone(),
            reason: "the file number is too large".into(),
        })?;
        if let Some(other) = found.insert(index, path.clone()) {
            return Err(StoreError::Invalid {
                path,
                reason: format!("has the same number as {}", other.display()),
            });
        }
    }
    Ok(found)
}

/// One file set, opened and checked.
struct OpenSet {
    keys: NpyRowReader,
    text: Option<NpyRowReader>,
    metadata: Option<PathBuf>,
    rows: usize,
}

/// Imports the clip-retrieval output at `layout` into the memory at `dir`
/// (created if needed, resumed if it holds part of this import), calling
/// `progress` once before the first shard and after each committed shard.
///
/// `options` names the encoders and the storage types as for
/// [`import_npy`](super::import_npy); the image values use
/// `options.image_encoder`, the text values `options.text_encoder`.
pub fn import_clip_retrieval(
    dir: &Path,
    layout: &Path,
    options: &ImportOptions,
    shard_rows: usize,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<ImportReport> {
    let start_time = Instant::now();
    if shard_rows == 0 {
        return Err(StoreError::Invalid {
            path: dir.to_path_buf(),
            reason: "shard_rows must be at least 1".into(),
        });
    }
    let sets = clip_retrieval_sets(layout)?;
    let opened = open_sets(&sets)?;
    let first = &opened[0];
    let rows: u64 = opened.iter().map(|s| s.rows as u64).sum();
    let spec = MemorySpec {
        key_encoder: options.key_encoder.clone(),
        key_dim: first.keys.cols(),
        key_dtype: options.key_dtype,
        normalize_keys: options.normalize_keys,
        image: Some(ValueSpec {
            encoder: options.image_encoder.clone(),
            dim: first.keys.cols(),
            dtype: options.value_dtype,
        }),
        text: first.text.as_ref().map(|t| ValueSpec {
            encoder: options.text_encoder.clone(),
            dim: t.cols(),
            dtype: options.value_dtype,
        }),
    };
    let mut writer = super::import::open_for_import(dir, spec)?;
    let mut parts = Vec::with_capacity(sets.len());
    for (set, open) in sets.iter().zip(&opened) {
        let mut files: Vec<(&str, &Path)> = vec![("image embeddings", &set.img_emb)];
        if let Some(text) = &set.text_emb {
            files.push(("text embeddings", text));
        }
        if let Some(metadata) = &set.metadata {
            files.push(("metadata", metadata));
        }
        parts.push((files, open.rows as u64));
    }
    let record = super::ledger::describe(&parts)?;
    let start = super::ledger::start_import(&writer, record, options.append)?;
    let skipped = start.done;
    progress(ImportProgress {
        committed: skipped,
        total: rows,
        skipped,
    });
    let (mut keys, mut text, mut meta) = (Vec::new(), Vec::new(), Vec::new());
    let mut shards_written = 0;
    let mut offset = 0u64;
    for mut set in opened {
        let set_end = offset + set.rows as u64;
        if set_end <= skipped {
            offset = set_end;
            continue;
        }
        let mut next = (skipped.saturating_sub(offset)) as usize;
        let mut metadata = match &set.metadata {
            Some(path) => Some(ParquetMetadata::open(path, next)?),
            None => None,
        };
        while next < set.rows {
            let n = shard_rows.min(set.rows - next);
            read_checked(&mut set.keys, next, n, &mut keys)?;
            if options.normalize_keys {
                check_nonzero(&set.keys, next, &keys)?;
            }
            if let Some(r) = set.text.as_mut() {
                read_checked(r, next, n, &mut text)?;
            }
            meta.clear();
            match metadata.as_mut() {
                Some(m) => m.read(n, &mut meta)?,
                None => meta.resize(n, MetadataEntry::default()),
            }
            writer.append_shard(ShardBatch {
                keys: &keys,
                image_values: Some(&keys),
                text_values: set.text.as_ref().map(|_| &text[..]),
                metadata: &meta,
            })?;
            next += n;
            shards_written += 1;
            progress(ImportProgress {
                committed: offset + next as u64,
                total: rows,
                skipped,
            });
        }
        offset = set_end;
    }
    Ok(ImportReport {
        rows,
        first_row: start.first_row,
        skipped,
        imported: rows - skipped,
        shards_written,
        elapsed: start_time.elapsed(),
    })
}

/// Opens every set's matrices and counts its metadata rows, checking row
/// counts within a set and widths across sets.
fn open_sets(sets: &[ClipRetrievalSet]) -> Result<Vec<OpenSet>> {
    let mut opened: Vec<OpenSet> = Vec::with_capacity(sets.len());
    for set in sets {
        let keys = NpyRowReader::open(&set.img_emb)?;
        let rows = keys.rows();
        if rows == 0 || keys.cols() == 0 {
            return Err(StoreError::Invalid {
                path: set.img_emb.clone(),
                reason: format!("nothing to import: {} rows x {} columns", rows, keys.cols()),
            });
        }
        let text = match &set.text_emb {
            Some(path) => {
                let r = NpyRowReader::open(path)?;
                if r.rows() != rows {
                    return Err(row_mismatch(path, r.rows(), &set.img_emb, rows));
                }
                if r.cols() == 0 {
                    return Err(StoreError::Invalid {
                        path: path.clone(),
                        reason: "rows have 0 columns".into(),
                    });
                }
                Some(r)
            }
            None => None,
        };
        if let Some(path) = &set.metadata {
            let n = parquet_rows(path)?;
            if n != rows as u64 {
                return Err(row_mismatch(path, n as usize, &set.img_emb, rows));
            }
        }
        if let Some(first) = opened.first() {
            if keys.cols() != first.keys.cols() {
                return Err(StoreError::ColumnMismatch {
                    path: set.img_emb.clone(),
                    first: first.keys.path().to_path_buf(),
                    expected: first.keys.cols(),
                    found: keys.cols(),
                });
            }
            if let (Some(t), Some(t0)) = (&text, &first.text) {
                if t.cols() != t0.cols() {
                    return Err(StoreError::ColumnMismatch {
                        path: t.path().to_path_buf(),
                        first: t0.path().to_path_buf(),
                        expected: t0.cols(),
                        found: t.cols(),
                    });
                }
            }
        }
        opened.push(OpenSet {
            keys,
            text,
            metadata: set.metadata.clone(),
            rows,
        });
    }
    Ok(opened)
}

fn row_mismatch(path: &Path, found: usize, img: &Path, rows: usize) -> StoreError {
    StoreError::Invalid {
        path: path.to_path_buf(),
        reason: format!(
            "{found} rows, but {} has {rows}; every file of a set needs one row per image embedding",
            img.display()
        ),
    }
}
