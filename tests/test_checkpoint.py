"""Checkpoints: safetensors round trips, the architecture in the metadata, refusals."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

import fastlayers
from fastlayers import checkpoint, losses, models, optim
from fastlayers.checkpoint import CheckpointError


def trained_model(seed=0):
    model = models.mlp(input_size=12, hidden=[7, 5], classes=3, batchnorm=True, dropout=0.2, seed=seed)
    opt = optim.Adam(model.parameters(), lr=0.01)
    loss = losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 12)).astype(np.float32)
    t = rng.integers(0, 3, 8)
    model.set_rng(np.random.default_rng(1))
    for _ in range(3):
        opt.zero_grad()
        loss.forward(model.forward(x, train=True), t)
        model.backward(loss.backward())
        opt.step()
    return model, opt, x


def test_round_trip_restores_architecture_weights_and_buffers(tmp_path):
    model, _, x = trained_model()
    path = fastlayers.save(model, tmp_path / "m.safetensors")
    back = fastlayers.load(path)
    assert back.config() == model.config()
    state, state_back = model.state_dict(), back.state_dict()
    assert state.keys() == state_back.keys()
    for k in state:
        assert state_back[k].dtype == state[k].dtype and np.array_equal(state_back[k], state[k]), k
    np.testing.assert_array_equal(back.forward(x, train=False), model.forward(x, train=False))


def test_file_is_safetensors_not_pickle(tmp_path):
    model, _, _ = trained_model()
    path = fastlayers.save(model, tmp_path / "m.safetensors", metadata={"data": "bundled"})
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    meta = header["__metadata__"]
    assert meta["format"] == "fastlayers" and meta["format_version"] == "1" and meta["data"] == "bundled"
    assert json.loads(meta["architecture"]) == model.config()
    assert b"\x80\x04" not in raw[:2]  # no pickle protocol header


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    model, opt, x = trained_model()
    path = fastlayers.save(model, tmp_path / "m.safetensors", optimizer=opt)
    back = fastlayers.load(path)
    opt_back = optim.Adam(back.parameters(), lr=0.01)
    checkpoint.load_optimizer(path, opt_back)
    t = np.zeros(len(x), dtype=np.int64)
    for m, o in ((model, opt), (back, opt_back)):
        m.set_rng(np.random.default_rng(9))
        loss = losses.SoftmaxCrossEntropy()
        o.zero_grad()
        loss.forward(m.forward(x, train=True), t)
        m.backward(loss.backward())
        o.step()
    for k, v in model.state_dict().items():
        assert np.array_equal(back.state_dict()[k], v), k


def test_refuses_what_is_not_a_fastlayers_checkpoint(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        fastlayers.load(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a fastlayers checkpoint"):
        fastlayers.load(foreign)
    model, _, _ = trained_model()
    with pytest.raises(CheckpointError, match="no optimizer state"):
        checkpoint.load_optimizer(fastlayers.save(model, tmp_path / "m.safetensors"), optim.SGD(model.parameters()))


def test_refuses_newer_format_and_mismatched_weights(tmp_path):
    model, _, _ = trained_model()
    tensors = model.state_dict()
    meta = {"format": "fastlayers", "format_version": "99", "architecture": json.dumps(model.config())}
    save_file(tensors, str(tmp_path / "new.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="newer"):
        fastlayers.load(tmp_path / "new.safetensors")
    meta["format_version"] = "1"
    other = models.mlp(input_size=12, hidden=[8, 5], classes=3, batchnorm=True, dropout=0.2)
    meta["architecture"] = json.dumps(other.config())
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="do not fit"):
        fastlayers.load(tmp_path / "bad.safetensors")


def test_failed_save_leaves_the_old_file_alone(tmp_path, monkeypatch):
    model, _, _ = trained_model()
    path = fastlayers.save(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        fastlayers.save(trained_model(seed=3)[0], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind
