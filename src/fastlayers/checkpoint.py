"""Checkpoints: safetensors files holding the weights, with the architecture in the metadata.

Nothing is pickled, so loading a checkpoint never runs code from the file. The metadata
(all strings, as safetensors requires) holds ``format`` = ``"fastlayers"``,
``format_version``, ``fastlayers_version``, ``architecture`` (the JSON of
``model.config()``), ``tensors_crc32`` (a CRC-32 of every tensor's name and bytes, in name
order) and, when an optimizer was saved, ``optimizer`` (the JSON of its scalar state; its
arrays are stored as tensors named ``optimizer/<key>``). A training checkpoint written by
``Trainer.fit(checkpoint=...)`` also holds ``trainer`` (the JSON of the random generators'
states, the position in the run, the history and the early-stopping state; its arrays are
tensors named ``trainer/<key>``).

**Format versions.** Version 1 had no ``tensors_crc32`` and no training state; such files
are still read. Version 2 is written now. A file from a newer version is refused.

**Writing** is atomic: the bytes go to a temporary file in the destination's directory,
which is flushed to the disk (``fsync``), renamed over the destination (``os.replace``),
and the directory is synced so that the rename itself survives a crash. Until the rename
the previous checkpoint is untouched; a failure removes the temporary file and raises
``OSError``. A process killed in the middle leaves its temporary file
(``.<name>.<random>.tmp``) behind, never a damaged checkpoint.

**Reading** validates the whole file before anything is built or modified: the header
length, the header's JSON (duplicate names included), every tensor's dtype, shape and byte
span (inside the file, not overlapping, covering the data exactly), the checksum, the
format and version, and the tensor names, shapes and dtypes against the architecture.
Anything wrong is a :class:`CheckpointError` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save as _serialize

from . import layers as _layers

FORMAT = "fastlayers"
FORMAT_VERSION = 2
# No fastlayers header comes near this; a larger length means a damaged or hostile file,
# and it is refused before that many bytes are read.
MAX_HEADER_BYTES = 100 * 2**20
_OPT = "optimizer/"
_TRAINER = "trainer/"
_RESERVED = ("format", "format_version", "fastlayers_version", "architecture", "tensors_crc32", "optimizer", "trainer")

# safetensors dtype names -> little-endian NumPy dtypes (the format is little-endian).
_DTYPES = {
    "BOOL": np.dtype("|b1"),
    "U8": np.dtype("|u1"),
    "I8": np.dtype("|i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}


class CheckpointError(ValueError):
    """A file that is not a readable fastlayers checkpoint, or one that does not fit."""


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------


def _little_endian(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.astype(a.dtype.newbyteorder("<"), copy=False) if a.dtype.byteorder == ">" else a


def _crc32(items) -> str:
    """CRC-32 over (name, bytes) pairs in name order, as 8 hex digits."""
    crc = 0
    for name, data in sorted(items, key=lambda item: item[0]):
        crc = zlib.crc32(name.encode("utf-8"), crc)
        crc = zlib.crc32(data, crc)
    return f"{crc:08x}"


def _fsync_directory(directory: Path) -> None:
    """Makes a rename inside ``directory`` durable; a no-op where directories cannot be synced."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems (and some FUSE mounts) do not support syncing a directory.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _write_atomic(path: Path, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` so that ``path`` holds either its old bytes or the new ones."""
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never write into a file somebody else created; 0o666 lets the umask decide
        # the checkpoint's permissions, as for any other file the user writes.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise OSError(e.errno, f"cannot create a file next to the checkpoint {path}: {e.strerror}") from e
    try:
        try:
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.EIO, "write made no progress")
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"cannot write the checkpoint {path} ({e.strerror or e}); it is unchanged") from e
        raise
    try:
        _fsync_directory(directory)
    except OSError as e:
        raise OSError(e.errno, f"wrote the checkpoint {path} but could not sync its directory: {e.strerror}") from e


def _write(path, model, optimizer=None, metadata: dict[str, str] | None = None,
           trainer: tuple[dict, dict[str, np.ndarray]] | None = None) -> Path:
    """The model's state, optionally the optimizer's and a trainer's, into one file at ``path``."""
    from . import __version__

    path = Path(path)
    tensors = {name: _little_endian(a) for name, a in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "fastlayers_version": __version__,
        "architecture": json.dumps(model.config()),
    }
    if optimizer is not None:
        scalars = {}
        for key, value in optimizer.state_dict().items():
            if isinstance(value, np.ndarray):
                tensors[_OPT + key] = _little_endian(value)
            else:
                scalars[key] = value
        meta["optimizer"] = json.dumps(scalars)
    if trainer is not None:
        state, arrays = trainer
        meta["trainer"] = json.dumps(state)
        tensors.update({_TRAINER + key: _little_endian(a) for key, a in arrays.items()})
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"save: metadata must map str to str; got {key!r}: {type(value).__name__}")
        if key in _RESERVED:
            raise ValueError(f"save: metadata key {key!r} is reserved")
        meta[key] = value
    meta["tensors_crc32"] = _crc32((name, a.reshape(-1).view(np.uint8)) for name, a in tensors.items())
    _write_atomic(path, _serialize(tensors, metadata=meta))
    return path


def save(model, path, optimizer=None, metadata: dict[str, str] | None = None) -> Path:
    """Writes ``model`` (and optionally ``optimizer``'s state) to ``path`` atomically.

    The file appears complete or not at all (see the module's notes): a failure raises
    ``OSError`` and leaves any previous file at ``path`` as it was. ``metadata`` adds user
    strings (for example the training data). Returns the path.
    """
    return _write(path, model, optimizer, metadata)


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------


def _no_duplicates(pairs):
    d = {}
    for key, value in pairs:
        if key in d:
            raise CheckpointError(f"the header names {key!r} twice")
        d[key] = value
    return d


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class _Entry:
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _parse_header(path: Path, header: bytes, data_len: int) -> tuple[dict[str, str], dict[str, _Entry]]:
    """The metadata and tensor entries of a safetensors header, every field checked."""
    if not header.startswith(b"{"):
        raise CheckpointError(
            f"{path}: not a safetensors file: the header does not start with '{{' (it starts with {header[:8]!r})"
        )
    try:
        obj = json.loads(header.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(
            f"{path}: not a safetensors file: the header is not UTF-8 ({e.reason} at byte {e.start})"
        ) from None
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: not a safetensors file: the header is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: the header must be a JSON object, got {type(obj).__name__}")
    meta = obj.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    entries: dict[str, _Entry] = {}
    for name, info in obj.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where}: expected an object with dtype, shape and data_offsets, got {info!r:.200}")
        dtype = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise CheckpointError(f"{where}: unknown dtype {info['dtype']!r}; expected one of {', '.join(_DTYPES)}")
        shape = info["shape"]
        if not isinstance(shape, list) or not all(_int(s) and s >= 0 for s in shape):
            raise CheckpointError(f"{where}: shape must be a list of ints >= 0, got {shape!r:.200}")
        offsets = info["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_int(o) for o in offsets)):
            raise CheckpointError(f"{where}: data_offsets must be [begin, end], got {offsets!r:.200}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise CheckpointError(
                f"{where}: data_offsets [{begin}, {end}] out of range: the data section holds {data_len} bytes"
            )
        want = math.prod(shape) * dtype.itemsize
        if end - begin != want:
            raise CheckpointError(
                f"{where}: shape {tuple(shape)} of {info['dtype']} needs {want} bytes but its data_offsets "
                f"[{begin}, {end}] span {end - begin}"
            )
        entries[name] = _Entry(dtype, tuple(shape), begin, end)
    covered = 0
    for name, e in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if e.begin < covered:
            raise CheckpointError(f"{path}: tensor {name!r} at bytes [{e.begin}, {e.end}) overlaps the tensor before it")
        if e.begin > covered:
            raise CheckpointError(f"{path}: bytes [{covered}, {e.begin}) of the data section belong to no tensor")
        covered = e.end
    if covered != data_len:
        raise CheckpointError(f"{path}: bytes [{covered}, {data_len}) of the data section belong to no tensor")
    return meta, entries


def _check_format(path: Path, meta: dict[str, str]) -> int:
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastlayers checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    text = meta.get("format_version", "")
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise CheckpointError(f"{path}: bad format_version {text!r}; expected an integer >= 1")
    version = int(text)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this fastlayers reads ({FORMAT_VERSION}); upgrade fastlayers"
        )
    return version


def _head(path: Path, size: int, first: bytes) -> int:
    """The header length from the first 8 bytes, checked against the file size and the cap."""
    if size < 8:
        raise CheckpointError(f"{path}: truncated: {size} bytes, but a safetensors file starts with an 8-byte header length")
    n = int.from_bytes(first[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if n > size - 8:
        raise CheckpointError(f"{path}: truncated: the header length is {n} bytes but only {size - 8} follow")
    return n


@dataclass
class Contents:
    """A checkpoint read and validated by :func:`read`: ``metadata`` (the strings),
    ``version`` (its format version) and ``tensors`` (every tensor, as writable arrays)."""

    path: Path
    metadata: dict[str, str]
    version: int
    tensors: dict[str, np.ndarray]

    def model_state(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.tensors.items() if not k.startswith((_OPT, _TRAINER))}

    def json(self, key: str):
        """The metadata entry ``key`` parsed as JSON, or None when absent."""
        if key not in self.metadata:
            return None
        try:
            return json.loads(self.metadata[key])
        except (ValueError, RecursionError) as e:
            raise CheckpointError(f"{self.path}: metadata {key!r} is not valid JSON ({e})") from None

    def optimizer_state(self) -> dict | None:
        scalars = self.json("optimizer")
        if scalars is None:
            return None
        if not isinstance(scalars, dict):
            raise CheckpointError(f"{self.path}: metadata 'optimizer' must be a JSON object")
        state = dict(scalars)
        state.update({k[len(_OPT) :]: v for k, v in self.tensors.items() if k.startswith(_OPT)})
        return state

    def trainer_arrays(self) -> dict[str, np.ndarray]:
        return {k[len(_TRAINER) :]: v for k, v in self.tensors.items() if k.startswith(_TRAINER)}

    def architecture(self) -> dict:
        config = self.json("architecture")
        if config is None:
            raise CheckpointError(f"{self.path}: no architecture in the metadata")
        return config

    def build_model(self):
        """A model of the stored architecture, with fresh weights (nothing loaded yet)."""
        try:
            return _layers.layer_from_config(self.architecture())
        except (KeyError, TypeError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{self.path}: unreadable architecture ({e})") from None

    def check_model_state(self, model) -> dict[str, np.ndarray]:
        """The model tensors, checked name by name, shape and dtype against ``model``."""
        state = self.model_state()
        want = model.state_dict()
        missing = [k for k in want if k not in state]
        if missing:
            raise CheckpointError(
                f"{self.path}: weights do not fit the architecture: missing tensor(s) {', '.join(map(repr, missing))}"
            )
        unexpected = [k for k in state if k not in want]
        if unexpected:
            raise CheckpointError(
                f"{self.path}: weights do not fit the architecture: unexpected tensor(s) {', '.join(map(repr, unexpected))}"
            )
        for k, a in want.items():
            if state[k].shape != a.shape or state[k].dtype != a.dtype:
                raise CheckpointError(
                    f"{self.path}: weights do not fit the architecture: tensor {k!r} is {state[k].dtype} "
                    f"{state[k].shape}, expected {a.dtype} {a.shape}"
                )
        return state


def read(path) -> Contents:
    """Reads and validates the checkpoint at ``path``: its structure, checksum, format and
    version, and which tensor sections it may hold. Raises :class:`CheckpointError` naming
    the file and what is wrong (``FileNotFoundError`` when there is no file)."""
    path = Path(path)
    raw = path.read_bytes()
    n = _head(path, len(raw), raw[:8])
    data = memoryview(raw)[8 + n :]
    meta, entries = _parse_header(path, raw[8 : 8 + n], len(data))
    version = _check_format(path, meta)
    if version >= 2:
        stored = meta.get("tensors_crc32")
        if stored is None:
            raise CheckpointError(f"{path}: format {version} requires tensors_crc32 in the metadata")
        actual = _crc32((name, data[e.begin : e.end]) for name, e in entries.items())
        if actual != stored:
            raise CheckpointError(
                f"{path}: checksum mismatch (tensors_crc32 {stored}, the bytes give {actual}): the file is damaged"
            )
    for prefix, key in ((_OPT, "optimizer"), (_TRAINER, "trainer")):
        stray = [name for name in entries if name.startswith(prefix)]
        if stray and key not in meta:
            raise CheckpointError(f"{path}: unexpected tensor {stray[0]!r}: the file has no {key!r} metadata")
    tensors = {}
    for name, e in entries.items():
        native = e.dtype.newbyteorder("=")
        if e.begin == e.end:
            tensors[name] = np.zeros(e.shape, native)
        else:
            view = np.frombuffer(data, dtype=e.dtype, count=math.prod(e.shape), offset=e.begin).reshape(e.shape)
            tensors[name] = view.astype(native)  # a copy: writable, aligned and independent of the file
    return Contents(path, meta, version, tensors)


def read_metadata(path) -> dict[str, str]:
    """The metadata of a checkpoint, without reading its tensors; the header is validated."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = _head(path, size, f.read(8))
        header = f.read(n)
    if len(header) != n:
        raise CheckpointError(f"{path}: truncated while reading its header")
    meta, _ = _parse_header(path, header, size - 8 - n)
    _check_format(path, meta)
    return meta


def _read_model(path):
    """The validated contents and a model of their architecture, the weights checked against it."""
    contents = read(path)
    model = contents.build_model()
    return contents, model, contents.check_model_state(model)


def load(path):
    """Rebuilds the model saved at ``path``: its architecture, weights and buffers.

    The whole file is validated first (see the module's notes); a damaged or foreign file is
    a :class:`CheckpointError`."""
    _, model, state = _read_model(path)
    model.load_state_dict(state)
    return model


def load_optimizer(path, optimizer) -> None:
    """Restores into ``optimizer`` (built on the loaded model's parameters) the state saved with
    it. The whole file is validated first, its weights included; on any error ``optimizer``
    is unchanged."""
    contents, _, _ = _read_model(path)
    state = contents.optimizer_state()
    if state is None:
        raise CheckpointError(f"{contents.path}: holds no optimizer state (save it with save(model, path, optimizer=...))")
    try:
        optimizer.load_state_dict(state)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{contents.path}: optimizer state does not fit: {e}") from None


def verify(path) -> dict[str, str]:
    """Checks everything :func:`load` would, without keeping the model, and returns the
    metadata. Also checks that the optimizer state, if any, fits an optimizer of its type
    over the model (for the optimizers of ``fastlayers.optim``)."""
    from . import optim

    contents, model, _ = _read_model(path)
    state = contents.optimizer_state()
    if state is not None:
        cls = {c.__name__: c for c in (optim.SGD, optim.Momentum, optim.Nesterov, optim.AdaGrad, optim.RMSprop, optim.Adam,
                                        optim.LBFGS)}
        if state.get("type") in cls:
            try:
                cls[state["type"]](model.parameters()).load_state_dict(state)
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{contents.path}: optimizer state does not fit: {e}") from None
    return contents.metadata
