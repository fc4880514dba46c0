//! Reader for PyTorch's legacy (pre-zip, `torch.save(..., _use_new_zipfile_serialization=False)`)
//! checkpoint format.
//!
//! Layout: five consecutive pickles and a binary tail:
//! 1. the magic number `0x1950a86a20f9469cfc6c`,
//! 2. the protocol version (1001),
//! 3. a sys-info dict (endianness, type sizes),
//! 4. the state dict, whose tensors are `torch._utils._rebuild_tensor_v2(storage,
//!    offset, size, stride, ...)` calls with storages named by persistent ids
//!    `('storage', torch.FloatStorage, key, location, numel, ...)`,
//! 5. the list of storage keys in file order,
//!
//! then, for each key in that order, a little-endian `i64` element count and the
//! storage's raw little-endian elements.

use std::collections::HashMap;
use std::path::Path;

use super::pickle::{read_pickle, PickleError, Value};

const MAGIC_LE: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const PROTOCOL_VERSION: i64 = 1001;

/// Element types a storage can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    F32,
    F64,
    F16,
    I64,
    I32,
    U8,
    Bool,
}

impl StorageType {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 => 2,
            Self::U8 | Self::Bool => 1,
        }
    }
}

/// One tensor of a checkpoint, materialised contiguously in row-major order.
#[derive(Debug, Clone)]
pub struct LegacyTensor {
    pub dtype: StorageType,
    pub shape: Vec<usize>,
    /// Little-endian elements, contiguous.
    pub data: Vec<u8>,
}

impl LegacyTensor {
    /// The elements as f32 (floating and integer types are converted).
    pub fn to_f32(&self) -> Vec<f32> {
        let n = self.data.len() / self.dtype.size();
        let d = &self.data;
        (0..n)
            .map(|i| match self.dtype {
                StorageType::F32 => {
                    f32::from_le_bytes(d[i * 4..i * 4 + 4].try_into().unwrap_or_default())
                }
                StorageType::F64 => {
                    f64::from_le_bytes(d[i * 8..i * 8 + 8].try_into().unwrap_or_default()) as f32
                }
                StorageType::F16 => half::f16::from_le_bytes([d[i * 2], d[i * 2 + 1]]).to_f32(),
                StorageType::I64 => {
                    i64::from_le_bytes(d[i * 8..i * 8 + 8].try_into().unwrap_or_default()) as f32
                }
                StorageType::I32 => {
                    i32::from_le_bytes(d[i * 4..i * 4 + 4].try_into().unwrap_or_default()) as f32
                }
                StorageType::U8 | StorageType::Bool => d[i] as f32,
            })
            .collect()
    }
}

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: this is a zip archive (PyTorch's newer checkpoint format); only the legacy pre-zip format is supported")]
    ZipFormat { path: String },
    #[error("{path}: not a legacy PyTorch checkpoint: {why}")]
    NotLegacy { path: String, why: String },
    #[error("{path}: {part}: {source}")]
    Pickle {
        path: String,
        part: &'static str,
        source: PickleError,
    },
    #[error("{path}: unexpected structure: {why}")]
    Structure { path: String, why: String },
    #[error(
        "{path}: truncated: storage {key} needs {needed} bytes at offset {offset}, file has {len}"
    )]
    Truncated {
        path: String,
        key: String,
        needed: usize,
        offset: usize,
        len: usize,
    },
}

struct StorageRef {
    key: String,
    dtype: StorageType,
}

/// A tensor's view of its storage, before the storage bytes are located.
struct TensorRef {
    name: String,
    storage: StorageRef,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// Reads every tensor of a legacy checkpoint, keyed by state-dict name, in file order.
pub fn read_legacy_checkpoint(path: &Path) -> Result<Vec<(String, LegacyTensor)>, LegacyError> {
    let shown = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| LegacyError::Io {
        path: shown.clone(),
        source,
    })?;
    parse_legacy_checkpoint(&data, &shown)
}

/// Parses checkpoint bytes; `path` is only used in error messages.
pub fn parse_legacy_checkpoint(
    data: &[u8],
    path: &str,
) -> Result<Vec<(String, LegacyTensor)>, LegacyError> {
    let structure = |why: String| LegacyError::Structure {
        path: path.to_string(),
        why,
    };
    if data.starts_with(b"PK\x03\x04") {
        return Err(LegacyError::ZipFormat { path: path.into() });
    }
    if data.len() < 2 || data[0] != 0x80 {
        return Err(LegacyError::NotLegacy {
            path: path.into(),
            why: "does not start with a pickle".into(),
        });
    }
    let pickle = |part: &'static str, start: usize| {
        read_pickle(data, start).map_err(|source| LegacyError::Pickle {
            path: path.into(),
            part,
            source,
        })
    };

    let (magic, pos) = pickle("magic number", 0)?;
    if magic != Value::BigInt(MAGIC_LE.to_vec()) {
        return Err(LegacyError::NotLegacy {
            path: path.into(),
            why: "wrong magic number".into(),
        });
    }
    let (version, pos) = pickle("protocol version", pos)?;
    if version.as_int() != Some(PROTOCOL_VERSION) {
        return Err(LegacyError::NotLegacy {
            path: path.into(),
            why: format!("protocol version {version:?}, expected {PROTOCOL_VERSION}"),
        });
    }
    let (sys_info, pos) = pickle("sys info", pos)?;
    if let Value::Dict(entries) = &sys_info {
        let little = entries
            .iter()
            .find(|(k, _)| k.as_str() == Some("little_endian"))
            .map(|(_, v)| v.clone());
        if little == Some(Value::Bool(false)) {
            return Err(structure("big-endian checkpoints are not supported".into()));
        }
    }
    let (state, pos) = pickle("state dict", pos)?;
    let (keys, mut pos) = pickle("storage key list", pos)?;

    // Raw storages, in the order of the key list.
    let keys: Vec<String> = keys
        .as_seq()
        .ok_or_else(|| structure("storage key list is not a list".into()))?
        .iter()
        .map(|k| k.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| structure("storage key is not a string".into()))?;

    let entries = state_entries(&state)
        .ok_or_else(|| structure("the top-level object is not a dict".into()))?;
    let mut tensors = Vec::with_capacity(entries.len());
    let mut refs: Vec<TensorRef> = Vec::new();
    for (name, value) in entries {
        let name = name
            .as_str()
            .ok_or_else(|| structure("a state-dict key is not a string".into()))?
            .to_string();
        let (storage, offset, shape, stride) =
            rebuild_args(value).ok_or_else(|| structure(format!("{name}: not a tensor")))?;
        refs.push(TensorRef {
            name,
            storage,
            offset,
            shape,
            stride,
        });
    }

    let mut storages: HashMap<String, (usize, usize)> = HashMap::new(); // key -> (byte offset, numel)
    let elem_size: HashMap<&str, usize> = refs
        .iter()
        .map(|r| (r.storage.key.as_str(), r.storage.dtype.size()))
        .collect();
    for key in &keys {
        let size = *elem_size
            .get(key.as_str())
            .ok_or_else(|| structure(format!("storage {key} is not used by any tensor")))?;
        if pos + 8 > data.len() {
            return Err(LegacyError::Truncated {
                path: path.into(),
                key: key.clone(),
                needed: 8,
                offset: pos,
                len: data.len(),
            });
        }
        let numel = i64::from_le_bytes(data[pos..pos + 8].try_into().unwrap_or_default());
        let numel = usize::try_from(numel)
            .map_err(|_| structure(format!("storage {key} has a negative size")))?;
        pos += 8;
        let bytes = numel
            .checked_mul(size)
            .ok_or_else(|| structure(format!("storage {key} size overflows")))?;
        if pos + bytes > data.len() {
            return Err(LegacyError::Truncated {
                path: path.into(),
                key: key.clone(),
                needed: bytes,
                offset: pos,
                len: data.len(),
            });
        }
        storages.insert(key.clone(), (pos, numel));
        pos += bytes;
    }

    for TensorRef {
        name,
        storage,
        offset,
        shape,
        stride,
    } in refs
    {
        let (start, numel) = *storages.get(&storage.key).ok_or_else(|| {
            structure(format!(
                "{name}: storage {} missing from the key list",
                storage.key
            ))
        })?;
        let bytes = gather_strided(&data[start..start + numel * storage.dtype.size()], storage.dtype.size(), offset, &shape, &stride)
            .ok_or_else(|| structure(format!("{name}: view (offset {offset}, shape {shape:?}, stride {stride:?}) exceeds its storage of {numel} elements")))?;
        tensors.push((
            name,
            LegacyTensor {
                dtype: storage.dtype,
                shape,
                data: bytes,
            },
        ));
    }
    Ok(tensors)
}

/// The (key, value) pairs of a dict or of an `OrderedDict()` REDUCE (possibly
/// wrapped in a BUILD that sets `_metadata`).
fn state_entries(value: &Value) -> Option<&[(Value, Value)]> {
    match value {
        Value::Dict(entries) => Some(entries),
        Value::Build(obj, _) => state_entries(obj),
        Value::Call(callable, args) => match (callable.as_ref(), args.last()) {
            (Value::Global(_, name), Some(Value::Dict(entries))) if name == "OrderedDict" => {
                Some(entries)
            }
            (Value::Global(_, name), None) if name == "OrderedDict" => Some(&[]),
            _ => None,
        },
        _ => None,
    }
}

/// Decodes `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
fn rebuild_args(value: &Value) -> Option<(StorageRef, usize, Vec<usize>, Vec<usize>)> {
    let (callable, args) = match value {
        Value::Call(c, a) => (c, a),
        Value::Build(obj, _) => return rebuild_args(obj),
        _ => return None,
    };
    match callable.as_ref() {
        Value::Global(m, n)
            if m == "torch._utils" && (n == "_rebuild_tensor_v2" || n == "_rebuild_tensor") => {}
        _ => return None,
    }
    let storage = match args.first()? {
        Value::PersistentId(pid) => {
            let fields = pid.as_seq()?;
            if fields.first()?.as_str()? != "storage" {
                return None;
            }
            let dtype = match fields.get(1)? {
                Value::Global(_, class) => StorageType::from_class(class)?,
                _ => return None,
            };
            StorageRef {
                key: fields.get(2)?.as_str()?.to_string(),
                dtype,
            }
        }
        _ => return None,
    };
    let offset = usize::try_from(args.get(1)?.as_int()?).ok()?;
    let dims = |v: &Value| -> Option<Vec<usize>> {
        v.as_seq()?
            .iter()
            .map(|d| usize::try_from(d.as_int()?).ok())
            .collect()
    };
    let shape = dims(args.get(2)?)?;
    let stride = dims(args.get(3)?)?;
    if shape.len() != stride.len() {
        return None;
    }
    Some((storage, offset, shape, stride))
}

/// Copies a strided view out of a storage into contiguous row-major bytes.
fn gather_strided(
    storage: &[u8],
    elem: usize,
    offset: usize,
    shape: &[usize],
    stride: &[usize],
) -> Option<Vec<u8>> {
    let count: usize = shape.iter().product();
    if count == 0 {
        return Some(Vec::new());
    }
    let max_index = offset
        + shape
            .iter()
            .zip(stride)
            .map(|(d, s)| (d - 1) * s)
            .sum::<usize>();
    if (max_index + 1) * elem > storage.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count * elem);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..count {
        let at = offset + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[at * elem..(at + 1) * elem]);
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Some(out)
}
