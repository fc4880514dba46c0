//! Reading and writing NumPy `.npy` files.
//!
//! The format is a magic string, a format version, a Python-literal header
//! dict (`{'descr': '<f4', 'fortran_order': False, 'shape': (R, C), }`) padded
//! with spaces, and then the raw array data. Supported here: format versions
//! 1.0, 2.0 and 3.0; little-endian `f32` (`<f4`), `f16` (`<f2`) and `i64`
//! (`<i8`); 2-D arrays in C order. Float arrays (embeddings) must be 2-D: a
//! 1-D array is refused, since reading it as one column would turn a single
//! embedding into a memory of one-value keys. A 1-D `<i8` array of length
//! `n` is read as an `n x 1` matrix (a column, as for a list of ids).
//!
//! Every write is atomic (see [`crate::atomic`]).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use half::f16;

use crate::atomic::AtomicFile;
use crate::error::{IoContext, Result, StoreError};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Size of the header [`NpyWriter`] reserves, so that the final row count can
/// be patched in place without moving the data. It fits two 20-digit
/// dimensions, and is a multiple of 64 as NumPy recommends for alignment.
const STREAM_HEADER_LEN: usize = 128;

/// Values converted per read or write call when streaming.
const CHUNK_VALUES: usize = 1 << 16;

/// Element types this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// `<f4`: little-endian 32-bit float.
    F32,
    /// `<f2`: little-endian 16-bit float.
    F16,
    /// `<i8`: little-endian 64-bit signed integer.
    I64,
    /// `<i4`: little-endian 32-bit signed integer (read as `i64`: labels
    /// NumPy users save as int32).
    I32,
}

impl Dtype {
    /// The NumPy type string written in headers.
    pub fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F16 => "<f2",
            Dtype::I64 => "<i8",
            Dtype::I32 => "<i4",
        }
    }

    /// Bytes per element.
    pub fn item_size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
            Dtype::I64 => 8,
            Dtype::I32 => 4,
        }
    }

    /// Whether the elements are integers.
    pub fn is_integer(self) -> bool {
        matches!(self, Dtype::I64 | Dtype::I32)
    }

    fn from_descr(path: &Path, descr: &str) -> Result<Dtype> {
        match descr {
            "<f4" => Ok(Dtype::F32),
            "<f2" => Ok(Dtype::F16),
            "<i8" => Ok(Dtype::I64),
            "<i4" => Ok(Dtype::I32),
            ">f4" | ">f2" | ">i8" | ">f8" | ">i4" => Err(StoreError::BigEndian {
                path: path.to_path_buf(),
                descr: descr.to_string(),
            }),
            _ => Err(StoreError::UnsupportedDtype {
                path: path.to_path_buf(),
                descr: descr.to_string(),
            }),
        }
    }
}

/// What an `.npy` header says about the array that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Format version (major, minor).
    pub version: (u8, u8),
    pub dtype: Dtype,
    /// Dimensions, outermost first (C order).
    pub shape: Vec<usize>,
    /// Byte offset of the first array element in the file.
    pub data_offset: u64,
}

impl NpyHeader {
    /// Number of elements.
    pub fn len(&self) -> usize {
        // Checked against overflow when the header was parsed.
        self.shape.iter().product()
    }

    /// True when the array holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the array data in bytes.
    pub fn data_len(&self) -> u64 {
        self.len() as u64 * self.dtype.item_size() as u64
    }

    /// `(rows, cols)` for a 1-D (`n x 1`) or 2-D array, `None` otherwise.
    pub fn matrix_shape(&self) -> Option<(usize, usize)> {
        match self.shape[..] {
            [n] => Some((n, 1)),
            [r, c] => Some((r, c)),
            _ => None,
        }
    }
}

/// A dense row-major matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix<T = f32> {
    pub rows: usize,
    pub cols: usize,
    /// `rows * cols` values, row after row.
    pub data: Vec<T>,
}

impl<T> Matrix<T> {
    /// Row `i`. Panics if `i >= rows`, like slice indexing.
    pub fn row(&self, i: usize) -> &[T] {
        assert!(i < self.rows, "row {i} out of range ({} rows)", self.rows);
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Iterates over the rows.
    pub fn iter_rows(&self) -> impl Iterator<Item = &[T]> + '_ {
        (0..self.rows).map(move |i| self.row(i))
    }
}

impl<T: Clone> Matrix<T> {
    /// The rows at `indices`, in that order. Panics on an index past the
    /// last row, like slice indexing.
    pub fn select(&self, indices: &[usize]) -> Matrix<T> {
        let mut data = Vec::with_capacity(indices.len() * self.cols);
        for &i in indices {
            data.extend_from_slice(self.row(i));
        }
        Matrix {
            rows: indices.len(),
            cols: self.cols,
            data,
        }
    }
}

/// Reads and validates the header of the `.npy` file at `path`, including
/// that the file is exactly as long as the header says.
pub fn read_header(path: impl AsRef<Path>) -> Result<NpyHeader> {
    let path = path.as_ref();
    let mut file = File::open(path).at(path, "open")?;
    read_header_from(path, &mut file)
}

/// Reads a 2-D `<f4` or `<f2` array as `f32` values.
pub fn read_f32_matrix(path: impl AsRef<Path>) -> Result<Matrix<f32>> {
    let path = path.as_ref();
    let (mut file, header, rows, cols) = open_matrix(path, Floats)?;
    let mut data = Vec::with_capacity(header.len());
    for_each_f32_chunk(path, &mut file, &header, CHUNK_VALUES, |chunk| {
        data.extend_from_slice(chunk);
        Ok(())
    })?;
    Ok(Matrix { rows, cols, data })
}

/// Reads a float array of any number of dimensions (`<f4`, or `<f2` widened
/// to `f32`), returning its shape and its values in C order.
pub fn read_f32_array(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f32>)> {
    let path = path.as_ref();
    let mut file = File::open(path).at(path, "open")?;
    let header = read_header_from(path, &mut file)?;
    let mut data = Vec::with_capacity(header.len());
    for_each_f32_chunk(path, &mut file, &header, CHUNK_VALUES, |chunk| {
        data.extend_from_slice(chunk);
        Ok(())
    })?;
    Ok((header.shape, data))
}

/// Reads a 1-D or 2-D `<i8` (or `<i4`, widened) array.
pub fn read_i64_matrix(path: impl AsRef<Path>) -> Result<Matrix<i64>> {
    let path = path.as_ref();
    let (mut file, header, rows, cols) = open_matrix(path, Ids)?;
    let item = match header.dtype {
        Dtype::I64 => 8,
        Dtype::I32 => 4,
        other => return Err(dtype_mismatch(path, "<i8 or <i4", other)),
    };
    let mut data = Vec::with_capacity(header.len());
    let mut buf = vec![0u8; CHUNK_VALUES * item];
    let mut left = header.len();
    while left > 0 {
        let n = left.min(CHUNK_VALUES);
        let bytes = &mut buf[..n * item];
        file.read_exact(bytes).at(path, "read array data")?;
        match item {
            8 => data.extend(
                bytes
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8-byte chunk"))),
            ),
            _ => data.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| i64::from(i32::from_le_bytes(b.try_into().expect("4-byte chunk")))),
            ),
        }
        left -= n;
    }
    Ok(Matrix { rows, cols, data })
}

/// Writes a `rows x cols` `<f4` matrix atomically.
pub fn write_f32_matrix(
    path: impl AsRef<Path>,
    rows: usize,
    cols: usize,
    data: &[f32],
) -> Result<()> {
    write_matrix(path.as_ref(), Dtype::F32, rows, cols, data.len(), |out| {
        write_f32_as(out, Dtype::F32, data)
    })
}

/// Writes `f32` values as a `rows x cols` `<f2` (half precision) matrix
/// atomically, halving the size at the cost of precision.
pub fn write_f16_matrix(
    path: impl AsRef<Path>,
    rows: usize,
    cols: usize,
    data: &[f32],
) -> Result<()> {
    write_matrix(path.as_ref(), Dtype::F16, rows, cols, data.len(), |out| {
        write_f32_as(out, Dtype::F16, data)
    })
}

/// Writes a `rows x cols` `<i8` matrix atomically.
pub fn write_i64_matrix(
    path: impl AsRef<Path>,
    rows: usize,
    cols: usize,
    data: &[i64],
) -> Result<()> {
    write_matrix(path.as_ref(), Dtype::I64, rows, cols, data.len(), |out| {
        write_i64(out, data)
    })
}

/// Writes a matrix row by row without knowing the row count in advance.
///
/// Rows go to a temporary file next to the destination; [`finish`] writes
/// the final shape into the header, syncs and renames the file into place.
/// If the writer is dropped without `finish` (an error, a panic, an
/// interrupted job), the temporary file is deleted and any existing file at
/// the destination is left as it was.
///
/// [`finish`]: NpyWriter::finish
#[derive(Debug)]
pub struct NpyWriter {
    file: AtomicFile,
    path: PathBuf,
    dtype: Dtype,
    cols: usize,
    rows: usize,
}

impl NpyWriter {
    /// Starts a matrix of `cols` columns at `path`.
    pub fn create(path: impl AsRef<Path>, dtype: Dtype, cols: usize) -> Result<NpyWriter> {
        let path = path.as_ref().to_path_buf();
        if cols == 0 {
            return Err(StoreError::Invalid {
                path,
                reason: "a streamed matrix needs at least one column".into(),
            });
        }
        let mut file = AtomicFile::create(&path)?;
        // A placeholder with zero rows; `finish` overwrites it with a header
        // of exactly the same length.
        let header = header_bytes(dtype, &[0, cols], Some(STREAM_HEADER_LEN));
        file.write_all(&header)
            .at(file.temp_path(), "write header to")?;
        Ok(NpyWriter {
            file,
            path,
            dtype,
            cols,
            rows: 0,
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Appends whole rows (`data.len()` must be a multiple of `cols`) to an
    /// `F32` or `F16` matrix.
    pub fn append_rows(&mut self, data: &[f32]) -> Result<()> {
        if self.dtype == Dtype::I64 {
            return Err(StoreError::DtypeMismatch {
                path: self.path.clone(),
                expected: "<i8 (use append_rows_i64)",
                found: "f32 rows",
            });
        }
        let new_rows = self.check_rows(data.len())?;
        write_f32_as(&mut self.file, self.dtype, data)
            .at(self.file.temp_path(), "write rows to")?;
        self.rows += new_rows;
        Ok(())
    }

    /// Appends whole rows to an `I64` matrix.
    pub fn append_rows_i64(&mut self, data: &[i64]) -> Result<()> {
        if self.dtype != Dtype::I64 {
            return Err(StoreError::DtypeMismatch {
                path: self.path.clone(),
                expected: "<f4 or <f2 (use append_rows)",
                found: "i64 rows",
            });
        }
        let new_rows = self.check_rows(data.len())?;
        write_i64(&mut self.file, data).at(self.file.temp_path(), "write rows to")?;
        self.rows += new_rows;
        Ok(())
    }

    fn check_rows(&self, len: usize) -> Result<usize> {
        if !len.is_multiple_of(self.cols) {
            return Err(StoreError::PartialRow {
                path: self.path.clone(),
                cols: self.cols,
                len,
            });
        }
        Ok(len / self.cols)
    }

    /// Completes the file and moves it into place. Returns `(rows, cols)`.
    pub fn finish(mut self) -> Result<(usize, usize)> {
        let header = header_bytes(self.dtype, &[self.rows, self.cols], Some(STREAM_HEADER_LEN));
        let temp = self.file.temp_path().to_path_buf();
        self.file.seek(SeekFrom::Start(0)).at(&temp, "seek in")?;
        self.file.write_all(&header).at(&temp, "write header to")?;
        self.file.commit()?;
        Ok((self.rows, self.cols))
    }
}

/// Reads row ranges of a 1-D or 2-D float `.npy` file (`<f4`, or `<f2`
/// widened to `f32`) without loading the rest of it.
///
/// The header (and the file length it implies) is validated once by
/// [`open`](NpyRowReader::open); each [`read_rows`](NpyRowReader::read_rows)
/// then seeks to the first requested row and reads only those rows, so a
/// large matrix can be streamed in bounded memory.
#[derive(Debug)]
pub struct NpyRowReader {
    path: PathBuf,
    file: File,
    header: NpyHeader,
    rows: usize,
    cols: usize,
    raw: Vec<u8>,
}

impl NpyRowReader {
    /// Opens `path` and checks that it holds a float matrix in C order.
    pub fn open(path: impl AsRef<Path>) -> Result<NpyRowReader> {
        let path = path.as_ref();
        let (file, header, rows, cols) = open_matrix(path, Floats)?;
        if header.dtype.is_integer() {
            return Err(dtype_mismatch(path, "<f4 or <f2", header.dtype));
        }
        Ok(NpyRowReader {
            path: path.to_path_buf(),
            file,
            header,
            rows,
            cols,
            raw: Vec::new(),
        })
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows in the file.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row (1 for a 1-D array).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The element type stored in the file.
    pub fn dtype(&self) -> Dtype {
        self.header.dtype
    }

    /// The validated header.
    pub fn header(&self) -> &NpyHeader {
        &self.header
    }

    /// Replaces the content of `out` with rows `start..start + n` as `f32`
    /// values, row after row. Asking for rows past the end is an error
    /// naming the file.
    pub fn read_rows(&mut self, start: usize, n: usize, out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        let end = start.checked_add(n).filter(|&e| e <= self.rows);
        if end.is_none() {
            return Err(StoreError::Invalid {
                path: self.path.clone(),
                reason: format!(
                    "rows {start}..{} requested, but the file has {} rows",
                    start.saturating_add(n),
                    self.rows
                ),
            });
        }
        let item = self.header.dtype.item_size();
        let row_bytes = self.cols * item;
        let offset = self.header.data_offset + (start * row_bytes) as u64;
        self.file
            .seek(SeekFrom::Start(offset))
            .at(&self.path, "seek in")?;
        self.raw.resize(n * row_bytes, 0);
        self.file
            .read_exact(&mut self.raw)
            .at(&self.path, "read array data")?;
        out.reserve(n * self.cols);
        match self.header.dtype {
            Dtype::F32 => out.extend(
                self.raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4-byte chunk"))),
            ),
            Dtype::F16 => out.extend(
                self.raw
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            Dtype::I64 | Dtype::I32 => unreachable!("rejected by open"),
        }
        Ok(())
    }
}

/// Joins 2-D (or 1-D) float `.npy` files row-wise into one `<f4` file at
/// `out`, streaming so that the parts need not fit in memory together.
/// `<f2` parts are widened to `f32`. All parts must have the same number of
/// columns; this is checked before anything is written. `out` may be one of
/// the parts: it is replaced only once the result is complete.
/// Returns `(rows, cols)` of the result.
pub fn concat_f32_files<P: AsRef<Path>>(
    parts: &[P],
    out: impl AsRef<Path>,
) -> Result<(usize, usize)> {
    let out = out.as_ref();
    if parts.is_empty() {
        return Err(StoreError::Invalid {
            path: out.to_path_buf(),
            reason: "no input files to concatenate".into(),
        });
    }
    let mut opened: Vec<(&Path, File, NpyHeader, usize)> = Vec::with_capacity(parts.len());
    for part in parts {
        let path = part.as_ref();
        let (file, header, _, cols) = open_matrix(path, Floats)?;
        if header.dtype.is_integer() {
            return Err(dtype_mismatch(path, "<f4 or <f2", header.dtype));
        }
        if let Some((first, _, _, first_cols)) = opened.first() {
            if cols != *first_cols {
                return Err(StoreError::ColumnMismatch {
                    path: path.to_path_buf(),
                    first: first.to_path_buf(),
                    expected: *first_cols,
                    found: cols,
                });
            }
        }
        opened.push((path, file, header, cols));
    }
    let cols = opened[0].3;
    if cols == 0 {
        // Zero-width parts carry only a row count, which a streamed file
        // cannot express (rows are counted from values); write it directly.
        let rows = opened.iter().map(|(_, _, h, _)| h.shape[0]).sum();
        write_f32_matrix(out, rows, 0, &[])?;
        return Ok((rows, 0));
    }
    let mut writer = NpyWriter::create(out, Dtype::F32, cols)?;
    let chunk = (CHUNK_VALUES / cols).max(1) * cols;
    for (path, mut file, header, _) in opened {
        for_each_f32_chunk(path, &mut file, &header, chunk, |values| {
            writer.append_rows(values)
        })?;
    }
    writer.finish()
}

// ---------------------------------------------------------------------------
// Reading internals

/// What a matrix file holds, which decides whether a 1-D array is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MatrixKind {
    /// Embeddings: 2-D only.
    Floats,
    /// Ids: 2-D, or 1-D read as one column.
    Ids,
}
use MatrixKind::{Floats, Ids};

/// Opens a file and checks that it holds an array of `kind`'s shape in C
/// order. The returned file is positioned at the data.
fn open_matrix(path: &Path, kind: MatrixKind) -> Result<(File, NpyHeader, usize, usize)> {
    let mut file = File::open(path).at(path, "open")?;
    let header = read_header_from(path, &mut file)?;
    if let ([len], Floats) = (&header.shape[..], kind) {
        return Err(StoreError::OneDimensional {
            path: path.to_path_buf(),
            len: *len as u64,
        });
    }
    let Some((rows, cols)) = header.matrix_shape() else {
        return Err(StoreError::WrongNdim {
            path: path.to_path_buf(),
            shape: header.shape.iter().map(|&d| d as u64).collect(),
        });
    };
    Ok((file, header, rows, cols))
}

fn dtype_mismatch(path: &Path, expected: &'static str, found: Dtype) -> StoreError {
    StoreError::DtypeMismatch {
        path: path.to_path_buf(),
        expected,
        found: found.descr(),
    }
}

/// Reads the header and leaves `file` positioned at the first data byte.
fn read_header_from(path: &Path, file: &mut File) -> Result<NpyHeader> {
    let file_len = file.metadata().at(path, "read metadata of")?.len();
    let truncated = |what, expected: u64| StoreError::Truncated {
        path: path.to_path_buf(),
        what,
        expected,
        actual: file_len,
    };

    let mut prefix = [0u8; 8];
    if file_len < 8 {
        // Too short to be anything; call it a non-.npy file unless the bytes
        // present are a prefix of the magic string.
        let mut head = vec![0u8; file_len as usize];
        file.read_exact(&mut head).at(path, "read")?;
        if head.is_empty() || MAGIC.starts_with(&head[..head.len().min(6)]) {
            return Err(truncated("the format preamble", 10));
        }
        return Err(StoreError::NotNpy {
            path: path.to_path_buf(),
        });
    }
    file.read_exact(&mut prefix).at(path, "read")?;
    if &prefix[..6] != MAGIC {
        return Err(StoreError::NotNpy {
            path: path.to_path_buf(),
        });
    }
    let (major, minor) = (prefix[6], prefix[7]);
    let len_bytes = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => {
            return Err(StoreError::UnsupportedVersion {
                path: path.to_path_buf(),
                major,
                minor,
            })
        }
    };
    let preamble = 8 + len_bytes as u64;
    if file_len < preamble {
        return Err(truncated("the format preamble", preamble));
    }
    let mut len_buf = [0u8; 4];
    file.read_exact(&mut len_buf[..len_bytes])
        .at(path, "read")?;
    let header_len = u32::from_le_bytes(len_buf) as u64;
    let data_offset = preamble + header_len;
    if file_len < data_offset {
        return Err(truncated("the header", data_offset));
    }
    let mut text = vec![0u8; header_len as usize];
    file.read_exact(&mut text).at(path, "read")?;

    let bad = |reason: String| StoreError::BadHeader {
        path: path.to_path_buf(),
        reason,
    };
    // Versions 1 and 2 are Latin-1 (in practice ASCII); version 3 is UTF-8.
    let text = String::from_utf8(text).map_err(|_| bad("header is not valid text".into()))?;
    let fields = parse_header_dict(&text).map_err(bad)?;

    let dtype = Dtype::from_descr(path, &fields.descr)?;
    if fields.fortran_order {
        // A 1-D array is the same in either order, but NumPy never writes
        // fortran_order True for one, so any True is worth refusing.
        return Err(StoreError::FortranOrder {
            path: path.to_path_buf(),
        });
    }
    let mut elements: u64 = 1;
    for &d in &fields.shape {
        elements = elements
            .checked_mul(d)
            .ok_or_else(|| bad(format!("shape {:?} is too large", fields.shape)))?;
    }
    let data_len = elements
        .checked_mul(dtype.item_size() as u64)
        .filter(|&n| usize::try_from(n).is_ok())
        .ok_or_else(|| bad(format!("shape {:?} is too large", fields.shape)))?;
    let shape = fields.shape.iter().map(|&d| d as usize).collect();

    let expected = data_offset + data_len;
    if file_len < expected {
        return Err(truncated("the array data", expected));
    }
    if file_len > expected {
        return Err(StoreError::TrailingData {
            path: path.to_path_buf(),
            expected,
            actual: file_len,
        });
    }
    Ok(NpyHeader {
        version: (major, minor),
        dtype,
        shape,
        data_offset,
    })
}

/// Streams a float array as `f32` values, `chunk` values at a time (the last
/// chunk may be shorter). `file` must be positioned at the data.
fn for_each_f32_chunk(
    path: &Path,
    file: &mut File,
    header: &NpyHeader,
    chunk: usize,
    mut f: impl FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    let item = header.dtype.item_size();
    let mut raw = vec![0u8; chunk * item];
    let mut values = Vec::with_capacity(chunk);
    let mut left = header.len();
    while left > 0 {
        let n = left.min(chunk);
        let bytes = &mut raw[..n * item];
        file.read_exact(bytes).at(path, "read array data")?;
        values.clear();
        match header.dtype {
            Dtype::F32 => values.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4-byte chunk"))),
            ),
            Dtype::F16 => values.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            dtype @ (Dtype::I64 | Dtype::I32) => {
                return Err(dtype_mismatch(path, "<f4 or <f2", dtype))
            }
        }
        f(&values)?;
        left -= n;
    }
    Ok(())
}

/// The three keys of an `.npy` header dict.
#[derive(Debug, PartialEq)]
struct HeaderFields {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
}

/// A Python literal, as far as `.npy` headers use them.
#[derive(Debug, PartialEq)]
enum Literal {
    Str(String),
    Bool(bool),
    Int(u64),
    Tuple(Vec<Literal>),
    List(Vec<Literal>),
    Dict(Vec<(Literal, Literal)>),
    None,
}

fn parse_header_dict(text: &str) -> std::result::Result<HeaderFields, String> {
    let mut p = LiteralParser {
        s: text.as_bytes(),
        pos: 0,
    };
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(format!("unexpected text after the dict at byte {}", p.pos));
    }
    let Literal::Dict(entries) = value else {
        return Err("header is not a dict".into());
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (key, value) in entries {
        let Literal::Str(key) = key else {
            return Err("header dict has a key that is not a string".into());
        };
        match (key.as_str(), value) {
            ("descr", Literal::Str(s)) => descr = Some(s),
            // A list or dict descr is a structured dtype.
            ("descr", other) => descr = Some(format!("{other:?}")),
            ("fortran_order", Literal::Bool(b)) => fortran = Some(b),
            ("fortran_order", _) => return Err("fortran_order is not True or False".into()),
            ("shape", Literal::Tuple(dims)) => {
                let dims =
                    dims.into_iter()
                        .map(|d| match d {
                            Literal::Int(n) => Ok(n),
                            _ => Err("shape holds something other than non-negative integers"
                                .to_string()),
                        })
                        .collect::<std::result::Result<Vec<u64>, String>>()?;
                shape = Some(dims);
            }
            ("shape", _) => return Err("shape is not a tuple".into()),
            (other, _) => return Err(format!("unexpected key '{other}'")),
        }
    }
    match (descr, fortran, shape) {
        (Some(descr), Some(fortran_order), Some(shape)) => Ok(HeaderFields {
            descr,
            fortran_order,
            shape,
        }),
        (d, f, s) => {
            let missing: Vec<&str> = [
                ("descr", d.is_none()),
                ("fortran_order", f.is_none()),
                ("shape", s.is_none()),
            ]
            .into_iter()
            .filter(|(_, m)| *m)
            .map(|(k, _)| k)
            .collect();
            Err(format!("missing key(s): {}", missing.join(", ")))
        }
    }
}

/// Recursive-descent parser for the Python literal subset above.
struct LiteralParser<'a> {
    s: &'a [u8],
    pos: usize,
}

/// Nesting limit, so a hostile header cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

impl LiteralParser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.pos))
        }
    }

    fn value(&mut self, depth: usize) -> std::result::Result<Literal, String> {
        if depth > MAX_DEPTH {
            return Err("literal nested too deeply".into());
        }
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                let mut entries = Vec::new();
                loop {
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        return Ok(Literal::Dict(entries));
                    }
                    let k = self.value(depth + 1)?;
                    self.expect(b':')?;
                    let v = self.value(depth + 1)?;
                    entries.push((k, v));
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {}
                        _ => return Err(format!("expected ',' or '}}' at byte {}", self.pos)),
                    }
                }
            }
            Some(open @ (b'(' | b'[')) => {
                self.pos += 1;
                let close = if open == b'(' { b')' } else { b']' };
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        return Ok(if open == b'(' {
                            Literal::Tuple(items)
                        } else {
                            Literal::List(items)
                        });
                    }
                    items.push(self.value(depth + 1)?);
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(c) if c == close => {}
                        _ => {
                            return Err(format!(
                                "expected ',' or '{}' at byte {}",
                                close as char, self.pos
                            ))
                        }
                    }
                }
            }
            Some(q @ (b'\'' | b'"')) => {
                self.pos += 1;
                let mut out = Vec::new();
                loop {
                    match self.s.get(self.pos) {
                        None => return Err("unterminated string".into()),
                        Some(&b'\\') => {
                            let escaped = self.s.get(self.pos + 1).ok_or("unterminated string")?;
                            out.push(*escaped);
                            self.pos += 2;
                        }
                        Some(&c) if c == q => {
                            self.pos += 1;
                            break;
                        }
                        Some(&c) => {
                            out.push(c);
                            self.pos += 1;
                        }
                    }
                }
                String::from_utf8(out)
                    .map(Literal::Str)
                    .map_err(|_| "string is not valid UTF-8".into())
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
                let digits = std::str::from_utf8(&self.s[start..self.pos]).expect("ASCII digits");
                let n = digits
                    .parse::<u64>()
                    .map_err(|_| format!("integer {digits} is too large"))?;
                // Files written by Python 2 may carry long-integer suffixes.
                if matches!(self.s.get(self.pos), Some(b'L' | b'l')) {
                    self.pos += 1;
                }
                Ok(Literal::Int(n))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos].is_ascii_alphanumeric() {
                    self.pos += 1;
                }
                match &self.s[start..self.pos] {
                    b"True" => Ok(Literal::Bool(true)),
                    b"False" => Ok(Literal::Bool(false)),
                    b"None" => Ok(Literal::None),
                    word => Err(format!(
                        "unexpected word '{}'",
                        String::from_utf8_lossy(word)
                    )),
                }
            }
            Some(b'-') => Err(format!("negative number at byte {}", self.pos)),
            Some(c) => Err(format!(
                "unexpected character '{}' at byte {}",
                c.escape_ascii(),
                self.pos
            )),
            None => Err("header ends early".into()),
        }
    }
}

// ---------------------------------------------------------------------------
// Writing internals

/// Builds the magic string, version 1.0 preamble and padded header dict.
/// With `fixed_len`, the header is padded to exactly that many bytes (which
/// must be enough); otherwise to the next multiple of 64.
fn header_bytes(dtype: Dtype, shape: &[usize], fixed_len: Option<usize>) -> Vec<u8> {
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {dims}, }}",
        dtype.descr()
    );
    // magic (6) + version (2) + u16 length (2) + dict + '\n'
    let unpadded = 10 + dict.len() + 1;
    let total = fixed_len.unwrap_or(unpadded.div_ceil(64) * 64);
    assert!(total >= unpadded, "header does not fit in {total} bytes");
    let header_len = u16::try_from(total - 10).expect("header length fits in u16");

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

fn write_matrix(
    path: &Path,
    dtype: Dtype,
    rows: usize,
    cols: usize,
    len: usize,
    write_data: impl FnOnce(&mut AtomicFile) -> std::io::Result<()>,
) -> Result<()> {
    if rows.checked_mul(cols) != Some(len) {
        return Err(StoreError::ShapeMismatch {
            path: path.to_path_buf(),
            rows,
            cols,
            len,
        });
    }
    let mut file = AtomicFile::create(path)?;
    let temp = file.temp_path().to_path_buf();
    file.write_all(&header_bytes(dtype, &[rows, cols], None))
        .at(&temp, "write header to")?;
    write_data(&mut file).at(&temp, "write array data to")?;
    file.commit()
}

fn write_f32_as(out: &mut impl Write, dtype: Dtype, data: &[f32]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(CHUNK_VALUES.min(data.len()) * dtype.item_size());
    for chunk in data.chunks(CHUNK_VALUES) {
        buf.clear();
        match dtype {
            Dtype::F32 => chunk
                .iter()
                .for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
            Dtype::F16 => chunk
                .iter()
                .for_each(|v| buf.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            Dtype::I64 | Dtype::I32 => unreachable!("callers route integers through write_i64"),
        }
        out.write_all(&buf)?;
    }
    Ok(())
}

fn write_i64(out: &mut impl Write, data: &[i64]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(CHUNK_VALUES.min(data.len()) * 8);
    for chunk in data.chunks(CHUNK_VALUES) {
        buf.clear();
        chunk
            .iter()
            .for_each(|v| buf.extend_from_slice(&v.to_le_bytes()));
        out.write_all(&buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_to_64_and_ends_with_newline() {
        for shape in [&[3usize, 4][..], &[0, 1280], &[7]] {
            let h = header_bytes(Dtype::F32, shape, None);
            assert_eq!(h.len() % 64, 0);
            assert_eq!(*h.last().unwrap(), b'\n');
            let len = u16::from_le_bytes([h[8], h[9]]) as usize;
            assert_eq!(len + 10, h.len());
        }
    }

    #[test]
    fn stream_header_fits_the_largest_shape() {
        let h = header_bytes(
            Dtype::F16,
            &[usize::MAX, usize::MAX],
            Some(STREAM_HEADER_LEN),
        );
        assert_eq!(h.len(), STREAM_HEADER_LEN);
        let text = std::str::from_utf8(&h[10..]).unwrap();
        let f = parse_header_dict(text).unwrap();
        assert_eq!(f.shape, vec![usize::MAX as u64, usize::MAX as u64]);
    }

    #[test]
    fn parses_numpy_style_headers() {
        let f =
            parse_header_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }    \n")
                .unwrap();
        assert_eq!(
            f,
            HeaderFields {
                descr: "<f4".into(),
                fortran_order: false,
                shape: vec![3, 4]
            }
        );
        let f = parse_header_dict("{\"shape\":(5L,),\"fortran_order\":True,\"descr\":\"<i8\"}")
            .unwrap();
        assert_eq!(f.shape, vec![5]);
        assert!(f.fortran_order);
        let f = parse_header_dict("{'descr': '<f2', 'fortran_order': False, 'shape': ()}").unwrap();
        assert!(f.shape.is_empty());
    }

    #[test]
    fn rejects_malformed_headers() {
        for (text, needle) in [
            ("", "ends early"),
            ("[1, 2]", "not a dict"),
            (
                "{'descr': '<f4', 'fortran_order': False}",
                "missing key(s): shape",
            ),
            (
                "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}",
                "fortran_order",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
                "negative",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': ('a',)}",
                "non-negative integers",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}",
                "unexpected key",
            ),
            ("{'descr': '<f4' 'fortran_order': False}", "expected ','"),
            ("{'descr': '<f4", "unterminated"),
            ("{'shape': (99999999999999999999999,)}", "too large"),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x",
                "after the dict",
            ),
        ] {
            let err = parse_header_dict(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        let deep = format!("{}{}", "(".repeat(1000), ")".repeat(1000));
        assert!(parse_header_dict(&deep).unwrap_err().contains("nested"));
    }
}
