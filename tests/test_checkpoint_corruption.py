"""Damaged checkpoints: every one is a CheckpointError naming the file, and nothing changes.

Each case starts from a good training checkpoint and damages its raw bytes by hand: the
header length, the header's JSON, the tensor entries (dtype, shape, offsets), the data,
the metadata (format, version, checksum, architecture) and the tensor names. Every reader
must refuse it: ``fastlayers.load``, ``checkpoint.verify``, ``checkpoint.load_optimizer``
(whose optimizer and model must come out unchanged) and ``Trainer.fit(resume=True)``
(whose model, optimizer, generators and history must come out unchanged).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import fastlayers
from fastlayers import checkpoint, losses, models, optim
from fastlayers.checkpoint import CheckpointError
from fastlayers.trainer import Trainer, _rng_state


def make_trainer(seed=0):
    model = models.mlp(input_size=12, hidden=[7, 5], classes=3, batchnorm=True, dropout=0.2, seed=seed)
    return Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), seed=seed, verbose=False)


FIT = dict(epochs=1, batch_size=10, validation_split=0.25)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((40, 12)).astype(np.float32), rng.integers(0, 3, 40)
    path = tmp_path_factory.mktemp("good") / "run.safetensors"
    make_trainer().fit(x, t, checkpoint=path, **FIT)
    return path.read_bytes(), x, t


def split(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


def recrc(header: dict, data: bytes) -> dict:
    """The header with tensors_crc32 recomputed, so that only the intended damage remains."""
    spans = [(k, data[v["data_offsets"][0] : v["data_offsets"][1]]) for k, v in header.items() if k != "__metadata__"]
    header["__metadata__"]["tensors_crc32"] = checkpoint._crc32(spans)
    return header


def tensors(header: dict) -> list[str]:
    """Tensor names in the order of their bytes."""
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def edit_header(change, crc=False):
    def damage(raw):
        header, data = split(raw)
        change(header, data)
        return join(recrc(header, data) if crc else header, data)

    return damage


def edit_meta(key, value):
    def change(header, data):
        if value is None:
            del header["__metadata__"][key]
        else:
            header["__metadata__"][key] = value

    return edit_header(change)


def edit_entry(name, field, value, crc=False):
    def change(header, data):
        header[name][field] = value

    return edit_header(change, crc)


def drop_tensor(name):
    """Removes a tensor and its bytes, moving the later tensors down."""

    def damage(raw):
        header, data = split(raw)
        b, e = header.pop(name)["data_offsets"]
        data = data[:b] + data[e:]
        for k in tensors(header):
            o = header[k]["data_offsets"]
            if o[0] >= e:
                header[k]["data_offsets"] = [o[0] - (e - b), o[1] - (e - b)]
        return join(recrc(header, data), data)

    return damage


def add_tensor(name, array):
    array = array.astype("<f4")

    def damage(raw):
        header, data = split(raw)
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [len(data), len(data) + array.nbytes]}
        data += array.tobytes()
        return join(recrc(header, data), data)

    return damage


def overlap(raw):
    header, data = split(raw)
    second = tensors(header)[1]
    b, e = header[second]["data_offsets"]
    header[second]["data_offsets"] = [b - 4, e - 4]
    return join(header, data)


def gap(raw):
    header, data = split(raw)
    first = tensors(header)[0]
    cut = header[first]["data_offsets"][1]
    for k in tensors(header)[1:]:
        b, e = header[k]["data_offsets"]
        header[k]["data_offsets"] = [b + 4, e + 4]
    return join(header, data[:cut] + b"\0\0\0\0" + data[cut:])


def duplicate_name(raw):
    header, data = split(raw)
    name = tensors(header)[0]
    text = json.dumps(header)
    entry = json.dumps({name: header[name]})[1:-1]  # '"name": {...}'
    return join(text[:-1].encode() + b", " + entry.encode() + b"}", data)


def duplicate_metadata_key(raw):
    header, data = split(raw)
    text = json.dumps(header).replace('"format": "fastlayers"', '"format": "fastlayers", "format": "fastlayers"', 1)
    return join(text.encode(), data)


def swap_names(a, b):
    def change(header, data):
        header[a], header[b] = header[b], header[a]

    return edit_header(change)


def flip(at_fraction):
    def damage(raw):
        header, data = split(raw)
        out = bytearray(raw)
        out[len(raw) - len(data) + int(at_fraction * (len(data) - 1))] ^= 0x10
        return bytes(out)

    return damage


def architecture(config):
    return edit_meta("architecture", config if isinstance(config, str) else json.dumps(config))


ALL = {"load", "verify", "load_optimizer", "resume"}
HEADER = ALL | {"read_metadata"}  # damage that read_metadata, which reads only the header, sees too
OPTIMIZER = {"verify", "load_optimizer", "resume"}

# name -> (damage(raw) -> bytes, expected message (regex), readers that must refuse it)
CASES = {
    "empty file": (lambda raw: b"", "truncated: 0 bytes", HEADER),
    "seven bytes": (lambda raw: raw[:7], "truncated: 7 bytes", HEADER),
    "header cut short": (lambda raw: raw[: 8 + int.from_bytes(raw[:8], "little") // 2],
                         "truncated: the header length is", HEADER),
    "header length of a terabyte": (lambda raw: (2**40).to_bytes(8, "little") + raw[8:], "exceeds the limit", HEADER),
    "header length just over the cap": (lambda raw: (100 * 2**20 + 1).to_bytes(8, "little") + raw[8:],
                                        "exceeds the limit", HEADER),
    "a zip file": (lambda raw: b"PK\x03\x04" + raw[4:], "truncated: the header length is", HEADER),
    "a pickle where the header goes": (lambda raw: join(pickle.dumps({"a": 1}), b""), r"does not start with '\{'", HEADER),
    "header not UTF-8": (lambda raw: join(b'{"\xff\xfe": 1}', b""), "not UTF-8", HEADER),
    "header not JSON": (lambda raw: join(b'{"0.W": {"dtype": ', b""), "not valid JSON", HEADER),
    "header nested a million deep": (lambda raw: join(b'{"a": ' + b"[" * 10**6 + b"]" * 10**6 + b"}", b""),
                                     "not valid JSON", HEADER),
    "duplicate tensor name": (duplicate_name, "names '.*' twice", HEADER),
    "duplicate metadata key": (duplicate_metadata_key, "names 'format' twice", HEADER),
    "metadata value not a string": (edit_meta("format_version", 2), "__metadata__ must map strings", HEADER),
    "entry without data_offsets": (edit_header(lambda h, d: h["0.W"].pop("data_offsets")),
                                   "expected an object with dtype, shape and data_offsets", HEADER),
    "unknown dtype": (edit_entry("0.W", "dtype", "F8"), "unknown dtype 'F8'", HEADER),
    "negative dimension": (edit_entry("0.W", "shape", [-12, -7]), "shape must be a list of ints >= 0", HEADER),
    "boolean dimension": (edit_entry("0.W", "shape", [True, 84]), "shape must be a list of ints >= 0", HEADER),
    "offsets past the end": (edit_header(lambda h, d: h[tensors(h)[-1]]["data_offsets"].__setitem__(1, len(d) + 4)),
                             "out of range: the data section holds", HEADER),
    "offsets reversed": (edit_header(lambda h, d: h[tensors(h)[0]].__setitem__("data_offsets", [8, 0])),
                         "out of range", HEADER),
    "offsets as strings": (edit_entry("0.W", "data_offsets", ["0", "336"]), "data_offsets must be", HEADER),
    "shape too big for its bytes": (edit_entry("0.W", "shape", [13, 7]), r"needs 364 bytes but its data_offsets", HEADER),
    "dtype too wide for its bytes": (edit_entry("0.W", "dtype", "F64"), "needs 672 bytes", HEADER),
    "overlapping tensors": (overlap, "overlaps the tensor before it", HEADER),
    "bytes between tensors": (gap, "belong to no tensor", HEADER),
    "bytes after the last tensor": (lambda raw: join(split(raw)[0], split(raw)[1] + b"\0" * 4),
                                    "belong to no tensor", HEADER),
    "last byte missing": (lambda raw: raw[:-1], "out of range", HEADER),
    "no format": (edit_meta("format", None), "not a fastlayers checkpoint", HEADER),
    "another format": (edit_meta("format", "pt"), "not a fastlayers checkpoint", HEADER),
    "future format version": (edit_meta("format_version", "3"), "format 3 is newer than this fastlayers reads", HEADER),
    "format version not a number": (edit_meta("format_version", "2a"), "bad format_version", HEADER),
    "format version zero": (edit_meta("format_version", "0"), "bad format_version", HEADER),
    "no checksum": (edit_meta("tensors_crc32", None), "requires tensors_crc32", ALL),
    "flipped bit at the start of the data": (flip(0.0), "checksum mismatch", ALL),
    "flipped bit in the middle of the data": (flip(0.5), "checksum mismatch", ALL),
    "flipped bit at the end of the data": (flip(1.0), "checksum mismatch", ALL),
    "two tensors' names swapped": (swap_names("1.running_mean", "1.running_var"), "checksum mismatch", ALL),
    "a weight missing": (drop_tensor("8.b"), r"missing tensor\(s\) '8.b'", ALL),
    "an unexpected weight": (add_tensor("9.W", np.ones((2, 2))), r"unexpected tensor\(s\) '9.W'", ALL),
    "a weight of another shape": (edit_entry("0.W", "shape", [7, 12], crc=True),
                                  r"'0.W' is float32 \(7, 12\), expected float32 \(12, 7\)", ALL),
    "a weight of another dtype": (edit_entry("0.W", "dtype", "I32", crc=True), "'0.W' is int32", ALL),
    "architecture not JSON": (architecture("{'type': 'Sequential'"), "'architecture' is not valid JSON", ALL),
    "architecture of an unknown layer": (
        architecture({"type": "subprocess.Popen", "args": ["true"]}),
        "unreadable architecture.*unknown layer type 'subprocess.Popen'|architecture differs", ALL),
    "architecture with bad arguments": (architecture({"type": "Affine", "in_features": -1, "out_features": 3}),
                                        "unreadable architecture|architecture differs", ALL),
    "optimizer tensor without optimizer metadata": (edit_meta("optimizer", None),
                                                    "unexpected tensor 'optimizer/.*no 'optimizer' metadata", ALL),
    "trainer tensor without trainer metadata": (edit_meta("trainer", None),
                                                "unexpected tensor 'trainer/.*no 'trainer' metadata", ALL),
    "optimizer metadata not JSON": (edit_meta("optimizer", "{"), "'optimizer' is not valid JSON", OPTIMIZER),
    "optimizer state of another shape": (edit_entry("optimizer/state.0.m", "shape", [7, 12], crc=True),
                                         r"optimizer state does not fit: .*'state.0.m' has shape \(7, 12\)", OPTIMIZER),
    "optimizer of another kind": (edit_meta("optimizer", json.dumps({"type": "SGD"})),
                                  "optimizer state does not fit", OPTIMIZER),
}


def write(tmp_path, raw):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw)
    return path


def optimizer_snapshot(opt):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in opt.state_dict().items()}


def trainer_snapshot(trainer):
    out = {f"model/{k}": v for k, v in trainer.model.state_dict().items()}
    out.update({f"optimizer/{k}": v for k, v in optimizer_snapshot(trainer.optimizer).items()})
    out["rng"] = {name: _rng_state(g) for name, g in trainer._generators().items()}
    out["history"] = list(trainer.history)
    return out


def same(a, b):
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert (v.tobytes() == b[k].tobytes()) if isinstance(v, np.ndarray) else v == b[k], k


def test_the_good_file_passes_every_reader(tmp_path, good):
    raw, x, t = good
    path = write(tmp_path, raw)
    checkpoint.verify(path)
    model = fastlayers.load(path)
    checkpoint.load_optimizer(path, optim.Adam(model.parameters()))
    make_trainer(seed=5).fit(x, t, checkpoint=path, resume=True, **FIT)
    # The damage functions leave a good file good when they change nothing.
    checkpoint.verify(write(tmp_path, join(*split(raw))))
    checkpoint.verify(write(tmp_path, edit_header(lambda h, d: None, crc=True)(raw)))


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_file_is_refused_by_every_reader_with_nothing_changed(tmp_path, good, case):
    raw, x, t = good
    damage, match, readers = CASES[case]
    bad = damage(raw)
    assert bad != raw
    path = write(tmp_path, bad)
    pattern = f"{path}: .*(?:{match})"
    if "read_metadata" in readers:
        with pytest.raises(CheckpointError, match=pattern):
            checkpoint.read_metadata(path)
    if "load" in readers:
        with pytest.raises(CheckpointError, match=pattern):
            fastlayers.load(path)
    if "verify" in readers:
        with pytest.raises(CheckpointError, match=pattern):
            checkpoint.verify(path)
    if "load_optimizer" in readers:
        model = models.mlp(input_size=12, hidden=[7, 5], classes=3, batchnorm=True, dropout=0.2, seed=1)
        opt = optim.Adam(model.parameters(), lr=0.5)
        before, weights = optimizer_snapshot(opt), model.state_dict()
        with pytest.raises(CheckpointError, match=pattern):
            checkpoint.load_optimizer(path, opt)
        same(before, optimizer_snapshot(opt))
        same(weights, model.state_dict())
    if "resume" in readers:
        trainer = make_trainer(seed=3)
        before = trainer_snapshot(trainer)
        with pytest.raises(CheckpointError, match=pattern):
            trainer.fit(x, t, checkpoint=path, resume=True, **FIT)
        same(before, trainer_snapshot(trainer))
        assert path.read_bytes() == bad  # a refused resume writes nothing


def test_a_file_cut_anywhere_is_refused(tmp_path, good):
    raw, _, _ = good
    n = int.from_bytes(raw[:8], "little")
    cuts = sorted(set(range(0, 9)) | set(range(9, 8 + n, 97)) | {8 + n} |
                  {8 + n + (len(raw) - 8 - n) * i // 20 for i in range(20)} | {len(raw) - 1})
    assert len(cuts) >= 40
    for cut in cuts:
        with pytest.raises(CheckpointError):
            fastlayers.load(write(tmp_path, raw[:cut]))
