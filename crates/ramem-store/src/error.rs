use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while reading or writing stored arrays.
///
/// Every variant names the file concerned, so a message printed on its own
/// tells the user which file to look at.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: cannot {action}: {error}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },

    #[error("{}: the memory is being written by {holder}; wait for it to finish (only one writer at a time; readers are not blocked)", path.display())]
    Locked { path: PathBuf, holder: String },

    #[error("{}: not an .npy file (it does not start with the NumPy magic string)", path.display())]
    NotNpy { path: PathBuf },

    #[error("{}: unsupported .npy format version {major}.{minor} (1.0, 2.0 and 3.0 are supported)", path.display())]
    UnsupportedVersion { path: PathBuf, major: u8, minor: u8 },

    #[error("{}: truncated: {what} needs {expected} bytes but the file has {actual}", path.display())]
    Truncated {
        path: PathBuf,
        what: &'static str,
        expected: u64,
        actual: u64,
    },

    #[error("{}: {actual} bytes, but the header describes {expected}; the file has trailing data", path.display())]
    TrailingData {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    #[error("{}: bad .npy header: {reason}", path.display())]
    BadHeader { path: PathBuf, reason: String },

    #[error("{}: dtype {descr} is big-endian; only little-endian data is supported (convert it with arr.astype(arr.dtype.newbyteorder('<')))", path.display())]
    BigEndian { path: PathBuf, descr: String },

    #[error("{}: unsupported dtype {descr} (supported: <f4, <f2, <i8)", path.display())]
    UnsupportedDtype { path: PathBuf, descr: String },

    #[error("{}: array is stored in Fortran (column-major) order; save it in C order (np.ascontiguousarray)", path.display())]
    FortranOrder { path: PathBuf },

    #[error("{}: a 1-D array of {len} values, not a matrix; embeddings are a 2-D N x D array (in NumPy: `a.reshape(1, -1)` for one embedding, `a.reshape(-1, D)` for several)", path.display())]
    OneDimensional { path: PathBuf, len: u64 },

    #[error("{}: expected a 2-D array, found shape {shape:?}", path.display())]
    WrongNdim { path: PathBuf, shape: Vec<u64> },

    #[error("{}: expected dtype {expected}, found {found}", path.display())]
    DtypeMismatch {
        path: PathBuf,
        expected: &'static str,
        found: &'static str,
    },

    #[error("{}: {len} values cannot form a {rows} x {cols} matrix", path.display())]
    ShapeMismatch {
        path: PathBuf,
        rows: usize,
        cols: usize,
        len: usize,
    },

    #[error("{}: {len} values are not a whole number of rows of {cols} columns", path.display())]
    PartialRow {
        path: PathBuf,
        cols: usize,
        len: usize,
    },

    #[error("{}: has {found} columns, but {} has {expected}", path.display(), first.display())]
    ColumnMismatch {
        path: PathBuf,
        first: PathBuf,
        expected: usize,
        found: usize,
    },

    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },

    #[error("{}: memory format version {found} is newer than this version of ramem reads (up to {supported}); upgrade ramem to open it", path.display())]
    NewerVersion {
        path: PathBuf,
        found: u64,
        supported: u32,
    },

    /// A memory that lives elsewhere (a vector database) could not be read.
    #[error("{location}: {reason}")]
    Remote { location: String, reason: String },

    #[error("{}: not a ramem memory: {reason}", path.display())]
    NotAMemory { path: PathBuf, reason: String },

    #[error("{}: {what} row {row} holds {value} at column {col}; embeddings must be finite", path.display())]
    NonFinite {
        path: PathBuf,
        what: String,
        row: u64,
        col: usize,
        value: f32,
    },
}

/// Result type of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches a path and the attempted action to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path, action: &'static str) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path, action: &'static str) -> Result<T> {
        self.map_err(|error| StoreError::Io {
            path: path.to_path_buf(),
            action,
            error,
        })
    }
}
