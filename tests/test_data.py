"""IDX parsing, dataset search order, verified downloads and the bundled subset."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from fastlayers import data
from fastlayers.data import DatasetError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

IDX_CODES = {
    np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B,
    np.dtype("i4"): 0x0C, np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encodes an array as IDX: big-endian header and payload."""
    array = np.asarray(array)
    header = bytes([0, 0, IDX_CODES[array.dtype.newbyteorder("=")], array.ndim])
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def make_split(n: int, seed: int, rows: int = 28, cols: int = 28):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    return images, labels


def write_split(directory: Path, split: str, images, labels, compress=True):
    directory.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    paths = []
    for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        raw = idx_bytes(array)
        path = directory / (stem + ".gz" if compress else stem)
        path.write_bytes(gzip.compress(raw) if compress else raw)
        paths.append(path)
    return paths


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real data anywhere: empty HOME, no env vars, no system directory."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("FASTLAYERS_DATA", "FASTLAYERS_CACHE", "FASTLAYERS_MNIST_MIRROR",
                "FASTLAYERS_FASHION_MNIST_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": (), "mnist": ()})
    return tmp_path


# ----------------------------------------------------------------------------- IDX format

@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, compress):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    raw = idx_bytes(array)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    loaded = data.load_idx(path)
    assert loaded.dtype == np.dtype(dtype).newbyteorder("=")
    assert loaded.dtype.isnative
    assert loaded.shape == (3, 4, 5)
    np.testing.assert_array_equal(loaded, array)
    assert loaded.flags.writeable


def test_idx_big_endian_on_disk():
    raw = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2]) + b"\x01\x02\xff\xfe"
    np.testing.assert_array_equal(data.parse_idx(raw, "x"), np.array([258, -2], dtype=np.int16))


def test_idx_one_dimensional_and_empty():
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(np.arange(7, dtype=np.uint8))), np.arange(7))
    assert data.parse_idx(idx_bytes(np.zeros((0, 3), dtype=np.int32))).shape == (0, 3)


def _error(raw: bytes, name="bad.idx") -> str:
    with pytest.raises(DatasetError) as info:
        data.parse_idx(raw, name)
    return str(info.value)


def test_idx_truncated_payload():
    message = _error(idx_bytes(np.zeros((2, 3), np.int32))[:-5])
    assert "bad.idx" in message and "truncated" in message
    assert "24 bytes" in message and "found 19" in message


def test_idx_trailing_bytes():
    message = _error(idx_bytes(np.zeros((2, 3), np.uint8)) + b"\0\0\0")
    assert "3 trailing bytes" in message and "needs 6 bytes" in message


def test_idx_wrong_magic():
    raw = bytearray(idx_bytes(np.zeros(3, np.uint8)))
    raw[1] = 0x08
    assert "first two bytes must be 00 00, got 00 08" in _error(bytes(raw))


def test_idx_bad_type_code():
    raw = bytearray(idx_bytes(np.zeros(3, np.uint8)))
    raw[2] = 0x0A
    assert "unknown IDX type code 0x0A" in _error(bytes(raw))


def test_idx_zero_dimensions():
    assert "0 dimensions" in _error(bytes([0, 0, 8, 0]))


@pytest.mark.parametrize("raw, fragment", [
    (b"\0\0", "expected at least 4 bytes, got 2"),
    (bytes([0, 0, 8, 3, 0, 0, 0, 1]), "3 dimensions need 16 header bytes, the file has 8"),
])
def test_idx_header_too_short(raw, fragment):
    assert fragment in _error(raw)


def test_gzip_read_as_raw(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((1, 2, 2), np.uint8))))
    with pytest.raises(DatasetError, match="looks gzip-compressed") as info:
        data.load_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("mangle, fragment", [
    (lambda b: b[: len(b) // 2], "corrupt or truncated gzip"),
    (lambda b: b[:20] + bytes(x ^ 0x55 for x in b[20:40]) + b[40:], "corrupt or truncated gzip"),
    (lambda b: b[:10], "corrupt or truncated gzip"),
    (lambda b: gzip.decompress(b), "named .gz but not gzip-compressed"),
    (lambda b: b"", "named .gz but not gzip-compressed"),
])
def test_corrupt_gzip(tmp_path, mangle, fragment):
    rng = np.random.default_rng(2)
    blob = gzip.compress(idx_bytes(rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "x.gz"
    path.write_bytes(mangle(blob))
    with pytest.raises(DatasetError, match=fragment) as info:
        data.load_idx(path)
    assert "x.gz" in str(info.value)


def test_missing_file_is_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="cannot read"):
        data.load_idx(tmp_path / "nope.gz")


# ----------------------------------------------------------------------------- directories

def test_load_dir_raw_and_gzip_mixed(tmp_path):
    train = make_split(30, seed=3)
    test = make_split(20, seed=4)
    write_split(tmp_path, "train", *train, compress=True)
    write_split(tmp_path, "test", *test, compress=False)
    (x_train, t_train), (x_test, t_test) = data.load_dir(tmp_path)
    assert x_train.shape == (30, 1, 28, 28) and x_test.shape == (20, 1, 28, 28)
    assert x_train.dtype == np.float32 and t_train.dtype == np.int64
    np.testing.assert_array_equal(x_train[:, 0], train[0].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(t_test, test[1])
    (xf, _), _ = data.load_dir(tmp_path, flatten=True)
    assert xf.shape == (30, 784)
    np.testing.assert_array_equal(xf, x_train.reshape(30, -1))
    assert xf.min() >= 0.0 and xf.max() <= 1.0


def test_load_dir_missing_split(tmp_path):
    write_split(tmp_path, "train", *make_split(5, seed=0))
    with pytest.raises(DatasetError, match="missing the test files"):
        data.load_dir(tmp_path)


def test_image_label_count_mismatch(tmp_path):
    images, labels = make_split(10, seed=5)
    write_split(tmp_path, "train", images, labels[:9])
    write_split(tmp_path, "test", images, labels)
    with pytest.raises(DatasetError, match="count mismatch: 10 images .* but 9 labels"):
        data.load_dir(tmp_path)


def test_labels_out_of_range(tmp_path):
    images, labels = make_split(10, seed=6)
    labels[3] = 12
    write_split(tmp_path, "test", images, labels)
    with pytest.raises(DatasetError, match="labels must lie in 0..9, found 12"):
        data.load_fashion_mnist("test", data_dir=tmp_path)


def test_images_must_be_3d_ubyte(tmp_path):
    write_split(tmp_path, "test", np.zeros((4, 784), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(DatasetError, match=r"3-D unsigned-byte image array .*\(4, 784\)"):
        data.load_mnist("test", data_dir=tmp_path)


def test_bad_split_name():
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        data.load_mnist("validation")


# ----------------------------------------------------------------------------- search order

def test_not_found_lists_places_and_remedies(isolated):
    with pytest.raises(DatasetError) as info:
        data.load_fashion_mnist("test", data_dir=isolated / "given")
    message = str(info.value)
    assert str(isolated / "given") in message
    assert str(isolated / "home" / ".cache" / "fastlayers" / "fashion-mnist") in message
    assert "download=True" in message and "apt-get install dataset-fashion-mnist" in message


def test_data_dir_comes_first(isolated, monkeypatch):
    env = isolated / "env"
    monkeypatch.setenv("FASTLAYERS_DATA", str(env))
    write_split(env / "mnist", "test", *make_split(10, seed=7))
    write_split(isolated / "given", "test", *make_split(12, seed=8))
    assert data.load_mnist("test", data_dir=isolated / "given")[0].shape[0] == 12
    assert data.load_mnist("test")[0].shape[0] == 10


def test_data_env_subdirectory_then_root(isolated, monkeypatch):
    env = isolated / "env"
    monkeypatch.setenv("FASTLAYERS_DATA", str(env))
    write_split(env, "test", *make_split(11, seed=9))
    assert data.load_fashion_mnist("test")[0].shape[0] == 11
    write_split(env / "fashion-mnist", "test", *make_split(13, seed=10))
    assert data.load_fashion_mnist("test")[0].shape[0] == 13
    # The subdirectory is per dataset: MNIST still takes the files at the root.
    assert data.load_mnist("test")[0].shape[0] == 11


def test_cache_under_home_and_override(isolated, monkeypatch):
    write_split(isolated / "home" / ".cache" / "fastlayers" / "mnist", "train", *make_split(14, seed=11))
    assert data.load_mnist("train")[1].shape == (14,)
    monkeypatch.setenv("FASTLAYERS_CACHE", str(isolated / "cache"))
    assert data.cache_dir() == isolated / "cache"
    with pytest.raises(DatasetError, match="not found"):
        data.load_mnist("train")


def test_system_dir_is_last(isolated, monkeypatch):
    system = isolated / "system"
    write_split(system, "train", *make_split(15, seed=12))
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": (str(system),), "mnist": ()})
    assert data.load_fashion_mnist("train")[0].shape[0] == 15
    cached = isolated / "home" / ".cache" / "fastlayers" / "fashion-mnist"
    write_split(cached, "train", *make_split(16, seed=13))
    assert data.load_fashion_mnist("train")[0].shape[0] == 16
    with pytest.raises(DatasetError):
        data.load_mnist("train")


def test_found_file_that_is_corrupt_is_reported(isolated):
    paths = write_split(isolated / "given", "test", *make_split(5, seed=14))
    paths[0].write_bytes(paths[0].read_bytes()[:30])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz: corrupt"):
        data.load_mnist("test", data_dir=isolated / "given")


# ----------------------------------------------------------------------------- downloads

class Mirror:
    """A local HTTP server holding generated gzip IDX files; counts requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                mirror.requests.append(self.path)
                body = mirror.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/base"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def mirror():
    images, labels = make_split(40, seed=15)
    files = {
        "base/t10k-images-idx3-ubyte.gz": gzip.compress(idx_bytes(images), mtime=0),
        "base/t10k-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(labels), mtime=0),
    }
    server = Mirror(files)
    server.images, server.labels = images, labels
    server.checksums = {name.split("/")[1]: hashlib.sha256(body).hexdigest() for name, body in files.items()}
    yield server
    server.close()


def _cache_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_download_verifies_caches_and_reuses(isolated, monkeypatch, mirror):
    cache = isolated / "cache"
    monkeypatch.setenv("FASTLAYERS_CACHE", str(cache))
    x, t = data.load_fashion_mnist("test", download=True, mirror=mirror.url, checksums=mirror.checksums)
    assert x.shape == (40, 1, 28, 28)
    np.testing.assert_array_equal(t, mirror.labels)
    np.testing.assert_array_equal(x[:, 0] * 255, mirror.images)
    assert len(mirror.requests) == 2
    assert _cache_files(cache) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert _cache_files(cache / "fashion-mnist") == _cache_files(cache)
    x2, _ = data.load_fashion_mnist("test", download=True, mirror=mirror.url, checksums=mirror.checksums)
    np.testing.assert_array_equal(x2, x)
    assert len(mirror.requests) == 2


def test_download_mirror_from_environment(isolated, monkeypatch, mirror):
    monkeypatch.setenv("FASTLAYERS_CACHE", str(isolated / "cache"))
    monkeypatch.setenv("FASTLAYERS_MNIST_MIRROR", mirror.url + "/")
    _, t = data.load_mnist("test", download=True, checksums=mirror.checksums)
    np.testing.assert_array_equal(t, mirror.labels)
    assert mirror.requests == ["/base/t10k-images-idx3-ubyte.gz", "/base/t10k-labels-idx1-ubyte.gz"]


def test_download_checksum_mismatch_leaves_nothing(isolated, monkeypatch, mirror):
    cache = isolated / "cache"
    monkeypatch.setenv("FASTLAYERS_CACHE", str(cache))
    wrong = dict(mirror.checksums, **{"t10k-images-idx3-ubyte.gz": "0" * 64})
    with pytest.raises(DatasetError, match="checksum mismatch") as info:
        data.load_fashion_mnist("test", download=True, mirror=mirror.url, checksums=wrong)
    assert mirror.url + "/t10k-images-idx3-ubyte.gz" in str(info.value)
    assert mirror.checksums["t10k-images-idx3-ubyte.gz"] in str(info.value)
    assert _cache_files(cache) == []


def test_download_404(isolated, monkeypatch, mirror):
    cache = isolated / "cache"
    monkeypatch.setenv("FASTLAYERS_CACHE", str(cache))
    with pytest.raises(DatasetError, match="HTTP 404") as info:
        data.load_mnist("train", download=True, mirror=mirror.url, checksums=mirror.checksums | {
            "train-images-idx3-ubyte.gz": "0" * 64, "train-labels-idx1-ubyte.gz": "0" * 64})
    assert mirror.url + "/train-images-idx3-ubyte.gz" in str(info.value)
    assert _cache_files(cache) == []


def test_download_resumes_after_partial_failure(isolated, monkeypatch, mirror):
    cache = isolated / "cache"
    monkeypatch.setenv("FASTLAYERS_CACHE", str(cache))
    labels = mirror.files.pop("base/t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DatasetError, match="HTTP 404"):
        data.load_mnist("test", download=True, mirror=mirror.url, checksums=mirror.checksums)
    assert _cache_files(cache) == ["t10k-images-idx3-ubyte.gz"]  # verified, so kept
    mirror.files["base/t10k-labels-idx1-ubyte.gz"] = labels
    mirror.requests.clear()
    _, t = data.load_mnist("test", download=True, mirror=mirror.url, checksums=mirror.checksums)
    np.testing.assert_array_equal(t, mirror.labels)
    assert mirror.requests == ["/base/t10k-labels-idx1-ubyte.gz"]


def test_download_unreachable(isolated, monkeypatch):
    monkeypatch.setenv("FASTLAYERS_CACHE", str(isolated / "cache"))
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/base"
    with pytest.raises(DatasetError, match=f"download failed for {url}/t10k-images"):
        data.load_mnist("test", download=True, mirror=url, checksums={
            "t10k-images-idx3-ubyte.gz": "0" * 64, "t10k-labels-idx1-ubyte.gz": "0" * 64})
    assert _cache_files(isolated / "cache") == []


def test_download_cache_not_writable(isolated, monkeypatch, mirror):
    blocker = isolated / "file"
    blocker.write_text("")
    monkeypatch.setenv("FASTLAYERS_CACHE", str(blocker))
    with pytest.raises(DatasetError, match="cannot write to the download cache"):
        data.load_mnist("test", download=True, mirror=mirror.url, checksums=mirror.checksums)
    assert mirror.requests == []


def test_download_without_checksum_is_refused(isolated, monkeypatch, mirror):
    monkeypatch.setenv("FASTLAYERS_CACHE", str(isolated / "cache"))
    with pytest.raises(DatasetError, match="no SHA-256 checksum known"):
        data.load_mnist("test", download=True, mirror=mirror.url, checksums={})
    assert mirror.requests == []


def test_checksum_tables_are_complete():
    for dataset in ("fashion-mnist", "mnist"):
        assert set(data.SHA256[dataset]) == {f"{s}.gz" for pair in data._FILES.values() for s in pair}
        assert set(data.RAW_SHA256[dataset]) == {s for pair in data._FILES.values() for s in pair}
        for digest in (*data.SHA256[dataset].values(), *data.RAW_SHA256[dataset].values()):
            assert len(digest) == 64 and int(digest, 16) >= 0


# ----------------------------------------------------------------------------- bundled subset

@pytest.fixture(scope="module")
def bundled():
    return data.load_bundled()


def test_bundled_files_are_the_official_data():
    root = data.bundled_path()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        raw = gzip.decompress((root / f"{stem}.gz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == data.RAW_SHA256["fashion-mnist"][stem]
    assert "Zalando SE" in (root / "LICENSE").read_text()


def test_bundled_shapes_and_values(bundled):
    (x_train, t_train), (x_test, t_test) = bundled
    assert x_train.shape == (8000, 1, 28, 28) and x_test.shape == (2000, 1, 28, 28)
    assert t_train.shape == (8000,) and t_test.shape == (2000,)
    assert x_train.dtype == np.float32 and t_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert x_test.min() >= 0.0 and x_test.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(t_train, minlength=10), np.full(10, 800))
    np.testing.assert_array_equal(np.bincount(t_test, minlength=10), np.full(10, 200))
    # Shuffled across classes, not sorted by label.
    assert len(set(t_train[:50].tolist())) > 5


def test_bundled_split_is_deterministic_and_disjoint(bundled):
    (x_train, t_train), (x_test, t_test) = bundled
    (x_train2, t_train2), (x_test2, t_test2) = data.load_bundled(flatten=True)
    np.testing.assert_array_equal(x_train2, x_train.reshape(8000, 784))
    np.testing.assert_array_equal(t_test2, t_test)
    assert x_test2.shape == (2000, 784)
    full_x, full_t = data.load_fashion_mnist("test", data_dir=data.bundled_path())
    rows = {row.tobytes(): i for i, row in enumerate(full_x.reshape(10000, -1))}
    assert len(rows) == 10000  # the test set has no duplicate images
    train_ids = [rows[r.tobytes()] for r in x_train.reshape(8000, -1)]
    test_ids = [rows[r.tobytes()] for r in x_test.reshape(2000, -1)]
    assert set(train_ids).isdisjoint(test_ids)
    assert sorted(train_ids + test_ids) == list(range(10000))
    np.testing.assert_array_equal(full_t[train_ids], t_train)
    (x_other, _), _ = data.load_bundled(seed=1)
    assert not np.array_equal(x_other, x_train)


# ----------------------------------------------------------------------------- the real files

@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist(isolated, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": (str(DEBIAN_DIR),), "mnist": ()})
    x_train, t_train = data.load_fashion_mnist("train")
    x_test, t_test = data.load_fashion_mnist("test", flatten=True)
    assert x_train.shape == (60000, 1, 28, 28) and t_train.shape == (60000,)
    assert x_test.shape == (10000, 784) and t_test.shape == (10000,)
    np.testing.assert_array_equal(np.bincount(t_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(t_test), np.full(10, 1000))
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        raw = gzip.decompress((DEBIAN_DIR / f"{stem}.gz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == data.RAW_SHA256["fashion-mnist"][stem]
