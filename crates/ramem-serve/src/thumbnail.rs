//! Memory entries as the server shows them: their metadata as JSON, and a
//! PNG thumbnail of the image an entry's `source` names (a file, an IDX
//! image, a tar shard's member), kept in a small cache.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::body::Bytes;
use ramem_data::ImageSource;
use ramem_store::memory::MemoryView;
use serde_json::json;

use crate::error::ApiError;

/// Thumbnails kept (each a few KiB).
const CACHED: usize = 2048;

/// Checks that `id` is an entry of `memory`.
fn check_id(memory: &dyn MemoryView, id: i64) -> Result<(), ApiError> {
    if id < 0 || id as u64 >= memory.count() {
        return Err(ApiError::not_found(format!(
            "no memory entry {id}: the memory holds ids 0 to {}",
            memory.count().saturating_sub(1)
        )));
    }
    Ok(())
}

/// Entry `id`'s metadata: caption, source, label, and whether it was
/// deleted.
pub fn entry_json(memory: &dyn MemoryView, id: i64) -> Result<serde_json::Value, ApiError> {
    check_id(memory, id)?;
    let internal = |e: ramem_store::StoreError| ApiError::internal(e.to_string());
    let meta = memory.metadata(id).map_err(internal)?;
    let label = memory.label_name(id).map_err(internal)?;
    Ok(json!({
        "id": id,
        "caption": meta.caption,
        "source": meta.source,
        "label": label,
        "deleted": memory.is_deleted(id),
    }))
}

/// The image entry `id`'s source names, where this server can read it.
pub fn source_of(memory: &dyn MemoryView, id: i64) -> Result<ImageSource, ApiError> {
    check_id(memory, id)?;
    let meta = memory
        .metadata(id)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let source = meta
        .source
        .ok_or_else(|| ApiError::not_found(format!("memory entry {id} records no source image")))?;
    match ImageSource::from_description(&source) {
        Ok(Some(image)) => Ok(image),
        Ok(None) => Err(ApiError::not_found(format!(
            "memory entry {id}: its source {source:?} is not an image this server can read"
        ))),
        Err(e) => Err(ApiError::not_found(format!(
            "memory entry {id}: its source cannot be read: {e}"
        ))),
    }
}

/// A PNG of entry `id`'s image, its longer side at most `size` pixels.
pub fn thumbnail(memory: &dyn MemoryView, id: i64, size: u32) -> Result<Bytes, ApiError> {
    let image = source_of(memory, id)?
        .load()
        .map_err(|e| ApiError::not_found(format!("memory entry {id}: {e}")))?;
    let small = if image.width().max(image.height()) > size {
        image.thumbnail(size, size)
    } else {
        image
    };
    let mut png = Vec::new();
    small
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| ApiError::internal(format!("encoding the thumbnail: {e}")))?;
    Ok(Bytes::from(png))
}

/// Recent thumbnails by (entry, size); the oldest leaves first.
#[derive(Default)]
pub struct Cache {
    inner: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    pngs: HashMap<(i64, u32), Bytes>,
    order: VecDeque<(i64, u32)>,
}

impl Cache {
    pub fn get(&self, id: i64, size: u32) -> Option<Bytes> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.pngs.get(&(id, size)).cloned()
    }

    pub fn put(&self, id: i64, size: u32, png: Bytes) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.pngs.insert((id, size), png).is_none() {
            inner.order.push_back((id, size));
        }
        while inner.order.len() > CACHED {
            if let Some(old) = inner.order.pop_front() {
                inner.pngs.remove(&old);
            }
        }
    }
}
