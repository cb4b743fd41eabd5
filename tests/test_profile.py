"""Profiling: rows per plan unit, FLOP counts, im2col workspace, and no effect on training.

Nothing here asserts a duration: only structure, signs and exact counts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import fastlayers
from fastlayers import backend, cli, layers, losses, models, optim
from fastlayers.profile import Profile, scratch_bytes
from fastlayers.trainer import Trainer

OPENMP = bool(fastlayers.build_info()["openmp"])
MiB = 1 << 20


def images(n, seed=0, shape=(1, 28, 28)):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, 10, n)


def profiled(model, steps=2, n=20):
    x, t = images(n)
    prof = Profile(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()))
    for _ in range(steps):
        prof.train_step(x, t)
    return prof


# -- rows -----------------------------------------------------------------------------------


def test_rows_are_the_plan_units_then_loss_and_update():
    prof = profiled(models.simple_cnn(seed=0))
    assert [r.name for r in prof.rows] == [
        "0 Conv2d(1→30, 5x5)+ReLU+MaxPool2d(2x2)",
        "3 Affine(4320→100)+ReLU",
        "5 Affine(100→10)",
        "loss SoftmaxCrossEntropy",
        "update Adam",
    ]


def test_unfused_layers_get_a_row_each():
    model = models.mlp(hidden=[8, 8], batchnorm=True, seed=0)
    model.fuse = False
    names = [r.name for r in profiled(model).rows]
    assert names == [
        "0 Affine(784→8)", "1 BatchNorm(8)", "2 ReLU",
        "3 Affine(8→8)", "4 BatchNorm(8)", "5 ReLU",
        "6 Affine(8→10)", "loss SoftmaxCrossEntropy", "update Adam",
    ]  # fmt: skip


def test_deep_cnn_rows_name_stride_padding_and_fused_batchnorm():
    names = [r.name for r in profiled(models.deep_cnn(batchnorm=True, seed=0), steps=1, n=4).rows]
    assert names[:4] == ["0 Conv2d(1→16, 3x3, pad 1)", "1 BatchNorm(16)+ReLU", "3 Conv2d(16→16, 3x3, pad 1)",
                         "4 BatchNorm(16)+ReLU"]
    assert "10 Conv2d(32→32, 3x3, pad 2)" in names and names[-2:] == ["loss SoftmaxCrossEntropy", "update Adam"]


def test_rows_sum_to_at_most_the_step_and_other_is_the_rest():
    prof = profiled(models.deep_cnn(seed=0), steps=3, n=8)
    rows = prof.rows
    assert prof.steps == 3 and prof.samples == 24
    assert all(r.ms >= 0 and r.share >= 0 for r in rows)
    for r in rows:
        if r.forward_ms is not None:
            assert r.ms == pytest.approx(r.forward_ms + r.backward_ms)
    assert prof.other_ms >= 0
    assert sum(r.ms for r in rows) <= prof.step_ms * (1 + 1e-12)
    assert sum(r.ms for r in rows) + prof.other_ms == pytest.approx(prof.step_ms)
    assert sum(r.share for r in rows) <= 1 + 1e-12


def test_table_and_dict():
    prof = profiled(models.simple_cnn(seed=0))
    text = prof.table()
    for word in ("layer", "fwd ms", "bwd ms", "% step", "GFLOP/s", "scratch", "other", "step", "update Adam"):
        assert word in text
    assert "mean of 2 steps of 20 samples" in text
    d = json.loads(json.dumps(prof.as_dict()))
    assert d["steps"] == 2 and d["samples"] == 40 and len(d["rows"]) == len(prof.rows)
    assert d["settings"] == [{"backend": backend.get_backend(), "threads": fastlayers.get_num_threads()}]
    conv = d["rows"][0]
    assert conv["gflops"] > 0 and conv["scratch_bytes"] > 0 and conv["forward_flops"] > 0
    loss = d["rows"][-2]
    assert loss["gflops"] is None and loss["scratch_bytes"] == 0  # shown as "-"
    update = d["rows"][-1]
    assert update["forward_ms"] is None and update["backward_ms"] is None and update["ms"] >= 0


def test_reset_and_an_empty_profile():
    prof = profiled(models.mlp(hidden=[5], seed=0))
    prof.reset()
    assert prof.steps == 0 and prof.rows == [] and prof.step_ms == 0.0 and prof.other_ms == 0.0
    assert prof.table() == "no steps profiled"


def test_a_single_layer_model_is_one_row():
    model = layers.Affine(784, 10, rng=0)
    x, t = images(6)
    prof = Profile(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters()))
    prof.train_step(x, t)
    assert [r.name for r in prof.rows] == ["Affine(784→10)", "loss SoftmaxCrossEntropy", "update SGD"]
    assert prof.rows[0].forward_flops == 2 * 6 * 784 * 10


def test_a_nested_sequential_is_one_row_without_flops():
    inner = layers.Sequential(layers.Affine(784, 6, rng=0), layers.ReLU())
    model = layers.Sequential(inner, layers.Affine(6, 10, rng=1))
    row = profiled(model).rows[0]
    assert row.name.startswith("0 ") and row.forward_flops == 0 and row.gflops is None
    with pytest.raises(NotImplementedError, match="each layer counts"):
        model.flops((2, 784))


# -- profiling changes nothing -----------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: models.simple_cnn(seed=3), lambda: models.mlp(batchnorm=True, dropout=0.2, seed=3)])
def test_profiling_leaves_training_bit_identical(make):
    x, t = images(130, seed=1)
    runs = []
    for profile in (False, True):
        model = make()
        trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), seed=4, verbose=False,
                          profile=profile)
        trainer.fit(x, t, epochs=2, batch_size=50)
        runs.append((model.state_dict(), [h["loss"] for h in trainer.history], trainer))
    (a, loss_a, off), (b, loss_b, on) = runs
    assert off.profile is None and on.profile.steps == 6  # 130 samples: batches of 50, 50, 30
    assert on.profile.samples == 260
    assert loss_a == loss_b
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_timing_runner_is_on_the_model_only_during_a_step():
    model = models.simple_cnn(seed=0)
    assert "_runner" not in vars(model)
    prof = profiled(model, steps=1)
    assert "_runner" not in vars(model) and prof.steps == 1

    class Boom(layers.Identity):
        def backward(self, dout):
            raise RuntimeError("boom")

    model = layers.Sequential(layers.Affine(784, 10, rng=0), Boom())
    prof = Profile(model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters()))
    with pytest.raises(RuntimeError, match="boom"):
        prof.train_step(*images(3))
    assert "_runner" not in vars(model) and prof.steps == 0


def test_trainer_profile_accumulates_and_verbose_fit_prints_it(capsys):
    model = models.mlp(hidden=[16], seed=0)
    x, t = images(250)
    trainer = Trainer(model, losses.SoftmaxCrossEntropy(), optim.Adam(model.parameters()), verbose=True, profile=True)
    trainer.fit(x, t, epochs=1, batch_size=100, validation_split=0.2)
    # validation forwards are not training steps: 200 samples in batches of 100
    assert trainer.profile.steps == 2 and trainer.profile.samples == 200
    err = capsys.readouterr().err
    assert "update Adam" in err and "0 Affine(784→16)+ReLU" in err


# -- FLOPs -------------------------------------------------------------------------------------


def test_affine_flops():
    layer = layers.Affine(13, 5)
    # x (7, 13) @ W (13, 5): 7·13·5 multiply-adds; backward dW and dx are as large
    assert layer.flops((7, 13)) == (2 * 7 * 13 * 5, 2 * 2 * 7 * 13 * 5)
    assert layer.flops((7, 1, 13)) == (910, 1820)  # flattened per sample
    layer.needs_input_grad = False
    assert layer.flops((7, 13)) == (910, 910)


def test_conv2d_flops_with_stride_and_padding():
    layer = layers.Conv2d(3, 4, kernel_size=(3, 2), stride=2, padding=1)
    # (5, 3, 9, 8): OH = (9 + 2 - 3)//2 + 1 = 5, OW = (8 + 2 - 2)//2 + 1 = 5; K = 3·3·2 = 18
    fwd = 2 * 5 * (5 * 5) * 4 * 18
    assert fwd == 18000
    assert layer.flops((5, 3, 9, 8)) == (fwd, 2 * fwd)
    layer.needs_input_grad = False
    assert layer.flops((5, 3, 9, 8)) == (fwd, fwd)
    # SimpleConvNet's convolution: 24x24 outputs of 30 filters over 5x5, per image
    assert layers.Conv2d(1, 30, 5).flops((100, 1, 28, 28))[0] == 2 * 100 * 576 * 30 * 25


def test_maxout_counts_every_piece_and_activations_count_nothing():
    assert layers.Maxout(6, 4, pieces=3).flops((2, 6)) == (2 * 2 * 6 * 4 * 3, 2 * 2 * 2 * 6 * 4 * 3)
    assert layers.ReLU().flops((2, 6)) == (0, 0)
    assert layers.BatchNorm(6).flops((2, 6)) == (0, 0)


def test_profile_skips_the_first_layers_input_gradient_when_the_model_does_not_need_it():
    n = 20
    model = models.simple_cnn(seed=0)
    prof = profiled(model, steps=1, n=n)
    conv_fwd = 2 * n * 576 * 30 * 25
    assert prof.rows[0].forward_flops == conv_fwd and prof.rows[0].backward_flops == 2 * conv_fwd
    model.needs_input_grad = False
    prof = profiled(model, steps=1, n=n)
    assert prof.rows[0].backward_flops == conv_fwd  # dW only
    hidden = prof.rows[1]  # Affine(4320→100): its dx still flows to the pooled conv block
    assert hidden.forward_flops == 2 * n * 4320 * 100 and hidden.backward_flops == 2 * hidden.forward_flops


# -- im2col workspace --------------------------------------------------------------------------


def threads_used(t):
    return t if OPENMP else 1  # without OpenMP the kernels run on one thread


def test_numpy_scratch_is_the_whole_batch_col():
    conv = layers.Conv2d(3, 4, kernel_size=(3, 2), stride=2, padding=1)
    # N·OH·OW rows of C·FH·FW = 5·5·5 x 18 float32
    assert scratch_bytes(conv, (5, 3, 9, 8), backend_name="numpy") == 5 * 25 * 18 * 4
    conv64 = layers.Conv2d(1, 30, 5, dtype=np.float64)
    assert scratch_bytes(conv64, (100, 1, 28, 28), backend_name="numpy") == 100 * 576 * 25 * 8
    assert scratch_bytes(layers.Affine(3, 2), (4, 3)) == 0


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_native_scratch_follows_the_kernel_rule(threads, im2col_path):
    T = threads_used(threads)

    def native(layer, shape, fused=False, dx=True):
        layer.needs_input_grad = dx
        return scratch_bytes(layer, shape, fused, backend_name="native", threads=threads)

    # SimpleConvNet's convolution, batch 100: K = 25 rows of col, P = 576 pixels, and one
    # tile of all 576 fits 1 MiB / (K + FN = 55 floats). Forward: one image per thread, each
    # with a col tile of 25·576 floats (57,600 B) and the 28 padded input rows 28 wide
    # (3,136 B). Backward: 8 image groups, one per thread; the fused kernel adds the masked
    # dout tile, 30·576 floats, to the col tile: 126,720 B.
    conv = layers.Conv2d(1, 30, 5)
    assert native(conv, (100, 1, 28, 28), fused=True) == min(T, 8) * (126_720 + 3_136)
    assert native(conv, (100, 1, 28, 28), fused=False, dx=False) == min(T, 8) * (57_600 + 3_136)
    # A lone image runs on the calling thread; im2col's single channel cannot be shared out.
    assert native(conv, (1, 1, 28, 28), fused=True) == 126_720 + 3_136

    # 64 channels of 56x56, 3x3, pad 1, lone image: K = 576, a tile holds 1 MiB / 640 floats
    # = 409 pixels, so 7 whole rows of 56 (392 pixels, 903,168 B of col on the caller).
    # Each thread that copies channels (im2col: all 64, col2im: 8 blocks) reads 9 padded
    # rows of 58 (2,088 B).
    big = layers.Conv2d(64, 64, 3, padding=1)
    assert native(big, (1, 64, 56, 56)) == 903_168 + min(T, 64) * 2_088

    # 1x1, stride 1, no padding: col is the input itself; only the fused backward's masked
    # dout tile (32 filters x 196 pixels) remains, and 4 images are too little work to share.
    pointwise = layers.Conv2d(16, 32, 1)
    assert native(pointwise, (4, 16, 14, 14)) == 0
    assert native(pointwise, (4, 16, 14, 14), fused=True) == 32 * 196 * 4

    # Rows too wide for a tile: 1 MiB / (1600 + 64 floats) = 157 pixels < OW = 196, so the
    # row is cut in two tiles of 98 pixels (627,200 B), without a padded-rows buffer.
    wide = layers.Conv2d(64, 64, 5)
    assert native(wide, (2, 64, 5, 200)) == min(T, 2) * 627_200

    # float64 halves the pixels per tile and doubles the bytes.
    conv64 = layers.Conv2d(1, 30, 5, dtype=np.float64)
    assert native(conv64, (100, 1, 28, 28), fused=True) == min(T, 8) * 2 * (126_720 + 3_136)
    assert native(conv, (0, 1, 28, 28)) == 0


def test_native_scratch_of_the_direct_path():
    # simple_cnn's first block (1 -> 30 channels, 5x5, 28x28, 2x2 pooling, batch 100, no dx),
    # on an AVX-512 CPU. Flat layout: Wp = 28, flat positions up to the last pixel
    # 23*28 + 24 = 668, rounded to 672; the last tap's offset 4*28 + 4 = 116. The forward
    # pools in the registers: 30 filters take 2 vectors, 32 lanes. Per thread (scratch() asks
    # 15 floats more, to align): the padded image max(784, 672 + 116) + 16 = 804; the larger
    # of the pooled values 144 windows x 32 lanes = 4,608 (forward) and the patches 576
    # pixels x 32 + 16 = 18,448 (backward); the masked dout 30 x 144 = 4,320; the forward's
    # int32 argmax 144 x 32 = 4,608: 819 + 18,463 + 4,335 + 4,623 = 28,240 floats. On the
    # calling thread the larger of the filters (25 x 32 + 32) and the 8 groups' dW and db
    # partials 8 x 30 x (32 + 2) = 8,160.
    conv, pool = layers.Conv2d(1, 30, 5), layers.MaxPool2d(2)
    conv.needs_input_grad = False
    if backend._native._conv_plan(100, 1, 28, 28, 30, 5, 5, 1, 0, 2, 144, False, 2)[0] != "direct":
        pytest.skip("the direct path needs an AVX-512 CPU")
    for threads in (1, 2, 8):
        got = scratch_bytes(conv, (100, 1, 28, 28), 2, pool=pool, backend_name="native", threads=threads)
        assert got == (min(threads_used(threads), 8) * 28_240 + 8_160) * 4
    # Not pooled, the backward runs im2col: the direct forward's buffers (padded image and flat
    # outputs on each of the threads that share the 100 images; the filters on the caller)
    # plus im2col's backward (8 image groups: a col tile of 25 x 576 floats and 28 padded
    # input rows 28 wide, 57,600 + 3,136 B; see test_native_scratch_follows_the_kernel_rule).
    T = threads_used(2)
    got = scratch_bytes(conv, (100, 1, 28, 28), 0, backend_name="native", threads=2)
    assert got == (T * (819 + 20_175) + 780) * 4 + min(T, 8) * (57_600 + 3_136)
    saved = backend.get_conv_algorithm()
    try:
        backend.set_conv_algorithm("im2col")
        assert scratch_bytes(conv, (100, 1, 28, 28), 0, backend_name="native", threads=2) == min(T, 8) * (
            57_600 + 3_136
        )
    finally:
        backend.set_conv_algorithm(saved)


def test_native_scratch_of_the_winograd_path():
    # deep_cnn's last convolution block, 64 -> 64 channels on 8x8, batch 100, fused with ReLU
    # and pooling, 2 threads. Tiles: 2x2 per image; V and M of an image take
    # 36 * 4 * (64 + 64) * 4 B = 73,728 B, so 28 images fill the 2 MiB chunk budget: 4 chunks
    # (already even) of 25 images, 2 threads busy. Per thread: padded plane 10*10*64, V and M
    # 36*100*64 each, output tiles 16*4*64 floats = 471,296 floats, and, as the forward pools
    # 2x2 windows straight from the tiles, one image's pooled values and their int32 argmax,
    # 2 * 4*4 * 64 = 2,048. On the calling thread, the larger of the forward
    # (U 36*64*64) and the backward (4 chunks of dW partials + the batch's gradient
    # 100*64*8*8 + dx's filters): 1,146,880 floats. dx's convolution (64 -> 64, 8x8, pad 1)
    # asks the same per-thread sizes.
    conv, pool = layers.Conv2d(64, 64, 3, padding=1), layers.MaxPool2d(2)
    saved = backend.get_conv_algorithm()
    try:
        backend.set_conv_algorithm("winograd")
        got = scratch_bytes(conv, (100, 64, 8, 8), 2, pool=pool, backend_name="native", threads=2)
        assert got == (threads_used(2) * (471_296 + 2_048) + 1_146_880) * 4  # one thread without OpenMP
        if backend._native._conv_plan(100, 64, 8, 8, 64, 3, 3, 1, 1, 2, 16, True, 2)[1] == "pooled":
            # "auto": the forward as above (on the calling thread U, 147,456 floats), the
            # backward the sparse pooled one. Its floats, each buffer with room for its 64-byte
            # alignment (n + 15 floats, n + 7 int64 of two floats): per thread, of 8 image
            # groups, the channel-last image and its gradient (10*10*64 + 15 each), the masked
            # dout, the entries' m and the entries by pixel's m (64*16 + 15 each), int64 corner
            # offsets, pixels and filter offsets of the entries (2*(1024 + 7) each), and the
            # entry ranges of the 64 filters and the 64 pixels (2*(65 + 7) each), 64 segments of
            # three int64: 22,805. On the calling thread 8 dW partials 8*64*9*64 + 15, the db
            # partials in double 2*8*64, the corner, pixel order and tap tables 2*(64 + 64 + 18),
            # the rearranged filters 64*9*64 + 15: 333,122.
            backend.set_conv_algorithm("auto")
            auto = scratch_bytes(conv, (100, 64, 8, 8), 2, pool=pool, backend_name="native", threads=2)
            assert auto == (threads_used(2) * (471_296 + 2_048 + 22_805) + 147_456 + 333_122) * 4
            backend.set_conv_algorithm("winograd")
        # With Winograd off the same layer reports im2col's workspace, which is another number.
        backend.set_conv_algorithm("im2col")
        assert scratch_bytes(conv, (100, 64, 8, 8), 2, pool=pool, backend_name="native", threads=2) != got
        # float64 never runs Winograd.
        conv64 = layers.Conv2d(64, 64, 3, padding=1, dtype=np.float64)
        backend.set_conv_algorithm("winograd")
        with_w = scratch_bytes(conv64, (100, 64, 8, 8), 2, pool=pool, backend_name="native", threads=2)
        backend.set_conv_algorithm("im2col")
        assert with_w == scratch_bytes(conv64, (100, 64, 8, 8), 2, pool=pool, backend_name="native", threads=2)
    finally:
        backend.set_conv_algorithm(saved)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_native_scratch_stays_within_the_per_thread_cap(threads, im2col_path):
    # Two buffers per thread, each at most 1 MiB (col tile; padded rows), while one output
    # pixel's column fits 1 MiB; the NumPy col for the same shapes is far larger.
    model = models.deep_cnn(input_shape=(3, 64, 64))
    x = np.zeros((100, 3, 64, 64), np.float32)
    for index, layer, absorbed in model._units():
        if isinstance(layer, layers.Conv2d):
            # A conv-relu-pool block also keeps one image's convolution output per thread.
            _, OH, OW = layer.output_shape(x.shape[1:])
            image = layer.out_channels * OH * OW * 4 if len(absorbed) == 2 else 0
            for dx in (True, False):
                layer.needs_input_grad = dx
                got = scratch_bytes(layer, x.shape, len(absorbed), pool=absorbed[-1] if len(absorbed) == 2 else None,
                                    backend_name="native", threads=threads)
                # Besides the two capped tiles: the fused block's image and pooled gradient, and
                # the capped im2col of the gradient when dx is computed as a convolution.
                assert 0 < got <= (3 * MiB + 2 * image) * threads_used(threads)
                assert got < scratch_bytes(layer, x.shape, backend_name="numpy")
        x = layer.forward_fused(x, None, absorbed) if absorbed else layer.forward(x)


def test_profile_reports_the_active_backends_scratch():
    model = models.simple_cnn(seed=0)
    n = 20
    with backend.use("numpy"):
        rows = profiled(model, steps=1, n=n).rows
    assert rows[0].scratch_bytes == n * 576 * 25 * 4
    assert all(r.scratch_bytes == 0 for r in rows[1:])
    rows = profiled(model, steps=1, n=n).rows
    # The first unit is the fused conv + ReLU + pool block.
    want = scratch_bytes(model[0], (n, 1, 28, 28), 2, pool=model[2], backend_name="native",
                         threads=fastlayers.get_num_threads())
    assert rows[0].scratch_bytes == want > 0


# -- command line ------------------------------------------------------------------------------


def test_cli_profile_json(capsys):
    args = ["profile", "--model", "mlp", "--batchnorm", "--batch", "16", "--steps", "3", "--warmup", "1", "--json"]
    assert cli.main(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model"] == "mlp" and d["batchnorm"] and d["batch"] == 16 and d["steps"] == 3 and d["samples"] == 48
    assert d["backend"] == "native" and d["threads"] == fastlayers.get_num_threads()
    assert [r["name"] for r in d["rows"]][:2] == ["0 Affine(784→100)", "1 BatchNorm(100)+ReLU"]
    assert len(d["rows"]) == 5 * 2 + 1 + 2 and d["other_ms"] >= 0


def test_cli_profile_table(capsys):
    try:
        assert cli.main(["profile", "--batch", "4", "--steps", "1", "--warmup", "0", "--backend", "numpy"]) == 0
    finally:
        backend.set_backend("native")
    out = capsys.readouterr().out
    assert "simple-cnn, batch 4" in out and "0 Conv2d(1→30, 5x5)+ReLU" in out and "backend numpy" in out


def test_cli_profile_refuses_bad_arguments():
    with pytest.raises(SystemExit, match="--batchnorm applies"):
        cli.main(["profile", "--model", "simple-cnn", "--batchnorm"])
    with pytest.raises(SystemExit):
        cli.main(["profile", "--steps", "0"])
