"""A corruption corpus for the IDX loader: every damaged file is a DatasetError naming the file.

Truncations at every header byte and at many payload offsets, trailing bytes, broken magic,
type codes and dimension counts, sizes off by one, cut and damaged gzip streams, image/label
count mismatches and labels outside 0..9. None may escape as struct.error, AssertionError,
EOFError, zlib.error or an IndexError from NumPy.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from fastlayers import data
from fastlayers.data import DatasetError

N, ROWS, COLS = 7, 5, 4


def idx(arr: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def good_images() -> bytes:
    return idx(np.random.default_rng(0).integers(0, 256, (N, ROWS, COLS), dtype=np.uint8))


def good_labels() -> bytes:
    return idx(np.random.default_rng(1).integers(0, 10, N, dtype=np.uint8))


def _with_dim(raw: bytes, i: int, delta: int) -> bytes:
    at = 4 + 4 * i
    value = int.from_bytes(raw[at : at + 4], "big") + delta
    return raw[:at] + value.to_bytes(4, "big") + raw[at + 4 :]


def _raw_corpus() -> list[tuple[str, bytes]]:
    images = good_images()
    header = 4 + 4 * 3
    cases = [(f"cut at header byte {k}", images[:k]) for k in range(header)]
    cases += [(f"cut at payload byte {k}", images[: header + k]) for k in range(0, N * ROWS * COLS, 13)]
    cases += [
        ("one trailing byte", images + b"\0"),
        ("first magic byte set", b"\x01" + images[1:]),
        ("second magic byte set", images[:1] + b"\x08" + images[2:]),
        ("unknown type code", images[:2] + b"\x07" + images[3:]),
        ("float type code for bytes", images[:2] + b"\x0d" + images[3:]),
        ("zero dimensions", images[:3] + b"\x00" + images[4:]),
        ("four dimensions declared", images[:3] + b"\x04" + images[4:]),
        ("gzip bytes without .gz", gzip.compress(images)),
    ]
    for i in range(3):
        for delta in (-1, 1):
            cases.append((f"dimension {i} off by {delta:+d}", _with_dim(images, i, delta)))
    cases.append(("a dimension of 2**32 - 1", _with_dim(images, 0, 2**32 - 1 - N)))
    return cases


RAW = _raw_corpus()


def _gzip_corpus() -> list[tuple[str, bytes]]:
    packed = gzip.compress(good_images())
    cases = [(f"gzip cut at byte {k}", packed[:k]) for k in (0, 1, 2, 5, 10, 18, len(packed) // 2, len(packed) - 1)]
    for k in (12, len(packed) // 2, len(packed) - 6, len(packed) - 2):
        damaged = bytearray(packed)
        damaged[k] ^= 0x5A
        cases.append((f"gzip byte {k} flipped", bytes(damaged)))
    cases += [
        ("raw IDX named .gz", good_images()),
        ("gzip of a truncated IDX", gzip.compress(good_images()[:-3])),
        ("gzip with trailing garbage after the stream", packed + b"garbage"),
    ]
    return cases


GZ = _gzip_corpus()
# (file name, (case, bytes)): the raw corpus as a plain IDX file, the gzip one as a .gz file.
DAMAGED = [("train-images-idx3-ubyte", c) for c in RAW] + [("train-images-idx3-ubyte.gz", c) for c in GZ]


@pytest.mark.parametrize("name, case", DAMAGED, ids=[c[0] for _, c in DAMAGED])
def test_damaged_idx_is_a_dataset_error_naming_the_file(tmp_path, name, case):
    _, payload = case
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(DatasetError) as err:
        data.load_idx(path)
    assert str(path) in str(err.value)


def _write_split(directory, images: bytes, labels: bytes) -> None:
    for split, (img, lab) in {"train": (images, labels), "t10k": (good_images(), good_labels())}.items():
        (directory / f"{split}-images-idx3-ubyte").write_bytes(img)
        (directory / f"{split}-labels-idx1-ubyte").write_bytes(lab)


PAIRS = [
    ("one label too few", good_images(), idx(np.zeros(N - 1, np.uint8)), "labels-idx1"),
    ("one label too many", good_images(), idx(np.zeros(N + 1, np.uint8)), "labels-idx1"),
    ("label 10", good_images(), idx(np.array([0, 1, 2, 10, 4, 5, 6], np.uint8)), "labels-idx1"),
    ("label 255", good_images(), idx(np.array([255] * N, np.uint8)), "labels-idx1"),
    ("labels of two dimensions", good_images(), idx(np.zeros((N, 1), np.uint8)), "labels-idx1"),
    ("labels stored as int32", good_images(), idx(np.zeros(N, ">i4"), code=0x0C), "labels-idx1"),
    ("images of two dimensions", idx(np.zeros((N, ROWS * COLS), np.uint8)), good_labels(), "images-idx3"),
    ("images stored as float32", idx(np.zeros((N, ROWS, COLS), ">f4"), code=0x0D), good_labels(), "images-idx3"),
]


@pytest.mark.parametrize("case", PAIRS, ids=[c[0] for c in PAIRS])
def test_inconsistent_images_and_labels_are_a_dataset_error_naming_the_file(tmp_path, case):
    _, images, labels, culprit = case
    _write_split(tmp_path, images, labels)
    with pytest.raises(DatasetError) as err:
        data.load_dir(tmp_path)
    assert str(tmp_path / f"train-{culprit}-ubyte") in str(err.value)


def test_the_good_files_load(tmp_path):
    _write_split(tmp_path, good_images(), good_labels())
    (x, t), (xt, tt) = data.load_dir(tmp_path)
    assert x.shape == (N, 1, ROWS, COLS) and t.shape == (N,) and xt.shape == x.shape
    assert 0 <= x.min() and x.max() <= 1 and t.max() <= 9


def test_the_corpus_is_large():
    assert len(RAW) + len(GZ) + len(PAIRS) >= 50
