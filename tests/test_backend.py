"""The backend switch, coverage report, build info and the thread-pool decision."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastlayers
from fastlayers import backend, reference
from fastlayers.backend import _native


def test_default_backend_is_native():
    assert backend.get_backend() == "native"
    assert backend.kernels().affine_forward is _native.affine_forward


def test_use_block_switches_and_restores():
    with backend.use("numpy"):
        assert backend.get_backend() == "numpy"
        assert backend.kernels().affine_forward is reference.affine_forward
        with backend.use("native"):
            assert backend.kernels().relu_forward is _native.relu_forward
        assert backend.get_backend() == "numpy"
    assert backend.get_backend() == "native"


def test_use_restores_after_exception():
    with pytest.raises(RuntimeError):
        with backend.use("numpy"):
            raise RuntimeError("boom")
    assert backend.get_backend() == "native"


def test_set_backend_globally():
    try:
        backend.set_backend("numpy")
        assert backend.kernels().affine_forward is reference.affine_forward
    finally:
        backend.set_backend("native")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'cuda'; expected one of 'native', 'numpy'"):
        backend.set_backend("cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        with backend.use("torch"):
            pass


def test_every_kernel_is_native_and_the_native_table_runs_it():
    cov = backend.coverage()
    assert set(cov) == set(reference.__all__)
    missing = sorted(name for name, native in cov.items() if not native)
    assert not missing, f"kernels without a C++ version: {missing}"
    with backend.use("native"):
        for name in cov:
            assert getattr(backend.kernels(), name) is getattr(_native, name), name


def test_native_falls_back_to_the_oracle_for_a_kernel_it_lacks(monkeypatch):
    """A kernel added to the oracle before its C++ twin still runs under the native backend."""
    import importlib

    def extra_forward(out, x):
        out[...] = x

    monkeypatch.setattr(reference, "extra_forward", extra_forward, raising=False)
    monkeypatch.setattr(reference, "__all__", [*reference.__all__, "extra_forward"])
    fresh = importlib.reload(backend)
    try:
        assert fresh.coverage()["extra_forward"] is False
        assert fresh._TABLES["native"].extra_forward is extra_forward
    finally:
        monkeypatch.undo()
        importlib.reload(backend)


def test_environment_variable_selects_the_default():
    code = "import fastlayers; print(fastlayers.backend.get_backend())"
    env = {**os.environ, "FASTLAYERS_BACKEND": "numpy"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numpy"


def test_build_info():
    info = fastlayers.build_info()
    for key in ("version", "compiler", "openmp", "threads", "blas", "blas_config", "blas_threading", "heap",
                "native_kernels"):
        assert key in info, key
    assert info["blas"] == "OpenBLAS"
    assert "affine_forward" in info["native_kernels"]
    assert info["threads"] >= 1
    # The decision of threading.cpp: with OpenMP, GEMM tiles run on our pool and OpenBLAS
    # itself stays single-threaded.
    assert info["blas_threading"] == ("openmp-tiles" if info["openmp"] else "openblas")
    if info["openmp"]:
        assert info["blas_threads"] == 1
    assert info["heap"] in ("retained", "default")


# Four touched 5 MiB arrays freed together, as a network's backward frees its activations:
# more free memory at the heap's top than glibc's dynamic trim threshold, so by default the
# heap is handed back and the next round faults every page in again.
_HEAP_ROUNDS = textwrap.dedent(
    """
    import resource, numpy as np, fastlayers
    faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    def round_():
        arrays = [np.ones(5 << 18, np.float32) for _ in range(4)]
        del arrays
    round_()
    before = faults()
    for _ in range(10):
        round_()
    print(fastlayers.build_info()["heap"], (faults() - before) / 10)
    """
)


def _heap_rounds(value: str | None) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "FASTLAYERS_RETAIN_HEAP"}
    if value is not None:
        env["FASTLAYERS_RETAIN_HEAP"] = value
    out = subprocess.run([sys.executable, "-c", _HEAP_ROUNDS], env=env, capture_output=True, text=True, check=True)
    policy, faults = out.stdout.split()
    return policy, float(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or fastlayers.build_info()["sanitize"],
                    reason="heap retention sets glibc's malloc; the sanitizers bring their own allocator")
def test_freed_arrays_are_reused_not_faulted_in_again():
    """The slow case exists (2,000+ page faults a round with glibc's defaults) and cannot
    happen once fastlayers is imported: the heap keeps what was freed."""
    assert fastlayers.build_info()["heap"] == "retained"
    policy, faults = _heap_rounds(None)
    assert policy == "retained" and faults < 50, faults
    policy, faults = _heap_rounds("0")
    assert policy == "default" and faults > 1000, faults


def test_retain_heap_setting_is_checked():
    env = {**os.environ, "FASTLAYERS_RETAIN_HEAP": "yes"}
    out = subprocess.run([sys.executable, "-c", "import fastlayers"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "FASTLAYERS_RETAIN_HEAP must be 0 or 1, got 'yes'" in out.stderr


def test_set_num_threads_round_trip():
    before = fastlayers.get_num_threads()
    try:
        fastlayers.set_num_threads(1)
        assert fastlayers.get_num_threads() == 1
        assert fastlayers.build_info()["blas_threads"] == 1
    finally:
        fastlayers.set_num_threads(before)
    with pytest.raises(ValueError, match="must be >= 1"):
        fastlayers.set_num_threads(0)
    with pytest.raises(TypeError, match="must be an int"):
        fastlayers.set_num_threads(1.5)


def test_openblas_not_loaded_globally():
    """OpenBLAS is loaded RTLD_LOCAL: its symbols must not become visible to later libraries."""
    code = textwrap.dedent(
        """
        import ctypes, fastlayers
        try:
            ctypes.CDLL(None).scipy_cblas_sgemm
            print("global")
        except AttributeError:
            print("local")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "local"


def test_layers_and_optimizers_reach_kernels_only_through_the_backend(monkeypatch):
    """Swap the active kernel table for a recording one: a training step must go through it."""
    import types

    from fastlayers import losses, models, optim

    called = []

    def recording(name):
        def kernel(*args):
            called.append(name)
            return getattr(reference, name)(*args)

        return kernel

    table = types.SimpleNamespace(**{name: recording(name) for name in backend.KERNEL_NAMES})
    monkeypatch.setitem(backend._TABLES, "numpy", table)
    model = models.deep_cnn(input_shape=(1, 12, 12), batchnorm=True, seed=0)
    loss, opt = losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters(), weight_decay=1e-4)
    x = np.random.default_rng(0).random((3, 1, 12, 12), dtype=np.float32)
    with backend.use("numpy"):
        opt.zero_grad()
        loss.forward(model.forward(x, train=True), np.array([0, 1, 2]))
        opt.penalty()
        model.backward(loss.backward())
        opt.step()
    expected = {
        # Every ReLU follows a BatchNorm here, so Sequential runs each pair as the fused kernel.
        "conv2d_forward", "conv2d_backward", "batchnorm_relu_forward_train", "batchnorm_relu_backward",
        "maxpool2d_forward", "maxpool2d_backward",
        "affine_forward", "affine_backward", "dropout_forward", "dropout_backward",
        "softmax_cross_entropy_forward", "softmax_cross_entropy_backward", "adam_update", "sum_squares",
    }
    assert expected <= set(called), expected - set(called)
