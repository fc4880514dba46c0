//! On-disk storage for ramem's embedding matrices.
//!
//! Embeddings, labels and other dense arrays are kept as NumPy `.npy` files so
//! that they can be inspected or produced with ordinary Python tooling. This
//! crate reads and writes that format ([`npy`]) and makes every write
//! crash-safe ([`atomic`]): a file at its final path is always complete,
//! because data is written to a temporary file in the same directory, synced,
//! and only then renamed into place.
//!
//! [`fingerprint`] is the one cheap content hash every resumable run and
//! cache names its files with.
//!
//! The [`memory`] module builds on both: the on-disk memory of image-text
//! embeddings (sharded `.npy` matrices, JSON-lines metadata and a versioned
//! manifest), opened memory-mapped, grown append-only, and importable from
//! precomputed `.npy` files.
//!
//! ```
//! use ramem_store::npy::{self, Dtype, NpyWriter};
//! # let dir = tempfile::tempdir()?;
//! let path = dir.path().join("embeddings.npy");
//! // Stream rows as they are computed; nothing appears at `path` until
//! // `finish` succeeds.
//! let mut writer = NpyWriter::create(&path, Dtype::F32, 2)?;
//! writer.append_rows(&[0.1, 0.2])?;
//! writer.append_rows(&[0.3, 0.4])?;
//! writer.finish()?;
//!
//! let m = npy::read_f32_matrix(&path)?;
//! assert_eq!((m.rows, m.cols), (2, 2));
//! assert_eq!(m.row(1), &[0.3, 0.4]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod atomic;
mod error;
pub mod fingerprint;
pub mod memory;
pub mod npy;

pub use atomic::{write_atomic, AtomicFile};
pub use error::{Result, StoreError};
pub use fingerprint::{file_fingerprint, Fnv1a};
pub use npy::{
    concat_f32_files, read_f32_matrix, read_header, read_i64_matrix, write_f16_matrix,
    write_f32_matrix, write_i64_matrix, Dtype, Matrix, NpyHeader, NpyRowReader, NpyWriter,
};
