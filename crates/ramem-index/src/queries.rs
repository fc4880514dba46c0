//! Query embeddings read from a `.npy` file for a memory: the one place a
//! query file is checked.

use std::path::{Path, PathBuf};

use ramem_store::memory::MemoryView;

/// Why a query file cannot be searched.
#[derive(Debug, thiserror::Error)]
pub enum QueryFileError {
    #[error("{}: queries have {found} dimensions but the memory's keys have {want} ({encoder})", path.display())]
    Dimension {
        path: PathBuf,
        found: usize,
        want: usize,
        encoder: String,
    },
    #[error("{}: query row {row} contains NaN or infinity", path.display())]
    NonFinite { path: PathBuf, row: usize },
    #[error("{}: query row {row} is all zeros (no direction to search)", path.display())]
    Zero { path: PathBuf, row: usize },
    #[error(transparent)]
    Store(#[from] ramem_store::StoreError),
}

/// Reads a Q x D query matrix for `memory` (D its key dimension) and scales
/// every row to unit length; returns (Q, rows). A row of zeros or with NaN
/// or infinity is an error naming the file and the row.
pub fn read_queries(
    path: &Path,
    memory: &dyn MemoryView,
) -> Result<(usize, Vec<f32>), QueryFileError> {
    let queries = ramem_store::npy::read_f32_matrix(path)?;
    let dim = memory.key_dim();
    if queries.cols != dim {
        return Err(QueryFileError::Dimension {
            path: path.to_path_buf(),
            found: queries.cols,
            want: dim,
            encoder: memory.manifest().key.encoder.clone(),
        });
    }
    let mut data = queries.data;
    for (row, values) in data.chunks_mut(dim).enumerate() {
        if values.iter().any(|v| !v.is_finite()) {
            return Err(QueryFileError::NonFinite {
                path: path.to_path_buf(),
                row,
            });
        }
        let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm == 0.0 {
            return Err(QueryFileError::Zero {
                path: path.to_path_buf(),
                row,
            });
        }
        values.iter_mut().for_each(|v| *v /= norm);
    }
    Ok((queries.rows, data))
}
