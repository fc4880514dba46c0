//! `MEM/import-state.json`: which input files a memory's imported rows came
//! from, so that a rerun resumes only the import it interrupted, never
//! another file's.
//!
//! Every import records its input files (paths, and fingerprints of their
//! identity and content: [`crate::file_fingerprint`]), the first row it
//! writes and its row count, before it writes a shard. An input is one or
//! more parts (the `.npy` files of one import are one part; each file set
//! of a clip-retrieval folder is one). A rerun with the same inputs, or
//! with the same parts followed by new ones (a clip-retrieval folder that
//! grew), resumes where the memory stands; other inputs are appended only
//! when asked (`append`), and are otherwise refused with an error that says
//! what to do. An import that committed no row (it failed before its first
//! shard) is replaced by the next one.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::writer::MemoryWriter;
use super::MANIFEST_FILE;
use crate::error::{Result, StoreError};
use crate::fingerprint::{file_fingerprint, Fnv1a};

/// The import record file inside a memory directory.
pub const IMPORT_STATE_FILE: &str = "import-state.json";

/// One import into a memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRecord {
    /// The input files, `ROLE: PATH` (roles: keys, image values, text
    /// values, metadata, or the clip-retrieval files).
    pub inputs: Vec<String>,
    /// The input's parts in row order.
    pub parts: Vec<ImportPart>,
    /// The memory row its first row went to.
    pub first_row: u64,
    /// Its rows (the sum of its parts').
    pub rows: u64,
}

/// A part of an import's input: files read together, row for row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportPart {
    /// FNV-1a 64 over the part's roles and file fingerprints.
    pub fingerprint: String,
    pub rows: u64,
}

impl ImportRecord {
    fn end(&self) -> u64 {
        self.first_row + self.rows
    }

    fn names(&self) -> String {
        self.inputs.join(", ")
    }

    /// Whether `other` reads the same input.
    fn same_input(&self, other: &ImportRecord) -> bool {
        self.parts == other.parts
    }

    /// Whether `longer` is this input with more parts after it.
    fn grown_into(&self, longer: &ImportRecord) -> bool {
        longer.parts.len() > self.parts.len() && longer.parts.starts_with(&self.parts)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Ledger {
    imports: Vec<ImportRecord>,
}

/// Where an import's rows go in the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImportStart {
    /// The memory row of the import's first row.
    pub first_row: u64,
    /// The import's rows already in the memory.
    pub done: u64,
}

/// The record of an import whose input is `parts`: each a list of (role,
/// file) read together and its row count.
pub(crate) fn describe(parts: &[(Vec<(&str, &Path)>, u64)]) -> Result<ImportRecord> {
    let mut names = Vec::new();
    let mut records = Vec::with_capacity(parts.len());
    for (files, rows) in parts {
        let mut h = Fnv1a::new();
        for (role, path) in files {
            let print = file_fingerprint(path).map_err(|error| StoreError::Io {
                path: path.to_path_buf(),
                action: "read",
                error,
            })?;
            h.write_part(role).write_part(&print);
            names.push(format!("{role}: {}", path.display()));
        }
        records.push(ImportPart {
            fingerprint: h.hex(),
            rows: *rows,
        });
    }
    Ok(ImportRecord {
        inputs: names,
        rows: records.iter().map(|p| p.rows).sum(),
        parts: records,
        first_row: 0,
    })
}

fn write(dir: &Path, ledger: &Ledger) -> Result<()> {
    let json = serde_json::to_vec_pretty(ledger).expect("the import record serialises");
    crate::atomic::write_atomic(dir.join(IMPORT_STATE_FILE), &json)
}

fn read(dir: &Path) -> Result<Option<Ledger>> {
    let path = dir.join(IMPORT_STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Invalid {
                path,
                reason: format!("not a valid import record: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(StoreError::Io {
            path,
            action: "read",
            error,
        }),
    }
}

/// Decides where the import `new` goes in the memory `writer` holds (see
/// the module docs) and records it, before anything is written.
pub(crate) fn start_import(
    writer: &MemoryWriter,
    mut new: ImportRecord,
    append: bool,
) -> Result<ImportStart> {
    let dir = writer.dir();
    let count = writer.count();
    let refuse = |reason: String| StoreError::Invalid {
        path: dir.to_path_buf(),
        reason,
    };
    let mut ledger = match read(dir)? {
        Some(ledger) => ledger,
        None if count == 0 => Ledger::default(),
        None if append => Ledger::default(),
        None => {
            return Err(refuse(format!(
                "the memory holds {count} rows that no import recorded (no {IMPORT_STATE_FILE}: \
                 it was made by `memory build`, a study, or an older ramem); to add the rows of \
                 {} after them, rerun with --append; to import only these files, use a new \
                 memory directory",
                new.names()
            )))
        }
    };
    if let Some(last) = ledger.imports.last() {
        if count > last.end() || count < last.first_row {
            return Err(refuse(format!(
                "the memory holds {count} rows, but {IMPORT_STATE_FILE} says its last import \
                 wrote rows {}..{}; it was changed by something else ({MANIFEST_FILE})",
                last.first_row,
                last.end()
            )));
        }
        if last.same_input(&new) {
            // The same files: resume (or find the import complete).
            return Ok(ImportStart {
                first_row: last.first_row,
                done: count - last.first_row,
            });
        }
        if last.grown_into(&new) {
            // The same files and more after them: resume, and record the rest.
            let first_row = last.first_row;
            new.first_row = first_row;
            ledger.imports.pop();
            ledger.imports.push(new);
            write(dir, &ledger)?;
            return Ok(ImportStart {
                first_row,
                done: count - first_row,
            });
        }
    }
    if let Some(earlier) = ledger
        .imports
        .iter()
        .find(|r| r.same_input(&new) && r.end() <= count)
    {
        // Imported before, and complete: nothing to do.
        return Ok(ImportStart {
            first_row: earlier.first_row,
            done: earlier.rows,
        });
    }
    match ledger.imports.last() {
        Some(last) if count < last.end() && count == last.first_row => {
            // The unfinished import committed nothing: this one replaces it.
            ledger.imports.pop();
        }
        Some(last) if count < last.end() => {
            return Err(refuse(format!(
                "an import into this memory is not finished: {} of the {} rows of {} are in it, \
                 and {} are other files (or they changed since); finish the first by rerunning \
                 it with the same files, or import into a new memory directory",
                count - last.first_row,
                last.rows,
                last.names(),
                new.names()
            )));
        }
        Some(last) if !append => {
            return Err(refuse(format!(
                "the memory already holds {count} rows, the last {} of them imported from {}; \
                 {} are other files (or they changed since): rerun with --append to add their \
                 rows after the memory's, or import into a new memory directory",
                last.rows,
                last.names(),
                new.names()
            )));
        }
        _ => {}
    }
    new.first_row = count;
    ledger.imports.push(new.clone());
    write(dir, &ledger)?;
    Ok(ImportStart {
        first_row: new.first_row,
        done: 0,
    })
}
