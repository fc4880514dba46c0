//! Quantised keys on disk, in a memory directory: `index-int8/header.json`
//! (what was quantised, for which memory, sizes and checksums),
//! `index-int8/codes.bin` (the codes, in panels of 16 rows, see
//! `kernel.rs`) and `index-int8/rows.bin` (per row: the f32 scale, then,
//! after all scales, the i32 code sums; little-endian). Each file is
//! written to a temporary name and renamed, the header last: it is the
//! commit point, and files that do not match its sizes and checksums are
//! reported, never used. The layout is written down in docs/FORMAT.md.

use std::path::{Path, PathBuf};

use ramem_store::memory::Memory;
use serde::{Deserialize, Serialize};

use super::kernel::PANEL_ROWS;
use super::{CodeBytes, Int8Keys};
use crate::hnsw::{checksum, layout_mismatch};
use crate::{Keys, SearchError};

/// Directory of the quantised keys inside a memory directory.
pub const INT8_DIR: &str = "index-int8";
const HEADER_FILE: &str = "header.json";
const CODES_FILE: &str = "codes.bin";
const ROWS_FILE: &str = "rows.bin";
const FORMAT_NAME: &str = "ramem-int8";
const FORMAT_VERSION: u32 = 1;

/// `index-int8/header.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Int8Header {
    pub format: String,
    pub version: u32,
    /// Rows quantised: global ids `0..count` of the memory.
    pub count: u64,
    pub dim: usize,
    /// `dim` rounded up to a multiple of 4: bytes of codes per row.
    pub padded_dim: usize,
    /// Rows per panel of codes.
    pub panel_rows: usize,
    /// How the memory stores the keys that shortlists are re-scored on.
    pub key_dtype: String,
    pub codes_bytes: u64,
    /// 64-bit checksums of codes.bin and rows.bin, 16 hex digits.
    pub codes_checksum: String,
    pub rows_checksum: String,
    /// Seconds the quantisation took.
    pub build_seconds: f64,
}

/// Why saved quantised keys could not be written or opened.
#[derive(Debug, thiserror::Error)]
pub enum Int8Error {
    #[error("{}: no quantised keys; make them with `ramem index build --kind int8`", path.display())]
    Missing { path: PathBuf },
    #[error("{}: cannot {action}: {error}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        error: std::io::Error,
    },
    #[error("{}: {reason}; rebuild them with `ramem index build --kind int8`", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{}: stale quantised keys: made for {built} rows, but the memory now holds {now}; rebuild them with `ramem index build --kind int8`", path.display())]
    Stale { path: PathBuf, built: u64, now: u64 },
    #[error("{}: the quantised keys do not match the memory: {reason}; rebuild them with `ramem index build --kind int8`", path.display())]
    Mismatch { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] ramem_store::StoreError),
}

/// Where the quantised keys of the memory at `memory_dir` live.
pub fn int8_dir(memory_dir: &Path) -> PathBuf {
    memory_dir.join(INT8_DIR)
}

fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> Int8Error + 'a {
    move |error| Int8Error::Io {
        path: path.to_path_buf(),
        action,
        error,
    }
}

/// Quantises every key of `memory` and saves the codes in the memory
/// directory (replacing any earlier ones).
pub fn build_memory_int8(memory: &Memory) -> Result<(Int8Keys, Int8Header), SearchError> {
    if memory.count() == 0 {
        return Err(SearchError::EmptyMemory);
    }
    let start = std::time::Instant::now();
    let keys = Keys::of_memory(memory)?;
    let codes = Int8Keys::quantise(&keys);
    let header = save(memory, &codes, start.elapsed().as_secs_f64())?;
    Ok((codes, header))
}

/// Opens the saved quantised keys of `memory`, refusing ones that are
/// missing, damaged, stale (made before the memory grew) or made for other
/// keys.
pub fn open_memory_int8(memory: &Memory) -> Result<(Int8Keys, Int8Header), Int8Error> {
    let header = checked_header(memory)?;
    if header.count < memory.count() {
        return Err(Int8Error::Stale {
            path: int8_dir(memory.dir()).join(HEADER_FILE),
            built: header.count,
            now: memory.count(),
        });
    }
    let codes = read_codes(memory.dir(), &header)?;
    Ok((codes, header))
}

/// Brings the saved quantised keys of `memory` up to date after it grew:
/// quantises the rows added since and saves them. Returns the rows
/// quantised, `None` when the memory has no quantised keys.
pub fn update_memory_int8(memory: &Memory) -> Result<Option<usize>, SearchError> {
    let header = match checked_header(memory) {
        Ok(header) => header,
        Err(Int8Error::Missing { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if header.count == memory.count() {
        return Ok(Some(0));
    }
    let start = std::time::Instant::now();
    let mut codes = read_codes(memory.dir(), &header)?;
    codes.extend(&Keys::of_memory(memory)?);
    save(
        memory,
        &codes,
        header.build_seconds + start.elapsed().as_secs_f64(),
    )?;
    Ok(Some(codes.count() - header.count as usize))
}

fn save(memory: &Memory, codes: &Int8Keys, build_seconds: f64) -> Result<Int8Header, Int8Error> {
    let dir = int8_dir(memory.dir());
    std::fs::create_dir_all(&dir).map_err(io_err(&dir, "create directory"))?;
    let code_bytes = codes.codes.bytes();
    let mut rows = Vec::with_capacity(codes.count * 8);
    for s in &codes.scales[..codes.count] {
        rows.extend_from_slice(&s.to_le_bytes());
    }
    for s in &codes.sums[..codes.count] {
        rows.extend_from_slice(&s.to_le_bytes());
    }
    let header = Int8Header {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        count: codes.count as u64,
        dim: codes.dim,
        padded_dim: codes.padded_dim,
        panel_rows: PANEL_ROWS,
        key_dtype: memory.key_dtype().name().into(),
        codes_bytes: code_bytes.len() as u64,
        codes_checksum: format!("{:016x}", checksum(code_bytes)),
        rows_checksum: format!("{:016x}", checksum(&rows)),
        build_seconds,
    };
    ramem_store::write_atomic(dir.join(CODES_FILE), code_bytes)?;
    ramem_store::write_atomic(dir.join(ROWS_FILE), &rows)?;
    let json = serde_json::to_vec_pretty(&header).expect("the header serialises");
    ramem_store::write_atomic(dir.join(HEADER_FILE), &json)?;
    Ok(header)
}

fn read_header(dir: &Path) -> Result<Int8Header, Int8Error> {
    let path = int8_dir(dir).join(HEADER_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Int8Error::Missing { path })
        }
        Err(e) => return Err(io_err(&path, "read")(e)),
    };
    let corrupt = |reason: String| Int8Error::Corrupt {
        path: path.clone(),
        reason,
    };
    let header: Int8Header = serde_json::from_slice(&text)
        .map_err(|e| corrupt(format!("not a valid quantised-keys header: {e}")))?;
    if header.format != FORMAT_NAME {
        return Err(corrupt(format!(
            "format is {:?}, expected {FORMAT_NAME:?}",
            header.format
        )));
    }
    if header.version > FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} is newer than this version of ramem reads (up to {FORMAT_VERSION})",
            header.version
        )));
    }
    if header.panel_rows != PANEL_ROWS || header.padded_dim != header.dim.next_multiple_of(4) {
        return Err(corrupt(format!(
            "panels of {} rows and {} bytes per row for {}-d keys: this version reads panels of {PANEL_ROWS} rows, the dimension rounded up to a multiple of 4",
            header.panel_rows, header.padded_dim, header.dim
        )));
    }
    Ok(header)
}

/// The saved header, checked against the memory's keys.
fn checked_header(memory: &Memory) -> Result<Int8Header, Int8Error> {
    let header = read_header(memory.dir())?;
    match layout_mismatch(memory, header.dim, &header.key_dtype, header.count, "made") {
        None => Ok(header),
        Some(reason) => Err(Int8Error::Mismatch {
            path: int8_dir(memory.dir()).join(HEADER_FILE),
            reason,
        }),
    }
}

fn read_codes(memory_dir: &Path, header: &Int8Header) -> Result<Int8Keys, Int8Error> {
    let dir = int8_dir(memory_dir);
    let count = usize::try_from(header.count).map_err(|_| Int8Error::Corrupt {
        path: dir.join(HEADER_FILE),
        reason: format!("count {} is out of range", header.count),
    })?;
    let panels = count.div_ceil(PANEL_ROWS);
    let codes_path = dir.join(CODES_FILE);
    let want = (panels * PANEL_ROWS * header.padded_dim) as u64;
    let file = std::fs::File::open(&codes_path).map_err(io_err(&codes_path, "open"))?;
    // SAFETY: the map is read only; the file is replaced by rename, never
    // rewritten in place, so its bytes do not change while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(&codes_path, "memory-map"))?;
    check_file(
        &codes_path,
        &map,
        want,
        &header.codes_checksum,
        header.codes_bytes,
    )?;
    let rows_path = dir.join(ROWS_FILE);
    let rows = std::fs::read(&rows_path).map_err(io_err(&rows_path, "read"))?;
    check_file(
        &rows_path,
        &rows,
        count as u64 * 8,
        &header.rows_checksum,
        count as u64 * 8,
    )?;
    let (scale_bytes, sum_bytes) = rows.split_at(count * 4);
    let mut scales: Vec<f32> = scale_bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    let mut sums: Vec<i32> = sum_bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    scales.resize(panels * PANEL_ROWS, 0.0);
    sums.resize(panels * PANEL_ROWS, 0);
    Ok(Int8Keys {
        codes: CodeBytes::Mapped(map),
        count,
        dim: header.dim,
        padded_dim: header.padded_dim,
        scales,
        sums,
    })
}

/// Checks a file's length (the header's and the one its counts make) and
/// checksum.
fn check_file(
    path: &Path,
    bytes: &[u8],
    want: u64,
    sum: &str,
    header_len: u64,
) -> Result<(), Int8Error> {
    let corrupt = |reason: String| Int8Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if header_len != want {
        return Err(corrupt(format!(
            "the header gives {header_len} bytes, but its counts make {want}"
        )));
    }
    if bytes.len() as u64 != want {
        return Err(corrupt(format!(
            "{} bytes, but the header describes {want}",
            bytes.len()
        )));
    }
    let actual = format!("{:016x}", checksum(bytes));
    if actual != sum {
        return Err(corrupt(format!(
            "checksum {actual} does not match the header's {sum}: the file is damaged or from another build"
        )));
    }
    Ok(())
}
