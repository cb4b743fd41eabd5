"""bench/shapes.py lists exactly the kernel calls a training step makes.

A real step of each network (bench/train_step.py's, on the native backend) runs with the
kernel table replaced by a recorder; the recorded calls (kernel, argument shapes and dtypes,
hyper-parameters) must equal the table's, in order. A model change that alters any layer's
shapes, fusion or hyper-parameters therefore fails here until the table follows it.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

from fastlayers import backend, reference

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import shapes  # noqa: E402
import train_step  # noqa: E402


class Recorder:
    """Stands in for the kernel table: notes each call, then runs the real kernel."""

    def __init__(self, table):
        self.table = table
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        kernel = getattr(self.table, name)

        def call(*args):
            self.calls.append((name, tuple(self._describe(a) for a in args)))
            return kernel(*args)

        return call

    @staticmethod
    def _describe(a):
        if isinstance(a, np.ndarray):
            return ("array", a.shape, a.dtype.name)
        return a


def recorded_step(network: str, batch: int, monkeypatch) -> list[tuple]:
    step = train_step.step_fn(shapes.STEP_NAMES[network])
    x, t = train_step.batch(batch)
    recorder = Recorder(backend.kernels())
    # Layers, losses and optimizers look the table up through backend.kernels() at every call.
    with monkeypatch.context() as m:
        m.setattr(backend, "kernels", lambda: recorder)
        step(x, t)
    return recorder.calls


# 100 is the benchmark's batch; 3 catches a size written as a constant where it should be B.
@pytest.mark.parametrize("batch", [shapes.BATCH, 3])
@pytest.mark.parametrize("network", list(shapes.NETWORKS))
def test_table_matches_a_recorded_training_step(network, batch, monkeypatch):
    recorded = recorded_step(network, batch, monkeypatch)
    expected = shapes.step_calls(network, batch)
    assert len(recorded) == len(expected), (
        f"{network}: the step made {len(recorded)} kernel calls, the table lists {len(expected)}:\n"
        + "\n".join(name for name, _ in recorded)
    )
    for i, ((name, args), (shape_set, call)) in enumerate(zip(recorded, expected)):
        kernel, want = call.signature()
        got = tuple("varies" if j in call.varying else a for j, a in enumerate(args))
        assert (name, got) == (kernel, want), f"{network} call {i} ({shape_set.name}): recorded {name}{got}, table {kernel}{want}"


def test_names_are_unique_and_name_their_network():
    names = [s.name for sets in shapes.NETWORKS.values() for s in sets]
    assert len(names) == len(set(names))
    for network, sets in shapes.NETWORKS.items():
        assert all(s.network == network for s in sets)


def test_every_kernel_exists_in_both_backends():
    cov = backend.coverage()
    for network in shapes.NETWORKS:
        for _, call in shapes.step_calls(network):
            assert hasattr(reference, call.kernel)
            assert cov[call.kernel], f"{call.kernel} is not native"


def test_an_arithmetic_slip_in_the_table_is_refused():
    with pytest.raises(ValueError, match="does not follow"):
        shapes.Conv("x/conv", N=1, C=1, H=28, W=28, FN=1, F=3, stride=1, pad=1, OH=26, OW=28, relu=True)


def test_traffic_counts_accumulated_gradients_both_ways():
    call = shapes.Affine("x/fc", N=2, D=3, M=5, relu=False).backward()[0]
    # dx written, dW and db read and written, dout, x and W read; float32.
    assert call.traffic() == 4 * (2 * 3 + 2 * 3 * 5 + 2 * 5 + 2 * 5 + 2 * 3 + 3 * 5)
    assert call.flops == 4 * 2 * 3 * 5 + 2 * 5

