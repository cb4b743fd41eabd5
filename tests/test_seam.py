"""The kernel seam is strict, on both backends: bad arguments raise the documented error
naming the argument, and outputs are written where promised (no hidden copy)."""

from __future__ import annotations

import numpy as np
import pytest

from fastlayers import reference
from fastlayers.backend import _native

IMPLS = [pytest.param(_native, id="native"), pytest.param(reference, id="numpy")]
f32 = np.float32


def affine_args(dtype=f32, N=4, D=3, M=2):
    return [np.empty((N, M), dtype), np.ones((N, D), dtype), np.ones((D, M), dtype), np.ones(M, dtype)]


def readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def misaligned(shape, dtype=f32):
    n = int(np.prod(shape))
    buf = np.zeros(n * np.dtype(dtype).itemsize + 1, np.uint8)
    return np.frombuffer(buf.data, dtype=dtype, count=n, offset=1).reshape(shape)


def big_endian(a):
    return a.astype(a.dtype.newbyteorder(">"))


# (description, argument index to replace, replacement factory, exception, words the message must hold)
AFFINE_CASES = [
    ("list input", 1, lambda: [[1.0, 2.0, 3.0]] * 4, TypeError, ["'x'", "numpy.ndarray", "list"]),
    ("int64 input", 1, lambda: np.ones((4, 3), np.int64), TypeError, ["'x'", "int64"]),
    ("float16 input", 1, lambda: np.ones((4, 3), np.float16), TypeError, ["'x'", "float16"]),
    ("complex input", 1, lambda: np.ones((4, 3), np.complex64), TypeError, ["'x'", "complex64"]),
    ("object input", 1, lambda: np.ones((4, 3), object), TypeError, ["'x'", "object"]),
    ("big-endian input", 1, lambda: big_endian(np.ones((4, 3), f32)), TypeError, ["'x'", ">f4"]),
    ("mixed dtypes", 2, lambda: np.ones((3, 2), np.float64), TypeError, ["'W'", "float32", "float64"]),
    ("float64 out for float32 x", 0, lambda: np.empty((4, 2), np.float64), TypeError, ["'out'", "float64"]),
    ("transposed view", 1, lambda: np.ones((3, 4), f32).T, ValueError, ["'x'", "C-contiguous"]),
    ("strided view", 1, lambda: np.ones((4, 6), f32)[:, ::2], ValueError, ["'x'", "C-contiguous"]),
    ("negative strides", 1, lambda: np.ones((4, 3), f32)[::-1], ValueError, ["'x'", "C-contiguous"]),
    ("misaligned buffer", 1, lambda: misaligned((4, 3)), ValueError, ["'x'", "aligned"]),
    ("read-only output", 0, lambda: readonly(np.empty((4, 2), f32)), ValueError, ["'out'", "read-only"]),
    ("wrong ndim", 1, lambda: np.ones(12, f32), ValueError, ["'x'", "2-D", "(12,)"]),
    ("feature mismatch", 2, lambda: np.ones((5, 2), f32), ValueError, ["'W'", "(5, 2)", "(3, *)"]),
    ("bias mismatch", 3, lambda: np.ones(3, f32), ValueError, ["'b'", "(3,)", "(2,)"]),
    ("output shape", 0, lambda: np.empty((4, 3), f32), ValueError, ["'out'", "(4, 3)", "(4, 2)"]),
    ("scalar", 3, lambda: 1.0, TypeError, ["'b'", "float"]),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", AFFINE_CASES, ids=[c[0] for c in AFFINE_CASES])
def test_affine_forward_rejects(impl, case):
    _, index, make, exc, words = case
    args = affine_args()
    args[index] = make()
    with pytest.raises(exc) as info:
        impl.affine_forward(*args)
    message = str(info.value)
    assert message.startswith("affine_forward:"), message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize("impl", IMPLS)
def test_output_written_in_place(impl):
    out, x, W, b = affine_args()
    before = out.__array_interface__["data"][0]
    impl.affine_forward(out, x, W, b)
    assert out.__array_interface__["data"][0] == before
    np.testing.assert_array_equal(out, np.full((4, 2), 4.0, f32))
    # An output that is a contiguous view of a bigger buffer is written through.
    slab = np.zeros(20, f32)
    view = slab[4:12].reshape(4, 2)
    impl.affine_forward(view, x, W, b)
    np.testing.assert_array_equal(slab[4:12], 4.0)
    assert (slab[:4] == 0).all() and (slab[12:] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_inputs_not_modified(impl):
    rng = np.random.default_rng(0)
    x, W, dout = rng.standard_normal((4, 3)).astype(f32), rng.standard_normal((3, 2)).astype(f32), rng.standard_normal((4, 2)).astype(f32)
    copies = [a.copy() for a in (x, W, dout)]
    for a in (x, W, dout):
        a.setflags(write=False)  # a write would raise inside the kernel or be caught below
    impl.affine_backward(np.empty((4, 3), f32), np.zeros((3, 2), f32), np.zeros(2, f32), dout, x, W)
    for a, c in zip((x, W, dout), copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("impl", IMPLS)
def test_relu_rejects(impl):
    x = np.ones((2, 3), f32)
    with pytest.raises(ValueError, match=r"relu_forward: argument 'out' has shape \(3, 2\); expected \(2, 3\)"):
        impl.relu_forward(np.empty((3, 2), f32), x)
    with pytest.raises(TypeError, match="relu_backward: argument 'dout' must have dtype float32 like 'x'; got float64"):
        impl.relu_backward(np.empty((2, 3), f32), np.ones((2, 3)), x)
    with pytest.raises(ValueError, match="relu_backward: output 'dx' is read-only"):
        impl.relu_backward(readonly(x), x, x)


@pytest.mark.parametrize("impl", IMPLS)
def test_softmax_cross_entropy_rejects(impl):
    logits = np.zeros((3, 4), f32)
    probs = np.empty_like(logits)
    with pytest.raises(ValueError, match=r"label 4 at index 1; expected labels in \[0, 4\)"):
        impl.softmax_cross_entropy_forward(probs, logits, np.array([0, 4, 1], np.int64))
    with pytest.raises(ValueError, match="label -1 at index 0"):
        impl.softmax_cross_entropy_forward(probs, logits, np.array([-1, 0, 1], np.int64))
    with pytest.raises(TypeError, match="argument 't' must have dtype int64; got float32"):
        impl.softmax_cross_entropy_forward(probs, logits, np.array([0.0, 1.0, 2.0], f32))
    with pytest.raises(TypeError, match="argument 't' must have dtype int64; got int32"):
        impl.softmax_cross_entropy_forward(probs, logits, np.array([0, 1, 2], np.int32))
    with pytest.raises(ValueError, match=r"argument 't' has shape \(2,\); expected \(3,\)"):
        impl.softmax_cross_entropy_forward(probs, logits, np.array([0, 1], np.int64))
    with pytest.raises(TypeError, match="argument 't' must be a numpy.ndarray, got list"):
        impl.softmax_cross_entropy_forward(probs, logits, [0, 1, 2])


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_size_batch(impl):
    out = np.empty((0, 2), f32)
    impl.affine_forward(out, np.ones((0, 3), f32), np.ones((3, 2), f32), np.ones(2, f32))
    assert impl.softmax_cross_entropy_forward(np.empty((0, 3), f32), np.empty((0, 3), f32), np.empty(0, np.int64)) == 0.0
