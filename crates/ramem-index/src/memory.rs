//! Search over a memory directory: each shard's memory-mapped keys are
//! searched in turn and the per-shard results merged into one top-k per query,
//! with global row ids. This is the call the training and serving code uses.

use ramem_store::memory::{KeysData, Memory, ValueKind};

use crate::topk::{TopK, EMPTY_ID};
use crate::{search_exact, IndexError, Keys, Neighbours, SearchParams};

/// Why a memory search failed.
#[derive(Debug, thiserror::Error)]
pub enum MemorySearchError {
    #[error("the memory holds no entries")]
    EmptyMemory,
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] ramem_store::StoreError),
}

/// Exact inner-product k-NN of `queries` (row-major, `dim` wide) over every
/// key in `memory`. Ids are global row ids; ordering and padding as
/// [`search_exact`] (best first, ties by smaller id, -1 / -inf when `k`
/// exceeds the memory). `params.exclude` holds global ids.
pub fn search_memory(
    memory: &Memory,
    queries: &[f32],
    dim: usize,
    params: &SearchParams,
) -> Result<Neighbours, MemorySearchError> {
    if memory.count() == 0 {
        return Err(MemorySearchError::EmptyMemory);
    }
    let nq = queries.len().checked_div(dim).unwrap_or(0);
    let k = params.k;
    let mut merged: Option<TopK> = None;
    for shard in 0..memory.shard_count() {
        let view = memory.shard_keys(shard);
        if view.rows == 0 {
            continue;
        }
        let keys = match view.data {
            KeysData::F16(data) => Keys::F16 {
                data,
                dim: view.dim,
            },
            KeysData::F32(data) => Keys::F32 {
                data,
                dim: view.dim,
            },
        };
        let local = SearchParams {
            k,
            exclude: params.exclude.as_ref().map(|ids| {
                ids.iter()
                    .map(|&id| {
                        let local = id - view.first_id;
                        if id >= 0 && (0..view.rows as i64).contains(&local) {
                            local
                        } else {
                            -1
                        }
                    })
                    .collect()
            }),
        };
        let found = search_exact(&keys, queries, dim, &local)?;
        let top = merged.get_or_insert_with(|| TopK::new(nq, k));
        for qi in 0..nq {
            for j in 0..k {
                let id = found.ids[qi * k + j];
                if id >= 0 {
                    top.push(qi, found.scores[qi * k + j], id + view.first_id);
                }
            }
        }
    }
    let top = merged.ok_or(MemorySearchError::EmptyMemory)?;
    let ids = top
        .ids
        .iter()
        .map(|&id| if id == EMPTY_ID { -1 } else { id })
        .collect();
    let scores = top
        .ids
        .iter()
        .zip(&top.scores)
        .map(|(&id, &s)| if id == EMPTY_ID { f32::NEG_INFINITY } else { s })
        .collect();
    Ok(Neighbours { k, ids, scores })
}

/// Neighbours of a batch of queries together with their stored values.
#[derive(Debug, Clone)]
pub struct Retrieved {
    pub neighbours: Neighbours,
    /// `queries x k x value_dim`, row-major; zero rows where a slot is empty (id -1).
    pub values: Vec<f32>,
    pub value_dim: usize,
}

/// Searches `memory` and gathers the `kind` values of every neighbour: what
/// a retrieval-augmented model consumes, without going through files.
pub fn retrieve(
    memory: &Memory,
    queries: &[f32],
    dim: usize,
    params: &SearchParams,
    kind: ValueKind,
) -> Result<Retrieved, MemorySearchError> {
    let neighbours = search_memory(memory, queries, dim, params)?;
    let present: Vec<i64> = neighbours
        .ids
        .iter()
        .copied()
        .filter(|&id| id >= 0)
        .collect();
    // Fails, naming the manifest, when the memory stores no values of this kind.
    let gathered = memory.gather_values(kind, &present)?;
    let value_dim = memory.value_dim(kind).unwrap_or(0);
    let mut values = vec![0f32; neighbours.ids.len() * value_dim];
    let mut next = gathered.chunks_exact(value_dim);
    for (slot, &id) in neighbours.ids.iter().enumerate() {
        if id >= 0 {
            if let Some(row) = next.next() {
                values[slot * value_dim..(slot + 1) * value_dim].copy_from_slice(row);
            }
        }
    }
    Ok(Retrieved {
        neighbours,
        values,
        value_dim,
    })
}
