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
    assert meta["format"] == "fastlayers" and meta["format_version"] == "2" and meta["data"] == "bundled"
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
    with pytest.raises(CheckpointError, match="header length .* exceeds the limit"):
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



def version_1_file(path, model, optimizer):
    """A checkpoint laid out as format version 1 wrote it: no checksum, no training state."""
    tensors = dict(model.state_dict())
    scalars = {}
    for key, value in optimizer.state_dict().items():
        if isinstance(value, np.ndarray):
            tensors["optimizer/" + key] = value
        else:
            scalars[key] = value
    meta = {"format": "fastlayers", "format_version": "1", "fastlayers_version": "0.1.0",
            "architecture": json.dumps(model.config()), "optimizer": json.dumps(scalars)}
    save_file(tensors, str(path), metadata=meta)
    return path


def test_version_1_files_still_load(tmp_path):
    model, opt, x = trained_model()
    path = version_1_file(tmp_path / "v1.safetensors", model, opt)
    assert checkpoint.read_metadata(path)["format_version"] == "1"
    assert checkpoint.verify(path)["format_version"] == "1"
    back = fastlayers.load(path)
    np.testing.assert_array_equal(back.forward(x, train=False), model.forward(x, train=False))
    opt_back = optim.Adam(back.parameters())
    checkpoint.load_optimizer(path, opt_back)
    assert opt_back.steps == opt.steps == 3
    for k, v in opt.state_dict().items():
        w = opt_back.state_dict()[k]
        assert np.array_equal(w, v) if isinstance(v, np.ndarray) else w == v, k


def test_the_checksum_covers_every_tensor_byte(tmp_path):
    model, opt, _ = trained_model()
    path = fastlayers.save(model, tmp_path / "m.safetensors", optimizer=opt)
    meta = checkpoint.verify(path)
    assert len(meta["tensors_crc32"]) == 8
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    for at in (8 + n, len(raw) - 1, 8 + n + (len(raw) - 8 - n) // 2):
        bad = bytearray(raw)
        bad[at] ^= 0x01
        (tmp_path / "bad.safetensors").write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            fastlayers.load(tmp_path / "bad.safetensors")


def test_save_writes_syncs_renames_then_syncs_the_directory(tmp_path, monkeypatch):
    import os
    import stat

    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        mode = os.fstat(fd).st_mode
        calls.append(("fsync", "dir" if stat.S_ISDIR(mode) else "file"))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.path.dirname(src) == os.path.dirname(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    model, _, _ = trained_model()
    fastlayers.save(model, tmp_path / "m.safetensors")
    assert calls == [("fsync", "file"), ("replace", True), ("fsync", "dir")]


def test_the_checkpoint_gets_the_permissions_the_umask_allows(tmp_path):
    import os

    model, _, _ = trained_model()
    old = os.umask(0o027)
    try:
        path = fastlayers.save(model, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


def saved_with_a_failure(tmp_path, monkeypatch, name, fake):
    """Saves a first model, then tries to overwrite it while ``os.<name>`` is ``fake``;
    returns the error and checks that the first checkpoint is intact and no temporary is left."""
    import os

    first, _, _ = trained_model()
    path = fastlayers.save(first, tmp_path / "m.safetensors", metadata={"which": "first"})
    before = path.read_bytes()
    second, _, _ = trained_model(seed=3)
    with monkeypatch.context() as m:
        m.setattr(os, name, fake)
        with pytest.raises(OSError) as info:
            fastlayers.save(second, path, metadata={"which": "second"})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary left behind
    assert checkpoint.verify(path)["which"] == "first"
    return info.value


def test_a_full_disk_is_a_clean_oserror_and_the_old_checkpoint_survives(tmp_path, monkeypatch):
    import errno
    import os

    real_write = os.write

    def write(fd, data):
        # Half of the bytes reach the file, then the disk is full.
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    e = saved_with_a_failure(tmp_path, monkeypatch, "write", write)
    assert e.errno == errno.ENOSPC and "m.safetensors" in str(e) and "unchanged" in str(e)


def test_a_failing_fsync_or_rename_is_a_clean_oserror(tmp_path, monkeypatch):
    import errno

    def eio(*args):
        raise OSError(errno.EIO, "Input/output error")

    for name in ("fsync", "replace"):
        e = saved_with_a_failure(tmp_path, monkeypatch, name, eio)
        assert e.errno == errno.EIO, name


def test_a_directory_refusing_new_files_is_a_clean_oserror(tmp_path, monkeypatch):
    # What a read-only directory does, for any user (root included).
    import errno
    import os

    real_open = os.open

    def no_new_files(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    e = saved_with_a_failure(tmp_path, monkeypatch, "open", no_new_files)
    assert isinstance(e, PermissionError) and e.errno == errno.EACCES and "m.safetensors" in str(e)


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root ignores directory permissions")
def test_a_read_only_directory_is_a_clean_oserror(tmp_path):
    model, _, _ = trained_model()
    path = fastlayers.save(model, tmp_path / "m.safetensors")
    before = path.read_bytes()
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="m.safetensors"):
            fastlayers.save(trained_model(seed=3)[0], path)
        assert path.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    finally:
        tmp_path.chmod(0o700)
    assert checkpoint.verify(path)


def test_an_interrupted_save_removes_its_temporary_and_reraises(tmp_path, monkeypatch):
    import os

    model, _, _ = trained_model()
    path = fastlayers.save(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        fastlayers.save(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_save_refuses_reserved_or_non_string_metadata(tmp_path):
    model, _, _ = trained_model()
    for key in ("format", "tensors_crc32", "trainer", "optimizer"):
        with pytest.raises(ValueError, match="reserved"):
            fastlayers.save(model, tmp_path / "m.safetensors", metadata={key: "x"})
    with pytest.raises(TypeError, match="str to str"):
        fastlayers.save(model, tmp_path / "m.safetensors", metadata={"epochs": 3})
    assert not (tmp_path / "m.safetensors").exists()
