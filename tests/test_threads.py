"""Two thread pools must not fight.

OpenBLAS and OpenMP each keep spinning worker threads. With both pools active on a small
machine, alternating a GEMM with an OpenMP element-wise kernel was measured ~25x slower than
the two parts alone. fastlayers keeps OpenBLAS single-threaded and runs GEMM tiles on the
OpenMP pool (threading.cpp); this test fails if the alternating loop is pathologically slower
than its parts.

The probe runs in a fresh interpreter with 2 threads so it measures the real default whatever
the machine's core count. The element-wise part is timed before any GEMM has run: once
OpenBLAS has worked, its idle threads spin for a while and would slow the "part" too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import fastlayers

PROBE = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import fastlayers
    from fastlayers.backend import _native
    if sys.argv[1] == "separate-pools":
        _native._blas_separate_pools(True, 2)
    K = fastlayers.backend.kernels()
    rng = np.random.default_rng(0)
    x = rng.random((100, 784), dtype=np.float32); W = rng.random((784, 100), dtype=np.float32)
    b = np.zeros(100, np.float32); o = np.empty((100, 100), np.float32)
    a = rng.standard_normal(1 << 20).astype(np.float32); r = np.empty_like(a)
    gemm = lambda: K.affine_forward(o, x, W, b)
    relu = lambda: K.relu_forward(r, a)
    def pair():
        gemm(); relu()
    def median_time(f, rounds=7, reps=10):
        f()
        samples = []
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(reps):
                f()
            samples.append((time.perf_counter() - t) / reps)
        return sorted(samples)[rounds // 2]
    med = {"relu": median_time(relu), "gemm": median_time(gemm), "pair": median_time(pair)}
    print(json.dumps(med))
    """
)


def pair_ratio(mode: str) -> tuple[float, dict]:
    # The thread settings under test replace whatever the caller set; the rest (PYTHONPATH,
    # a virtual environment) is kept so the subprocess imports the same fastlayers.
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    med = json.loads(out.stdout)
    return med["pair"] / (med["gemm"] + med["relu"]), med


# Healthy: ~1 (measured 0.9-1.1). Fighting pools: ~25. A factor 4 leaves room for a noisy
# machine while still failing the pathological case by a wide margin.
LIMIT = 4.0


def test_alternating_gemm_and_elementwise_is_not_pathological():
    ratio, med = pair_ratio("default")
    assert ratio < LIMIT, f"GEMM+ReLU pair took {ratio:.1f}x its parts: {med}"


@pytest.mark.skipif(not fastlayers.build_info()["openmp"], reason="without OpenMP there is only OpenBLAS's pool")
@pytest.mark.skipif((os.cpu_count() or 1) > 2, reason="the pools were measured to fight on 2 cores; more cores may hide it")
@pytest.mark.skipif(fastlayers.build_info()["sanitize"], reason="instrumented kernels are too slow for the fight to dominate")
def test_probe_detects_fighting_pools():
    """With OpenBLAS threaded on its own pool again the probe must see the slowdown, or it proves nothing."""
    ratio, med = pair_ratio("separate-pools")
    assert ratio > LIMIT, f"expected the separate pools to fight, got {ratio:.1f}x: {med}"
