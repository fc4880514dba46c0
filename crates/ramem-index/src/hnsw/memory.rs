//! The index of a memory directory: built over all its keys, saved under
//! `index-hnsw/`, checked against the memory when opened.

use std::path::{Path, PathBuf};

use ramem_store::memory::Memory;

use super::file::{self, INDEX_DIR};
use super::{HnswError, HnswIndex, HnswParams};
use crate::{Keys, SearchError};

/// Where the index of the memory at `memory_dir` lives.
pub fn index_dir(memory_dir: &Path) -> PathBuf {
    memory_dir.join(INDEX_DIR)
}

/// Builds the index over every key of `memory` and saves it in the memory
/// directory (replacing any previous index). `progress(done)` reports rows
/// inserted.
pub fn build_memory_index(
    memory: &Memory,
    params: &HnswParams,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<HnswIndex, SearchError> {
    if memory.count() == 0 {
        return Err(SearchError::EmptyMemory);
    }
    let keys = Keys::of_memory(memory)?;
    let mut index = HnswIndex::build(&keys, params, progress)?;
    file::save(memory.dir(), &index.graph, index.header.clone())?;
    // The saved header (with the checksum and sizes filled in).
    index.header = file::read_header(memory.dir())?;
    Ok(index)
}

/// Opens the saved index of `memory`, refusing one that is missing,
/// damaged, stale (built before the memory grew) or built for other keys.
pub fn open_memory_index(memory: &Memory) -> Result<HnswIndex, HnswError> {
    let header = checked_header(memory)?;
    if header.count < memory.count() {
        return Err(HnswError::Stale {
            path: index_dir(memory.dir()).join(file::HEADER_FILE),
            built: header.count,
            now: memory.count(),
        });
    }
    let graph = file::read_graph(memory.dir(), &header)?;
    Ok(HnswIndex { graph, header })
}

/// Brings the saved index of `memory` up to date after the memory grew:
/// inserts the rows added since it was built (with the build's settings)
/// and saves it. Returns the rows inserted, `None` when the memory has no
/// index (nothing to update).
pub fn update_memory_index(
    memory: &Memory,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Option<usize>, SearchError> {
    let header = match checked_header(memory) {
        Ok(header) => header,
        Err(HnswError::Missing { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if header.count == memory.count() {
        return Ok(Some(0));
    }
    let graph = file::read_graph(memory.dir(), &header)?;
    let mut index = HnswIndex { graph, header };
    let keys = Keys::of_memory(memory)?;
    let added = index.extend(&keys, progress)?;
    file::save(memory.dir(), &index.graph, index.header.clone())?;
    Ok(Some(added))
}

/// The saved header, checked against the memory's keys (dimension, dtype,
/// not more rows than the memory).
fn checked_header(memory: &Memory) -> Result<super::HnswHeader, HnswError> {
    let dir = memory.dir();
    let header = file::read_header(dir)?;
    match layout_mismatch(memory, header.dim, &header.key_dtype, header.count, "built") {
        None => Ok(header),
        Some(reason) => Err(HnswError::Mismatch {
            path: index_dir(dir).join(file::HEADER_FILE),
            reason,
        }),
    }
}

/// Why something saved beside `memory`'s keys (`verb`: "built", "made")
/// for `dim`-dimensional `dtype` keys and `count` rows cannot serve it:
/// another dimension or dtype, or more rows than it holds.
pub(crate) fn layout_mismatch(
    memory: &Memory,
    dim: usize,
    dtype: &str,
    count: u64,
    verb: &str,
) -> Option<String> {
    if dim != memory.key_dim() {
        return Some(format!(
            "{verb} for {dim}-dimensional keys, the memory's are {}-dimensional",
            memory.key_dim()
        ));
    }
    if dtype != memory.key_dtype().name() {
        return Some(format!(
            "{verb} over {dtype} keys, the memory stores {}",
            memory.key_dtype().name()
        ));
    }
    if count > memory.count() {
        return Some(format!(
            "{verb} for {count} rows, the memory holds only {}",
            memory.count()
        ));
    }
    None
}
