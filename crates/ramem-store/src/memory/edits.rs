//! Edits: relabelled and deleted entries, without rewriting a shard.
//!
//! Shards are written once. An edit goes to a small file beside them,
//! `edits-NNNNNN.json`, which holds every relabel and deletion since the
//! memory was written or compacted; the manifest names the file in force
//! (`"edits"`), so an edit commits the way a shard does: the new file is
//! written completely under a new name, then the manifest is rewritten
//! atomically to point at it, then the old file is removed. A crash leaves
//! either the old edits or the new ones, never a mix. A deleted entry is a
//! tombstone: searches skip it and compaction ([`compact`]) drops it.
//!
//! [`compact`]: super::compact

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::manifest::EditsEntry;
use crate::atomic::write_atomic;
use crate::error::{IoContext, Result, StoreError};

/// The value of an edits file's `format` field.
pub const EDITS_FORMAT: &str = "ramem-memory-edits";
/// The edits file version this code reads and writes.
const EDITS_VERSION: u32 = 1;

/// The name of the edits file of `generation`.
pub fn edits_file_name(generation: u64) -> String {
    format!("edits-{generation:06}.json")
}

/// The edits in force: per entry, its new label (`None`: no label) and
/// whether it is deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    pub relabel: BTreeMap<i64, Option<u32>>,
    pub deleted: BTreeSet<i64>,
}

/// An edits file as stored.
#[derive(Debug, Serialize, Deserialize)]
struct EditsFile {
    format: String,
    version: u32,
    /// `[id, label]` pairs, by id; label -1 for none.
    relabel: Vec<(i64, i64)>,
    /// Deleted ids, ascending.
    delete: Vec<i64>,
}

impl Edits {
    /// Reads the edits file the manifest names, checking it against the
    /// manifest's counts and the memory's `count` rows.
    pub fn read(dir: &Path, entry: &EditsEntry, count: u64) -> Result<Edits> {
        let path = dir.join(&entry.file);
        let bytes = std::fs::read(&path).at(&path, "read")?;
        let invalid = |reason: String| StoreError::Invalid {
            path: path.clone(),
            reason,
        };
        let file: EditsFile = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("not an edits file: {e}")))?;
        if file.format != EDITS_FORMAT {
            return Err(invalid(format!(
                "its \"format\" is {:?}, not {EDITS_FORMAT:?}",
                file.format
            )));
        }
        if file.version > EDITS_VERSION {
            return Err(StoreError::NewerVersion {
                path,
                found: file.version.into(),
                supported: EDITS_VERSION,
            });
        }
        let in_range = |id: i64| id >= 0 && (id as u64) < count;
        let mut edits = Edits::default();
        for (id, label) in file.relabel {
            if !in_range(id) {
                return Err(invalid(format!(
                    "relabels entry {id}, outside the memory's {count} entries"
                )));
            }
            let label = match label {
                -1 => None,
                l => Some(u32::try_from(l).map_err(|_| {
                    invalid(format!("entry {id} has label {l}, not a class index"))
                })?),
            };
            edits.relabel.insert(id, label);
        }
        for id in file.delete {
            if !in_range(id) {
                return Err(invalid(format!(
                    "deletes entry {id}, outside the memory's {count} entries"
                )));
            }
            edits.deleted.insert(id);
        }
        if edits.relabel.len() as u64 != entry.relabeled
            || edits.deleted.len() as u64 != entry.deleted
        {
            return Err(invalid(format!(
                "holds {} relabels and {} deletions, the manifest says {} and {}",
                edits.relabel.len(),
                edits.deleted.len(),
                entry.relabeled,
                entry.deleted
            )));
        }
        Ok(edits)
    }

    /// Writes these edits as the file of `generation` (atomically) and
    /// returns the manifest entry that commits them.
    pub(crate) fn write(&self, dir: &Path, generation: u64) -> Result<EditsEntry> {
        let file = EditsFile {
            format: EDITS_FORMAT.into(),
            version: EDITS_VERSION,
            relabel: self
                .relabel
                .iter()
                .map(|(&id, label)| (id, label.map_or(-1, i64::from)))
                .collect(),
            delete: self.deleted.iter().copied().collect(),
        };
        let name = edits_file_name(generation);
        let path = dir.join(&name);
        let mut bytes = serde_json::to_vec(&file).map_err(|e| StoreError::Invalid {
            path: path.clone(),
            reason: format!("cannot encode the edits: {e}"),
        })?;
        bytes.push(b'\n');
        write_atomic(&path, &bytes)?;
        Ok(EditsEntry {
            file: name,
            generation,
            relabeled: self.relabel.len() as u64,
            deleted: self.deleted.len() as u64,
        })
    }
}

/// A set of row ids as a bit per row: what a search tests every candidate
/// against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowSet {
    bits: Vec<u64>,
    len: usize,
}

impl RowSet {
    /// The set of `ids` among `rows` rows (ids outside are ignored).
    pub fn new(rows: u64, ids: impl IntoIterator<Item = i64>) -> RowSet {
        let mut bits = vec![0u64; rows.div_ceil(64) as usize];
        let mut len = 0;
        for id in ids {
            if id >= 0 && (id as u64) < rows {
                let (word, bit) = ((id as u64 / 64) as usize, id as u64 % 64);
                if bits[word] & (1 << bit) == 0 {
                    bits[word] |= 1 << bit;
                    len += 1;
                }
            }
        }
        RowSet { bits, len }
    }

    /// Whether `id` is in the set.
    #[inline]
    pub fn contains(&self, id: i64) -> bool {
        let id = id as u64;
        self.bits
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Ids in the set.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Entry ids from a file: an integer `.npy` (1-D, `<i8` or `<i4`) or a
/// text file of one id per line (blank lines and `#` comments ignored).
/// Errors name the file and the line.
pub fn read_id_list(path: &Path) -> Result<Vec<i64>> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    {
        let m = crate::npy::read_i64_matrix(path)?;
        if m.cols != 1 {
            return Err(StoreError::Invalid {
                path: path.to_path_buf(),
                reason: format!("{} x {} ids; expected a 1-D array", m.rows, m.cols),
            });
        }
        return Ok(m.data);
    }
    let text = std::fs::read_to_string(path).at(path, "read")?;
    let mut ids = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        ids.push(line.parse::<i64>().map_err(|_| StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!("line {}: {line:?} is not an entry id", i + 1),
        })?);
    }
    Ok(ids)
}

/// Labels from a file, one per id: an integer `.npy` of indices into
/// `names` (-1 for none; anything else outside is an error naming the row),
/// or a text file of class names, one per line (`-` or an empty line for
/// none).
pub fn read_label_list(path: &Path, names: &[String]) -> Result<Vec<Option<String>>> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    {
        let m = crate::npy::read_i64_matrix(path)?;
        if m.cols != 1 {
            return Err(StoreError::Invalid {
                path: path.to_path_buf(),
                reason: format!("{} x {} labels; expected a 1-D array", m.rows, m.cols),
            });
        }
        return m
            .data
            .iter()
            .enumerate()
            .map(|(row, &label)| match label {
                -1 => Ok(None),
                l if l >= 0 && (l as usize) < names.len() => Ok(Some(names[l as usize].clone())),
                l => Err(StoreError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!(
                        "row {row} has label {l}, out of range: the memory has {} classes \
                         (labels 0..{}, -1 for none; a text file of names adds classes)",
                        names.len(),
                        names.len()
                    ),
                }),
            })
            .collect();
    }
    let text = std::fs::read_to_string(path).at(path, "read")?;
    Ok(text
        .lines()
        .map(|line| match line.trim() {
            "" | "-" => None,
            name => Some(name.to_string()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_set_holds_what_it_was_given() {
        let set = RowSet::new(130, [0, 64, 129, 64, 500, -1]);
        assert_eq!(set.len(), 3);
        for id in [0, 64, 129] {
            assert!(set.contains(id));
        }
        for id in [1, 63, 65, 128, 130, 500, -1] {
            assert!(!set.contains(id), "{id}");
        }
    }

    #[test]
    fn edits_round_trip_and_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let mut edits = Edits::default();
        edits.relabel.insert(3, Some(2));
        edits.relabel.insert(5, None);
        edits.deleted.insert(7);
        let entry = edits.write(tmp.path(), 4).unwrap();
        assert_eq!(entry.file, "edits-000004.json");
        assert_eq!(Edits::read(tmp.path(), &entry, 10).unwrap(), edits);
        let err = Edits::read(tmp.path(), &entry, 6).unwrap_err().to_string();
        assert!(
            err.contains("deletes entry 7, outside the memory's 6 entries"),
            "{err}"
        );
        let wrong = EditsEntry {
            deleted: 2,
            ..entry.clone()
        };
        let err = Edits::read(tmp.path(), &wrong, 10).unwrap_err().to_string();
        assert!(err.contains("the manifest says 2 and 2"), "{err}");
    }
}
