"""Checkpoints: safetensors files holding the weights, with the architecture in the metadata.

Nothing is pickled, so loading a checkpoint never runs code from the file. The metadata
(all strings, as safetensors requires) holds ``format`` = ``"fastlayers"``,
``format_version``, ``fastlayers_version``, ``architecture`` (the JSON of
``model.config()``) and, when an optimizer was saved, ``optimizer`` (the JSON of its
scalar state; its arrays are stored as tensors named ``optimizer/<key>``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from . import layers as _layers

FORMAT = "fastlayers"
FORMAT_VERSION = 1
_OPT = "optimizer/"


class CheckpointError(ValueError):
    """A file that is not a readable fastlayers checkpoint, or one that does not fit."""


def save(model, path, optimizer=None, metadata: dict[str, str] | None = None) -> Path:
    """Writes ``model`` (and optionally ``optimizer``'s state) to ``path`` atomically.

    The file appears complete or not at all: it is written next to its destination and
    renamed into place. ``metadata`` adds user strings (for example the training data).
    """
    from . import __version__

    path = Path(path)
    tensors = {name: np.ascontiguousarray(a) for name, a in model.state_dict().items()}
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
                tensors[_OPT + key] = np.ascontiguousarray(value)
            else:
                scalars[key] = value
        meta["optimizer"] = json.dumps(scalars)
    for key, value in (metadata or {}).items():
        if key in meta:
            raise ValueError(f"save: metadata key {key!r} is reserved")
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"save: metadata must map str to str; got {key!r}: {type(value).__name__}")
        meta[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def read_metadata(path) -> dict[str, str]:
    """The metadata of a checkpoint, validated, without loading its tensors."""
    path = Path(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastlayers checkpoint (format {meta.get('format')!r})")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path}: bad format_version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this fastlayers reads ({FORMAT_VERSION}); upgrade fastlayers"
        )
    return meta


def load(path):
    """Rebuilds the model saved at ``path``: its architecture, weights and buffers."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        config = json.loads(meta["architecture"])
        model = _layers.layer_from_config(config)
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable architecture ({e})") from None
    tensors = load_file(str(path))
    weights = {k: v for k, v in tensors.items() if not k.startswith(_OPT)}
    try:
        model.load_state_dict(weights)
    except ValueError as e:
        raise CheckpointError(f"{path}: weights do not fit the architecture: {e}") from None
    return model


def load_optimizer(path, optimizer) -> None:
    """Restores into ``optimizer`` (built on the loaded model's parameters) the state saved with it."""
    path = Path(path)
    meta = read_metadata(path)
    if "optimizer" not in meta:
        raise CheckpointError(f"{path}: holds no optimizer state (save it with save(model, path, optimizer=...))")
    state = json.loads(meta["optimizer"])
    state.update({k[len(_OPT) :]: v for k, v in load_file(str(path)).items() if k.startswith(_OPT)})
    try:
        optimizer.load_state_dict(state)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit: {e}") from None
