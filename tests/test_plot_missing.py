"""Without matplotlib the plotting functions and options say how to get it."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fastlayers import cli, plot


@pytest.fixture
def no_matplotlib(monkeypatch):
    # A None entry in sys.modules makes the import fail as if the package were not installed.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)


def test_plot_functions_name_the_extra(no_matplotlib):
    with pytest.raises(ImportError, match=r"pip install fastlayers\[plot\]"):
        plot.history([{"epoch": 1, "loss": 1.0, "train_accuracy": 0.5}])
    with pytest.raises(ImportError, match=r"pip install fastlayers\[plot\]"):
        plot.save_figures("unused")


def test_plot_options_fail_before_training(no_matplotlib, tmp_path, capsys):
    out = tmp_path / "plots"
    assert cli.main(["train", "--epochs", "1", "--limit", "10", "--quiet", "--plots", str(out)]) == 2
    assert "pip install fastlayers[plot]" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["plot", str(tmp_path / "model.safetensors"), "--out", str(out)]) == 2
    assert "pip install fastlayers[plot]" in capsys.readouterr().err


def test_layer_outputs_need_no_matplotlib(no_matplotlib):
    from fastlayers import layers

    model = layers.Sequential(layers.Affine(3, 2, rng=0), layers.ReLU())
    outs = plot.layer_outputs(model, np.ones((2, 3), np.float32))
    assert [n for n, _, _ in outs] == ["0", "1"]
