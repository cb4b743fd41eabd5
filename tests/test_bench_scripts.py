"""The benchmark scripts run: each in --quick mode, writing JSON with the expected keys and a
passed validation. Nothing here asserts a timing."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import kernels  # noqa: E402
import shapes  # noqa: E402

pytestmark = pytest.mark.bench


def run(tmp_path, script: str, *args: str) -> dict:
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--json", str(out), *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validation" in proc.stdout
    return json.loads(out.read_text())


def test_kernels_quick(tmp_path):
    report = run(tmp_path, "kernels.py")
    assert report["validation_passed"] is True
    networks = list(shapes.NETWORKS)
    assert report["networks"] == networks
    calls = [(s.name, c.kernel) for n in networks for s in shapes.NETWORKS[n] for c in s.calls()]
    assert [(v["shape_set"], v["kernel"]) for v in report["validation"]] == calls
    assert all(v["ok"] for v in report["validation"])
    ceil = report["ceilings"]
    assert ceil["sgemm"]["gflops"] > 0 and ceil["memcpy"]["gbps"] > 0 and ceil["call"]["us"] > 0
    assert ceil["peak_fma"]["gflops"] >= 0  # 0 where there is no AVX-512 build to run
    assert [(k["shape_set"], k["kernel"]) for k in report["kernels"]] == calls
    for k in report["kernels"]:
        assert k["ms"] > 0 and k["numpy_ms"] > 0 and k["speedup"] > 0
        assert k["unit"] == ("GFLOP/s" if k["flops"] else "GB/s")
        assert k["rate"] > 0 and k["pct_of_ceiling"] > 0 and k["bytes"] > 0
    assert set(report["totals"]) == set(networks)
    assert report["other_load_cores"] is None or report["other_load_cores"] >= 0


def test_peak_fma_probe():
    from fastlayers.backend import _native

    assert _native._peak_fma_gflops(1000, 2) >= 0
    with pytest.raises(ValueError, match="iterations"):
        _native._peak_fma_gflops(0, 1)
    # Without the AVX-512 builds there is nothing to measure: 0, not a baseline-build rate.
    env = {**os.environ, "FASTLAYERS_DISABLE_AVX512": "1"}
    code = "from fastlayers.backend import _native; print(_native._peak_fma_gflops(1000, 1))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) == 0.0


def test_kernels_options(tmp_path):
    report = run(tmp_path, "kernels.py", "--network", "mlp_bn", "--threads", "1", "--no-numpy", "--batch", "7")
    assert report["validation_passed"] is True and report["threads"] == 1 and report["networks"] == ["mlp_bn"]
    assert report["batch"] == 7
    assert "numpy_ms" not in report["kernels"][0] and report["settings"]["numpy_reps"] == 0


def test_scaling_quick(tmp_path):
    report = run(tmp_path, "scaling.py", "--batches", "1,10")
    assert report["validation_passed"] is True
    networks = list(shapes.NETWORKS)
    assert [c["network"] for c in report["validation"]] == networks
    keys = [(r["network"], r["batch"], r["threads"]) for r in report["results"]]
    assert keys == [(n, b, t) for n in networks for b in (1, 10) for t in (1, 2)]
    for r in report["results"]:
        assert r["ms_per_step"] > 0 and r["us_per_sample"] == pytest.approx(1e3 * r["ms_per_step"] / r["batch"])
        assert r["steps"] >= 2 and (r["other_load_cores"] is None or r["other_load_cores"] >= 0)
    assert [(s["network"], s["batch"]) for s in report["speedups"]] == [(n, b) for n in networks for b in (1, 10)]
    assert all(s["speedup"] > 0 and (s["from_threads"], s["to_threads"]) == (1, 2) for s in report["speedups"])
    assert report["other_load_cores"] is None or report["other_load_cores"] >= 0


def test_winograd_quick(tmp_path):
    report = run(tmp_path, "winograd.py")
    assert report["batch"] == 4
    rows = report["rows"]
    assert sorted({r["layer"] for r in rows}) == [f"deep_cnn/conv{i}" for i in range(2, 7)]
    assert sorted({r["m"] for r in rows}) == [2, 4]
    for r in rows:
        assert r["im2col_ms"] > 0 and r["gemms_ms"] > 0 and r["native_ms"] > 0
        assert r["bound_ms"] == pytest.approx(r["gemms_ms"] + r["traffic_ms"])


def test_step_guard_quick(tmp_path):
    report = run(tmp_path, "step_guard.py")
    assert report["validation_passed"] is True
    assert [r["network"] for r in report["rows"]] == ["simple-cnn", "mlp-bn"]
    for r in report["rows"]:
        assert r["step_ms"] > 0 and r["guard_us"] > 0
        assert r["guard_share"] == pytest.approx(r["guard_us"] / (1e3 * r["step_ms"]))
    assert [r["buffers"] for r in report["rows"]] == [0, 10]  # mlp-bn: five BatchNorms' running mean and variance


def test_augment_quick(tmp_path):
    report = run(tmp_path, "augment.py")
    assert report["validation_passed"] is True and report["batch"] == 100
    for key in ("native_ms", "numpy_ms", "step_ms", "augmented_step_ms"):
        assert report[key] > 0, key
    assert report["share"] == pytest.approx(report["native_ms"] / report["augmented_step_ms"])


def test_health_quick(tmp_path):
    report = run(tmp_path, "health.py")
    assert report["validation_passed"] is True
    assert [r["network"] for r in report["rows"]] == ["simple-cnn", "mlp-bn"]
    assert [(r["watched_outputs"], r["weights"]) for r in report["rows"]] == [(2, 3), (5, 6)]
    for r in report["rows"]:
        assert r["bookkeeping_us"] == pytest.approx(r["counts_us"] + r["ratios_us"] / r["ratio_every"])


# The validation is what makes the timings mean something: it must notice a wrong result and
# an output left unwritten.


def broken_native(monkeypatch, kernel: str, wrong):
    table = {name: getattr(kernels.NATIVE, name) for name in vars(kernels.NATIVE)}
    table[kernel] = wrong
    monkeypatch.setattr(kernels, "NATIVE", SimpleNamespace(**table))


def test_validation_notices_a_wrong_result(monkeypatch):
    fc = next(s for s in shapes.NETWORKS["simple_cnn"] if s.name == "simple_cnn/fc2")
    state = kernels.prepare(fc)
    call = fc.forward()[0]
    assert kernels.validate(fc, call, state)["ok"]
    real = kernels.NATIVE.affine_forward

    def off_by_a_little(out, x, W, b):
        real(out, x, W, b)
        out[0, 0] += 1e-3 * np.abs(out).max()

    broken_native(monkeypatch, "affine_forward", off_by_a_little)
    check = kernels.validate(fc, call, state)
    assert not check["ok"] and check["worst_output"] == "out"


def test_validation_notices_an_unwritten_output(monkeypatch):
    pool = next(s for s in shapes.NETWORKS["deep_cnn"] if s.name == "deep_cnn/conv2")  # conv + ReLU + pool
    state = kernels.prepare(pool)
    call = pool.forward()[0]
    real = kernels.NATIVE.conv2d_relu_maxpool2d_forward

    def forgets_argmax(out, argmax, *rest):
        real(out, np.empty_like(argmax), *rest)

    broken_native(monkeypatch, "conv2d_relu_maxpool2d_forward", forgets_argmax)
    check = kernels.validate(pool, call, state)
    assert not check["ok"] and check["worst_output"] == "argmax"
