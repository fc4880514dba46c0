//! A memory opened by where it is: a directory here, or a collection in a
//! vector database (`milvus://HOST:PORT/COLLECTION`, with the `milvus`
//! feature). Every command that takes a memory opens it here, so each
//! takes both.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use ramem_index::{Engine, SearchableMemory};
use ramem_store::memory::Memory;

use crate::bundle::memory_url;

/// The URL scheme of a memory on a Milvus collection.
pub const MILVUS_SCHEME: &str = "milvus://";

/// Whether `location` names a collection in a vector database
/// (`milvus://...`) rather than a memory directory.
pub fn is_collection(location: &Path) -> bool {
    location.to_string_lossy().starts_with(MILVUS_SCHEME)
}

/// The engine of a command that scores every key unless told otherwise:
/// `engine` where given, else exact search of a memory directory and a
/// collection's own index (`None`) for a collection.
pub fn exact_by_default(location: &Path, engine: Option<Engine>) -> Option<Engine> {
    engine.or((!is_collection(location)).then_some(Engine::Exact))
}

/// Opens the memory at `location`: a memory directory, or
/// `milvus://HOST:PORT/COLLECTION`.
pub fn open_memory(location: &Path) -> Result<Arc<dyn SearchableMemory>> {
    let text = location.to_string_lossy();
    if is_collection(location) {
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
