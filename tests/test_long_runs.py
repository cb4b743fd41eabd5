"""Long runs: 10,000 training steps must not grow the process's resident memory.

Leaks in a training loop (a cache that keeps every batch, scratch that grows per call, a
reference cycle through the layers' caches) show as resident memory rising step after step.
The run is a fresh subprocess, so nothing else of the test session is counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import fastlayers

PROBE = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from fastlayers import losses, models, optim
    from fastlayers.trainer import Trainer

    def rss_bytes():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    model = models.mlp(input_size=196, hidden=[64, 64], batchnorm=True, dropout=0.2, seed=0)
    trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), seed=0, verbose=False)
    rng = np.random.default_rng(0)
    x = rng.random((2000, 196), dtype=np.float32)
    t = rng.integers(0, 10, 2000)
    steps = int(sys.argv[1])
    trainer.fit(x, t, epochs=5, batch_size=100)  # 100 steps: every buffer reaches its size
    before = rss_bytes()
    trainer.fit(x, t, epochs=steps // 20, batch_size=100)
    after = rss_bytes()
    print(json.dumps({"steps": steps, "before": before, "after": after}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(
    fastlayers.build_info()["sanitize"],
    reason="AddressSanitizer holds freed memory in a quarantine of 256 MiB, so resident memory grows by design",
)
def test_ten_thousand_steps_grow_resident_memory_by_less_than_one_percent():
    out = subprocess.run([sys.executable, "-c", PROBE, "10000"], capture_output=True, text=True, check=True,
                         timeout=600)
    r = json.loads(out.stdout)
    assert r["steps"] == 10000
    growth = (r["after"] - r["before"]) / r["before"]
    assert growth < 0.01, r
