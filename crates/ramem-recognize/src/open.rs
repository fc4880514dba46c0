//! A memory opened by where it is: a directory here, or a collection in a
//! vector database (`milvus://HOST:PORT/COLLECTION`, with the `milvus`
//! feature). Every command that takes a memory opens it here, so each
//! takes both.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use ramem_index::SearchableMemory;
use ramem_store::memory::Memory;

use crate::bundle::memory_url;

/// The URL scheme of a memory on a Milvus collection.
pub const MILVUS_SCHEME: &str = "milvus://";

/// Opens the memory at `location`: a memory directory, or
/// `milvus://HOST:PORT/COLLECTION`.
pub fn open_memory(location: &Path) -> Result<Arc<dyn SearchableMemory>> {
    let text = location.to_string_lossy();
    if text.starts_with(MILVUS_SCHEME) {
        return open_milvus(&text);
    }
    if memory_url(&text) {
        bail!(
            "{text}: not a memory: give a memory directory or {MILVUS_SCHEME}HOST:PORT/COLLECTION"
        );
    }
    Ok(Arc::new(Memory::open(location)?))
}

#[cfg(feature = "milvus")]
fn open_milvus(url: &str) -> Result<Arc<dyn SearchableMemory>> {
    Ok(Arc::new(ramem_milvus::MilvusMemory::open(url)?))
}

#[cfg(not(feature = "milvus"))]
fn open_milvus(url: &str) -> Result<Arc<dyn SearchableMemory>> {
    bail!(
        "{url}: a memory on Milvus, and this ramem was built without Milvus support \
         (build it with `cargo build --release -p ramem --features milvus`)"
    )
}
