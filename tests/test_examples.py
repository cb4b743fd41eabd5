"""The examples run: each in --quick mode, printing its table and writing its figures."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "script, figures, table",
    [
        ("optimizer_comparison.py", ["optimizer_paths.png", "optimizer_comparison.png"],
         ["SGD", "Momentum", "AdaGrad", "RMSprop", "Adam"]),
        ("weight_init.py", ["weight_init_histograms.png", "weight_init_training.png"],
         ["sigmoid    std=1", "relu       he", "std=0.01", "xavier"]),
        ("batchnorm.py", ["batchnorm.png"], ["init std", "0.0001"]),
        ("overfitting.py", ["overfitting.png"], ["plain", "weight decay 0.1", "dropout 0.2", "both"]),
        ("lbfgs.py", ["lbfgs.png"], ["L-BFGS (history 10, strong Wolfe)", "gradient descent", "Adam", "N=25"]),
        ("computational_graph.py", ["computational_graph.png"],
         ["price", "dapple", "dorange_num", "dtax", "= numerical (central differences, relative 1e-6): yes"]),
    ],
)
def test_example_runs_quick(tmp_path, script, figures, table):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for word in table:
        assert word in proc.stdout, (word, proc.stdout)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(figures)
    for name in figures:
        raw = (tmp_path / name).read_bytes()
        assert raw.startswith(PNG) and len(raw) > 1000, name


def test_computational_graph_prints_the_notes_values(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "computational_graph.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=True)
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[1:7]}
    assert rows["price"] == ["715", "715"]
    want = {"dapple": "2.2", "dapple_num": "110", "dorange": "3.3", "dorange_num": "165", "dtax": "650"}
    for name, value in want.items():
        backprop, numerical, notes = rows[name]
        assert backprop == value and notes == value
        assert float(numerical) == pytest.approx(float(value), rel=1e-6)
