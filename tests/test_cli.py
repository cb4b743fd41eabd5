"""The command line: train, gradcheck and info, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import fastlayers
from fastlayers import cli


def test_info_reports_build_and_coverage(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("compiler", "openmp", "threads", "blas", "native_kernels", "numpy_only_kernels", "version"):
        assert key in info, key
    assert set(info["native_kernels"]) >= {"affine_forward", "relu_backward", "softmax_cross_entropy_forward"}
    assert cli.main(["info"]) == 0
    assert "affine_forward" in capsys.readouterr().out


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "fastlayers", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"fastlayers {fastlayers.__version__}"


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_train_json_and_save(tmp_path, capsys, backend):
    path = tmp_path / "model.safetensors"
    args = ["train", "--model", "mlp", "--epochs", "2", "--limit", "500", "--batch-size", "50"]
    args += ["--backend", backend, "--json", "--quiet", "--save", str(path), "--seed", "3"]
    try:
        assert cli.main(args) == 0
    finally:
        fastlayers.backend.set_backend("native")
    result = json.loads(capsys.readouterr().out)
    for key in ("model", "data", "backend", "epochs", "test_accuracy", "seconds_per_epoch"):
        assert key in result, key
    assert result["model"] == "mlp" and result["data"] == "bundled" and result["backend"] == backend
    assert result["epochs"] == 2 and result["train_samples"] == 500 and result["test_samples"] == 2000
    assert result["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    model = fastlayers.load(path)
    (_, _), (x_test, t_test) = fastlayers.data.load_bundled()
    acc = np.mean(np.argmax(model.forward(x_test, train=False), axis=1) == t_test)
    assert acc == pytest.approx(result["test_accuracy"])


def test_train_from_a_directory_of_idx_files(tmp_path, capsys):
    import gzip

    rng = np.random.default_rng(0)

    def idx(arr):
        header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        return header + arr.astype(np.uint8).tobytes()

    for split, n in (("train", 60), ("t10k", 20)):
        (tmp_path / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(rng.integers(0, 256, (n, 28, 28)))))
        (tmp_path / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx(rng.integers(0, 10, n))))
    assert cli.main(["train", "--data", str(tmp_path), "--model", "mlp", "--epochs", "1", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["train_samples"] == 60 and result["test_samples"] == 20


def test_train_rejects_a_missing_directory():
    with pytest.raises(SystemExit, match="neither"):
        cli.main(["train", "--data", "/nonexistent/place", "--quiet"])


def test_train_batchnorm_builds_the_batchnorm_variant(tmp_path, capsys):
    path = tmp_path / "bn.safetensors"
    args = ["train", "--model", "mlp", "--batchnorm", "--epochs", "1", "--limit", "200", "--json", "--quiet"]
    assert cli.main(args + ["--save", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["batchnorm"] is True
    model = fastlayers.load(path)
    assert any(isinstance(layer, fastlayers.layers.BatchNorm) for layer in model)
    assert cli.main(["train", "--model", "simple-cnn", "--batchnorm", "--quiet"]) == 2
    assert "--batchnorm" in capsys.readouterr().err


def test_train_dropout_sets_the_ratio(tmp_path, capsys):
    path = tmp_path / "do.safetensors"
    args = ["train", "--model", "mlp", "--dropout", "0.25", "--epochs", "1", "--limit", "200", "--json", "--quiet"]
    assert cli.main(args + ["--save", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["dropout"] == 0.25
    ratios = [layer.p for layer in fastlayers.load(path) if isinstance(layer, fastlayers.layers.Dropout)]
    assert ratios and all(p == 0.25 for p in ratios)
    assert cli.main(["train", "--model", "simple-cnn", "--dropout", "0.1", "--quiet"]) == 2
    assert "--dropout" in capsys.readouterr().err


def test_gradcheck_command_passes_for_a_model(capsys):
    assert cli.main(["gradcheck", "--model", "mlp", "--max-entries", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and "input" in result["errors"] and max(result["errors"].values()) < cli.GRADCHECK_TOLERANCE


def test_train_checkpoint_and_resume_continue_the_run_exactly(tmp_path, capsys):
    args = ["train", "--model", "mlp", "--batchnorm", "--dropout", "0.2", "--limit", "300", "--batch-size", "50",
            "--validation-split", "0.2", "--json", "--quiet"]

    def run(*extra):
        assert cli.main(args + list(extra)) == 0
        return json.loads(capsys.readouterr().out)

    straight = run("--epochs", "2", "--save", str(tmp_path / "straight.safetensors"))
    path = tmp_path / "run.safetensors"
    run("--epochs", "1", "--checkpoint", str(path), "--checkpoint-every", "2")
    resumed = run("--epochs", "2", "--checkpoint", str(path), "--resume", "--save", str(tmp_path / "resumed.safetensors"))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    a, b = fastlayers.load(tmp_path / "straight.safetensors"), fastlayers.load(tmp_path / "resumed.safetensors")
    for k, v in a.state_dict().items():
        assert np.array_equal(b.state_dict()[k], v), k
    # A checkpoint that does not fit the run is an error message, not a traceback.
    assert cli.main(args + ["--epochs", "2", "--limit", "200", "--checkpoint", str(path), "--resume"]) == 2
    assert "training data differ" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--quiet"]) == 2
    assert "need --checkpoint" in capsys.readouterr().err


def test_train_with_augmentation(capsys):
    args = ["train", "--model", "simple-cnn", "--epochs", "1", "--limit", "300", "--json", "--quiet",
            "--augment", "translate=2,rotate=10,scale=0.9:1.1,hflip"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["augment"] == {"translate": [2.0, 2.0], "rotate": 10.0, "scale": [0.9, 1.1], "hflip": True,
                                 "fill": 0.0}
    assert "Augment(translate=2.0, rotate=10.0" in captured.err
    assert cli.main(args[:-2]) == 0
    assert json.loads(capsys.readouterr().out)["augment"] is None


@pytest.mark.parametrize("spec,words", [("rotate=ten", "rotate must be a number"), ("shear=2", "unknown setting"),
                                        ("scale=1.2:0.8", "0 < lo <= hi")])
def test_train_refuses_bad_augmentation_settings(capsys, spec, words):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--augment", spec])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--augment" in err and words in err, err
